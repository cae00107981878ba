"""Settling in-doubt deliveries: as sent (the reader moves on) or not sent (sent again)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import sessionmaker
from tests.support import COURSE, make_mailer
from tests.test_delivery import T0

from drip import store
from drip.delivery import Mailer, send_due
from drip.lifecycle import failed, in_doubt, resolve, retry_failed, subscribe
from drip.transports.base import Outcome
from drip.transports.memory import MemoryTransport


@pytest.fixture
def setup(engine: Engine) -> tuple[sessionmaker, Mailer, MemoryTransport]:  # type: ignore[type-arg]
    transport = MemoryTransport(script=[Outcome.IN_DOUBT, Outcome.IN_DOUBT])
    mailer = make_mailer(transport)
    sessions = sessionmaker(engine, expire_on_commit=False)
    for index in range(2):
        subscribe(
            sessions,
            mailer,
            email=f"d{index}@example.com",
            name=None,
            timezone=None,
            confirmed=True,
            now=T0 + timedelta(seconds=index),
            consent_source="test",
        )
    assert send_due(sessions, mailer, now=T0 + timedelta(minutes=1)).in_doubt == 2
    return sessions, mailer, transport


def test_resolving_as_sent_moves_on_and_as_not_sent_sends_again(
    setup: tuple[sessionmaker, Mailer, MemoryTransport],  # type: ignore[type-arg]
) -> None:
    sessions, mailer, transport = setup
    first, second = in_doubt(sessions, COURSE)
    now = T0 + timedelta(hours=1)
    assert "next is 'rethink'" in resolve(sessions, COURSE, first.delivery_id, sent=True, now=now)
    assert "sent again" in resolve(sessions, COURSE, second.delivery_id, sent=False, now=now)
    assert in_doubt(sessions, COURSE) == []

    again = send_due(sessions, mailer, now=now)
    assert again.sent == 1 and again.per_lesson["welcome"]["sent"] == 1
    assert transport.sent[-1].to_address == second.email
    # Both readers get lesson 2 on the normal schedule: 07:30 Tokyo the next morning.
    next_morning = T0.replace(hour=22, minute=30)  # 07:30 Tokyo on 03-03
    assert send_due(sessions, mailer, now=next_morning - timedelta(minutes=1)).sent == 0
    later = send_due(sessions, mailer, now=next_morning)
    lesson_two = transport.sent[-later.sent :]
    assert sorted(m.to_address for m in lesson_two) == sorted([first.email, second.email])
    assert {m.custom_args["drip_lesson"] for m in lesson_two} == {"rethink"}
    with sessions() as session:
        assert store.delivery_counts(session, COURSE.id)["in_doubt"] == 0


def test_only_in_doubt_deliveries_can_be_resolved(
    setup: tuple[sessionmaker, Mailer, MemoryTransport],  # type: ignore[type-arg]
) -> None:
    sessions, _, _ = setup
    first, _ = in_doubt(sessions, COURSE)
    resolve(sessions, COURSE, first.delivery_id, sent=True, now=T0 + timedelta(hours=1))
    with pytest.raises(store.StateError):
        resolve(sessions, COURSE, first.delivery_id, sent=False, now=T0 + timedelta(hours=2))
    with pytest.raises(store.NotFoundError):
        resolve(sessions, COURSE, 424242, sent=True, now=T0)


def test_resolving_a_lesson_since_removed_as_sent_holds_the_reader(
    setup: tuple[sessionmaker, Mailer, MemoryTransport],  # type: ignore[type-arg]
) -> None:
    """The lesson in doubt was removed from course.toml before the operator settled it: the
    reader must be held with the reason, not marked completed (the rest of the course skipped)."""
    from dataclasses import replace

    sessions, _, _ = setup
    first, _ = in_doubt(sessions, COURSE)
    without_welcome = replace(
        COURSE, lessons=tuple(lesson for lesson in COURSE.lessons if lesson.slug != first.lesson)
    )
    said = resolve(sessions, without_welcome, first.delivery_id, sent=True, now=T0)
    assert "held" in said
    with sessions() as session:
        view = store.get_subscriber_by_id(session, first.subscriber_id)
    assert view is not None
    assert view.status == store.SubscriberStatus.ACTIVE and view.is_held
    assert "no longer in the course" in (view.held_reason or "")


def test_failed_deliveries_are_listed_and_rearmed_once_the_cause_is_fixed(engine: Engine) -> None:
    transport = MemoryTransport(script=[Outcome.FAILED, Outcome.FAILED])
    mailer = make_mailer(transport)
    sessions = sessionmaker(engine, expire_on_commit=False)
    for index in range(3):
        subscribe(
            sessions,
            mailer,
            email=f"f{index}@example.com",
            name=None,
            timezone=None,
            confirmed=True,
            now=T0 + timedelta(seconds=index),
            consent_source="test",
        )
    report = send_due(sessions, mailer, now=T0 + timedelta(minutes=1))
    assert (report.failed, report.sent) == (2, 1)
    first, second = failed(sessions, COURSE)
    assert first.email == "f0@example.com" and first.lesson == "welcome"
    with pytest.raises(store.NotFoundError, match="424242"):
        retry_failed(sessions, COURSE, [first.delivery_id, 424242], now=T0)
    # Nothing was re-armed by the refused call: the failed readers stay held.
    assert "welcome" not in send_due(sessions, mailer, now=T0 + timedelta(minutes=30)).per_lesson
    assert retry_failed(sessions, COURSE, [first.delivery_id], now=T0 + timedelta(hours=1)) == [
        first.delivery_id
    ]
    assert retry_failed(sessions, COURSE, None, now=T0 + timedelta(hours=1)) == [second.delivery_id]
    again = send_due(sessions, mailer, now=T0 + timedelta(hours=1))
    assert again.per_lesson["welcome"]["sent"] == 2
    assert failed(sessions, COURSE) == []
    with sessions() as session:
        assert store.delivery_counts(session, COURSE.id)["sent"] == 3
