"""Nobody waits silently: a hypothesis state machine over the library API.

It interleaves what readers, the operator, the provider, the author and the clock do:
`lifecycle.subscribe` (pending or confirmed), `pause_subscriber`, `resume_subscriber`,
`unsubscribe_subscriber`, `resolve` (an in-doubt delivery as sent or not sent), `retry_failed`
(one or all), `delivery.send_due` with a transport scripted to answer SENT / RETRY (with and
without Retry-After) / FAILED / IN_DOUBT / `FatalTransportError`, the database going away while
a window is with the provider (a run that dies between hand-over and recording, like a crash),
a reader whose timezone this host cannot load, course edits (a lesson removed, two lessons
swapped, a lesson inserted, and any of these undone: `dataclasses.replace` on the course, with a
matching `Renderer`), and time moving forward.

After every step every subscriber is exactly one of: done (completed), suppressed
(unsubscribed, bounced, complained), paused, pending, scheduled (active, with a next lesson and
the moment it may go out), or held (active, a next lesson, no moment) with a non-empty reason —
and `store.list_subscribers(held=True)` lists exactly the held ones. Nobody is anywhere else.

Also, across the whole run: no lesson is handed to the transport again once it may have reached
the reader (answered SENT or IN_DOUBT, also when the run then died before recording it), unless
the operator settled it as not sent; no reader gets two emails in one run; and a run that
completes leaves nobody due at its `now`.

Runs on a SQLite file (`EXAMPLES` examples) and PostgreSQL (`PG_EXAMPLES`), up to `STEPS` steps
each; `STATS` counts what the examples went through (printed; run with -s). The machine found
one bug, kept as `test_resume_of_a_reader_whose_timezone_this_host_cannot_load`.
"""

from __future__ import annotations

import contextlib
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import cache
from itertools import count
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import Engine, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker
from tests.conftest import _truncate
from tests.support import COURSE, TEMPLATES

from drip import lifecycle, store
from drip.course import Course
from drip.db import open_database
from drip.delivery import Mailer, send_due
from drip.errors import FatalTransportError
from drip.links import LinkBuilder
from drip.message import OutgoingEmail
from drip.render import Renderer
from drip.statuses import SUPPRESSED_STATUSES, SubscriberStatus
from drip.transports.base import Outcome, SendResult
from drip.transports.memory import MemoryTransport, ScriptStep

EMAILS = [f"r{index}@example.com" for index in range(6)]
UNLOADABLE_ZONE = "Mars/Olympus_Mons"
ZONES = ["Asia/Tokyo", "America/New_York", "Asia/Kathmandu"]
START = datetime(2026, 3, 6, 0, 0, tzinfo=UTC)
EXAMPLES = 100
PG_EXAMPLES = 30
STEPS = 50
STATS: Counter[str] = Counter()
"""What the examples went through (places seen after steps, outcomes, runs), for the report."""

# -- course edits ---------------------------------------------------------------------------------

LESSONS = 5
REMOVED = "rethink"
SWAPPED = ("events", "side-job")
INSERTED = "bonus"
INSERTED_AFTER = "events"


@cache
def course_variant(removed: bool, swapped: bool, inserted: bool) -> Course:
    """The committed course's first five lessons (so readers can finish within an example), with
    lesson 2 removed, lessons 3 and 4 swapped and/or a lesson inserted after 'events' (each
    lesson renumbered; `course.toml`'s order to match)."""
    lessons = list(COURSE.lessons[:LESSONS])
    if swapped:
        a, b = (next(i for i, lesson in enumerate(lessons) if lesson.slug == s) for s in SWAPPED)
        lessons[a], lessons[b] = lessons[b], lessons[a]
    if inserted:
        at = next(i for i, lesson in enumerate(lessons) if lesson.slug == INSERTED_AFTER) + 1
        template = COURSE.lesson(REMOVED)
        lessons.insert(at, replace(template, slug=INSERTED, subject="番外編: " + template.subject))
    if removed:
        lessons = [lesson for lesson in lessons if lesson.slug != REMOVED]
    numbered = tuple(replace(lesson, number=n) for n, lesson in enumerate(lessons, start=1))
    course_settings = replace(COURSE.settings, lessons=tuple(lesson.slug for lesson in numbered))
    return replace(COURSE, settings=course_settings, lessons=numbered)


@cache
def renderer_for(course: Course) -> Renderer:
    """One renderer per course variant for the whole test (lessons compile once)."""
    return Renderer(course, TEMPLATES)


