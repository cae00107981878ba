"""The send engine: `drip send` claims what is due, renders it, hands it over, records the outcome.

The one place that joins store, schedule, render and transports for sending; the subscriber
lifecycle (subscribe, confirm, pause, resume, unsubscribe, settle) lives in `drip.lifecycle` and
calls `send_confirmation` here.

Exactly-once bookkeeping: a lesson is claimed in the ledger (committed) before it is handed to a
transport, and the outcome is recorded after. A crash in between leaves a 'sending' row whose lease
runs out; the next run marks it 'in_doubt' and never sends it again by itself (see the README's
in-doubt policy). `now` is always a parameter: the CLI passes the clock or `--now`.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from email.utils import parseaddr
from functools import cached_property

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from drip import schedule, store
from drip.addresses import ascii_address, clean_name
from drip.course import Course, Lesson
from drip.errors import (
    CourseNotSendableError,
    DripError,
    FatalTransportError,
    InvalidAddressError,
    RenderError,
    UnknownTimezoneError,
)
from drip.links import LinkBuilder
from drip.message import OutgoingEmail
from drip.provider_events import settle_in_doubt
from drip.render import (
    BulkLesson,
    ComposedEmails,
    Reader,
    Recipient,
    RenderedEmail,
    Renderer,
    check_url,
)
from drip.send_report import SendReport
from drip.store import optin
from drip.store.subscribers import purge_unconfirmed
from drip.transports.base import Outcome, SendResult, Transport, clamp_retry_after

log = logging.getLogger(__name__)

BATCH_SIZE = 500
PIPELINE_DEPTH = 2
"""Windows with a pipelining transport at once."""
IN_DOUBT_WINDOWS = PIPELINE_DEPTH + 1
"""The most windows of a pipelining run a crash can leave in doubt: PIPELINE_DEPTH with the
provider and, on PostgreSQL, the one whose outcomes the recorder thread is writing."""
LEASE = timedelta(minutes=15)
"""How long a claim is protected. A run that holds a claim longer than this is presumed dead."""
MAX_ATTEMPTS = 8
BASE_RETRY_DELAY = timedelta(minutes=1)
MAX_RETRY_DELAY = timedelta(hours=6)
CONFIRMATION_INTERVAL = timedelta(hours=24)
"""At most one confirmation email per address in this interval (subscription bombing)."""
CONFIRMATION_LEASE = timedelta(minutes=10)
"""An owed confirmation taken for sending is left alone by other processes this long."""
CONFIRMATION_RETRY_DELAY = timedelta(minutes=5)
CONFIRMATION_BATCH = 100
RECORD_ATTEMPTS = 3
"""Times a window's outcomes are written when the database breaks a lock conflict."""


@dataclass(frozen=True)
class Mailer:
    """What every send needs besides the database: the course, how to render, who sends."""

    course: Course
    renderer: Renderer
    links: LinkBuilder
    transport: Transport
    from_override: str | None = None
    """DRIP_FROM: 'Name <address>' or a bare address; replaces the course's sender."""

    @cached_property
    def fills_bulk_parts(self) -> bool:
        """The transport fills html/text from `OutgoingEmail.bulk` itself (bulk mode)."""
        return self.transport.fills_bulk_parts

    @cached_property
    def lessons(self) -> dict[str, Lesson]:
        """The course's lessons by slug (asked once per claim: a dict, not a scan)."""
        return {lesson.slug: lesson for lesson in self.course.lessons}

    @cached_property
    def sender(self) -> tuple[str, str | None]:
        """(address, display name) of the From header."""
        settings = self.course.settings
        if self.from_override:
            name, address = parseaddr(self.from_override)
            # The ASCII form every relay takes (the course's sender is converted on loading): the
            # SMTP envelope's MAIL FROM is this address. An unusable one is left as written:
            # check_sendable reports it before anything is sent.
            with suppress(InvalidAddressError):
                address = ascii_address(address, what="DRIP_FROM address")
            return address, name or settings.sender_name
        return settings.sender_email, settings.sender_name

    def recipient(self, subscriber_id: int, email: str, name: str | None) -> Recipient:
        """The per-subscriber values of an email: address, name and signed links."""
        return Recipient(
            email=email,
            name=name,
            unsubscribe_url=self.links.unsubscribe_url(subscriber_id),
            manage_url=self.links.manage_url(subscriber_id),
        )

    def envelope(
        self,
        delivery_id: str,
        recipient: Recipient,
        rendered: RenderedEmail,
        custom_args: dict[str, str],
        *,
        now: datetime,
    ) -> OutgoingEmail:
        """A rendered email addressed from the course's sender to `recipient`, dated `now`."""
        from_address, from_name = self.sender
        return OutgoingEmail(
            delivery_id=delivery_id,
            to_address=recipient.email,
            to_name=recipient.name,
            from_address=from_address,
            from_name=from_name,
            subject=rendered.subject,
            html=rendered.html,
            text=rendered.text,
            headers=rendered.headers,
            custom_args={"drip_delivery_id": delivery_id, **custom_args},
            bulk=rendered.bulk,
            date=now,
        )


