"""The subscriber lifecycle: subscribe, import, pause, resume, unsubscribe, and settling in-doubt
deliveries.

Service functions for the entry points (CLI today). Each takes a session factory, the course (or a
`Mailer` when it sends) and `now`, opens its own short transaction, and asks `drip.schedule` what
comes next; none of them reads the clock or the environment.

An in-doubt delivery may or may not have reached the subscriber (the answer was lost, or the run
died while the message was with the transport). SendGrid's events settle it by themselves
(`drip.provider_events`, `drip.settle_policy`); otherwise the operator looks (e.g. in SendGrid's
activity feed, by `drip_delivery_id`) and settles it with `resolve`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from enum import StrEnum
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from drip import preferences, schedule, store
from drip.addresses import check_timezone, clean_name, normalize_email
from drip.course import Course
from drip.db import reading
from drip.delivery import CONFIRMATION_INTERVAL as CONFIRMATION_INTERVAL
from drip.delivery import Mailer, send_confirmation, send_owed_confirmations
from drip.errors import InvalidAddressError, UnknownTimezoneError, UsageError
from drip.importer import ImportReport
from drip.importer import import_subscribers as _import_rows
from drip.statuses import SUPPRESSED_STATUSES
from drip.store import admin as admin_store
from drip.store import optin
from drip.store.admin import ReaderEvent


@dataclass(frozen=True)
class SubscribeResult:
    subscriber_id: int
    status: str
    created: bool
    confirmation_sent: bool
    note: str = ""


def subscribe(
    sessions: sessionmaker[Session],
    mailer: Mailer,
    *,
    email: str,
    name: str | None,
    timezone: str | None,
    confirmed: bool,
    now: datetime,
    consent_source: str,
) -> SubscribeResult:
    """Add a subscriber; without `confirmed`, send the double opt-in email (at most once a day).

    Raises `InvalidAddressError` for a bad email, name or timezone, and `SuppressedAddressError`
    for an address that unsubscribed, bounced or complained: it is never re-activated silently.
    """
    course = mailer.course
    address = normalize_email(email)
    clean = clean_name(name)
    zone = check_timezone(timezone or course.settings.timezone)
    with sessions() as session, session.begin():
        added = store.add_subscriber(
            session,
            course_id=course.id,
            email=address,
            name=clean,
            timezone=zone,
            now=now,
            consent_source=consent_source,
            confirmed=confirmed,
            first_lesson=course.lessons[0].slug,
            first_send_at=schedule.first_send_at(course, zone, confirmed_at=now),
        )
        view = store.get_subscriber_by_id(session, added.subscriber_id)
    status = str(added.status)
    if status != store.SubscriberStatus.PENDING.value:
        if added.confirmed_now:
            note = "confirmed: was waiting for confirmation, now starts the course"
        else:
            note = "" if added.created else f"already subscribed ({status})"
        return SubscribeResult(added.subscriber_id, status, added.created, False, note)
    last = view.confirmation_sent_at if view is not None else None
    if last is not None and now - last < CONFIRMATION_INTERVAL:
        return SubscribeResult(
            added.subscriber_id,
            status,
            added.created,
            False,
            "a confirmation email was sent less than 24 hours ago; not sending another",
        )
    sent = send_confirmation(mailer, added.subscriber_id, address, clean, now=now)
    if sent:
        with sessions() as session, session.begin():
            store.mark_confirmation_sent(session, added.subscriber_id, now)
    note = "" if sent else "the confirmation email could not be sent now; try again later"
    return SubscribeResult(added.subscriber_id, status, added.created, sent, note)


def import_subscribers(
    sessions: Callable[[], Session],
    course: Course,
    path: Path,
    *,
    now: datetime,
    confirmed: bool,
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Import the CSV file `path` into `course` (see `drip.importer.import_subscribers`; it
    calls `progress` with the rows handled after each batch).

    With `confirmed`, new and pending subscribers start the course: the first lesson is due as
    `schedule.first_send_at` says for their timezone.
    """

    def first_send_at(timezone: str) -> datetime:
        return schedule.first_send_at(course, timezone, confirmed_at=now)

    return _import_rows(
        sessions,
        path,
        course_id=course.id,
        default_timezone=course.settings.timezone,
        first_lesson=course.lessons[0].slug,
        now=now,
        confirmed=confirmed,
        first_send_at=first_send_at if confirmed else None,
        dry_run=dry_run,
        progress=progress,
    )