def mailer_for(course: Course, transport: MemoryTransport) -> Mailer:
    return Mailer(
        course=course,
        renderer=renderer_for(course),
        links=LinkBuilder("https://drip.example.jp", ["nobody-waits-test-key-0123456789abcdef"]),
        transport=transport,
    )


# -- faults ---------------------------------------------------------------------------------------

ANSWERS: dict[str, Any] = {
    "sent": Outcome.SENT,
    "retry": Outcome.RETRY,
    "rate-limited": SendResult("", Outcome.RETRY, retry_after=120.0, detail="429 slow down"),
    "failed": SendResult("", Outcome.FAILED, detail="550 mailbox unavailable"),
    "in-doubt": SendResult("", Outcome.IN_DOUBT, detail="answer lost"),
    "fatal": "fatal",
}
# Mostly accepted, so readers move through the course; every fault now and then.
answers = st.lists(st.sampled_from(["sent"] * 5 + sorted(ANSWERS)), max_size=6)
outages = st.sampled_from([False] * 5 + [True])


def script_step(name: str) -> ScriptStep:
    answer = ANSWERS[name]
    if answer == "fatal":
        return FatalTransportError("401 the API key was refused")
    step: ScriptStep = answer
    return step


class FlakySessions:
    """A session factory that raises OperationalError while `down` (the database went away)."""

    def __init__(self, real: sessionmaker[Session]) -> None:
        self.real = real
        self.down = False

    def __call__(self) -> Session:
        if self.down:
            raise OperationalError("SELECT 1", None, ConnectionRefusedError("database went away"))
        return self.real()


class OutageTransport(MemoryTransport):
    """Answers as scripted, and takes the database down while the window is with it."""

    def __init__(self, script: list[ScriptStep], sessions: FlakySessions) -> None:
        super().__init__(script)
        self.sessions = sessions

    def send(self, emails: Any) -> list[SendResult]:
        results = super().send(emails)
        self.sessions.down = True
        return results


# -- the machine ----------------------------------------------------------------------------------