MAX_PROBLEMS_SHOWN = 5


def check_sendable(mailer: Mailer) -> None:
    """Refuse, before anything is claimed, a course that cannot be sent as configured: every
    error `drip course check` reports, and every reason a lesson or the confirmation could not be
    rendered with this sender and these links. Raises `CourseNotSendableError` (exit 2).

    Called by the entry points once per process; the lessons it compiles stay in the renderer.
    """
    from drip.check import sendable_problems

    problems = sendable_problems(
        mailer.course,
        mailer.renderer.templates_dir,
        sender=mailer.sender,
        renderer=mailer.renderer,
        links=mailer.links,
    )
    if not problems:
        return
    shown = "\n".join(f"  {problem}" for problem in problems[:MAX_PROBLEMS_SHOWN])
    more = len(problems) - MAX_PROBLEMS_SHOWN
    raise CourseNotSendableError(
        f"the course cannot be sent as it is ({len(problems)} error(s); nothing was claimed):\n"
        + shown
        + (f"\n  ... and {more} more" if more > 0 else "")
        + "\nfix them ('drip course check' lists them all), then run again"
    )


def retry_delay(attempts: int, retry_after: float | None) -> timedelta:
    """Exponential back-off from BASE_RETRY_DELAY (1, 2, 4 ... minutes for attempts 1, 2, 3 ...),
    capped at MAX_RETRY_DELAY, never shorter than the provider's Retry-After — which is itself
    clamped by `transports.base.clamp_retry_after` (an absurd or infinite answer must not break
    recording)."""
    delay: timedelta = BASE_RETRY_DELAY * 2 ** min(max(attempts - 1, 0), 20)
    delay = min(delay, MAX_RETRY_DELAY)
    asked = clamp_retry_after(retry_after)  # the transports' own bound, applied again here
    if asked is not None:
        delay = max(delay, timedelta(seconds=asked))
    return delay


def compose(mailer: Mailer, claim: store.Claim, *, now: datetime) -> OutgoingEmail:
    """Render one claimed lesson for its subscriber into an `OutgoingEmail` dated `now`.

    For a transport that says `fills_bulk_parts` (bulk mode) the html and text stay empty: it
    fills them from `bulk` only for the subscribers it sends one by one. The send loop composes
    a window for such a transport with `compose_readers` instead: the same emails, compact.
    """
    lesson = mailer.lessons[claim.lesson]
    subscriber_id = claim.subscriber_id
    recipient = mailer.recipient(subscriber_id, claim.email, claim.name)
    return mailer.envelope(
        str(claim.delivery_id),
        recipient,
        mailer.renderer.lesson(lesson, recipient, fill=not mailer.fills_bulk_parts),
        {"drip_lesson": lesson.slug, "drip_subscriber": str(subscriber_id)},
        now=now,
    )


def compose_readers(
    mailer: Mailer, claims: Sequence[store.Claim], *, now: datetime
) -> tuple[list[store.Claim], ComposedEmails, list[tuple[store.Claim, str]]] | None:
    """`compose` for every claim of a window, for a transport that `fills_bulk_parts`: the same
    emails as `ComposedEmails` (a tuple per reader, the lesson's shared part once per variant).

    Returns (the claims composed, their emails, the claims that could not be, with why); None
    when the links' base URL is refused (`compose` each claim then, which says why per claim).
    """
    urls = mailer.links.readers_urls([claim.subscriber_id for claim in claims])
    if urls:
        # A token only adds URL-safe base64 and "." to "<base>/u/" or "<base>/m/": if the
        # first reader's links pass `check_url`, every reader's do, so it is asked once.
        try:
            check_url("unsubscribe_url", urls[0][0])
            check_url("manage_url", urls[0][1])
        except RenderError:
            return None
    shared: dict[tuple[str, bool], BulkLesson] = {}
    kept: list[store.Claim] = []
    readers: list[Reader] = []
    broken: list[tuple[store.Claim, str]] = []
    for claim, links in zip(claims, urls, strict=True):
        try:
            readers.append(compose_reader(mailer, claim, links, shared, now=now))
        except DripError as exc:
            broken.append((claim, f"lesson {claim.lesson!r} could not be rendered: {exc}"))
            continue
        kept.append(claim)
    return kept, ComposedEmails(readers), broken