def find_subscriber(
    sessions: sessionmaker[Session], course: Course, email: str
) -> store.SubscriberView:
    """The enrolment of `email` in `course`; `NotFoundError` if there is none."""
    with reading(sessions) as session:
        return _find(session, course, email)


def _find(session: Session, course: Course, email: str) -> store.SubscriberView:
    view = store.get_subscriber(session, course.id, normalize_email(email))
    if view is None:
        raise store.NotFoundError(f"{email} is not subscribed to {course.id}")
    return view


def pause_subscriber(
    sessions: sessionmaker[Session],
    course: Course,
    email: str,
    *,
    now: datetime,
    until: str | None = None,
) -> bool:
    """Pause an active subscriber: nothing is sent until resumed, or with `until` (see
    `pause_end`) until then: `drip send` resumes it once that moment has passed. False if it
    was not active.

    Raises `NotFoundError` for an unknown address and `UsageError` for an `until` that
    `pause_end` refuses.
    """
    with sessions() as session, session.begin():
        view = _find(session, course, email)
        end = None if until is None else pause_end(until, view.timezone, now=now)
        return store.pause(session, view.id, now, until=end)


def pause_end(text: str, timezone: str, *, now: datetime) -> datetime:
    """The end of a pause given as `--until`: a date (YYYY-MM-DD: the pause ends at the start
    of that day in the reader's `timezone`, so the next lesson goes out at its send time that
    day) or an ISO 8601 date-time with a UTC offset. Raises `UsageError` for anything else, for
    a moment not after `now`, and for a date when the reader's timezone cannot be loaded."""
    value = text.strip()
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            try:
                zone = schedule.zone_named(timezone)
            except UnknownTimezoneError as exc:
                raise UsageError(
                    f"--until {value}: the reader's timezone {timezone!r} cannot be loaded here;"
                    " give a date-time with a UTC offset, e.g. 2026-05-01T00:00+09:00"
                ) from exc
            end = schedule.local_send_moment(zone, day, time(0))
        else:
            end = datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(
            f"--until {text!r} is not a date (2026-05-01, the reader's midnight) or an ISO"
            " date-time with a UTC offset (2026-05-01T07:30+09:00)"
        ) from None
    if end.tzinfo is None:
        raise UsageError(
            f"--until {text!r} has no UTC offset; add one (e.g. {value}+09:00) or give a date"
        )
    if not schedule.MIN_YEAR <= end.year <= schedule.MAX_YEAR:
        raise UsageError(
            f"--until {text!r} is outside the years {schedule.MIN_YEAR}-{schedule.MAX_YEAR}"
        )
    if end <= now:
        raise UsageError(
            f"--until {text!r} is not in the future (now is {now.isoformat()}); give a later"
            " moment, or use 'drip subscribers resume'"
        )
    return end.astimezone(UTC)


def resume_subscriber(
    sessions: sessionmaker[Session], course: Course, email: str, *, now: datetime
) -> bool:
    """Resume a paused subscriber; the next lesson is due as `schedule.after_resume` says.

    False if the subscriber was not paused; raises `NotFoundError` for an unknown address. A
    subscriber whose timezone this host cannot load is resumed and held with the reason, as a
    send run holds it.
    """
    with reading(sessions) as session:
        subscriber_id = _find(session, course, email).id
    # The manage page's resume: it reads the reader again in its own transaction.
    return preferences.resume(sessions, course, subscriber_id, now=now)


def unsubscribe_subscriber(
    sessions: sessionmaker[Session], course: Course, email: str, *, now: datetime
) -> bool:
    """Unsubscribe at once; nothing more is ever sent. False if it was already suppressed.

    Raises `NotFoundError` for an unknown address.
    """
    with sessions() as session, session.begin():
        return store.unsubscribe(session, _find(session, course, email).id, now)


def list_subscribers(
    sessions: sessionmaker[Session],
    course: Course,
    *,
    status: store.SubscriberStatus | None = None,
    held: bool = False,
    lesson: str | None = None,
) -> Iterator[store.SubscriberView]:
    """The course's subscribers (one status, only the held ones with their reason, only those
    whose next lesson is `lesson`: a slug or a number of the course), streamed. Raises
    `UsageError` for a lesson the course does not have."""
    slug = None if lesson is None else _lesson_slug(course, lesson)
    with reading(sessions) as session:
        yield from store.list_subscribers(session, course.id, status=status, held=held, lesson=slug)