class NobodyWaits(RuleBasedStateMachine):
    fresh_database: Callable[[], str]
    """An upgraded, empty database for each example (a copied SQLite file, or PostgreSQL
    emptied)."""

    @initialize()
    def setup(self) -> None:
        self.engine = open_database(type(self).fresh_database(), auto_upgrade=False)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.now = START
        self.edits = (False, False, False)
        self.maybe_delivered: set[tuple[int, str]] = set()
        """(subscriber, lesson) that may have reached the reader: never handed over again."""
        self.runs = 0
        STATS["examples"] += 1

    def teardown(self) -> None:
        if hasattr(self, "engine"):
            self.engine.dispose()

    @property
    def course(self) -> Course:
        return course_variant(*self.edits)

    # -- readers and the operator -----------------------------------------------------------

    @rule(
        email=st.sampled_from(EMAILS),
        confirmed=st.sampled_from([True, True, False]),
        zone=st.sampled_from([*ZONES, *ZONES, UNLOADABLE_ZONE]),
    )
    def subscribe(self, email: str, confirmed: bool, zone: str) -> None:
        if zone == UNLOADABLE_ZONE:
            self._subscribe_with_a_zone_this_host_cannot_load(email)
            return
        suppressed = self._suppressed(email)
        try:
            lifecycle.subscribe(
                self.sessions,
                mailer_for(self.course, MemoryTransport()),
                email=email,
                name="読者",
                timezone=zone,
                confirmed=confirmed,
                now=self.now,
                consent_source="nobody-waits",
            )
        except store.SuppressedAddressError:
            assert suppressed
        else:
            assert not suppressed

    def _subscribe_with_a_zone_this_host_cannot_load(self, email: str) -> None:
        """Stored by an older version or another host (`subscribe` itself refuses the zone)."""
        if self._view(email) is not None:
            return
        with self.sessions() as session, session.begin():
            store.add_subscriber(
                session,
                course_id=COURSE.id,
                email=email,
                name=None,
                timezone=UNLOADABLE_ZONE,
                now=self.now,
                consent_source="nobody-waits",
                confirmed=True,
                first_lesson=self.course.lessons[0].slug,
                first_send_at=self.now,
            )

    @rule(
        email=st.sampled_from(EMAILS),
        action=st.sampled_from(["pause", "pause", "resume", "resume", "unsubscribe"]),
    )
    def operator(self, email: str, action: str) -> None:
        change = {
            "pause": lifecycle.pause_subscriber,
            "resume": lifecycle.resume_subscriber,
            "unsubscribe": lifecycle.unsubscribe_subscriber,
        }[action]
        try:
            change(self.sessions, self.course, email, now=self.now)
        except store.NotFoundError:
            assert self._view(email) is None

    @precondition(lambda self: self._count(store.DeliveryStatus.IN_DOUBT) > 0)
    @rule(data=st.data(), sent=st.booleans())
    def resolve(self, data: st.DataObject, sent: bool) -> None:
        doubts = lifecycle.in_doubt(self.sessions, self.course)
        doubt = data.draw(st.sampled_from(doubts))
        lifecycle.resolve(self.sessions, self.course, doubt.delivery_id, sent=sent, now=self.now)
        if not sent:
            # The operator looked it up: not delivered, so sending it again is right.
            self.maybe_delivered.discard((doubt.subscriber_id, doubt.lesson))

    @precondition(lambda self: self._count(store.DeliveryStatus.FAILED) > 0)
    @rule(data=st.data(), every=st.booleans())
    def retry_failed(self, data: st.DataObject, every: bool) -> None:
        ids = None
        if not every:
            failed = lifecycle.failed(self.sessions, self.course)
            ids = [data.draw(st.sampled_from(failed)).delivery_id]
        # NotFoundError: its reader moved on, paused or left; nothing to re-arm, nothing changed.
        with contextlib.suppress(store.NotFoundError):
            lifecycle.retry_failed(self.sessions, self.course, ids, now=self.now)

    # -- the author and the clock -----------------------------------------------------------

    @rule(removed=st.booleans(), swapped=st.booleans(), inserted=st.booleans())
    def edit_course(self, removed: bool, swapped: bool, inserted: bool) -> None:
        self.edits = (removed, swapped, inserted)

    @rule(minutes=st.integers(min_value=1, max_value=3 * 24 * 60))
    def wait(self, minutes: int) -> None:
        self.now += timedelta(minutes=minutes)

    # -- sending ------------------------------------------------------------------------------

    @rule(minutes=st.integers(min_value=0, max_value=2 * 24 * 60), script=answers, outage=outages)
    def send(self, minutes: int, script: list[str], outage: bool) -> None:
        """Time passes, then `send_due` runs with the transport answering as scripted (then
        SENT); with `outage` the database goes away once the first window is with it."""
        self.now += timedelta(minutes=minutes)
        flaky = FlakySessions(self.sessions)
        steps = [script_step(name) for name in script]
        transport = OutageTransport(steps, flaky) if outage else MemoryTransport(steps)
        completed = False
        try:
            report = send_due(flaky, mailer_for(self.course, transport), now=self.now)  # type: ignore[arg-type]
            completed = report.stopped is None and report.note is None
        except OperationalError:
            assert outage  # the database went away while the window was with the provider
        self.runs += 1
        STATS.update(f"outcome: {result.outcome.value}" for result in transport.results)
        STATS["runs"] += 1
        attempted = [self._pair(email) for email in transport.attempts]
        per_reader = Counter(subscriber for subscriber, _ in attempted)
        assert all(n == 1 for n in per_reader.values()), f"two emails to one reader: {attempted}"
        again = [pair for pair in attempted if pair in self.maybe_delivered]
        assert again == [], f"handed over again after it may have reached the reader: {again}"
        delivered = {Outcome.SENT, Outcome.IN_DOUBT}
        answered = {result.delivery_id: result.outcome for result in transport.results}
        for email, pair in zip(transport.attempts, attempted, strict=True):
            if answered.get(email.delivery_id) in delivered:
                self.maybe_delivered.add(pair)
        if completed:
            with self.sessions() as session:
                assert store.count_due(session, COURSE.id, self.now) == 0, "a due reader was left"

    @rule(minutes=st.integers(min_value=0, max_value=2 * 24 * 60), script=answers, outage=outages)
    def send_again(self, minutes: int, script: list[str], outage: bool) -> None:
        """The same as `send` (so that sending is a larger share of the steps)."""
        self.send(minutes, script, outage)

    # -- the invariant ------------------------------------------------------------------------

    @invariant()
    def everyone_is_somewhere_known(self) -> None:
        if not hasattr(self, "engine"):
            return
        STATS["steps"] += 1
        with self.sessions() as session:
            everyone = list(store.list_subscribers(session, COURSE.id))
            held = {view.id for view in store.list_subscribers(session, COURSE.id, held=True)}
        places = {view.email: where(view) for view in everyone}
        STATS.update(f"place: {place}" for place in places.values())
        assert held == {view.id for view in everyone if places[view.email] == "held"}, places

    # -- helpers ------------------------------------------------------------------------------

    def _view(self, email: str) -> store.SubscriberView | None:
        with self.sessions() as session:
            return store.get_subscriber(session, COURSE.id, email)

    def _suppressed(self, email: str) -> bool:
        view = self._view(email)
        return view is not None and view.status in SUPPRESSED_STATUSES

    def _count(self, status: store.DeliveryStatus) -> int:
        if not hasattr(self, "sessions"):
            return 0
        with self.sessions() as session:
            return store.delivery_counts(session, COURSE.id)[status.value]

    @staticmethod
    def _pair(email: OutgoingEmail) -> tuple[int, str]:
        return int(email.custom_args["drip_subscriber"]), email.custom_args["drip_lesson"]