def compose_reader(
    mailer: Mailer,
    claim: store.Claim,
    links: tuple[str, str],
    shared: dict[tuple[str, bool], BulkLesson],
    *,
    now: datetime,
) -> Reader:
    """One claim of `compose_readers`, with its (unsubscribe, manage) URLs; `shared` keeps the
    lesson variants made so far. Raises `DripError` when the lesson cannot be rendered."""
    name = clean_name(claim.name, max_length=None, strict=False)
    variant = (claim.lesson, name is not None)
    lesson = shared.get(variant)
    if lesson is None:
        lesson = mailer.renderer.bulk_lesson(
            mailer.lessons[claim.lesson], named=variant[1], sender=mailer.sender, date=now
        )
        shared[variant] = lesson
    return Reader(
        str(claim.delivery_id),
        str(claim.subscriber_id),
        claim.email,
        claim.name,
        name or "",
        links[0],
        links[1],
        lesson,
    )


def _sent_item(
    course: Course,
    claim: store.Claim,
    result: SendResult,
    now: datetime,
    next_by_pair: dict[tuple[str, str, str | None], schedule.Next],
) -> store.SentItem:
    """What to record for an accepted delivery: the subscriber's next lesson and its time, from
    `schedule.after_send`, cached in `next_by_pair` (they depend only on the zone, the lesson
    sent at `now` and the reader's send time, not on the subscriber)."""
    key = (claim.timezone, claim.lesson, claim.send_time)
    following = next_by_pair.get(key)
    if following is None:
        following = schedule.after_send(
            course,
            claim.timezone,
            claim.lesson,
            sent_at=now,
            send_time=reader_send_time(claim.send_time),
        )
        next_by_pair[key] = following
    return store.SentItem(
        delivery_id=claim.delivery_id,
        provider_id=result.provider_id,
        now=now,
        next_lesson=following.lesson,
        next_send_at=following.send_at,
    )


@dataclass(frozen=True)
class _Outcomes:
    """A window's outcomes sorted for writing (`_write_outcomes`)."""

    sent: list[store.SentItem]
    retry: list[tuple[int, datetime, str]]
    failed: list[tuple[int, str]]
    doubt: list[tuple[int, str]]
    rate_limited: bool
    """The provider asked us to slow down (a retry with Retry-After)."""


def _classify(
    course: Course,
    claims: Sequence[store.Claim],
    results: Sequence[SendResult],
    *,
    now: datetime,
    report: SendReport,
) -> _Outcomes:
    """Sort a window's results into what to write, and count them in `report`."""
    by_id = {str(claim.delivery_id): claim for claim in claims}
    sent: list[store.SentItem] = []
    retry: list[tuple[int, datetime, str]] = []
    failed: list[tuple[int, str]] = []
    doubt: list[tuple[int, str]] = []
    rate_limited = False
    next_by_pair: dict[tuple[str, str, str | None], schedule.Next] = {}
    sent_per_lesson: Counter[str] = Counter()  # counted once per lesson: one per reader showed
    for result in results:
        claim = by_id[result.delivery_id]
        if result.outcome is Outcome.SENT:
            sent.append(_sent_item(course, claim, result, now, next_by_pair))
            sent_per_lesson[claim.lesson] += 1
        elif result.outcome is Outcome.RETRY and claim.attempts < MAX_ATTEMPTS:
            report.first_failure = report.first_failure or result.detail
            rate_limited = rate_limited or result.retry_after is not None
            retry_at = now + retry_delay(claim.attempts, result.retry_after)
            retry.append((claim.delivery_id, retry_at, result.detail))
            report.count(claim.lesson, "retried")
        elif result.outcome is Outcome.IN_DOUBT:
            doubt.append((claim.delivery_id, result.detail))
            report.count(claim.lesson, "in_doubt")
        else:
            detail = result.detail
            if result.outcome is Outcome.RETRY:
                detail = f"gave up after {claim.attempts} attempts: {detail}"
            report.first_failure = report.first_failure or result.detail
            failed.append((claim.delivery_id, detail))
            report.count(claim.lesson, "failed")
    for lesson, count in sent_per_lesson.items():
        report.count(lesson, "sent", count)
    return _Outcomes(sent, retry, failed, doubt, rate_limited)