def _lesson_slug(course: Course, lesson: str) -> str:
    for candidate in course.lessons:
        if lesson.strip() in (candidate.slug, str(candidate.number)):
            return candidate.slug
    slugs = ", ".join(candidate.slug for candidate in course.lessons)
    raise UsageError(f"no lesson {lesson!r} in {course.id}; give a number or one of: {slugs}")


# --- the operator's subscriber admin (`drip subscribers ...`) ----------------------------------


class OperatorConfirmed(StrEnum):
    CONFIRMED = "confirmed"
    """Pending -> active: the course starts."""
    ALREADY = "already"
    """Active, paused or completed already: nothing changed."""


CLI_CONSENT_SOURCE = "cli"
"""The consent source of a reader the operator confirmed (as `drip subscribe --confirmed`)."""


def confirm_subscriber(
    sessions: sessionmaker[Session], course: Course, email: str, *, now: datetime
) -> tuple[OperatorConfirmed, datetime | None]:
    """The operator says the pending reader `email` consented elsewhere (not by the double
    opt-in link): the consent is recorded as obtained at `now` from CLI_CONSENT_SOURCE and the
    course starts, lesson 1 at `schedule.first_send_at`. Returns what happened and when lesson 1
    goes out. Raises `NotFoundError` for an unknown address and `SuppressedAddressError` for one
    that unsubscribed, bounced or complained (never re-activated by the operator).
    """
    with sessions() as session, session.begin():
        view = _find(session, course, email)
        at = schedule.first_send_at(course, view.timezone, confirmed_at=now)
        confirmed = store.confirm_subscriber(
            session,
            view.id,
            now=now,
            first_lesson=course.lessons[0].slug,
            first_send_at=at,
            consent_source=CLI_CONSENT_SOURCE,
        )
    if confirmed:
        return OperatorConfirmed.CONFIRMED, at
    return OperatorConfirmed.ALREADY, None


def resend_confirmation(
    sessions: sessionmaker[Session], mailer: Mailer, email: str, *, now: datetime
) -> bool:
    """Send the pending reader `email` a new confirmation (double opt-in) email through the
    signup form's queue and sender: queue it (`optin.queue_confirmation`), then send what the
    queue owes (`delivery.send_owed_confirmations`). True if this reader's email was accepted
    by the transport now; False if it stays queued (the transport refused it for now, or it is
    queued for later): the next `drip send` sends it.

    Raises `NotFoundError` for an unknown address, and `StateError` for a reader that is not
    pending or got one less than CONFIRMATION_INTERVAL ago (at most one a day per address).
    """
    with sessions() as session, session.begin():
        view = _find(session, mailer.course, email)
        if view.status is not store.SubscriberStatus.PENDING:
            why = (
                "drip never asks an unsubscribed, bounced or complained address again; only the"
                " person can sign up again"
                if view.status in SUPPRESSED_STATUSES
                else "it has confirmed already"
            )
            raise store.StateError(
                f"{view.email} is {view.status.value}, not pending; nothing sent: {why}"
            )
        queued = optin.queue_confirmation(session, view.id, now=now, interval=CONFIRMATION_INTERVAL)
        last = view.confirmation_sent_at
        if not queued and view.confirmation_wanted_at is None and last is not None:
            raise store.StateError(
                f"a confirmation email went to {view.email} at {last.isoformat()}, less than"
                f" {CONFIRMATION_INTERVAL.total_seconds() / 3600:.0f} h ago; try again after"
                f" {(last + CONFIRMATION_INTERVAL).isoformat()}"
            )
    send_owed_confirmations(sessions, mailer, now=now)
    with reading(sessions) as session:
        after = store.get_subscriber_by_id(session, view.id)
    return after is not None and after.confirmation_sent_at == now


def forget(sessions: sessionmaker[Session], course: Course, email: str, *, now: datetime) -> bool:
    """GDPR erase by address, as the manage page's "erase me" (`store.erase_subscriber`): every
    enrolment of the address (all courses), its deliveries and provider events are deleted and
    only the address's hash is kept, so no signup, `drip subscribe` or import brings it back.
    True if it was erased now, False if it had been already. Raises `NotFoundError` for an
    address that is neither enrolled in `course` nor erased."""
    address = normalize_email(email)
    with sessions() as session, session.begin():
        view = store.get_subscriber(session, course.id, address)
        if view is not None:
            return store.erase_subscriber(session, view.id, now)
        if store.is_suppressed(session, address):
            return False
    raise store.NotFoundError(f"{email} is not subscribed to {course.id}; nothing to erase")