def where(view: store.SubscriberView) -> str:
    """The one place a subscriber is in; fails for anyone waiting silently."""
    status = view.status
    if status is SubscriberStatus.COMPLETED:
        return "done"
    if status in SUPPRESSED_STATUSES:
        return "suppressed"
    if status is SubscriberStatus.PAUSED:
        # Paused with its next lesson failed or in doubt: still waiting on the operator.
        if view.is_held:
            assert view.held_reason, f"held without a reason: {view}"
            return "held"
        return "paused"
    if status is SubscriberStatus.PENDING:
        return "pending"
    assert status is SubscriberStatus.ACTIVE, view
    assert view.next_lesson is not None, f"active with no next lesson: {view}"
    if view.next_send_at is not None:
        return "scheduled"
    assert view.is_held and view.held_reason, f"waiting silently: {view}"
    return "held"


@pytest.mark.slow
def test_nobody_waits_silently(database_url: str, tmp_path: Path) -> None:
    """On SQLite (EXAMPLES examples) and PostgreSQL (PG_EXAMPLES), STEPS steps at most each."""
    postgres = database_url.startswith("postgresql")
    STATS.clear()
    if postgres:

        def fresh() -> str:
            _truncate(database_url)
            return database_url

    else:
        template = tmp_path / "template.db"
        shutil.copyfile(make_url(database_url).database or "", template)
        copies = count()

        def fresh() -> str:
            path = tmp_path / f"example-{next(copies)}.db"
            shutil.copyfile(template, path)
            return f"sqlite:///{path}"

    machine = type("NobodyWaitsHere", (NobodyWaits,), {"fresh_database": staticmethod(fresh)})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=PG_EXAMPLES if postgres else EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
    print(dict(sorted(STATS.items())))


def test_resume_of_a_reader_whose_timezone_this_host_cannot_load(engine: Engine) -> None:
    """Found by the machine above: `resume_subscriber` computed the resume moment before looking
    at the status, so resuming an active reader whose zone this host cannot load raised
    UnknownTimezoneError ('drip subscribers resume' exit 2, "not an IANA zone name") instead of
    "not paused", and a paused one could never be resumed. Now: not paused -> False; paused ->
    active and held with the reason, as a send run holds such a reader."""
    sessions = sessionmaker(engine, expire_on_commit=False)
    with sessions() as session, session.begin():
        for email in ("active@example.com", "paused@example.com"):
            store.add_subscriber(
                session,
                course_id=COURSE.id,
                email=email,
                name=None,
                timezone=UNLOADABLE_ZONE,
                now=START,
                consent_source="test",
                confirmed=True,
                first_lesson=COURSE.lessons[0].slug,
                first_send_at=START,
            )
    assert lifecycle.pause_subscriber(sessions, COURSE, "paused@example.com", now=START)
    later = START + timedelta(days=1)
    assert not lifecycle.resume_subscriber(sessions, COURSE, "active@example.com", now=later)
    assert lifecycle.resume_subscriber(sessions, COURSE, "paused@example.com", now=later)
    with sessions() as session:
        view = store.get_subscriber(session, COURSE.id, "paused@example.com")
        [held] = store.list_subscribers(session, COURSE.id, held=True)
    assert view is not None and view.status is SubscriberStatus.ACTIVE
    assert held.email == "paused@example.com"
    assert held.held_reason is not None and UNLOADABLE_ZONE in held.held_reason
