"""The store's subscribers on SQLite and PostgreSQL: enrolment, confirmation, status changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.exc import StatementError
from sqlalchemy.orm import Session
from tests.store_support import COURSE, T0, add, view

from drip import store
from drip.models import SubscriberStatus


def test_new_subscribers_are_pending_or_active(session: Session) -> None:
    pending = add(session, "p@example.com", confirmed=False)
    active = add(session, "a@example.com", at=T0 + timedelta(hours=1))
    session.commit()
    assert (pending.status, pending.created) == (SubscriberStatus.PENDING, True)
    assert (active.status, active.created) == (SubscriberStatus.ACTIVE, True)
    p, a = view(session, pending.subscriber_id), view(session, active.subscriber_id)
    assert p.next_lesson is None and p.next_send_at is None and p.confirmed_at is None
    assert a.next_lesson == "welcome"
    assert a.next_send_at == T0 + timedelta(hours=1)
    assert a.next_send_at is not None and a.next_send_at.tzinfo is not None
    assert a.confirmed_at == T0 and a.consent_source == "cli" and a.name == "名前"


def test_email_is_unique_per_course_whatever_its_case(session: Session) -> None:
    first = add(session, "Alice@Example.com")
    again = add(session, "alice@EXAMPLE.com ")
    other_course = add(session, "alice@example.com", course="course-b")
    session.commit()
    assert again.subscriber_id == first.subscriber_id and not again.created
    assert other_course.created and other_course.subscriber_id != first.subscriber_id
    found = store.get_subscriber(session, COURSE, "ALICE@example.com")
    assert found is not None and found.email == "alice@example.com"
    assert store.get_subscriber(session, COURSE, "nobody@example.com") is None


def test_confirmed_add_confirms_a_pending_subscriber(session: Session) -> None:
    pending = add(session, "p@example.com", confirmed=False)
    result = add(session, "p@example.com", at=T0 + timedelta(hours=2), now=T0 + timedelta(hours=1))
    session.commit()
    assert result == store.AddResult(
        pending.subscriber_id, SubscriberStatus.ACTIVE, created=False, confirmed_now=True
    )
    seen = view(session, pending.subscriber_id)
    assert seen.status is SubscriberStatus.ACTIVE
    assert seen.confirmed_at == T0 + timedelta(hours=1)
    assert seen.next_send_at == T0 + timedelta(hours=2)


def test_existing_active_paused_completed_are_left_alone(session: Session) -> None:
    active = add(session, "a@example.com", at=T0)
    paused = add(session, "p@example.com")
    store.pause(session, paused.subscriber_id, T0)
    again = add(session, "a@example.com", at=T0 + timedelta(days=9))
    paused_again = add(session, "p@example.com", confirmed=False)
    session.commit()
    assert (again.status, again.created, again.confirmed_now) == (
        SubscriberStatus.ACTIVE,
        False,
        False,
    )
    assert view(session, active.subscriber_id).next_send_at == T0
    assert paused_again.status is SubscriberStatus.PAUSED


@pytest.mark.parametrize("how", ["unsubscribed", "bounced", "complained"])
def test_suppressed_addresses_are_never_reactivated(session: Session, how: str) -> None:
    added = add(session, "s@example.com")
    if how == "unsubscribed":
        store.unsubscribe(session, added.subscriber_id, T0)
    else:
        store.mark_suppressed(session, "S@example.com", how, T0)
    session.commit()
    with pytest.raises(store.SuppressedAddressError, match=how) as raised:
        add(session, "s@example.com")
    assert raised.value.exit_code == 2
    with pytest.raises(store.SuppressedAddressError):
        add(session, "s@example.com", confirmed=False)
    with pytest.raises(store.SuppressedAddressError):
        store.confirm_subscriber(
            session, added.subscriber_id, now=T0, first_lesson="welcome", first_send_at=T0
        )
    session.rollback()
    assert view(session, added.subscriber_id).status == how
    assert view(session, added.subscriber_id).next_send_at is None


def test_confirm_subscriber(session: Session) -> None:
    pending = add(session, "p@example.com", confirmed=False)
    assert store.confirm_subscriber(
        session, pending.subscriber_id, now=T0, first_lesson="welcome", first_send_at=T0
    )
    # A second click on the link changes nothing.
    assert not store.confirm_subscriber(
        session,
        pending.subscriber_id,
        now=T0 + timedelta(days=1),
        first_lesson="welcome",
        first_send_at=T0 + timedelta(days=1),
    )
    session.commit()
    seen = view(session, pending.subscriber_id)
    assert (seen.status, seen.confirmed_at, seen.next_send_at) == ("active", T0, T0)
    with pytest.raises(store.NotFoundError):
        store.confirm_subscriber(session, 999_999, now=T0, first_lesson="w", first_send_at=T0)


def test_mark_confirmation_sent(session: Session) -> None:
    pending = add(session, "p@example.com", confirmed=False)
    store.mark_confirmation_sent(session, pending.subscriber_id, T0 + timedelta(minutes=1))
    session.commit()
    assert view(session, pending.subscriber_id).confirmation_sent_at == T0 + timedelta(minutes=1)
    with pytest.raises(store.NotFoundError):
        store.mark_confirmation_sent(session, 999_999, T0)


def test_pause_and_resume(session: Session) -> None:
    added = add(session, "a@example.com")
    assert store.pause(session, added.subscriber_id, T0)
    assert not store.pause(session, added.subscriber_id, T0)
    session.commit()
    paused = view(session, added.subscriber_id)
    assert (paused.status, paused.paused_at, paused.next_send_at) == ("paused", T0, None)
    assert store.count_due(session, COURSE, T0 + timedelta(days=30)) == 0
    later = T0 + timedelta(days=3)
    assert store.resume(session, added.subscriber_id, now=later, next_send_at=later)
    assert not store.resume(session, added.subscriber_id, now=later, next_send_at=later)
    session.commit()
    resumed = view(session, added.subscriber_id)
    assert (resumed.status, resumed.next_send_at, resumed.paused_at) == ("active", later, None)
    assert resumed.next_lesson == "welcome"
    assert store.count_due(session, COURSE, later) == 1
    with pytest.raises(store.NotFoundError):
        store.pause(session, 999_999, T0)


def test_unsubscribe(session: Session) -> None:
    added = add(session, "a@example.com")
    assert store.unsubscribe(session, added.subscriber_id, T0)
    assert not store.unsubscribe(session, added.subscriber_id, T0 + timedelta(days=1))
    session.commit()
    seen = view(session, added.subscriber_id)
    assert (seen.status, seen.next_send_at, seen.status_changed_at) == ("unsubscribed", None, T0)


def test_mark_suppressed_covers_every_course_and_ranks_complaints_highest(
    session: Session,
) -> None:
    a = add(session, "x@example.com")
    b = add(session, "x@example.com", course="course-b")
    c = add(session, "y@example.com", course="course-b")
    store.unsubscribe(session, b.subscriber_id, T0)
    assert store.mark_suppressed(session, "X@example.com", "bounced", T0) == 1
    assert view(session, a.subscriber_id).status == "bounced"
    assert view(session, b.subscriber_id).status == "unsubscribed"
    assert store.mark_suppressed(session, "x@example.com", SubscriberStatus.COMPLAINED, T0) == 2
    assert {view(session, a.subscriber_id).status, view(session, b.subscriber_id).status} == {
        "complained"
    }
    assert view(session, c.subscriber_id).status == "active"
    with pytest.raises(ValueError, match="bounced"):
        store.mark_suppressed(session, "x@example.com", "active", T0)


def test_naive_datetimes_are_refused(session: Session) -> None:
    with pytest.raises(StatementError) as raised:
        add(session, "n@example.com", now=datetime(2026, 4, 1, 9, 0))
    assert isinstance(raised.value.orig, ValueError)
    assert "naive" in str(raised.value)


def test_aware_datetimes_in_any_offset_are_stored_as_the_same_instant(session: Session) -> None:
    from zoneinfo import ZoneInfo

    tokyo = datetime(2026, 4, 1, 9, 0, 0, 1, tzinfo=ZoneInfo("Asia/Tokyo"))
    added = add(session, "t@example.com", at=tokyo)
    session.commit()
    stored = view(session, added.subscriber_id).next_send_at
    assert stored == tokyo and stored is not None and stored.tzinfo is UTC
    assert stored.isoformat() == "2026-04-01T00:00:00.000001+00:00"


def test_confirm_pending_never_activates_an_unsubscribed_subscriber(session: Session) -> None:
    """An import's bulk confirm after the person unsubscribed changes nothing (mutation
    survivor: confirm_pending without its status = 'pending' filter)."""
    pending = add(session, "gone@example.com", confirmed=False)
    assert store.unsubscribe(session, pending.subscriber_id, T0 + timedelta(minutes=1))
    session.commit()
    later = T0 + timedelta(minutes=2)
    confirmed = store.confirm_pending(
        session, [(pending.subscriber_id, later)], now=later, first_lesson="welcome"
    )
    session.commit()
    assert confirmed == 0
    seen = view(session, pending.subscriber_id)
    assert (seen.status, seen.confirmed_at, seen.next_lesson, seen.next_send_at) == (
        "unsubscribed",
        None,
        None,
        None,
    )
    assert seen.status_changed_at == T0 + timedelta(minutes=1)
    assert store.count_due(session, COURSE, later + timedelta(days=30)) == 0