def _write_outcomes(
    sessions: sessionmaker[Session], run_id: str, now: datetime, outcomes: _Outcomes
) -> None:
    """Write a window's outcomes in one transaction, again (up to RECORD_ATTEMPTS times) if the
    database rolled it back to break a lock conflict.

    The webhook locks deliveries then subscribers, this transaction both in delivery order:
    PostgreSQL may break such a deadlock by rolling this one back. Nothing was written then, and
    giving up would leave a window the provider accepted as 'sending' (in doubt after a crash).
    """
    for attempt in range(1, RECORD_ATTEMPTS + 1):
        try:
            with sessions() as session, session.begin():
                if outcomes.sent:
                    store.record_sent(session, outcomes.sent, run_id)
                if outcomes.retry:
                    store.record_retry(session, outcomes.retry, now=now)
                if outcomes.failed:
                    store.record_failed(session, outcomes.failed, now=now)
                if outcomes.doubt:
                    store.record_in_doubt(session, outcomes.doubt, now=now)
            return
        except DBAPIError as exc:
            if attempt == RECORD_ATTEMPTS or not store.lost_lock_conflict(exc):
                raise
            log.info("recording a window met a lock conflict (%s); recording it again", exc.orig)


def send_due(
    sessions: sessionmaker[Session],
    mailer: Mailer,
    *,
    now: datetime,
    limit: int | None = None,
    dry_run: bool = False,
    batch_size: int = BATCH_SIZE,
    window: int | None = None,
    run_id: str | None = None,
    progress: Callable[[int], None] | None = None,
    stop_requested: Callable[[], bool] | None = None,
    only: Sequence[int] | None = None,
) -> SendReport:
    """Send every lesson due at `now` (at most `limit`), claiming and recording in batches.

    Returns a `SendReport`. Per-message failures are recorded and counted, not raised. A fatal
    provider error (bad credentials) stops the run: the windows already with the transport are
    recorded, claims not yet sent are released for the next run, and `report.stopped` says why;
    a rate limit ends the run early the same way, with `report.note`. `progress` is called with
    the number handled per window. `stop_requested` (a signal arrived) is asked before each
    window: once it says True nothing more is handed over, the windows in flight are recorded
    and the remaining claims released, with `report.note` saying so.

    A transport that `pipelines` (the SendGrid fast and bulk clients) gets the next window while
    the previous one is still in flight (PIPELINE_DEPTH windows at once), so the main thread
    composes, claims and records during the round trips. Each window is marked 'sending'
    (committed) before it is handed over, so after a crash at most PIPELINE_DEPTH x window claims
    are in doubt. A window as big as a batch (bulk) is claimed straight as 'sending' once fewer
    than PIPELINE_DEPTH windows are in flight, then composed and handed over: the same bound, and
    the claim is then what sees the reader still active.

    A full run (no `only`) first sends the confirmation emails the signup form queued and its
    own process could not send (`send_owed_confirmations`). `only`: send just to these
    subscriber ids (the web app, for lesson 1 right after a confirmation).
    """
    course_id = mailer.course.id
    report = SendReport(now=now, dry_run=dry_run)
    if not dry_run:
        with sessions() as session, session.begin():
            store.resume_ended_pauses(session, course_id, now, _pause_end(mailer.course))
            purge_unconfirmed(session, course_id, now)  # signups never confirmed, 30 days on
        # In-doubt deliveries that SendGrid's events settle (drip.settle_policy).
        settle_in_doubt(sessions, mailer.course, now=now)
    with sessions() as session:
        report.due = store.count_due(session, course_id, now)
        records_apart = _records_apart(session, mailer)
    if dry_run:
        with sessions() as session:
            for slug, count in store.due_by_lesson(session, course_id, now).items():
                report.per_lesson[slug] = Counter({"due": count})
        return report
    if only is None:
        try:
            report.confirmations = send_owed_confirmations(sessions, mailer, now=now)
        except FatalTransportError as exc:  # the lessons' first window stops the run with it
            log.error("confirmation emails not sent: %s", exc)
    # A transport that sends concurrently says how many it keeps in flight (`window`).
    window = window or mailer.transport.window
    run = _Run(
        sessions, mailer, now, run_id or uuid.uuid4().hex, report, progress, stop_requested, only
    )
    if records_apart:
        run.recorder = ThreadPoolExecutor(1, thread_name_prefix="drip-record")
    in_flight: deque[_Window] = deque()
    try:
        return _pump(run, in_flight, limit=limit, batch_size=batch_size, window=window)
    except BaseException:
        # Anything else (a bug, the database going away, Ctrl-C): record what is with the
        # transport, give back every claim never handed over, then let it propagate.
        run.abandon(in_flight)
        raise
    finally:
        if run.recorder is not None:
            run.recorder.shutdown()


def _records_apart(session: Session, mailer: Mailer) -> bool:
    """Write outcomes on a second thread and connection: with a pipelining transport on a
    database that takes concurrent writers (PostgreSQL), the server's time recording one window
    then overlaps the claim and compose of the next. SQLite has one writer at a time."""
    return bool(mailer.transport.pipelines) and session.get_bind().dialect.name != "sqlite"