def reader_events(sessions: sessionmaker[Session], subscriber_id: int) -> list[ReaderEvent]:
    """The provider events about one reader, oldest first (`store.admin.reader_events`)."""
    with reading(sessions) as session:
        return admin_store.reader_events(session, subscriber_id)


def in_doubt(sessions: sessionmaker[Session], course: Course) -> list[store.DeliveryView]:
    """The course's in-doubt deliveries, oldest first."""
    with reading(sessions) as session:
        return store.list_in_doubt(session, course.id)


def failed(sessions: sessionmaker[Session], course: Course) -> list[store.DeliveryView]:
    """The course's failed deliveries (refused for good, or given up on), oldest first."""
    with reading(sessions) as session:
        return store.list_deliveries(session, course.id, store.DeliveryStatus.FAILED)


def retry_failed(
    sessions: sessionmaker[Session],
    course: Course,
    delivery_ids: Sequence[int] | None,
    *,
    now: datetime,
) -> list[int]:
    """Re-arm failed deliveries (every one when `delivery_ids` is None) once their cause is
    fixed: the next `drip send` tries each again, with a fresh attempt budget. Returns the ids
    re-armed. Raises `NotFoundError` naming any given id that is not a failed delivery whose
    subscriber still waits for it.
    """
    with sessions() as session, session.begin():
        armed = store.retry_failed(session, course.id, delivery_ids, now)
        missing = sorted(set(delivery_ids or ()) - set(armed))
        if missing:
            raise store.NotFoundError(
                f"not a failed delivery whose reader still waits for it: {missing};"
                " 'drip deliveries failed' lists them (nothing was changed)"
            )
    return armed


def resolve(
    sessions: sessionmaker[Session], course: Course, delivery_id: int, *, sent: bool, now: datetime
) -> str:
    """Settle one in-doubt delivery and return what happens next, in words.

    sent=True: recorded as sent when it was claimed; the subscriber moves on to the next lesson
    on the usual schedule (or completes). sent=False: the same lesson is due again at once (the
    next `drip send` takes it, quiet hours permitting). Raises `NotFoundError` for an unknown
    id and `StateError` for a delivery that is not in doubt.
    """
    with sessions() as session, session.begin():
        found = [d for d in store.list_in_doubt(session, course.id) if d.delivery_id == delivery_id]
        if not found:
            # Let the store say whether it is unknown or simply not in doubt.
            store.resolve_in_doubt(
                session, delivery_id, sent=sent, now=now, next_lesson=None, next_send_at=None
            )
            raise AssertionError("resolve_in_doubt accepted a delivery that is not in doubt")
        doubt = found[0]
        if not sent:
            store.resolve_in_doubt(
                session, delivery_id, sent=False, now=now, next_lesson=None, next_send_at=now
            )
            return f"{doubt.email}: lesson {doubt.lesson!r} will be sent again by the next run"
        if not course.has_lesson(doubt.lesson):
            # What comes after a lesson that is gone is not known: hold, as the send run does.
            store.resolve_in_doubt(
                session,
                delivery_id,
                sent=True,
                now=doubt.claimed_at,
                next_lesson=doubt.lesson,
                next_send_at=None,
                hold_reason=f"lesson {doubt.lesson!r} was settled as sent but is no longer in"
                " the course; put it back in course.toml or move this reader on",
            )
            return (
                f"{doubt.email}: recorded as sent; held, because lesson {doubt.lesson!r} is no"
                " longer in the course (see 'drip subscribers list --held')"
            )
        subscriber = store.get_subscriber_by_id(session, doubt.subscriber_id)
        following = schedule.Next(None, None)
        if subscriber is not None:
            following = schedule.after_send(
                course,
                subscriber.timezone,
                doubt.lesson,
                sent_at=doubt.claimed_at,
                send_time=schedule.parse_send_time(subscriber.send_time),
            )
        store.resolve_in_doubt(
            session,
            delivery_id,
            sent=True,
            now=doubt.claimed_at,
            next_lesson=following.lesson,
            next_send_at=following.send_at,
        )
    if following.lesson is None:
        return f"{doubt.email}: recorded as sent; that was the last lesson"
    return f"{doubt.email}: recorded as sent; next is {following.lesson!r}"


