"""The send service end to end on a real database (SQLite file and PostgreSQL), memory transport
(and the fast SendGrid client against the loopback fake, for pipelined windows).

Each test drives `drip.delivery` with an explicit `now` and checks what the transport was given
and what the ledger says.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker
from tests.fakes.sendgrid_server import FakeSendGrid
from tests.support import COURSE, TEMPLATES, make_mailer

from drip import delivery, store
from drip.delivery import MAX_ATTEMPTS, PIPELINE_DEPTH, Mailer, retry_delay, send_due
from drip.errors import FatalTransportError
from drip.lifecycle import list_subscribers, pause_subscriber, resume_subscriber, subscribe
from drip.models import deliveries, subscribers
from drip.render import Renderer
from drip.transports.base import Outcome, SendResult
from drip.transports.memory import MemoryTransport
from drip.transports.sendgrid.fast import FastSendGridTransport

# 2026-03-02 is a Monday; 10:00 in Tokyo is outside quiet hours.
T0 = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)
FAKE_KEY = "SG.delivery-test"


@dataclass
class Harness:
    sessions: sessionmaker[Session]
    transport: MemoryTransport
    mailer: Mailer

    def subscribe(
        self,
        email: str,
        *,
        now: datetime = T0,
        confirmed: bool = True,
        name: str | None = None,
        timezone: str | None = None,
    ) -> int:
        result = subscribe(
            self.sessions,
            self.mailer,
            email=email,
            name=name,
            timezone=timezone,
            confirmed=confirmed,
            now=now,
            consent_source="test",
        )
        return result.subscriber_id

    def lessons_sent_to(self, email: str) -> list[str]:
        return [
            m.custom_args["drip_lesson"]
            for m in self.transport.sent
            if m.to_address == email and "drip_lesson" in m.custom_args
        ]


@pytest.fixture
def harness(engine: Engine) -> Iterator[Harness]:
    transport = MemoryTransport()
    mailer = make_mailer(transport)
    yield Harness(sessionmaker(engine, expire_on_commit=False), transport, mailer)


def test_a_confirmed_subscriber_gets_lesson_one_at_once_and_only_once(harness: Harness) -> None:
    harness.subscribe("a@example.com", name="山田")
    report = send_due(harness.sessions, harness.mailer, now=T0)
    assert (report.sent, report.due) == (1, 1)
    again = send_due(harness.sessions, harness.mailer, now=T0 + timedelta(minutes=5))
    assert again.sent == 0
    assert harness.lessons_sent_to("a@example.com") == ["welcome"]
    email = harness.transport.sent[0]
    assert email.headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert email.custom_args["drip_delivery_id"] == email.delivery_id
    assert "山田" in email.text


def test_the_whole_course_arrives_in_order_then_completes(harness: Harness) -> None:
    sid = harness.subscribe("b@example.com")
    now = T0
    for _ in range(20 * 4):  # every 6 hours for 20 days
        send_due(harness.sessions, harness.mailer, now=now)
        now += timedelta(hours=6)
    assert harness.lessons_sent_to("b@example.com") == [lesson.slug for lesson in COURSE.lessons]
    with harness.sessions() as session:
        view = store.get_subscriber_by_id(session, sid)
    assert view is not None and view.status == store.SubscriberStatus.COMPLETED


def test_pending_subscribers_get_a_confirmation_and_no_lessons(harness: Harness) -> None:
    harness.subscribe("p@example.com", confirmed=False)
    harness.subscribe("p@example.com", confirmed=False, now=T0 + timedelta(hours=1))
    confirmations = [m for m in harness.transport.sent if "drip_lesson" not in m.custom_args]
    assert len(confirmations) == 1  # at most one a day
    assert "https://drip.example.jp/c/" in confirmations[0].text
    assert send_due(harness.sessions, harness.mailer, now=T0 + timedelta(days=3)).sent == 0
    harness.subscribe("p@example.com", confirmed=False, now=T0 + timedelta(days=2))
    assert len([m for m in harness.transport.sent if "drip_lesson" not in m.custom_args]) == 2


def test_suppressed_addresses_are_never_reactivated(harness: Harness) -> None:
    sid = harness.subscribe("u@example.com")
    with harness.sessions() as session, session.begin():
        store.unsubscribe(session, sid, T0)
    with pytest.raises(store.SuppressedAddressError):
        harness.subscribe("U@Example.com")
    assert send_due(harness.sessions, harness.mailer, now=T0 + timedelta(days=1)).sent == 0


def test_retry_waits_then_sends(harness: Harness) -> None:
    harness.subscribe("r@example.com")
    harness.transport.add_script(SendResult("", Outcome.RETRY, retry_after=120, detail="429"))
    first = send_due(harness.sessions, harness.mailer, now=T0)
    assert (first.sent, first.retried) == (0, 1)
    assert send_due(harness.sessions, harness.mailer, now=T0 + timedelta(seconds=60)).sent == 0
    later = send_due(harness.sessions, harness.mailer, now=T0 + timedelta(seconds=121))
    assert later.sent == 1
    assert harness.lessons_sent_to("r@example.com") == ["welcome"]


def test_permanent_failure_and_in_doubt_are_recorded_and_never_resent(harness: Harness) -> None:
    harness.subscribe("f@example.com")
    harness.subscribe("d@example.com", now=T0 + timedelta(seconds=1))
    harness.transport.add_script(Outcome.FAILED, Outcome.IN_DOUBT)
    report = send_due(harness.sessions, harness.mailer, now=T0 + timedelta(seconds=2))
    assert (report.failed, report.in_doubt, report.sent) == (1, 1, 0)
    for day in range(1, 5):
        send_due(harness.sessions, harness.mailer, now=T0 + timedelta(days=day))
    assert len(harness.transport.attempts) == 2
    with harness.sessions() as session:
        counts = store.delivery_counts(session, COURSE.id)
    assert counts.get("failed") == 1 and counts.get("in_doubt") == 1


def test_fatal_error_stops_the_run_and_loses_nothing(harness: Harness) -> None:
    for index in range(5):
        harness.subscribe(f"s{index}@example.com", now=T0 + timedelta(seconds=index))
    harness.transport.add_script(
        Outcome.SENT, Outcome.SENT, FatalTransportError("401 Unauthorized")
    )
    report = send_due(harness.sessions, harness.mailer, now=T0 + timedelta(minutes=1))
    assert report.stopped == "401 Unauthorized"
    assert report.sent == 2
    rest = send_due(harness.sessions, harness.mailer, now=T0 + timedelta(minutes=2))
    assert rest.sent == 3
    assert sorted(m.to_address for m in harness.transport.sent) == [
        f"s{index}@example.com" for index in range(5)
    ]


def test_an_unsubscribe_during_the_send_wins(harness: Harness) -> None:
    sid = harness.subscribe("w@example.com")

    def unsubscribe_meanwhile(email: object) -> SendResult:
        with harness.sessions() as session, session.begin():
            store.unsubscribe(session, sid, T0)
        return SendResult("", Outcome.SENT, provider_id="x")

    harness.transport.add_script(unsubscribe_meanwhile)
    send_due(harness.sessions, harness.mailer, now=T0)
    for day in range(1, 6):
        send_due(harness.sessions, harness.mailer, now=T0 + timedelta(days=day))
    assert harness.lessons_sent_to("w@example.com") == ["welcome"]
    with harness.sessions() as session:
        view = store.get_subscriber_by_id(session, sid)
    assert view is not None and view.status == store.SubscriberStatus.UNSUBSCRIBED


def test_limit_and_dry_run(harness: Harness) -> None:
    for index in range(4):
        harness.subscribe(f"l{index}@example.com", now=T0 + timedelta(seconds=index))
    dry = send_due(harness.sessions, harness.mailer, now=T0 + timedelta(minutes=1), dry_run=True)
    assert dry.due == 4 and dry.per_lesson["welcome"]["due"] == 4
    assert harness.transport.attempts == []
    limited = send_due(
        harness.sessions, harness.mailer, now=T0 + timedelta(minutes=1), limit=3, batch_size=2
    )
    assert limited.sent == 3
    assert send_due(harness.sessions, harness.mailer, now=T0 + timedelta(minutes=2)).sent == 1


def test_a_late_run_inside_quiet_hours_waits(harness: Harness) -> None:
    harness.subscribe("q@example.com")
    send_due(harness.sessions, harness.mailer, now=T0)
    # Lesson 2 is due 2026-03-03 07:30 Tokyo; a run at 22:00 Tokyo that day is late and quiet.
    quiet = datetime(2026, 3, 3, 13, 0, tzinfo=UTC)
    assert send_due(harness.sessions, harness.mailer, now=quiet).sent == 0
    morning_after = datetime(2026, 3, 3, 22, 0, tzinfo=UTC)  # 07:00 Tokyo on the 4th
    assert send_due(harness.sessions, harness.mailer, now=morning_after).sent == 1
    assert harness.lessons_sent_to("q@example.com") == ["welcome", "rethink"]


def test_a_lesson_removed_from_the_course_holds_its_readers_with_a_reason(
    harness: Harness,
) -> None:
    from dataclasses import replace

    harness.subscribe("x@example.com")
    send_due(harness.sessions, harness.mailer, now=T0)
    shorter = replace(
        COURSE, lessons=tuple(lesson for lesson in COURSE.lessons if lesson.slug != "rethink")
    )
    mailer = replace(harness.mailer, course=shorter)
    report = send_due(harness.sessions, mailer, now=T0 + timedelta(days=2))
    assert (report.sent, report.failed) == (0, 1)
    assert report.per_lesson["rethink"]["failed"] == 1
    with harness.sessions() as session:
        assert store.delivery_counts(session, COURSE.id)["failed"] == 1


def test_a_reader_who_unsubscribes_while_the_run_is_going_gets_nothing_after(
    harness: Harness,
) -> None:
    first = harness.subscribe("first@example.com")
    second = harness.subscribe("second@example.com", now=T0 + timedelta(seconds=1))
    assert first != second

    def second_unsubscribes(email: object) -> SendResult:
        with harness.sessions() as session, session.begin():
            store.unsubscribe(session, second, T0)
        return SendResult("", Outcome.SENT, provider_id="x")

    harness.transport.add_script(second_unsubscribes)
    report = send_due(harness.sessions, harness.mailer, now=T0 + timedelta(minutes=1))
    assert (report.sent, report.skipped) == (1, 1)
    assert [m.to_address for m in harness.transport.attempts] == ["first@example.com"]


def test_resume_sends_at_the_next_send_time_but_never_speeds_the_course_up(
    harness: Harness,
) -> None:
    harness.subscribe("z@example.com")
    send_due(harness.sessions, harness.mailer, now=T0)  # welcome on 03-02; rethink due 03-03 07:30
    assert pause_subscriber(harness.sessions, COURSE, "z@example.com", now=T0 + timedelta(hours=1))
    tokyo_0730 = datetime(2026, 3, 2, 22, 30, tzinfo=UTC)  # 03-03 07:30 in Tokyo
    assert send_due(harness.sessions, harness.mailer, now=tokyo_0730).sent == 0
    # Resumed at 03-02 12:00 Tokyo (short pause): still 03-03 07:30, not earlier.
    assert resume_subscriber(harness.sessions, COURSE, "z@example.com", now=T0 + timedelta(hours=2))
    assert (
        send_due(harness.sessions, harness.mailer, now=tokyo_0730 - timedelta(minutes=1)).sent == 0
    )
    assert send_due(harness.sessions, harness.mailer, now=tokyo_0730).sent == 1
    # A long pause: lesson 3 was due 03-05 07:30; resumed 03-09 12:00 -> 03-10 07:30.
    assert pause_subscriber(harness.sessions, COURSE, "z@example.com", now=tokyo_0730)
    resumed_at = datetime(2026, 3, 9, 3, 0, tzinfo=UTC)
    assert resume_subscriber(harness.sessions, COURSE, "z@example.com", now=resumed_at)
    assert (
        send_due(
            harness.sessions, harness.mailer, now=datetime(2026, 3, 9, 22, 29, tzinfo=UTC)
        ).sent
        == 0
    )
    assert (
        send_due(
            harness.sessions, harness.mailer, now=datetime(2026, 3, 9, 22, 30, tzinfo=UTC)
        ).sent
        == 1
    )
    assert harness.lessons_sent_to("z@example.com") == ["welcome", "rethink", "events"]


def test_a_lesson_inserted_into_a_live_course_shifts_nobody(harness: Harness) -> None:
    from dataclasses import replace

    harness.subscribe("live@example.com")
    send_due(harness.sessions, harness.mailer, now=T0)  # welcome sent; rethink is next
    extra = replace(COURSE.lesson("events"), slug="bonus", subject="番外編")
    lessons = list(COURSE.lessons)
    lessons.insert(3, extra)  # after events: welcome, rethink, events, bonus, side-job, ...
    grown = replace(
        COURSE,
        lessons=tuple(
            replace(lesson, number=index) for index, lesson in enumerate(lessons, start=1)
        ),
    )
    mailer = replace(harness.mailer, course=grown, renderer=Renderer(grown, TEMPLATES))
    now = T0
    for _ in range(20 * 4):
        now += timedelta(hours=6)
        send_due(harness.sessions, mailer, now=now)
    assert harness.lessons_sent_to("live@example.com") == [lesson.slug for lesson in lessons]


# --- pipelined windows (a transport with `submit`: the fast SendGrid client) ------------------


def fast_mailer(harness: Harness, fake: FakeSendGrid, window: int) -> Mailer:
    transport = FastSendGridTransport(FAKE_KEY, base_url=fake.url, window=window, timeout=5)
    return replace(harness.mailer, transport=transport)


def test_pipelined_windows_send_each_lesson_once_and_record_every_outcome(
    harness: Harness,
) -> None:
    for index in range(9):
        harness.subscribe(f"p{index}@example.com", now=T0 + timedelta(seconds=index))
    with FakeSendGrid(api_key=FAKE_KEY, latency=0.01) as fake:
        mailer = fast_mailer(harness, fake, window=2)
        with mailer.transport:
            report = send_due(harness.sessions, mailer, now=T0 + timedelta(minutes=1))
        assert fake.problems == []
        assert set(fake.accepted_ids().values()) == {1} and len(fake.accepted_ids()) == 9
    assert (report.sent, report.stopped, report.note) == (9, None, None)
    with harness.sessions() as session:
        counts = store.delivery_counts(session, COURSE.id)
    assert {status: n for status, n in counts.items() if n} == {"sent": 9}


def logged_steps(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ledger steps of the runs that follow, in order: claim, mark, record."""
    steps: list[str] = []

    def logged(name: str, step: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            steps.append(name)
            return step(*args, **kwargs)

        return run

    for name in ("claim_due", "mark_sending", "record_sent"):
        monkeypatch.setattr(store, name, logged(name.split("_")[0], getattr(store, name)))
    return steps


def one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outcomes are written on the run's own thread, also on PostgreSQL (the steps' order
    below is that of one thread; tests/test_recorder.py has the recorder's)."""
    monkeypatch.setattr(delivery, "_records_apart", lambda session, mailer: False)


def test_the_next_batch_is_claimed_while_the_windows_are_in_flight(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a pipelining transport and windows smaller than a batch, the next batch's claim
    comes before the wait for the oldest window's results (its database time overlaps the round
    trips), and still after the window before it was marked 'sending': the order of the steps,
    two readers per batch, one per window."""
    for index in range(5):
        harness.subscribe(f"o{index}@example.com", now=T0 + timedelta(seconds=index))
    steps = logged_steps(monkeypatch)
    one_thread(monkeypatch)
    with FakeSendGrid(api_key=FAKE_KEY, latency=0.01) as fake:
        mailer = fast_mailer(harness, fake, window=1)
        with mailer.transport:
            report = send_due(harness.sessions, mailer, now=T0 + timedelta(minutes=1), batch_size=2)
        assert len(fake.accepted_ids()) == 5
    assert report.sent == 5
    assert PIPELINE_DEPTH == 2  # the expected order below is for two windows in flight
    # claim (readers 1-2), mark window 1, mark window 2 (both in flight); claim (3-4) before
    # recording window 1; mark 3; record 2, mark 4; claim (5) before recording 3; and so on;
    # the last claim finds nothing.
    assert steps == [
        *["claim", "mark", "mark"],
        *["claim", "record", "mark", "record", "mark"],
        *["claim", "record", "mark"],
        *["claim", "record", "record"],
    ]


def test_a_window_as_big_as_a_batch_is_claimed_sending_once_a_window_is_free(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A window that is a whole batch (bulk) is claimed straight as 'sending', with no marking,
    and only once fewer than PIPELINE_DEPTH windows are in flight: so a crash leaves at most
    PIPELINE_DEPTH windows 'sending' (in doubt), as with marking. Every reader gets it once."""
    for index in range(5):
        harness.subscribe(f"w{index}@example.com", now=T0 + timedelta(seconds=index))
    steps = logged_steps(monkeypatch)
    one_thread(monkeypatch)
    sending_at_claim: list[int] = []
    claim_due = store.claim_due

    def claim_counting_sending(*args: Any, **kwargs: Any) -> Any:
        with harness.sessions() as session:
            sending_at_claim.append(store.delivery_counts(session, COURSE.id)["sending"])
        return claim_due(*args, **kwargs)

    monkeypatch.setattr(store, "claim_due", claim_counting_sending)
    with FakeSendGrid(api_key=FAKE_KEY, latency=0.01) as fake:
        mailer = fast_mailer(harness, fake, window=1)
        with mailer.transport:
            report = send_due(harness.sessions, mailer, now=T0 + timedelta(minutes=1), batch_size=1)
        assert fake.problems == []
        assert set(fake.accepted_ids().values()) == {1} and len(fake.accepted_ids()) == 5
    assert report.sent == 5
    assert PIPELINE_DEPTH == 2
    # Window 1 claimed and handed over; window 2 too (one in flight); then each later claim
    # waits for the oldest window's record.
    assert steps == [*["claim", "claim"], *["record", "claim"] * 4, "record"]
    # Claims see at most PIPELINE_DEPTH - 1 windows 'sending': with the one claimed, PIPELINE_DEPTH.
    assert max(sending_at_claim) == PIPELINE_DEPTH - 1
    with harness.sessions() as session:
        counts = store.delivery_counts(session, COURSE.id)
    assert {status: n for status, n in counts.items() if n} == {"sent": 5}


def test_a_fatal_answer_with_windows_in_flight_records_them_and_releases_the_rest(
    harness: Harness,
) -> None:
    for index in range(12):
        harness.subscribe(f"f{index}@example.com", now=T0 + timedelta(seconds=index))
    # Window 1: the 4th request meets 401; the next window is already with the transport.
    with FakeSendGrid(api_key=FAKE_KEY, script=["202"] * 3 + ["401"], latency=0.02) as fake:
        mailer = fast_mailer(harness, fake, window=1)
        with mailer.transport:
            report = send_due(harness.sessions, mailer, now=T0 + timedelta(minutes=1))
        accepted = len(fake.accepted_ids())
    assert report.stopped is not None and "401" in report.stopped
    # Everything the provider took is recorded sent (at most one window after the 401 got in).
    assert report.sent == accepted and 3 <= accepted <= 3 + PIPELINE_DEPTH - 1
    with harness.sessions() as session:
        counts = store.delivery_counts(session, COURSE.id)
        assert counts["sent"] == accepted
    assert (counts["sending"], counts["claimed"], counts["retry"]) == (0, 0, 12 - accepted)
    rest = send_due(harness.sessions, harness.mailer, now=T0 + timedelta(minutes=2))
    assert rest.sent == 12 - accepted


# --- retries, rate limits, one lesson per run (mutation survivors) -----------------------------


@pytest.mark.parametrize(
    ("attempts", "retry_after", "minutes"),
    [
        (1, None, 1),
        (2, None, 2),
        (3, None, 4),
        (4, None, 8),
        (9, None, 256),
        (10, None, 360),  # capped at 6 hours
        (30, None, 360),
        (1, 120.0, 2),  # Retry-After wins when longer...
        (4, 60.0, 8),  # ...and not when shorter
        (1, float("inf"), 24 * 60),  # absurd answers are clamped, never an OverflowError
        (1, 1e15, 24 * 60),
        (1, float("nan"), 1),
        (1, -5.0, 1),
    ],
)
def test_retry_delay_doubles_from_one_minute_up_to_six_hours(
    attempts: int, retry_after: float | None, minutes: int
) -> None:
    assert retry_delay(attempts, retry_after) == timedelta(minutes=minutes)


def test_repeated_temporary_failures_back_off_exponentially_then_give_up(harness: Harness) -> None:
    sid = harness.subscribe("t@example.com")
    harness.transport.default = Outcome.RETRY
    now = T0
    waits = []
    for _ in range(MAX_ATTEMPTS - 1):
        report = send_due(harness.sessions, harness.mailer, now=now)
        assert report.retried == 1
        with harness.sessions() as session:
            view = store.get_subscriber_by_id(session, sid)
        assert view is not None and view.next_send_at is not None
        waits.append(view.next_send_at - now)
        # Just before the retry is due nothing happens; at the moment it is due it is tried.
        assert (
            send_due(
                harness.sessions, harness.mailer, now=view.next_send_at - timedelta(seconds=1)
            ).due
            == 0
        )
        now = view.next_send_at
    assert waits == [timedelta(minutes=2**n) for n in range(MAX_ATTEMPTS - 1)]
    last = send_due(harness.sessions, harness.mailer, now=now)
    assert (last.failed, last.retried) == (1, 0)
    with harness.sessions() as session:
        counts = store.delivery_counts(session, COURSE.id)
        view = store.get_subscriber_by_id(session, sid)
    assert counts["failed"] == 1
    assert view is not None and view.next_send_at is None  # held for the operator
    assert recorded(harness)["t@example.com"][2].startswith(
        f"gave up after {MAX_ATTEMPTS} attempts: "
    )
    assert len(harness.transport.attempts) == MAX_ATTEMPTS
    assert send_due(harness.sessions, harness.mailer, now=now + timedelta(days=7)).due == 0


def test_a_rate_limit_answer_ends_the_run_and_the_rest_waits(harness: Harness) -> None:
    for index in range(3):
        harness.subscribe(f"rl{index}@example.com", now=T0 + timedelta(seconds=index))
    harness.transport.add_script(SendResult("", Outcome.RETRY, retry_after=120, detail="429"))
    report = send_due(harness.sessions, harness.mailer, now=T0 + timedelta(minutes=1))
    assert harness.transport.calls == 1 and len(harness.transport.attempts) == 1
    assert report.retried == 1 and report.sent == 0
    assert report.note is not None and "slow down" in report.note
    with harness.sessions() as session:
        assert store.count_due(session, COURSE.id, T0 + timedelta(minutes=1)) == 2


def test_every_lesson_due_at_once_still_goes_out_one_per_run(harness: Harness) -> None:
    same_day = replace(
        COURSE,
        lessons=tuple(replace(lesson, delay_days=0) for lesson in COURSE.lessons),
        settings=replace(COURSE.settings, quiet_hours=None),
    )
    mailer = replace(harness.mailer, course=same_day, renderer=Renderer(same_day, TEMPLATES))
    harness.subscribe("zero@example.com")
    now = T0
    for run in range(len(COURSE.lessons)):
        report = send_due(harness.sessions, mailer, now=now)
        assert report.sent == 1, run
        now += timedelta(seconds=1)
    assert harness.lessons_sent_to("zero@example.com") == [lesson.slug for lesson in COURSE.lessons]


def test_a_late_run_on_a_day_off_waits_for_the_next_send_day(harness: Harness) -> None:
    weekdays = replace(COURSE, settings=replace(COURSE.settings, send_days=frozenset(range(5))))
    mailer = replace(harness.mailer, course=weekdays, renderer=Renderer(weekdays, TEMPLATES))
    friday = datetime(2026, 3, 5, 22, 30, tzinfo=UTC)  # 07:30 Tokyo, Friday 6 March
    harness.subscribe("off@example.com", now=friday - timedelta(days=1))
    assert send_due(harness.sessions, mailer, now=friday - timedelta(days=1)).sent == 1
    # Lesson 2 was due Friday 07:30; cron was down until Saturday 10:00 Tokyo.
    saturday = datetime(2026, 3, 7, 1, 0, tzinfo=UTC)
    late = send_due(harness.sessions, mailer, now=saturday)
    assert late.sent == 0
    monday_0700 = datetime(2026, 3, 8, 22, 0, tzinfo=UTC)  # quiet hours end 07:00 Tokyo
    assert send_due(harness.sessions, mailer, now=monday_0700 - timedelta(minutes=1)).sent == 0
    assert send_due(harness.sessions, mailer, now=monday_0700).sent == 1
    assert harness.lessons_sent_to("off@example.com") == ["welcome", "rethink"]


# --- nobody waits silently: every hold has a reason ---------------------------------------------


def held(harness: Harness) -> dict[str, str | None]:
    return {
        view.email: view.held_reason
        for view in list_subscribers(harness.sessions, harness.mailer.course, held=True)
    }


def test_every_held_subscriber_is_listed_with_the_reason(harness: Harness) -> None:
    harness.subscribe("failed@example.com")
    harness.subscribe("doubt@example.com", now=T0 + timedelta(seconds=1))
    harness.subscribe("fine@example.com", now=T0 + timedelta(seconds=2))
    harness.transport.add_script(
        SendResult("", Outcome.FAILED, detail="550 mailbox unavailable"),
        SendResult("", Outcome.IN_DOUBT, detail="connection reset after the request"),
    )
    send_due(harness.sessions, harness.mailer, now=T0 + timedelta(minutes=1))
    reasons = held(harness)
    assert set(reasons) == {"failed@example.com", "doubt@example.com"}
    assert "failed" in (reasons["failed@example.com"] or "")
    assert "550 mailbox unavailable" in (reasons["failed@example.com"] or "")
    assert "in doubt" in (reasons["doubt@example.com"] or "")
    assert "drip deliveries resolve" in (reasons["doubt@example.com"] or "")
    # Listing by status and the JSON shape.
    active = list(list_subscribers(harness.sessions, COURSE, status=store.SubscriberStatus.ACTIVE))
    assert len(active) == 3
    shape = next(v for v in active if v.email == "failed@example.com").as_dict()
    assert shape["held"] is True and "550" in shape["held_reason"]
    assert next(v for v in active if v.email == "fine@example.com").as_dict()["held_reason"] is None


def test_a_removed_lesson_holds_its_subscribers_visibly(harness: Harness) -> None:
    harness.subscribe("x@example.com")
    send_due(harness.sessions, harness.mailer, now=T0)
    shorter = replace(
        COURSE, lessons=tuple(lesson for lesson in COURSE.lessons if lesson.slug != "rethink")
    )
    send_due(harness.sessions, replace(harness.mailer, course=shorter), now=T0 + timedelta(days=2))
    reason = held(harness)["x@example.com"] or ""
    assert "'rethink'" in reason and "no longer in the course" in reason


# --- stops, releases and attempts --------------------------------------------------------------


def attempts_of(harness: Harness, email: str) -> int:
    from sqlalchemy import text

    with harness.sessions() as session:
        return int(
            session.execute(
                text(
                    "SELECT d.attempts FROM deliveries d JOIN subscribers s"
                    " ON s.id = d.subscriber_id WHERE s.email = :email"
                ),
                {"email": email},
            ).scalar_one()
        )


def test_runs_stopped_by_a_fatal_answer_use_up_no_attempts(harness: Harness) -> None:
    harness.subscribe("fatal@example.com")
    now = T0
    for _ in range(MAX_ATTEMPTS + 2):
        harness.transport.add_script(FatalTransportError("401 bad key"))
        report = send_due(harness.sessions, harness.mailer, now=now)
        assert report.stopped is not None and report.sent == 0
        now += timedelta(minutes=1)
    assert attempts_of(harness, "fatal@example.com") == 0
    # One connection-refused answer later is attempt 1, not "gave up after 11 attempts".
    harness.transport.add_script(SendResult("", Outcome.RETRY, detail="connection refused"))
    report = send_due(harness.sessions, harness.mailer, now=now)
    assert (report.retried, report.failed) == (1, 0)
    assert attempts_of(harness, "fatal@example.com") == 1


def test_an_unexpected_transport_error_stops_the_run_and_releases_every_claim(
    harness: Harness,
) -> None:
    for index in range(3):
        harness.subscribe(f"boom{index}@example.com", now=T0 + timedelta(seconds=index))

    def explode(email: object) -> SendResult:
        raise RuntimeError("a bug in a transport")

    harness.transport.add_script(explode)
    report = send_due(harness.sessions, harness.mailer, now=T0 + timedelta(minutes=1))
    assert report.stopped is not None and "RuntimeError" in report.stopped
    # Not locked for the 15-minute lease: the next run, a minute later, sends all three.
    again = send_due(harness.sessions, harness.mailer, now=T0 + timedelta(minutes=2))
    assert again.sent == 3, again.summary()
    for index in range(3):
        assert attempts_of(harness, f"boom{index}@example.com") == 1


def test_an_interrupted_run_releases_every_claim_not_handed_over(harness: Harness) -> None:
    """Ctrl-C (KeyboardInterrupt) between two windows: what went out is recorded, the rest is
    given back at once instead of staying locked for the lease."""
    for index in range(3):
        harness.subscribe(f"int{index}@example.com", now=T0 + timedelta(seconds=index))

    def interrupt(handled: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        send_due(
            harness.sessions, harness.mailer, now=T0 + timedelta(minutes=1), progress=interrupt
        )
    assert len(harness.transport.sent) == 1  # the first window went out before the interrupt
    again = send_due(harness.sessions, harness.mailer, now=T0 + timedelta(minutes=2))
    assert again.sent == 2, again.summary()
    assert sorted(m.to_address for m in harness.transport.sent) == [
        f"int{index}@example.com" for index in range(3)
    ]


def test_a_lesson_that_cannot_be_rendered_holds_only_its_own_subscribers(
    harness: Harness, tmp_path: Path
) -> None:
    """A template that fails for lesson 2 only (drip send's pre-check would refuse it; here the
    run meets it anyway): lesson 2's subscribers are held with the reason, lesson 1 goes out."""
    import shutil

    templates = tmp_path / "templates"
    shutil.copytree(TEMPLATES, templates)
    page = templates / "lesson.html.j2"
    page.write_text(
        page.read_text("utf-8").replace(
            "{% block header %}",
            "{% block header %}{% if lesson.number == 2 %}{{ no_such_variable }}{% endif %}",
            1,
        ),
        encoding="utf-8",
    )
    mailer = replace(harness.mailer, renderer=Renderer(COURSE, templates))
    harness.subscribe("ahead@example.com")
    send_due(harness.sessions, mailer, now=T0)  # lesson 1
    harness.subscribe("new@example.com", now=T0 + timedelta(days=1))
    report = send_due(harness.sessions, mailer, now=T0 + timedelta(days=1, minutes=1))
    assert (report.sent, report.failed) == (1, 1), report.summary()
    assert harness.lessons_sent_to("new@example.com") == ["welcome"]
    reason = held(harness)["ahead@example.com"] or ""
    assert "'rethink' could not be rendered" in reason and "no_such_variable" in reason


def test_a_late_run_in_quiet_hours_says_it_rescheduled(harness: Harness) -> None:
    harness.subscribe("late@example.com")
    send_due(harness.sessions, harness.mailer, now=T0)
    quiet = datetime(2026, 3, 3, 13, 0, tzinfo=UTC)  # 22:00 Tokyo, lesson 2 was due at 07:30
    report = send_due(harness.sessions, harness.mailer, now=quiet)
    assert (report.due, report.sent, report.rescheduled) == (1, 0, 1)
    assert "rescheduled 1" in report.summary()
    assert report.as_dict()["rescheduled"] == 1


def test_a_run_where_nothing_was_accepted_says_so(harness: Harness) -> None:
    for index in range(2):
        harness.subscribe(f"down{index}@example.com", now=T0 + timedelta(seconds=index))
    harness.transport.default = Outcome.RETRY
    harness.transport.by_delivery_id = {}
    report = send_due(harness.sessions, harness.mailer, now=T0 + timedelta(minutes=1))
    assert report.sent == 0 and report.warning is not None
    assert "no email was accepted" in report.warning
    assert report.as_dict()["warning"] == report.warning
    harness.transport.default = Outcome.SENT
    fine = send_due(harness.sessions, harness.mailer, now=T0 + timedelta(hours=1))
    assert fine.sent == 2 and fine.warning is None


def test_one_subscriber_with_an_unloadable_timezone_is_held_and_the_rest_are_sent(
    harness: Harness,
) -> None:
    harness.subscribe("tokyo@example.com")
    with harness.sessions() as session, session.begin():
        # Stored by an older drip, or a zone this host's tzdata does not have.
        store.add_subscriber(
            session,
            course_id=COURSE.id,
            email="mars@example.com",
            name=None,
            timezone="Mars/Olympus_Mons",
            now=T0,
            consent_source="test",
            confirmed=True,
            first_lesson=COURSE.lessons[0].slug,
            first_send_at=T0,
        )
    report = send_due(harness.sessions, harness.mailer, now=T0 + timedelta(minutes=1))
    assert report.sent == 1 and report.stopped is None
    assert harness.lessons_sent_to("tokyo@example.com") == ["welcome"]
    reason = held(harness)["mars@example.com"] or ""
    assert "'Mars/Olympus_Mons' cannot be loaded" in reason


def test_a_lesson_moved_after_an_unsent_one_is_skipped_not_stranded(harness: Harness) -> None:
    """Reordering a live course: rethink (already sent) moves after events (not yet sent). The
    reader gets events, then goes straight on to the lesson after rethink, never stranded."""
    sid = harness.subscribe("moved@example.com")
    now = T0
    while harness.lessons_sent_to("moved@example.com") != ["welcome", "rethink"]:
        send_due(harness.sessions, harness.mailer, now=now)
        now += timedelta(hours=6)
    slugs = [lesson.slug for lesson in COURSE.lessons]
    assert slugs[:3] == ["welcome", "rethink", "events"]
    order = {slug: index for index, slug in enumerate(["welcome", "events", "rethink", *slugs[3:]])}
    moved = replace(
        COURSE, lessons=tuple(sorted(COURSE.lessons, key=lambda lesson: order[lesson.slug]))
    )
    mailer = replace(harness.mailer, course=moved, renderer=Renderer(moved, TEMPLATES))
    for _ in range(20 * 4):
        send_due(harness.sessions, mailer, now=now)
        now += timedelta(hours=6)
    assert harness.lessons_sent_to("moved@example.com") == slugs  # each once, none skipped
    with harness.sessions() as session:
        view = store.get_subscriber_by_id(session, sid)
    assert view is not None and view.status == store.SubscriberStatus.COMPLETED
    assert held(harness) == {}


def test_the_confirmation_email_is_accepted_by_the_sendgrid_stand_in(harness: Harness) -> None:
    """The double opt-in email through the real fast client: the fake provider's validator
    (shared with the benchmark) took every confirmation for a malformed lesson before."""
    with FakeSendGrid(api_key=FAKE_KEY) as fake:
        mailer = fast_mailer(harness, fake, window=1)
        with mailer.transport:
            result = subscribe(
                harness.sessions,
                mailer,
                email="optin@example.com",
                name=None,
                timezone=None,
                confirmed=False,
                now=T0,
                consent_source="test",
            )
        assert fake.problems == []
        assert len(fake.accepted) == 1
    assert result.confirmation_sent and result.status == "pending"


def recorded(harness: Harness) -> dict[str, tuple[str, str | None, str]]:
    """(status, provider_id, detail) of each reader's latest delivery, by address."""
    with harness.sessions() as session:
        found = session.execute(
            select(
                subscribers.c.email,
                deliveries.c.status,
                deliveries.c.provider_id,
                deliveries.c.detail,
            )
            .join(subscribers, subscribers.c.id == deliveries.c.subscriber_id)
            .order_by(deliveries.c.id)
        ).all()
    return {email: (status, provider_id, detail) for email, status, provider_id, detail in found}


def test_each_outcome_is_recorded_with_its_detail_and_counted_per_lesson(
    harness: Harness,
) -> None:
    for index, name in enumerate(("sent", "retried", "failed", "doubt")):
        harness.subscribe(f"{name}@example.com", now=T0 + timedelta(seconds=index))
    harness.transport.add_script(
        SendResult("", Outcome.SENT, provider_id="pid-1", detail="HTTP 202"),
        SendResult("", Outcome.RETRY, detail="421 busy"),
        SendResult("", Outcome.FAILED, detail="550 no such user"),
        SendResult("", Outcome.IN_DOUBT, detail="timeout after the data"),
    )
    report = send_due(harness.sessions, harness.mailer, now=T0 + timedelta(minutes=1))
    assert {
        slug: {outcome: counts[outcome] for outcome in ("sent", "retried", "failed", "in_doubt")}
        for slug, counts in report.per_lesson.items()
    } == {"welcome": {"sent": 1, "retried": 1, "failed": 1, "in_doubt": 1}}
    assert report.first_failure == "421 busy"
    assert recorded(harness) == {
        "sent@example.com": ("sent", "pid-1", None),  # a sent row keeps no detail
        "retried@example.com": ("retry", None, "421 busy"),
        "failed@example.com": ("failed", None, "550 no such user"),
        "doubt@example.com": ("in_doubt", None, "timeout after the data"),
    }


def test_the_first_failure_of_a_run_is_kept_for_its_warning(harness: Harness) -> None:
    harness.subscribe("a@example.com")
    harness.subscribe("b@example.com", now=T0 + timedelta(seconds=1))
    harness.transport.add_script(
        SendResult("", Outcome.FAILED, detail="550 first"),
        SendResult("", Outcome.RETRY, detail="451 second"),
    )
    report = send_due(harness.sessions, harness.mailer, now=T0 + timedelta(minutes=1))
    assert report.first_failure == "550 first"
    assert report.warning is not None and "(first: 550 first)" in report.warning


def test_the_remembered_deferral_answers_per_zone_and_lesson_like_the_schedule() -> None:
    """The claim loop's `defer` remembers its answers per (zone, first lesson or not): each must
    still be the schedule's own answer for that zone, asked in any order."""
    from drip import schedule
    from drip.delivery import _deferral

    quiet_in_tokyo = datetime(2026, 3, 3, 13, 0, tzinfo=UTC)  # 22:00 Tokyo, 14:00 Paris
    defer = _deferral(COURSE, quiet_in_tokyo)
    first, second = COURSE.lessons[0].slug, COURSE.lessons[1].slug
    asked = [
        ("Asia/Tokyo", second),
        ("Europe/Paris", second),
        ("Asia/Tokyo", first),
        ("Europe/Paris", first),
    ]
    answers = {}
    for zone, lesson in asked * 2:
        answer = defer(zone, lesson)
        answers.setdefault((zone, lesson), set()).add(answer)
        is_first = lesson == first
        may = schedule.may_send_at(COURSE.settings, zone, quiet_in_tokyo, first_lesson=is_first)
        expected = (
            None
            if may
            else schedule.earliest_send_at(
                COURSE.settings, zone, quiet_in_tokyo, first_lesson=is_first
            )
        )
        assert answer == expected, (zone, lesson)
    assert answers[("Asia/Tokyo", second)] != answers[("Europe/Paris", second)]
    assert all(len(seen) == 1 for seen in answers.values())