def _pump(
    run: _Run, in_flight: deque[_Window], *, limit: int | None, batch_size: int, window: int
) -> SendReport:
    """The run's loop: claim, hand over and record window after window, keeping at most
    PIPELINE_DEPTH windows in flight with a pipelining transport."""
    depth = PIPELINE_DEPTH if run.mailer.transport.pipelines else 1
    # A window as big as a batch (bulk) is claimed on its own and handed over as soon as it is
    # composed: it is claimed straight as 'sending' (no `mark_sending`, one row write per reader
    # fewer), and only once fewer than `depth` windows are in flight, so a crash still leaves at
    # most `depth` windows in doubt.
    run.claim_sending = depth > 1 and window >= batch_size
    claim_ahead = depth > 1 and not run.claim_sending
    windows = _claimed_windows(run, limit=limit, batch_size=batch_size, window=window)
    claims = next(windows, None)
    while claims is not None:
        if run.stopping():
            return run.stop(_STOPPED_BY_SIGNAL, in_flight)
        handed = run.hand_over(claims)
        if handed is not None:
            in_flight.append(handed)
        if claim_ahead:
            # The next window now, while the windows in flight are with the transport: when it
            # needs a new batch, the claim's database time overlaps their round trips instead of
            # following the wait for the oldest one's results. Claims are never in doubt: a stop
            # releases them, a crash leaves them to their lease.
            claims = next(windows, None)
        while len(in_flight) >= depth:
            stop = run.finish_oldest(in_flight)
            if stop is not None:
                return run.stop(stop, in_flight)
        if not claim_ahead:
            claims = next(windows, None)
    while in_flight:
        stop = run.finish_oldest(in_flight)
        if stop is not None:
            return run.stop(stop, in_flight)
    run.wait_recorded()
    return run.report