# --- the web: signup, confirm and unsubscribe by link ------------------------------------------


class InvalidSignupError(InvalidAddressError):
    """A signup field that cannot be accepted; `field` is "email", "name" or "timezone"."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class SignupFields:
    """A signup's fields, validated and normalised by `check_signup`."""

    email: str
    name: str | None
    timezone: str


def check_signup(
    course: Course, *, email: str, name: str | None, timezone: str | None
) -> SignupFields:
    """The fields of a signup, validated and normalised as `drip subscribe` does
    (`drip.addresses`); a blank timezone is the course's. Raises `InvalidSignupError` naming the
    first field that is not acceptable."""
    try:
        address = normalize_email(email)
    except InvalidAddressError as exc:
        raise InvalidSignupError("email", str(exc)) from exc
    try:
        clean = clean_name(name)
    except InvalidAddressError as exc:
        raise InvalidSignupError("name", str(exc)) from exc
    try:
        zone = check_timezone((timezone or "").strip() or course.settings.timezone)
    except InvalidAddressError as exc:
        raise InvalidSignupError("timezone", str(exc)) from exc
    return SignupFields(address, clean, zone)


def request_signup(
    sessions: sessionmaker[Session],
    course: Course,
    *,
    email: str,
    name: str | None,
    timezone: str | None,
    now: datetime,
    consent_source: str,
) -> optin.OptinRequest:
    """A signup from the web form: `check_signup`, then `store_signup`. Raises
    `InvalidSignupError` for a bad field."""
    fields = check_signup(course, email=email, name=name, timezone=timezone)
    return store_signup(sessions, course, fields, now=now, consent_source=consent_source)


def store_signup(
    sessions: sessionmaker[Session],
    course: Course,
    fields: SignupFields,
    *,
    now: datetime,
    consent_source: str,
) -> optin.OptinRequest:
    """Store a pending subscriber and queue its confirmation email (sent off the request path
    by `delivery.send_owed_confirmations`), whatever state the address is in, as
    `store.optin.request_optin` says: new or pending -> a confirmation is owed (at most one per
    CONFIRMATION_INTERVAL); unsubscribed -> a fresh double opt-in (the reader stays
    unsubscribed until it confirms); confirmed, bounced or complained -> nothing; erased at the
    person's request (the suppression list) -> nothing, and nothing is stored. A new address
    costs one statement (`optin.insert_pending_now`), a known or
    erased one a short transaction after it (`optin.request_known`); never touches the
    transport.
    """
    # A new address, the common case: one INSERT, no ORM session (on PostgreSQL one round trip
    # in autocommit). It refuses an erased address itself.
    engine = sessions.kw["bind"]
    assert isinstance(engine, Engine)
    signup = optin.Signup(course.id, fields.email, fields.name, fields.timezone, consent_source)
    new_id = optin.insert_pending_now(engine, signup, now=now)
    if new_id is not None:
        return optin.OptinRequest.stored(new_id)
    with sessions() as session, session.begin():
        return optin.request_known(
            session,
            course_id=course.id,
            email=fields.email,
            now=now,
            interval=CONFIRMATION_INTERVAL,
        )


def renew_confirmation(
    sessions: sessionmaker[Session], subscriber_id: int, *, now: datetime
) -> bool:
    """ "Send me a new link" from an expired confirmation link: queue a confirmation email again
    for a pending (or unsubscribed, re-subscribing) subscriber, at most one per
    CONFIRMATION_INTERVAL. True if one is now owed; the caller shows the same page either way."""
    with sessions() as session, session.begin():
        return optin.queue_confirmation(
            session, subscriber_id, now=now, interval=CONFIRMATION_INTERVAL
        )


class Confirmed(StrEnum):
    CONFIRMED = "confirmed"
    """Pending -> active (or re-opened after an unsubscribe): the course starts or resumes."""
    ALREADY = "already"
    """Active, paused or completed already: nothing changes (links get clicked twice)."""
    NOT_REQUESTED = "not_requested"
    """Unsubscribed, and this link was sent before the unsubscribe: it cannot re-open it."""
    SUPPRESSED = "suppressed"
    """Bounced or complained: never re-activated."""
    UNKNOWN = "unknown"
    """No such subscriber (erased)."""


