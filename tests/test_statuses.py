"""The subscriber and delivery statuses: the documented set, in order."""

from __future__ import annotations

from drip.models import DeliveryStatus, SubscriberStatus


def test_statuses_are_the_documented_ones() -> None:
    assert [s.value for s in SubscriberStatus] == [
        "pending",
        "active",
        "paused",
        "completed",
        "unsubscribed",
        "bounced",
        "complained",
    ]
    assert [s.value for s in DeliveryStatus] == [
        "claimed",
        "sending",
        "sent",
        "retry",
        "failed",
        "in_doubt",
    ]
