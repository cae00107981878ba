"""The reader's own settings through `drip.preferences` and the send engine: timed pauses, a
per-reader send time, a timezone change, and pause/resume keeping a failed or in-doubt hold. Real
SQLite file and real PostgreSQL (the `engine` fixture)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker
from tests.support import COURSE, make_mailer

from drip import preferences, store
from drip.delivery import Mailer, send_due
from drip.errors import UsageError
from drip.lifecycle import pause_subscriber, resume_subscriber, subscribe
from drip.transports.base import Outcome
from drip.transports.memory import MemoryTransport

# 2026-03-02 is a Monday; 10:00 in Tokyo is outside quiet hours.
T0 = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)
TOKYO_0730_MAR3 = datetime(2026, 3, 2, 22, 30, tzinfo=UTC)


@dataclass
class Harness:
    sessions: sessionmaker[Session]
    transport: MemoryTransport
    mailer: Mailer

    def subscribe(self, email: str, *, now: datetime = T0, timezone: str | None = None) -> int:
        return subscribe(
            self.sessions,
            self.mailer,
            email=email,
            name=None,
            timezone=timezone,
            confirmed=True,
            now=now,
            consent_source="test",
        ).subscriber_id

    def send(self, now: datetime) -> int:
        return send_due(self.sessions, self.mailer, now=now).sent

    def attempts_at(self, email: str) -> list[str]:
        return [
            m.custom_args["drip_lesson"]
            for m in self.transport.attempts
            if m.to_address == email and "drip_lesson" in m.custom_args
        ]

    def view(self, subscriber_id: int) -> store.SubscriberView:
        with self.sessions() as session:
            found = store.get_subscriber_by_id(session, subscriber_id)
        assert found is not None
        return found


@pytest.fixture
def harness(engine: Engine) -> Iterator[Harness]:
    transport = MemoryTransport()
    yield Harness(sessionmaker(engine, expire_on_commit=False), transport, make_mailer(transport))


# --- pause and resume keep a failed or in-doubt hold ---------------------------------------------


@pytest.mark.parametrize("outcome", [Outcome.FAILED, Outcome.IN_DOUBT])
def test_pause_and_resume_of_a_held_reader_never_resends_the_lesson(
    harness: Harness, outcome: Outcome
) -> None:
    sid = harness.subscribe("held@example.com")
    assert harness.send(T0) == 1  # welcome
    harness.transport.add_script(outcome)
    harness.send(TOKYO_0730_MAR3)  # rethink: refused for good, or maybe sent
    held = harness.view(sid)
    assert held.is_held and held.held_reason
    later = TOKYO_0730_MAR3 + timedelta(hours=3)
    assert pause_subscriber(harness.sessions, COURSE, "held@example.com", now=later)
    assert resume_subscriber(
        harness.sessions, COURSE, "held@example.com", now=later + timedelta(hours=1)
    )
    after = harness.view(sid)
    assert after.is_held, "resume must keep the operator's hold"
    assert after.held_reason == held.held_reason
    for day in range(1, 6):
        harness.send(TOKYO_0730_MAR3 + timedelta(days=day))
    assert harness.attempts_at("held@example.com") == ["welcome", "rethink"]


# --- timed pauses ----------------------------------------------------------------------------


def test_a_two_week_pause_ends_by_itself_and_the_course_goes_on_exactly_once(
    harness: Harness,
) -> None:
    sid = harness.subscribe("pause@example.com")
    assert harness.send(T0) == 1
    paused_at = T0 + timedelta(hours=2)
    assert preferences.pause(harness.sessions, sid, weeks=2, now=paused_at)
    view = harness.view(sid)
    assert view.status is store.SubscriberStatus.PAUSED
    assert view.paused_until == paused_at + timedelta(weeks=2)
    # Nothing during the pause.
    for day in range(1, 14):
        assert harness.send(TOKYO_0730_MAR3 + timedelta(days=day - 1)) == 0
    # The pause ends on 03-16 12:00 Tokyo; the next lesson comes at the next send time after it
    # (03-17 07:30 Tokyo), not at once.
    ended = paused_at + timedelta(weeks=2)
    assert harness.send(ended + timedelta(minutes=5)) == 0
    view = harness.view(sid)
    assert view.status is store.SubscriberStatus.ACTIVE
    assert view.paused_until is None and view.paused_at is None
    assert view.next_send_at == datetime(2026, 3, 16, 22, 30, tzinfo=UTC)
    assert harness.send(datetime(2026, 3, 16, 22, 30, tzinfo=UTC)) == 1
    assert harness.send(datetime(2026, 3, 16, 22, 35, tzinfo=UTC)) == 0
    assert harness.attempts_at("pause@example.com") == ["welcome", "rethink"]


def test_a_pause_until_resumed_does_not_end_by_itself(harness: Harness) -> None:
    sid = harness.subscribe("forever@example.com")
    harness.send(T0)
    assert preferences.pause(harness.sessions, sid, weeks=None, now=T0 + timedelta(hours=1))
    assert harness.view(sid).paused_until is None
    assert harness.send(T0 + timedelta(days=60)) == 0
    assert harness.view(sid).status is store.SubscriberStatus.PAUSED
    assert preferences.resume(harness.sessions, COURSE, sid, now=T0 + timedelta(days=61))
    assert harness.view(sid).status is store.SubscriberStatus.ACTIVE


def test_a_timed_pause_of_a_held_reader_ends_held(harness: Harness) -> None:
    sid = harness.subscribe("heldpause@example.com")
    harness.send(T0)
    harness.transport.add_script(Outcome.FAILED)
    harness.send(TOKYO_0730_MAR3)
    assert preferences.pause(harness.sessions, sid, weeks=1, now=TOKYO_0730_MAR3)
    harness.send(TOKYO_0730_MAR3 + timedelta(weeks=1, hours=1))
    view = harness.view(sid)
    assert view.status is store.SubscriberStatus.ACTIVE and view.is_held
    harness.send(TOKYO_0730_MAR3 + timedelta(weeks=2))
    assert harness.attempts_at("heldpause@example.com") == ["welcome", "rethink"]


def test_pause_weeks_must_be_one_of_the_offered_lengths(harness: Harness) -> None:
    sid = harness.subscribe("weeks@example.com")
    with pytest.raises(ValueError, match="weeks"):
        preferences.pause(harness.sessions, sid, weeks=3, now=T0)


# --- the reader's send time and timezone ---------------------------------------------------------


def test_a_readers_send_time_moves_every_later_lesson(harness: Harness) -> None:
    sid = harness.subscribe("evening@example.com")
    assert harness.send(T0) == 1  # welcome; rethink due 03-03 07:30 Tokyo
    preferences.change_schedule(
        harness.sessions, COURSE, sid, timezone="Asia/Tokyo", send_time="19:00", now=T0
    )
    view = harness.view(sid)
    assert view.send_time == "19:00"
    evening = datetime(2026, 3, 3, 10, 0, tzinfo=UTC)  # 03-03 19:00 Tokyo
    assert view.next_send_at == evening
    assert harness.send(TOKYO_0730_MAR3) == 0
    assert harness.send(evening) == 1
    # The next one (delay 1 day... as the course says) is computed at the reader's time too.
    following = harness.view(sid).next_send_at
    assert following is not None
    assert following.astimezone(COURSE_TZ).strftime("%H:%M") == "19:00"


def test_back_to_the_course_send_time(harness: Harness) -> None:
    sid = harness.subscribe("back@example.com")
    harness.send(T0)
    preferences.change_schedule(
        harness.sessions, COURSE, sid, timezone="Asia/Tokyo", send_time="19:00", now=T0
    )
    preferences.change_schedule(
        harness.sessions, COURSE, sid, timezone="Asia/Tokyo", send_time=None, now=T0
    )
    view = harness.view(sid)
    assert view.send_time is None
    assert view.next_send_at == TOKYO_0730_MAR3


@pytest.mark.parametrize("bad", ["22:00", "03:30", "6:30", "07:3", "２０:００", "24:00", "x"])
def test_a_send_time_inside_quiet_hours_or_malformed_is_refused(harness: Harness, bad: str) -> None:
    sid = harness.subscribe("quiet@example.com")
    before = harness.view(sid)
    with pytest.raises(UsageError):
        preferences.change_schedule(
            harness.sessions, COURSE, sid, timezone="Asia/Tokyo", send_time=bad, now=T0
        )
    assert harness.view(sid) == before


def test_a_timezone_change_reschedules_the_waiting_lesson_in_the_new_zone(
    harness: Harness,
) -> None:
    sid = harness.subscribe("move@example.com")
    harness.send(T0)  # welcome at 03-02 10:00 Tokyo; rethink due 03-03 07:30 Tokyo
    preferences.change_schedule(
        harness.sessions, COURSE, sid, timezone="Europe/London", send_time=None, now=T0
    )
    view = harness.view(sid)
    assert view.timezone == "Europe/London"
    # Sent 03-02 01:00 London; rethink is due 03-03 07:30 London.
    assert view.next_send_at == datetime(2026, 3, 3, 7, 30, tzinfo=UTC)
    assert harness.send(TOKYO_0730_MAR3) == 0
    assert harness.send(datetime(2026, 3, 3, 7, 30, tzinfo=UTC)) == 1


def test_an_unknown_timezone_is_refused(harness: Harness) -> None:
    sid = harness.subscribe("zone@example.com")
    with pytest.raises(UsageError):
        preferences.change_schedule(
            harness.sessions, COURSE, sid, timezone="Mars/Olympus", send_time=None, now=T0
        )
    assert harness.view(sid).timezone == "Asia/Tokyo"


def test_a_change_never_touches_a_lesson_already_in_the_ledger(harness: Harness) -> None:
    sid = harness.subscribe("retry@example.com")
    harness.send(T0)
    harness.transport.add_script(Outcome.RETRY)
    harness.send(TOKYO_0730_MAR3)  # rethink: retry in a minute
    retry_at = harness.view(sid).next_send_at
    preferences.change_schedule(
        harness.sessions, COURSE, sid, timezone="Asia/Tokyo", send_time="19:00", now=T0
    )
    view = harness.view(sid)
    assert view.send_time == "19:00"
    assert view.next_send_at == retry_at


COURSE_TZ = __import__("zoneinfo").ZoneInfo("Asia/Tokyo")


def test_a_reader_who_unsubscribed_during_a_timed_pause_is_not_resumed(harness: Harness) -> None:
    sid = harness.subscribe("left@example.com")
    harness.send(T0)
    assert preferences.pause(harness.sessions, sid, weeks=1, now=T0)
    with harness.sessions() as session, session.begin():
        store.unsubscribe(session, sid, T0 + timedelta(days=1))
    assert harness.send(T0 + timedelta(weeks=2)) == 0
    view = harness.view(sid)
    assert view.status is store.SubscriberStatus.UNSUBSCRIBED
    assert view.paused_until is None  # nothing left in the index of pauses to end
    assert harness.attempts_at("left@example.com") == ["welcome"]


def test_an_operator_resume_keeps_the_readers_send_time(harness: Harness) -> None:
    sid = harness.subscribe("evening2@example.com")
    assert harness.send(T0) == 1
    preferences.change_schedule(
        harness.sessions, COURSE, sid, timezone="Asia/Tokyo", send_time="19:00", now=T0
    )
    pause_subscriber(harness.sessions, COURSE, "evening2@example.com", now=T0)
    resumed_at = T0 + timedelta(days=3)
    assert resume_subscriber(harness.sessions, COURSE, "evening2@example.com", now=resumed_at)
    at = harness.view(sid).next_send_at
    assert at is not None and at > resumed_at
    assert at.astimezone(COURSE_TZ).strftime("%H:%M") == "19:00"