@dataclass(frozen=True)
class Confirmation:
    outcome: Confirmed
    subscriber_id: int
    timezone: str | None = None
    next_send_at: datetime | None = None
    """When the next lesson may go out (None: nothing more to send)."""
    resumed: bool = False
    """A reader who had unsubscribed came back and resumes where it stopped."""


def confirm_by_link(
    sessions: sessionmaker[Session],
    course: Course,
    subscriber_id: int,
    *,
    signed_at: datetime,
    now: datetime,
    consent_source: str = "web confirmation",
) -> Confirmation:
    """The person confirmed the double opt-in link signed at `signed_at` (checked valid by the
    caller). A pending subscriber becomes active with lesson 1 due at `schedule.first_send_at`.
    An unsubscribed one is re-opened — resuming at the lesson it stopped at, at the next send
    time (`schedule.after_resume`), or lesson 1 at `first_send_at` if it never had one — only
    when the link was signed after the unsubscribe: a new opt-in, confirmed, is consent; an
    old link is not. Bounced and complained subscribers stay suppressed.
    """
    with sessions() as session, session.begin():
        view = store.get_subscriber_by_id(session, subscriber_id)
        if view is None or view.course_id != course.id:
            return Confirmation(Confirmed.UNKNOWN, subscriber_id)
        status = view.status
        if status is store.SubscriberStatus.PENDING:
            at = schedule.first_send_at(course, view.timezone, confirmed_at=now)
            store.confirm_subscriber(
                session, view.id, now=now, first_lesson=course.lessons[0].slug, first_send_at=at
            )
            return Confirmation(Confirmed.CONFIRMED, view.id, view.timezone, at)
        if status is store.SubscriberStatus.UNSUBSCRIBED:
            # Tokens carry whole seconds: one signed in the second of the unsubscribe (or
            # before) may predate it, so it is not taken as a new opt-in.
            left_at = view.status_changed_at.replace(microsecond=0)
            if signed_at <= left_at:
                return Confirmation(Confirmed.NOT_REQUESTED, view.id, view.timezone)
            resume_at = _resume_at(course, view, now)
            optin.reopen(
                session, view.id, now=now, next_send_at=resume_at, consent_source=consent_source
            )
            return Confirmation(
                Confirmed.CONFIRMED, view.id, view.timezone, resume_at, resumed=True
            )
        if status in SUPPRESSED_STATUSES:
            return Confirmation(Confirmed.SUPPRESSED, view.id, view.timezone)
        return Confirmation(Confirmed.ALREADY, view.id, view.timezone, view.next_send_at)


def _resume_at(course: Course, view: store.SubscriberView, now: datetime) -> datetime | None:
    if view.next_lesson is None:
        return None
    if view.last_sent_at is None or not course.has_lesson(view.next_lesson):
        return schedule.first_send_at(course, view.timezone, confirmed_at=now)
    return schedule.after_resume(
        course,
        view.timezone,
        view.next_lesson,
        resumed_at=now,
        last_sent_at=view.last_sent_at,
        confirmed_at=view.confirmed_at,
        send_time=schedule.parse_send_time(view.send_time),
    )


def unsubscribe_by_link(
    sessions: sessionmaker[Session], course: Course, subscriber_id: int, *, now: datetime
) -> bool:
    """The person used an unsubscribe link (the page's button or a one-click POST): nothing more
    is ever sent. Claims a run holds for this reader and has not handed over yet are given back
    (the run skips them); `handing_over` says whether one is being handed over right now. False
    if it was already unsubscribed or suppressed, or is unknown (erased): repeats are harmless.
    """
    with sessions() as session, session.begin():
        view = store.get_subscriber_by_id(session, subscriber_id)
        if view is None or view.course_id != course.id:
            return False
        return optin.unsubscribe_by_link(session, subscriber_id, now)


def handing_over(sessions: sessionmaker[Session], subscriber_id: int, *, now: datetime) -> bool:
    """True while a run is handing one of this reader's lessons to the transport (marked
    'sending' before an unsubscribe committed, not recorded yet)."""
    with sessions() as session, session.begin():
        return optin.count_handing_over(session, subscriber_id, now) > 0


def owed_confirmations(sessions: sessionmaker[Session], course: Course) -> int:
    """How many confirmation emails are queued and not sent yet."""
    with sessions() as session, session.begin():
        return optin.count_owed_confirmations(session, course.id)