def _claimed_windows(
    run: _Run, *, limit: int | None, batch_size: int, window: int
) -> Iterator[list[store.Claim]]:
    """Claim due lessons in batches (each committed) and yield them a window at a time.

    Lazy: the next batch is claimed only when the previous one has been handed over, so with a
    pipelining transport the claim runs while earlier windows are in flight.
    """
    remaining = limit
    while (remaining is None or remaining > 0) and not run.stopping():
        # Whole windows (a bulk transport's window can exceed a batch): no short window per batch.
        size = -(-max(batch_size, window) // window) * window
        if remaining is not None:
            size = min(size, remaining)
        with run.sessions() as session, session.begin():
            batch = store.claim_due(
                session,
                course_id=run.mailer.course.id,
                now=run.now,
                limit=size,
                run_id=run.run_id,
                lease=LEASE,
                defer=run.defer,
                move_on=run.move_on,
                only=run.only,
                sending=run.claim_sending,
            )
        run.report.in_doubt += batch.newly_in_doubt
        run.report.rescheduled += batch.rescheduled
        if not batch.claims:
            if batch.newly_in_doubt:
                continue
            return
        for start in range(0, len(batch.claims), window):
            yield batch.claims[start : start + window]
        if remaining is not None:
            remaining -= len(batch.claims)


def _kept(emails: Sequence[OutgoingEmail], keep: list[bool]) -> Sequence[OutgoingEmail]:
    """The emails whose `keep` is True (`ComposedEmails` stays compact)."""
    if isinstance(emails, ComposedEmails):
        return ComposedEmails([r for r, k in zip(emails.readers, keep, strict=True) if k])
    return [e for e, k in zip(emails, keep, strict=True) if k]


@dataclass(frozen=True)
class _Stop:
    message: str
    fatal: bool


_STOPPED_BY_SIGNAL = _Stop(
    "stopped on request: what was with the provider is recorded, the rest waits for the next run",
    fatal=False,
)


@dataclass(frozen=True)
class _Window:
    """Claims marked 'sending' and handed to the transport, with the future of their results."""

    claims: list[store.Claim]
    results: Future[list[SendResult]]
    size: int
    """Claims of the window before removed lessons and inactive subscribers were taken out."""


@dataclass
class _Run:
    """One `send_due` run: what every window needs, and the steps of a window."""

    sessions: sessionmaker[Session]
    mailer: Mailer
    now: datetime
    run_id: str
    report: SendReport
    progress: Callable[[int], None] | None
    stop_requested: Callable[[], bool] | None = None
    only: Sequence[int] | None = None
    claim_sending: bool = False
    """Claims are made 'sending' (a whole window, handed over right after): no marking."""
    outstanding: set[int] = field(default_factory=set)
    """Deliveries handed to the transport whose outcome is not recorded yet: whatever stops the
    run, these are never released (they may have gone out); a lease later they are in doubt."""
    recorder: ThreadPoolExecutor | None = None
    """Writes outcomes on its own thread and connection (see `_records_apart`); None: here."""
    recording: tuple[_Window, _Outcomes, Future[None] | None] | None = None
    """The window the recorder is writing, its outcomes, and the write (None: it failed, to
    be written again here); None: no write pending."""

    def stopping(self) -> bool:
        return self.stop_requested is not None and self.stop_requested()

    @cached_property
    def defer(self) -> Callable[[str, str], datetime | None]:
        return _deferral(self.mailer.course, self.now)

    def move_on(
        self,
        timezone: str,
        lesson: str,
        last_sent_at: datetime | None,
        sent: frozenset[str],
        send_time: str | None = None,
    ) -> tuple[str | None, datetime | None] | None:
        """For claim_due: the next lesson not yet sent after `lesson` (already sent: the course
        was reordered), and when; None when that cannot be told (the lesson is gone)."""
        course = self.mailer.course
        if not course.has_lesson(lesson):
            return None
        try:
            following = schedule.after_send(
                course,
                timezone,
                lesson,
                sent_at=last_sent_at or self.now,
                skip=sent,
                send_time=reader_send_time(send_time),
            )
        except UnknownTimezoneError:
            return None
        return following.lesson, following.send_at

    def hand_over(self, claims: list[store.Claim]) -> _Window | None:
        """Compose the window, mark it 'sending' (committed; already so with `claim_sending`),
        then give it to the transport.

        Claims of removed lessons are recorded failed and subscribers no longer active are
        skipped. Returns None when nothing is left to send.
        """
        size = len(claims)
        claims, emails = self._compose_all(self._drop_removed_lessons(claims))
        if claims and not self.claim_sending:
            with self.sessions() as session, session.begin():
                ids = [claim.delivery_id for claim in claims]
                marked = set(store.mark_sending(session, ids, self.now))
            if len(marked) < len(claims):
                # Subscribers who unsubscribed or paused since the claim get nothing more.
                for claim in claims:
                    if claim.delivery_id not in marked:
                        self.report.count(claim.lesson, "skipped")
                keep = [c.delivery_id in marked for c in claims]
                emails = _kept(emails, keep)
                claims = [c for c, k in zip(claims, keep, strict=True) if k]
        if not claims:
            if self.progress is not None:
                self.progress(size)
            return None
        # Outstanding before the transport has them: an interrupt between the two lines below
        # must not let them be released.
        self.outstanding.update(claim.delivery_id for claim in claims)
        return _Window(claims, self.mailer.transport.submit(emails), size)

    def abandon(self, in_flight: deque[_Window]) -> None:
        """After an unexpected exception: wait for and record the windows in flight, then
        release the run's other claims. Best effort: a second failure (the database is gone) is
        logged, and the claims then follow the crash rules (lease, then in doubt or sent)."""
        try:
            while in_flight:
                self.finish_oldest(in_flight)
            self.wait_recorded()
            with self.sessions() as session, session.begin():
                store.release_claims(session, self.run_id, self.now, keep=self.outstanding)
        except Exception as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            log.warning(
                "could not release the claims of run %s (%s); they are freed when their lease ends",
                self.run_id,
                reason,
            )

    def _compose_all(
        self, claims: list[store.Claim]
    ) -> tuple[list[store.Claim], Sequence[OutgoingEmail]]:
        """Compose each claim's email. A claim that cannot be rendered (a lesson that fails, a
        subscriber value it cannot use) is recorded failed with the reason, which holds only that
        subscriber; the others go on."""
        if self.mailer.fills_bulk_parts:
            composed = compose_readers(self.mailer, claims, now=self.now)
            if composed is not None:
                kept, readers, broken = composed
                if broken:
                    self._fail(broken)
                return kept, readers
        kept = []
        emails: list[OutgoingEmail] = []
        broken = []
        for claim in claims:
            try:
                emails.append(compose(self.mailer, claim, now=self.now))
            except DripError as exc:
                broken.append((claim, f"lesson {claim.lesson!r} could not be rendered: {exc}"))
                continue
            kept.append(claim)
        if broken:
            self._fail(broken)
        return kept, emails

    def _fail(self, broken: list[tuple[store.Claim, str]]) -> None:
        with self.sessions() as session, session.begin():
            store.record_failed(
                session, [(claim.delivery_id, why) for claim, why in broken], now=self.now
            )
        for claim, _why in broken:
            self.report.count(claim.lesson, "failed")

    def _drop_removed_lessons(self, claims: list[store.Claim]) -> list[store.Claim]:
        """Record claims of lessons no longer in the course as failed; return the others.

        A lesson removed from course.toml while subscribers were waiting for it holds them with
        a reason rather than guessing which lesson they should get instead.
        """
        lessons = self.mailer.lessons
        gone = [claim for claim in claims if claim.lesson not in lessons]
        if not gone:
            return claims
        self._fail(
            [
                (
                    claim,
                    f"lesson {claim.lesson!r} is no longer in the course;"
                    " put it back in course.toml or move these readers on",
                )
                for claim in gone
            ]
        )
        return [claim for claim in claims if claim.lesson in lessons]

    def finish_oldest(self, in_flight: deque[_Window]) -> _Stop | None:
        """`finish` the oldest window in flight, and only then take it off `in_flight`: a window
        whose results could not be awaited or recorded (Ctrl-C while waiting, the database
        failing) stays there for `abandon` to try again."""
        stop = self.finish(in_flight[0])
        in_flight.popleft()
        return stop

    def finish(self, window: _Window) -> _Stop | None:
        """Wait for a window's results and record them (on the recorder thread when there is
        one: then only handed to it). Returns why the run must stop, or None."""
        if self._recorded(window):
            return None  # recorded, interrupted before it left `in_flight`
        stop: _Stop | None = None
        try:
            results = window.results.result()
        except FatalTransportError as exc:
            # What the provider already answered is recorded; the rest was never sent.
            results = list(exc.results)
            stop = _Stop(str(exc), fatal=True)
        outcomes = None
        if results:
            outcomes = _classify(
                self.mailer.course, window.claims, results, now=self.now, report=self.report
            )
            if outcomes.rate_limited and stop is None:
                stop = _Stop(
                    "the provider asked us to slow down; the rest waits for the next run",
                    fatal=False,
                )
        self._write(window, outcomes)
        if self.progress is not None:
            self.progress(window.size)
        return stop

    def _recorded(self, window: _Window) -> bool:
        """The window's outcomes are written, or being written by the recorder."""
        if self.recording is not None and self.recording[0] is window:
            return True
        return self.outstanding.isdisjoint(claim.delivery_id for claim in window.claims)

    def _write(self, window: _Window, outcomes: _Outcomes | None) -> None:
        """Write a window's outcomes: here, or on the recorder thread once the window before it
        is written (one at a time, in order). Its deliveries stay `outstanding` until then; a
        delivery without a result (a fatal answer stopped the call before it) was not
        attempted, and may then be released."""
        if outcomes is not None and self.recorder is not None:
            self.wait_recorded()
            written = self.recorder.submit(
                _write_outcomes, self.sessions, self.run_id, self.now, outcomes
            )
            self.recording = (window, outcomes, written)
            return
        if outcomes is not None:
            _write_outcomes(self.sessions, self.run_id, self.now, outcomes)
        self.outstanding.difference_update(claim.delivery_id for claim in window.claims)

    def wait_recorded(self) -> None:
        """Wait for the recorder's write, if one is pending, and raise what it raised; the
        window then stays outstanding (never released), and the next call (`abandon`'s)
        writes it once more here, as a window whose synchronous write failed is."""
        if self.recording is None:
            return
        window, outcomes, written = self.recording
        if written is None:
            _write_outcomes(self.sessions, self.run_id, self.now, outcomes)
        else:
            try:
                written.result()
            except Exception:  # not a Ctrl-C while waiting: the write itself failed
                self.recording = (window, outcomes, None)
                raise
        self.outstanding.difference_update(claim.delivery_id for claim in window.claims)
        self.recording = None

    def stop(self, first: _Stop, in_flight: deque[_Window]) -> SendReport:
        """End the run early: record the windows still with the transport, then give back every
        claim never handed over. A fatal stop wins over a rate-limit note."""
        stops = [first]
        while in_flight:
            later = self.finish_oldest(in_flight)
            if later is not None:
                stops.append(later)
        self.wait_recorded()
        with self.sessions() as session, session.begin():
            store.release_claims(session, self.run_id, self.now, keep=self.outstanding)
        fatal = next((stop for stop in stops if stop.fatal), None)
        if fatal is not None:
            self.report.stopped = fatal.message
        else:
            self.report.note = first.message
        return self.report


def _pause_end(course: Course) -> Callable[[store.PausedReader], datetime]:
    """For resume_ended_pauses: when a reader's next lesson goes out after its timed pause
    ended (`schedule.after_resume` from the end of the pause, with the reader's send time)."""

    def resume_at(reader: store.PausedReader) -> datetime:
        return schedule.after_resume(
            course,
            reader.timezone,
            reader.next_lesson,
            resumed_at=reader.paused_until,
            last_sent_at=reader.last_sent_at,
            confirmed_at=reader.confirmed_at,
            send_time=reader_send_time(reader.send_time),
        )

    return resume_at


def reader_send_time(text: str | None) -> time | None:
    """A reader's stored send time; one this version cannot read (edited by hand) falls back to
    the course's rather than stopping the run."""
    try:
        return schedule.parse_send_time(text)
    except ValueError:
        log.warning("ignoring unreadable send_time %r; using the course's", text)
        return None


def _deferral(course: Course, now: datetime) -> Callable[[str, str], datetime | None]:
    """For claim_due: None when a subscriber in `timezone` may get `lesson` at `now`, else the
    moment it may (a late run inside quiet hours, or on a day the course does not send)."""
    settings = course.settings
    first = course.lessons[0].slug
    # The answer depends only on (zone, first lesson or not) at this run's `now`: asked once per
    # due reader, it was a few us each in the claim loop, so it is remembered.
    known: dict[tuple[str, bool], datetime | None] = {}

    def defer(timezone: str, lesson: str) -> datetime | None:
        is_first = lesson == first
        key = (timezone, is_first)
        try:
            return known[key]
        except KeyError:
            pass
        later = None
        if not schedule.may_send_at(settings, timezone, now, first_lesson=is_first):
            later = schedule.earliest_send_at(settings, timezone, now, first_lesson=is_first)
        known[key] = later  # UnknownTimezoneError propagates and is not remembered
        return later

    return defer


def send_confirmation(
    mailer: Mailer, subscriber_id: int, email: str, name: str | None, *, now: datetime
) -> bool:
    """Send the double opt-in email. True if the transport accepted it.

    Raises `FatalTransportError` on bad provider credentials.
    """
    return _confirm(mailer, subscriber_id, email, name, now=now).outcome is Outcome.SENT


def _confirm(
    mailer: Mailer, subscriber_id: int, email: str, name: str | None, *, now: datetime
) -> SendResult:
    recipient = mailer.recipient(subscriber_id, email, name)
    message = mailer.envelope(
        f"confirm-{subscriber_id}-{int(now.timestamp())}",
        recipient,
        mailer.renderer.confirmation(recipient, mailer.links.confirm_url(subscriber_id, now=now)),
        {"drip_subscriber": str(subscriber_id)},
        now=now,
    )
    [result] = mailer.transport.send([message])
    return result


def send_owed_confirmations(
    sessions: sessionmaker[Session],
    mailer: Mailer,
    *,
    now: datetime,
    limit: int | None = None,
) -> int:
    """Send the confirmation emails the signup form queued (`subscribers.confirmation_wanted_at`),
    oldest first, a batch at a time (at most `limit` taken in all). Returns how many the
    transport accepted.

    Each batch is taken in one transaction (other processes leave it alone for
    CONFIRMATION_LEASE), sent one by one without the submitted name, then settled: accepted or
    in doubt -> not owed any more (never sent twice on purpose); refused for now -> owed again
    in CONFIRMATION_RETRY_DELAY; refused for good -> dropped. A crash before settling sends the
    batch again after the lease (a confirmation email may then arrive twice). Raises
    `FatalTransportError` (bad credentials) after settling what was sent: the rest stay owed.
    """
    course_id = mailer.course.id
    total = taken = 0
    while limit is None or taken < limit:
        size = CONFIRMATION_BATCH if limit is None else min(CONFIRMATION_BATCH, limit - taken)
        with sessions() as session, session.begin():
            owed = optin.take_owed_confirmations(
                session,
                course_id,
                now=now,
                limit=size,
                lease=CONFIRMATION_LEASE,
                interval=CONFIRMATION_INTERVAL,
            )
        if not owed:
            break
        done: list[int] = []
        later: list[int] = []
        dropped: list[int] = []
        accepted = 0
        try:
            for item in owed:
                outcome = _confirm(mailer, item.subscriber_id, item.email, None, now=now).outcome
                if outcome in (Outcome.SENT, Outcome.IN_DOUBT):
                    done.append(item.subscriber_id)
                    accepted += outcome is Outcome.SENT
                elif outcome is Outcome.RETRY:
                    later.append(item.subscriber_id)
                else:
                    log.warning("confirmation email to subscriber %s refused", item.subscriber_id)
                    dropped.append(item.subscriber_id)
        finally:
            handled = {*done, *later, *dropped}
            later += [item.subscriber_id for item in owed if item.subscriber_id not in handled]
            with sessions() as session, session.begin():
                optin.confirmations_sent(session, done, now)
                optin.confirmations_later(session, later, now + CONFIRMATION_RETRY_DELAY)
                optin.confirmations_later(session, dropped, None)
        total += accepted
        taken += len(owed)
        if len(owed) < size:
            break
    return total
