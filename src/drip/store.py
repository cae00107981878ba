"""The store: the only module that builds queries. Functions take a Session and plain values.

Transactions belong to the caller: no function here commits. Use
`with sessions() as session, session.begin(): ...` and keep transactions short (on SQLite every
transaction holds the database's write lock from its start, see `drip.db`).

Data leaves as plain frozen dataclasses, never ORM objects. The hot paths (claiming due lessons,
recording outcomes, importing) are SQLAlchemy Core statements run in batches: one statement per
chunk or one executemany per batch, never one round trip per row where avoidable.

State rules kept here:
- `next_send_at` is non-NULL only for an 'active' subscriber with a `next_lesson`; the send query
  reads the partial index on (course_id, next_send_at) and nothing else.
- An 'unsubscribed', 'bounced' or 'complained' enrolment is never re-activated by this module.
- The ledger row of a (subscriber, lesson) is created when first claimed and never deleted, so a
  lesson goes out at most once; progress is kept by lesson slug, never by position.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    Connection,
    Insert,
    Row,
    Select,
    String,
    Table,
    and_,
    any_,
    bindparam,
    case,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.types import TypeEngine

from drip.errors import DripError
from drip.models import (
    SUPPRESSED_STATUSES,
    DeliveryStatus,
    SubscriberStatus,
    deliveries,
    events,
    subscribers,
)

__all__ = [
    "AddResult",
    "Claim",
    "ClaimBatch",
    "DeliveryStatus",
    "ExistingSubscriber",
    "InDoubtView",
    "NewSubscriber",
    "NotFoundError",
    "SentItem",
    "StateError",
    "SubscriberStatus",
    "SubscriberView",
    "SuppressedAddressError",
    "add_event",
    "add_subscriber",
    "claim_due",
    "confirm_pending",
    "confirm_subscriber",
    "count_due",
    "delivery_counts",
    "due_by_lesson",
    "existing_subscribers",
    "get_subscriber",
    "get_subscriber_by_id",
    "insert_subscribers",
    "list_in_doubt",
    "mark_confirmation_sent",
    "mark_suppressed",
    "pause",
    "record_failed",
    "record_in_doubt",
    "record_retry",
    "record_sent",
    "release_claims",
    "resolve_in_doubt",
    "resume",
    "unsubscribe",
]

log = logging.getLogger(__name__)

S = subscribers
D = deliveries
ACTIVE = SubscriberStatus.ACTIVE.value
COMPLETED = SubscriberStatus.COMPLETED.value
# Ids per IN (...) list: well below SQLite's 32766 and PostgreSQL's 65535 bound parameters.
CHUNK = 5_000

T = TypeVar("T")


class SuppressedAddressError(DripError):
    """The address unsubscribed, bounced or complained: it is never re-subscribed silently."""

    exit_code = 2


class NotFoundError(DripError):
    """No subscriber or delivery with the given id."""

    exit_code = 2


class StateError(DripError):
    """The row is not in a state that allows the requested change."""

    exit_code = 2


# --- values in and out ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AddResult:
    subscriber_id: int
    status: SubscriberStatus
    created: bool
    confirmed_now: bool = False
    """True when this call moved an existing pending subscriber to 'active'."""


@dataclass(frozen=True, slots=True)
class SubscriberView:
    id: int
    course_id: str
    email: str
    name: str | None
    timezone: str
    status: SubscriberStatus
    created_at: datetime
    consent_at: datetime
    consent_source: str
    confirmed_at: datetime | None
    paused_at: datetime | None
    status_changed_at: datetime
    confirmation_sent_at: datetime | None
    next_lesson: str | None
    next_send_at: datetime | None
    last_sent_at: datetime | None


@dataclass(frozen=True, slots=True)
class Claim:
    """One lesson claimed for sending by one run: the ledger row exists and is 'sending'."""

    delivery_id: int
    subscriber_id: int
    email: str
    name: str | None
    timezone: str
    lesson: str
    attempts: int
    confirmed_at: datetime | None
    last_sent_at: datetime | None


@dataclass(frozen=True, slots=True)
class ClaimBatch:
    claims: list[Claim]
    newly_in_doubt: int
    """'sending' rows whose lease ran out (a crashed run), now 'in_doubt' and not claimed."""


@dataclass(frozen=True, slots=True)
class SentItem:
    """The provider accepted a delivery. `next_lesson` None means the course is complete."""

    delivery_id: int
    provider_id: str | None
    now: datetime
    next_lesson: str | None
    next_send_at: datetime | None


@dataclass(frozen=True, slots=True)
class InDoubtView:
    delivery_id: int
    subscriber_id: int
    email: str
    lesson: str
    run_id: str
    attempts: int
    claimed_at: datetime
    lease_until: datetime
    detail: str | None
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class NewSubscriber:
    """A validated subscriber for `insert_subscribers` (email already normalised)."""

    email: str
    name: str | None
    timezone: str
    first_send_at: datetime | None = None
    """Only used when inserted as confirmed."""


@dataclass(frozen=True, slots=True)
class ExistingSubscriber:
    id: int
    status: SubscriberStatus
    timezone: str


# --- helpers ----------------------------------------------------------------------------------


def _conn(session: Session) -> Connection:
    # Core statements on the session's connection: same transaction, and CursorResult gives
    # rowcount, which Session.execute's Result type does not expose.
    return session.connection()


def _chunks(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _insert_ignoring_conflicts(conn: Connection, table: Table, keys: Sequence[str]) -> Insert:
    """INSERT ... ON CONFLICT (keys) DO NOTHING in the connection's dialect."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing(index_elements=list(keys))
    return sqlite.insert(table).on_conflict_do_nothing(index_elements=list(keys))


def _is_postgresql(conn: Connection) -> bool:
    return conn.dialect.name == "postgresql"


def _in_list(conn: Connection, column: Any, name: str, item_type: TypeEngine[Any]) -> Any:
    """`column IN (list)` with the list bound as parameter `name`.

    PostgreSQL: `= ANY(:array)`, one parameter whatever the length, so the statement is the
    same text every time (thousands of placeholders cost more to send and plan than the query).
    SQLite: an expanding IN list.
    """
    if _is_postgresql(conn):
        return column == any_(bindparam(name, type_=postgresql.ARRAY(item_type)))
    return column.in_(bindparam(name, expanding=True))


def _view(row: Row[Any]) -> SubscriberView:
    values = row._asdict()
    values["status"] = SubscriberStatus(values["status"])
    return SubscriberView(**values)


def _status_of(conn: Connection, subscriber_id: int) -> SubscriberStatus:
    status = conn.execute(select(S.c.status).where(S.c.id == subscriber_id)).scalar_one_or_none()
    if status is None:
        raise NotFoundError(f"no subscriber with id {subscriber_id}")
    return SubscriberStatus(status)


def _suppressed(email: str, course_id: str, status: SubscriberStatus) -> SuppressedAddressError:
    return SuppressedAddressError(
        f"{email} is {status.value} in course {course_id}; drip never subscribes such an"
        " address again by itself. Leave it out; only the person can ask to come back"
    )


# --- subscribers ------------------------------------------------------------------------------


def add_subscriber(
    session: Session,
    *,
    course_id: str,
    email: str,
    name: str | None,
    timezone: str,
    now: datetime,
    consent_source: str,
    confirmed: bool,
    first_lesson: str,
    first_send_at: datetime | None,
) -> AddResult:
    """Enrol `email` (validated by the caller) in `course_id`, or report the existing enrolment.

    New: 'pending', or 'active' when `confirmed` (next_lesson=first_lesson,
    next_send_at=first_send_at). Existing pending + `confirmed`: confirmed the same way. Existing
    active/paused/completed: unchanged. Existing unsubscribed/bounced/complained: raises
    `SuppressedAddressError`. Safe against a concurrent add of the same address.
    """
    conn = _conn(session)
    email = email.strip().lower()
    status = SubscriberStatus.ACTIVE if confirmed else SubscriberStatus.PENDING
    stmt = (
        _insert_ignoring_conflicts(conn, S, ("course_id", "email"))
        .values(
            _new_row(
                course_id,
                NewSubscriber(email, name, timezone, first_send_at),
                now=now,
                consent_source=consent_source,
                confirmed=confirmed,
                first_lesson=first_lesson,
            )
        )
        .returning(S.c.id)
    )
    new_id = conn.execute(stmt).scalar_one_or_none()
    if new_id is not None:
        return AddResult(new_id, status, created=True)
    row = conn.execute(
        select(S.c.id, S.c.status).where(S.c.course_id == course_id, S.c.email == email)
    ).one()
    existing = SubscriberStatus(row.status)
    if existing in SUPPRESSED_STATUSES:
        raise _suppressed(email, course_id, existing)
    if existing is SubscriberStatus.PENDING and confirmed:
        confirm_subscriber(
            session, row.id, now=now, first_lesson=first_lesson, first_send_at=first_send_at
        )
        return AddResult(row.id, SubscriberStatus.ACTIVE, created=False, confirmed_now=True)
    return AddResult(row.id, existing, created=False)


def _new_row(
    course_id: str,
    new: NewSubscriber,
    *,
    now: datetime,
    consent_source: str,
    confirmed: bool,
    first_lesson: str,
) -> dict[str, Any]:
    return {
        "course_id": course_id,
        "email": new.email,
        "name": new.name,
        "timezone": new.timezone,
        "status": ACTIVE if confirmed else SubscriberStatus.PENDING.value,
        "created_at": now,
        "consent_at": now,
        "consent_source": consent_source,
        "confirmed_at": now if confirmed else None,
        "paused_at": None,
        "status_changed_at": now,
        "confirmation_sent_at": None,
        "next_lesson": first_lesson if confirmed else None,
        "next_send_at": new.first_send_at if confirmed else None,
        "last_sent_at": None,
    }


def get_subscriber(session: Session, course_id: str, email: str) -> SubscriberView | None:
    """The enrolment of `email` (any case) in `course_id`, or None."""
    row = (
        _conn(session)
        .execute(select(S).where(S.c.course_id == course_id, S.c.email == email.strip().lower()))
        .one_or_none()
    )
    return None if row is None else _view(row)


def get_subscriber_by_id(session: Session, subscriber_id: int) -> SubscriberView | None:
    row = _conn(session).execute(select(S).where(S.c.id == subscriber_id)).one_or_none()
    return None if row is None else _view(row)


def confirm_subscriber(
    session: Session,
    subscriber_id: int,
    *,
    now: datetime,
    first_lesson: str,
    first_send_at: datetime | None,
) -> bool:
    """Pending -> active with the first lesson scheduled. True if this call confirmed it.

    Already active/paused/completed: False (confirm links get clicked twice). Suppressed:
    raises `SuppressedAddressError`; unknown id: `NotFoundError`.
    """
    conn = _conn(session)
    result = conn.execute(
        update(S)
        .where(S.c.id == subscriber_id, S.c.status == SubscriberStatus.PENDING.value)
        .values(
            status=ACTIVE,
            confirmed_at=now,
            status_changed_at=now,
            next_lesson=first_lesson,
            next_send_at=first_send_at,
        )
    )
    if result.rowcount:
        return True
    status = _status_of(conn, subscriber_id)
    if status in SUPPRESSED_STATUSES:
        row = conn.execute(select(S.c.email, S.c.course_id).where(S.c.id == subscriber_id)).one()
        raise _suppressed(row.email, row.course_id, status)
    return False


def mark_confirmation_sent(session: Session, subscriber_id: int, now: datetime) -> None:
    """Record when the double opt-in email went out (rate limiting reads it)."""
    result = _conn(session).execute(
        update(S).where(S.c.id == subscriber_id).values(confirmation_sent_at=now)
    )
    if not result.rowcount:
        raise NotFoundError(f"no subscriber with id {subscriber_id}")


def _transition(
    session: Session, subscriber_id: int, where: Any, values: Mapping[str, Any]
) -> bool:
    conn = _conn(session)
    result = conn.execute(update(S).where(S.c.id == subscriber_id, where).values(**values))
    if result.rowcount:
        return True
    _status_of(conn, subscriber_id)  # raises NotFoundError for an unknown id
    return False


def pause(session: Session, subscriber_id: int, now: datetime) -> bool:
    """Active -> paused (nothing is sent until `resume`). False if it was not active."""
    return _transition(
        session,
        subscriber_id,
        S.c.status == ACTIVE,
        {
            "status": SubscriberStatus.PAUSED.value,
            "paused_at": now,
            "status_changed_at": now,
            "next_send_at": None,
        },
    )


def resume(session: Session, subscriber_id: int, *, now: datetime, next_send_at: datetime) -> bool:
    """Paused -> active, next lesson at `next_send_at` (computed by the caller from
    drip.schedule and the subscriber's `next_lesson`). A paused subscriber whose last lesson went
    out meanwhile becomes 'completed'. False if it was not paused.
    """
    finished = S.c.next_lesson.is_(None)
    return _transition(
        session,
        subscriber_id,
        S.c.status == SubscriberStatus.PAUSED.value,
        {
            "status": case((finished, SubscriberStatus.COMPLETED.value), else_=ACTIVE),
            "next_send_at": case(
                (finished, None), else_=bindparam("resume_at", next_send_at, S.c.next_send_at.type)
            ),
            "paused_at": None,
            "status_changed_at": now,
        },
    )


def unsubscribe(session: Session, subscriber_id: int, now: datetime) -> bool:
    """Any state -> unsubscribed, at once: a claim in flight records the send but nothing more
    goes out. False if it was already suppressed (a bounce or complaint stays recorded as such).
    """
    return _transition(
        session,
        subscriber_id,
        S.c.status.not_in([status.value for status in SUPPRESSED_STATUSES]),
        {
            "status": SubscriberStatus.UNSUBSCRIBED.value,
            "status_changed_at": now,
            "next_send_at": None,
        },
    )


def mark_suppressed(
    session: Session, email: str, status: SubscriberStatus | str, now: datetime
) -> int:
    """A bounce or complaint: every course enrolment of `email` gets `status`. Returns rows changed.

    A complaint overrides an earlier unsubscribe or bounce; a bounce does not override them.
    Raises ValueError for any other status.
    """
    target = SubscriberStatus(status)
    if target not in (SubscriberStatus.BOUNCED, SubscriberStatus.COMPLAINED):
        raise ValueError(f"mark_suppressed takes 'bounced' or 'complained', not {target.value!r}")
    if target is SubscriberStatus.COMPLAINED:
        overridable = S.c.status != target.value
    else:
        overridable = S.c.status.not_in([member.value for member in SUPPRESSED_STATUSES])
    result = _conn(session).execute(
        update(S)
        .where(S.c.email == email.strip().lower(), overridable)
        .values(status=target.value, status_changed_at=now, next_send_at=None)
    )
    return result.rowcount


# --- import (batched) -------------------------------------------------------------------------


def existing_subscribers(
    session: Session, course_id: str, emails: Sequence[str]
) -> dict[str, ExistingSubscriber]:
    """The enrolments in `course_id` among `emails` (normalised), keyed by email."""
    conn = _conn(session)
    found: dict[str, ExistingSubscriber] = {}
    columns = (S.c.email, S.c.id, S.c.status, S.c.timezone)
    stmt: Select[Any]
    if _is_postgresql(conn):
        # A join on unnest() probes the (course_id, email) index once per address whatever the
        # table statistics say; `email = ANY(...)` right after a big import (statistics not yet
        # refreshed) was planned as a scan of the whole course, 1 s per batch at 100k rows.
        wanted = (
            func.unnest(bindparam("emails", type_=postgresql.ARRAY(String())))
            .table_valued("email", name="wanted")
            .render_derived()
        )
        stmt = (
            select(*columns)
            .select_from(wanted)
            .join(S, and_(S.c.course_id == course_id, S.c.email == wanted.c.email))
        )
    else:
        stmt = select(*columns).where(
            S.c.course_id == course_id, S.c.email.in_(bindparam("emails", expanding=True))
        )
    for chunk in _chunks(emails):
        for row in conn.execute(stmt, {"emails": list(chunk)}):
            found[row.email] = ExistingSubscriber(
                row.id, SubscriberStatus(row.status), row.timezone
            )
    return found


def insert_subscribers(
    session: Session,
    course_id: str,
    rows: Sequence[NewSubscriber],
    *,
    now: datetime,
    consent_source: str,
    confirmed: bool,
    first_lesson: str,
) -> int:
    """Insert new enrolments, skipping any that exist (ON CONFLICT DO NOTHING). Returns how many
    were inserted. Confirmed rows start 'active' at their `first_send_at`.
    """
    if not rows:
        return 0
    conn = _conn(session)
    values = [
        _new_row(
            course_id,
            row,
            now=now,
            consent_source=consent_source,
            confirmed=confirmed,
            first_lesson=first_lesson,
        )
        for row in rows
    ]
    # executemany + RETURNING: SQLAlchemy batches it into multi-row INSERTs ("insertmanyvalues")
    # and the returned ids count exactly the rows that were new.
    stmt = _insert_ignoring_conflicts(conn, S, ("course_id", "email")).returning(S.c.id)
    return len(conn.execute(stmt, values).all())


def confirm_pending(
    session: Session,
    items: Sequence[tuple[int, datetime | None]],
    *,
    now: datetime,
    first_lesson: str,
) -> int:
    """Confirm pending subscribers in bulk: (subscriber_id, first_send_at) each. Returns how many
    were still pending and are now active.
    """
    if not items:
        return 0
    stmt = (
        update(S)
        .where(S.c.id == bindparam("b_id"), S.c.status == SubscriberStatus.PENDING.value)
        .values(
            status=ACTIVE,
            confirmed_at=now,
            status_changed_at=now,
            next_lesson=first_lesson,
            next_send_at=bindparam("b_at", type_=S.c.next_send_at.type),
        )
    )
    result = _conn(session).execute(stmt, [{"b_id": sid, "b_at": at} for sid, at in items])
    return result.rowcount


# --- claiming ---------------------------------------------------------------------------------


def _due_filter(course_id: str, now: datetime) -> tuple[Any, ...]:
    # `IS NOT NULL` matches the partial index's predicate word for word.
    return (
        S.c.course_id == course_id,
        S.c.next_send_at.is_not(None),
        S.c.next_send_at <= now,
        S.c.status == ACTIVE,
    )


def _pick_due(conn: Connection, course_id: str, now: datetime, limit: int) -> list[Row[Any]]:
    joined = S.outerjoin(D, and_(D.c.subscriber_id == S.c.id, D.c.lesson == S.c.next_lesson))
    stmt: Select[Any] = (
        select(
            S.c.id,
            S.c.email,
            S.c.name,
            S.c.timezone,
            S.c.next_lesson,
            S.c.confirmed_at,
            S.c.last_sent_at,
            D.c.id.label("delivery_id"),
            D.c.status.label("delivery_status"),
            D.c.attempts,
            D.c.lease_until,
        )
        .select_from(joined)
        .where(*_due_filter(course_id, now))
        .order_by(S.c.next_send_at, S.c.id)
        .limit(limit)
    )
    if _is_postgresql(conn):
        # Rows another run is claiming right now are skipped, not waited for.
        stmt = stmt.with_for_update(skip_locked=True, of=S)
    return list(conn.execute(stmt))


def _set_next_send_at(conn: Connection, ids: Sequence[int], value: datetime | None) -> None:
    stmt = (
        update(S)
        .where(_in_list(conn, S.c.id, "ids", BigInteger()))
        .values(next_send_at=bindparam("b_at", type_=S.c.next_send_at.type))
    )
    for chunk in _chunks(ids):
        conn.execute(stmt, {"ids": list(chunk), "b_at": value})


def _insert_claims(
    conn: Connection, course_id: str, run_id: str, now: datetime, lease_until: datetime
) -> Any:
    """INSERT one 'claimed' delivery of its next lesson per subscriber in the bound list `ids`,
    RETURNING (delivery id, subscriber id). One INSERT ... SELECT: the shared values are bound
    once, not once per row."""

    def shared(value: Any, column: Any) -> Any:
        return literal(value, type_=column.type)

    source = select(
        S.c.id,
        shared(course_id, D.c.course_id),
        S.c.next_lesson,
        shared(DeliveryStatus.CLAIMED.value, D.c.status),
        shared(run_id, D.c.run_id),
        shared(1, D.c.attempts),
        shared(now, D.c.claimed_at),
        shared(lease_until, D.c.lease_until),
        shared(now, D.c.updated_at),
    ).where(_in_list(conn, S.c.id, "ids", BigInteger()))
    columns = [
        "subscriber_id",
        "course_id",
        "lesson",
        "status",
        "run_id",
        "attempts",
        "claimed_at",
        "lease_until",
        "updated_at",
    ]
    return insert(D).from_select(columns, source).returning(D.c.id, D.c.subscriber_id)


def claim_due(
    session: Session,
    *,
    course_id: str,
    now: datetime,
    limit: int,
    run_id: str,
    lease: timedelta,
    defer: Callable[[str, str], datetime | None] | None = None,
) -> ClaimBatch:
    """Claim up to `limit` due lessons of `course_id` for run `run_id`, oldest due first.

    Due: 'active' with next_send_at <= now, in (next_send_at, id) order. `defer(timezone,
    lesson)` may return a later moment for a subscriber that must not get mail now (a late run
    inside quiet hours): its next_send_at becomes that moment and it is not claimed. Per
    subscriber, by the ledger row of (subscriber, next_lesson): none -> inserted 'claimed'
    (attempts 1); 'retry', 'failed' (re-armed by an operator) or 'claimed' past its lease (never
    handed to a transport) -> 'claimed', attempts + 1; 'sending' past its lease (the run crashed
    while the message was with the transport) -> 'in_doubt', subscriber held (next_send_at
    NULL), counted in `newly_in_doubt`, not claimed; 'claimed' or 'sending' within another run's
    lease -> left alone until it ends; 'sent' or 'in_doubt' -> not claimed, subscriber held,
    logged. A claimed subscriber's next_send_at becomes the lease end so no other run picks it
    meanwhile. Call `mark_sending` just before handing claims to a transport.

    The caller must commit right after and before sending anything: the claim is what makes a
    concurrent or later run leave these lessons alone. PostgreSQL: FOR UPDATE SKIP LOCKED, so
    concurrent runs claim disjoint sets; SQLite: the transaction holds the write lock.
    """
    if limit < 1:
        return ClaimBatch([], 0)
    conn = _conn(session)
    lease_until = now + lease
    claims: list[Claim] = []
    newly_in_doubt = 0
    # Loop because rows that cannot be claimed still use up a pick; each pass moves every picked
    # row out of the due set, so this ends.
    while len(claims) < limit:
        picked = _pick_due(conn, course_id, now, limit - len(claims))
        if not picked:
            break
        fresh: list[Row[Any]] = []
        again: list[Row[Any]] = []
        expired: list[Row[Any]] = []
        held: list[int] = []
        leased: list[tuple[int, datetime]] = []
        deferred: list[tuple[int, datetime]] = []
        for row in picked:
            status = row.delivery_status
            claimable = status is None or status in (DeliveryStatus.RETRY, DeliveryStatus.FAILED)
            if status == DeliveryStatus.CLAIMED and row.lease_until <= now:
                claimable = True  # its run died before handing it over: nothing went out
            later = (
                defer(row.timezone, row.next_lesson)
                if claimable and defer is not None and row.next_lesson is not None
                else None
            )
            if row.next_lesson is None:
                log.warning("subscriber %s is active and due with no next lesson; held", row.id)
                held.append(row.id)
            elif later is not None:
                deferred.append((row.id, later))
            elif status is None:
                fresh.append(row)
            elif claimable:
                again.append(row)
            elif status == DeliveryStatus.SENDING and row.lease_until <= now:
                expired.append(row)
                held.append(row.id)
            elif status in (DeliveryStatus.CLAIMED, DeliveryStatus.SENDING):
                leased.append((row.id, row.lease_until))
            else:
                log.warning(
                    "subscriber %s is due for %r, which the ledger has as %r; held, not sent",
                    row.id,
                    row.next_lesson,
                    status,
                )
                held.append(row.id)

        delivery_ids: dict[int, int] = {}
        if fresh:
            for chunk in _chunks(fresh):
                inserted = conn.execute(
                    _insert_claims(conn, course_id, run_id, now, lease_until),
                    {"ids": [row.id for row in chunk]},
                )
                delivery_ids.update((subscriber, delivery) for delivery, subscriber in inserted)
        if again:
            reclaim = (
                update(D)
                .where(_in_list(conn, D.c.id, "ids", BigInteger()))
                .values(
                    status=DeliveryStatus.CLAIMED.value,
                    run_id=run_id,
                    attempts=D.c.attempts + 1,
                    claimed_at=now,
                    lease_until=lease_until,
                    updated_at=now,
                )
            )
            for chunk in _chunks(again):
                conn.execute(reclaim, {"ids": [row.delivery_id for row in chunk]})
        if expired:
            doubt = (
                update(D)
                .where(_in_list(conn, D.c.id, "ids", BigInteger()))
                .values(
                    status=DeliveryStatus.IN_DOUBT.value,
                    updated_at=now,
                    detail="the run that claimed it ended without recording an outcome"
                    " (crashed or killed); it may or may not have been sent",
                )
            )
            for chunk in _chunks(expired):
                conn.execute(doubt, {"ids": [row.delivery_id for row in chunk]})
            newly_in_doubt += len(expired)
        leased.extend(deferred)
        if leased:
            conn.execute(
                update(S)
                .where(S.c.id == bindparam("b_id"))
                .values(next_send_at=bindparam("b_at", type_=S.c.next_send_at.type)),
                [{"b_id": sid, "b_at": until} for sid, until in leased],
            )
        _set_next_send_at(conn, held, None)
        claimed_rows = fresh + again
        _set_next_send_at(conn, [row.id for row in claimed_rows], lease_until)
        for row in fresh:
            claims.append(_claim(row, delivery_ids[row.id], 1))
        for row in again:
            claims.append(_claim(row, row.delivery_id, row.attempts + 1))
    return ClaimBatch(claims, newly_in_doubt)


def mark_sending(session: Session, delivery_ids: Sequence[int], now: datetime) -> list[int]:
    """These claims are about to be handed to a transport: 'claimed' -> 'sending'.

    Only claims whose subscriber is still 'active' are marked; the others (an unsubscribe or a
    pause since the claim) go back to 'retry', unsent, so a reader who unsubscribed while a long
    run was going gets nothing after that. Returns the ids marked 'sending': send only those.
    Commit before sending. After a crash, only 'sending' rows can have gone out (they become
    'in_doubt'); rows still 'claimed' are sent by a later run.
    """
    conn = _conn(session)
    still_active = select(S.c.id).where(S.c.id == D.c.subscriber_id, S.c.status == ACTIVE).exists()
    claimed = D.c.status == DeliveryStatus.CLAIMED.value
    mark = (
        update(D)
        .where(_in_list(conn, D.c.id, "ids", BigInteger()), claimed, still_active)
        .values(status=DeliveryStatus.SENDING.value, updated_at=now)
        .returning(D.c.id)
    )
    release = (
        update(D)
        .where(_in_list(conn, D.c.id, "ids", BigInteger()), claimed)
        .values(
            status=DeliveryStatus.RETRY.value,
            updated_at=now,
            detail="not sent: the reader was no longer active when its turn came",
        )
    )
    marked: list[int] = []
    for chunk in _chunks(delivery_ids):
        marked.extend(row[0] for row in conn.execute(mark, {"ids": list(chunk)}))
        conn.execute(release, {"ids": list(chunk)})
    return marked


def _claim(row: Row[Any], delivery_id: int, attempts: int) -> Claim:
    return Claim(
        delivery_id=delivery_id,
        subscriber_id=row.id,
        email=row.email,
        name=row.name,
        timezone=row.timezone,
        lesson=row.next_lesson,
        attempts=attempts,
        confirmed_at=row.confirmed_at,
        last_sent_at=row.last_sent_at,
    )


# --- recording outcomes -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Settling:
    """A delivery about to change state, with its subscriber, locked for this transaction."""

    delivery_id: int
    delivery_status: str
    run_id: str
    lesson: str
    subscriber_id: int
    subscriber_status: str
    next_lesson: str | None

    @property
    def on_track(self) -> bool:
        """The subscriber is active and waiting for exactly this lesson."""
        return self.subscriber_status == ACTIVE and self.next_lesson == self.lesson


def _settling(conn: Connection, delivery_ids: Iterable[int]) -> dict[int, _Settling]:
    """Current state of deliveries and their subscribers; locked on PostgreSQL so an unsubscribe
    committed concurrently is either seen here or applied after this transaction (and wins).
    """
    stmt: Select[Any] = (
        select(
            D.c.id,
            D.c.status,
            D.c.run_id,
            D.c.lesson,
            D.c.subscriber_id,
            S.c.status.label("subscriber_status"),
            S.c.next_lesson,
        )
        .select_from(D.join(S, S.c.id == D.c.subscriber_id))
        .where(_in_list(conn, D.c.id, "ids", BigInteger()))
        .order_by(D.c.id)
    )
    if _is_postgresql(conn):
        stmt = stmt.with_for_update(of=[D, S])
    found: dict[int, _Settling] = {}
    for chunk in _chunks(sorted(set(delivery_ids))):
        for row in conn.execute(stmt, {"ids": list(chunk)}):
            found[row.id] = _Settling(*row)
    return found


def _converter(column: Any, dialect: Any) -> Callable[[Any], Any] | None:
    """The bind processing of `column`'s type, memoised per value (None: nothing to do).

    A batch shares a handful of distinct values (its `now`, a few next_send_at), so converting
    each once instead of once per row is most of the saving of `_update_rows`.
    """
    # dialect_impl: the full chain (aware -> naive UTC -> the pinned SQLite text format).
    process = column.type.dialect_impl(dialect).bind_processor(dialect)
    if process is None:
        return None
    memo: dict[Any, Any] = {}

    def convert(value: Any) -> Any:
        try:
            return memo[value]
        except KeyError:
            memo[value] = converted = process(value)
            return converted

    return convert


def _update_rows(
    conn: Connection,
    table: Table,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    only_active: bool = False,
) -> None:
    """UPDATE `table` SET each of `columns` WHERE id = the last value of the row, for every row
    (and, with `only_active`, only where the row's status is 'active').

    One statement per call: on PostgreSQL an UPDATE ... FROM unnest(<one array per column>), so
    a batch is one round trip; elsewhere one executemany of plain tuples on the DBAPI cursor.
    Values are converted by the columns' types (aware datetimes -> the stored UTC form) but skip
    SQLAlchemy's per-row parameter processing, which cost more than the SQL itself.
    """
    if not rows:
        return
    active = f" AND t.status = '{ACTIVE}'" if only_active else ""
    groups: dict[tuple[Any, ...], list[Any]] = {}
    for row in rows:
        groups.setdefault(tuple(row[:-1]), []).append(row[-1])
    if len(groups) * _SHARED_RATIO <= len(rows):
        _update_groups(conn, table, columns, groups, active)
        return
    dialect = conn.dialect
    names = [*columns, "id"]
    converters = [_converter(table.c[name], dialect) for name in names]
    if all(convert is None for convert in converters):
        params: list[tuple[Any, ...]] = [tuple(row) for row in rows]
    else:
        params = [
            tuple(
                value if convert is None else convert(value)
                for convert, value in zip(converters, row, strict=True)
            )
            for row in rows
        ]
    if _is_postgresql(conn):
        arrays = ", ".join(f"%s::{table.c[name].type.compile(dialect)}[]" for name in names)
        assignments = ", ".join(f"{name} = v.{name}" for name in columns)
        sql = (
            f"UPDATE {table.name} AS t SET {assignments}"
            f" FROM unnest({arrays}) AS v({', '.join(names)}) WHERE t.id = v.id{active}"
        )
        conn.exec_driver_sql(sql, tuple(list(column) for column in zip(*params, strict=True)))
        return
    mark = "?" if dialect.paramstyle == "qmark" else "%s"
    assignments = ", ".join(f"{name} = {mark}" for name in columns)
    sql = f"UPDATE {table.name} AS t SET {assignments} WHERE t.id = {mark}{active}"
    conn.exec_driver_sql(sql, params)


_SHARED_RATIO = 4
"""`_update_rows` goes set-based when rows share their values at least this much on average."""


def _update_groups(
    conn: Connection,
    table: Table,
    columns: Sequence[str],
    groups: Mapping[tuple[Any, ...], Sequence[Any]],
    active: str,
) -> None:
    """One `UPDATE ... SET <shared values> WHERE id IN <ids>` per group of rows with equal
    values: a bulk request's readers share their outcome and next lesson, so most of a batch is
    one statement with one id list instead of per-row values (less binding and conversion).
    """
    dialect = conn.dialect
    converters = [_converter(table.c[name], dialect) for name in columns]
    postgres = _is_postgresql(conn)
    mark = "%s" if postgres or dialect.paramstyle != "qmark" else "?"
    if postgres:
        # Cast like the unnest form does, so a value is read as its column's type.
        assignments = ", ".join(
            f"{name} = %s::{table.c[name].type.compile(dialect)}" for name in columns
        )
    else:
        assignments = ", ".join(f"{name} = {mark}" for name in columns)
    for values, ids in groups.items():
        shared = tuple(
            value if convert is None else convert(value)
            for convert, value in zip(converters, values, strict=True)
        )
        if postgres:
            sql = (
                f"UPDATE {table.name} AS t SET {assignments} WHERE t.id = ANY(%s::BIGINT[]){active}"
            )
            conn.exec_driver_sql(sql, (*shared, list(ids)))
            continue
        for chunk in _chunks(ids):
            places = ", ".join(mark for _ in chunk)
            sql = f"UPDATE {table.name} AS t SET {assignments} WHERE t.id IN ({places}){active}"
            conn.exec_driver_sql(sql, (*shared, *chunk))


def _update_deliveries(
    conn: Connection, status: DeliveryStatus, params: list[dict[str, Any]]
) -> None:
    """Set `status` (and each param's b_detail / b_now) on deliveries by b_id (one executemany)."""
    if not params:
        return
    keys = [key for key in ("b_detail", "b_now") if key in params[0]]
    columns = ["status", *({"b_detail": "detail", "b_now": "updated_at"}[key] for key in keys)]
    rows = [(status.value, *(p[key] for key in keys), p["b_id"]) for p in params]
    _update_rows(conn, D, columns, rows)


def record_sent(session: Session, items: Sequence[SentItem], run_id: str) -> int:
    """The provider accepted these deliveries. Returns how many were recorded 'sent'.

    A delivery is recorded when it is 'sending' for `run_id`, or 'in_doubt' (it turned out to be
    sent); anything else is logged and skipped. Its subscriber, if still 'active' and waiting for
    this lesson, moves on: next_lesson/next_send_at from the item, or 'completed' when
    next_lesson is None. A subscriber who is no longer active (an unsubscribe or pause during
    the run wins) keeps its status and holds; only last_sent_at and the lesson progress
    (next_lesson) are recorded, so a later resume does not resend this lesson.
    """
    if not items:
        return 0
    conn = _conn(session)
    state = _settling(conn, (item.delivery_id for item in items))
    sent = DeliveryStatus.SENT.value
    deliveries_sent: list[tuple[Any, ...]] = []
    advance: list[tuple[Any, ...]] = []
    complete: list[tuple[Any, ...]] = []
    progress_only: list[tuple[Any, ...]] = []
    touched_only: list[tuple[Any, ...]] = []
    for item in items:
        current = state.get(item.delivery_id)
        if current is None or not (
            current.delivery_status == DeliveryStatus.IN_DOUBT
            or (current.delivery_status in _MINE and current.run_id == run_id)
        ):
            log.warning(
                "delivery %s reported sent but is %s; not recorded",
                item.delivery_id,
                "unknown" if current is None else f"{current.delivery_status!r} ({current.run_id})",
            )
            continue
        now = item.now
        deliveries_sent.append((sent, now, now, item.provider_id, item.delivery_id))
        subscriber = current.subscriber_id
        if current.on_track:
            if item.next_lesson is None:
                complete.append((COMPLETED, now, None, None, now, subscriber))
            else:
                advance.append((item.next_lesson, item.next_send_at, now, subscriber))
        elif current.next_lesson == current.lesson:
            progress_only.append((item.next_lesson, now, subscriber))
        else:
            touched_only.append((now, subscriber))

    _update_rows(conn, D, ("status", "sent_at", "updated_at", "provider_id"), deliveries_sent)
    progress = ("next_lesson", "next_send_at", "last_sent_at")
    _update_rows(conn, S, progress, advance, only_active=True)
    _update_rows(conn, S, ("status", "status_changed_at", *progress), complete, only_active=True)
    _update_rows(conn, S, ("next_lesson", "last_sent_at"), progress_only)
    _update_rows(conn, S, ("last_sent_at",), touched_only)
    return len(deliveries_sent)


def _hold_or_reschedule(conn: Connection, rows: list[tuple[_Settling, datetime | None]]) -> None:
    """Subscribers still waiting for the lesson of these deliveries get next_send_at = value."""
    _update_rows(
        conn,
        S,
        ("next_send_at",),
        [(at, row.subscriber_id) for row, at in rows if row.on_track],
        only_active=True,
    )


def _settle(
    session: Session,
    delivery_ids_details: Sequence[tuple[int, str, datetime | None]],
    *,
    allowed: frozenset[str],
    status: DeliveryStatus,
    now: datetime | None,
) -> int:
    conn = _conn(session)
    state = _settling(conn, (delivery_id for delivery_id, _, _ in delivery_ids_details))
    changed: list[dict[str, Any]] = []
    subscribers_after: list[tuple[_Settling, datetime | None]] = []
    for delivery_id, detail, next_at in delivery_ids_details:
        current = state.get(delivery_id)
        if current is None or current.delivery_status not in allowed:
            log.warning(
                "delivery %s cannot become %r from %r; not recorded",
                delivery_id,
                status.value,
                None if current is None else current.delivery_status,
            )
            continue
        params: dict[str, Any] = {"b_id": delivery_id, "b_detail": detail}
        if now is not None:
            params["b_now"] = now
        changed.append(params)
        subscribers_after.append((current, next_at))
    _update_deliveries(conn, status, changed)
    _hold_or_reschedule(conn, subscribers_after)
    return len(changed)


_MINE = frozenset({DeliveryStatus.CLAIMED.value, DeliveryStatus.SENDING.value})
"""A run's open rows: claimed, and maybe handed to the transport."""
_OPEN = _MINE | {DeliveryStatus.IN_DOUBT.value}


def record_retry(
    session: Session, items: Sequence[tuple[int, datetime, str]], *, now: datetime | None = None
) -> int:
    """Known not sent, try again: (delivery_id, retry_at, detail) each -> 'retry'; the subscriber,
    if still waiting for that lesson, is due again at retry_at. Pass `now` to stamp updated_at.
    Returns how many were recorded.
    """
    return _settle(
        session,
        [(delivery_id, detail, retry_at) for delivery_id, retry_at, detail in items],
        allowed=_OPEN,
        status=DeliveryStatus.RETRY,
        now=now,
    )


def record_failed(
    session: Session, items: Sequence[tuple[int, str]], *, now: datetime | None = None
) -> int:
    """Permanently refused: (delivery_id, detail) each -> 'failed'; the subscriber is held
    (next_send_at NULL) for the operator. Returns how many were recorded.
    """
    return _settle(
        session,
        [(delivery_id, detail, None) for delivery_id, detail in items],
        allowed=_OPEN | {DeliveryStatus.RETRY.value},
        status=DeliveryStatus.FAILED,
        now=now,
    )


def record_in_doubt(
    session: Session, items: Sequence[tuple[int, str]], *, now: datetime | None = None
) -> int:
    """Maybe sent (the connection broke after the request was written): (delivery_id, detail)
    each -> 'in_doubt'; the subscriber is held until resolved. Returns how many were recorded.
    """
    return _settle(
        session,
        [(delivery_id, detail, None) for delivery_id, detail in items],
        allowed=_MINE,
        status=DeliveryStatus.IN_DOUBT,
        now=now,
    )


def release_claims(session: Session, run_id: str, now: datetime) -> int:
    """Give back every open claim of `run_id` (nothing was sent for them): -> 'retry', and
    their subscribers, if still waiting for that lesson, are due again at `now`. Returns the count.
    """
    conn = _conn(session)
    mine = and_(D.c.run_id == run_id, D.c.status.in_(sorted(_MINE)))
    waiting = (
        select(D.c.subscriber_id)
        .where(mine, D.c.subscriber_id == S.c.id, D.c.lesson == S.c.next_lesson)
        .exists()
    )
    conn.execute(update(S).where(S.c.status == ACTIVE, waiting).values(next_send_at=now))
    result = conn.execute(
        update(D)
        .where(mine)
        .values(
            status=DeliveryStatus.RETRY.value,
            updated_at=now,
            detail="released unsent: the run stopped before sending it",
        )
    )
    return result.rowcount


def resolve_in_doubt(
    session: Session,
    delivery_id: int,
    *,
    sent: bool,
    now: datetime,
    next_lesson: str | None,
    next_send_at: datetime | None,
) -> None:
    """The operator's (or a provider event's) decision on an in-doubt delivery.

    sent=True: recorded 'sent'; the subscriber moves on to `next_lesson` at `next_send_at`
    (or completes when `next_lesson` is None). sent=False: 'retry'; the same lesson is due again at
    `next_send_at` (`next_lesson` is ignored). Raises `NotFoundError` or `StateError` when the
    delivery is unknown or not in doubt.
    """
    conn = _conn(session)
    current = _settling(conn, [delivery_id]).get(delivery_id)
    if current is None:
        raise NotFoundError(f"no delivery with id {delivery_id}")
    if current.delivery_status != DeliveryStatus.IN_DOUBT:
        raise StateError(
            f"delivery {delivery_id} is {current.delivery_status!r}, not 'in_doubt'; only an"
            " in-doubt delivery can be resolved"
        )
    if sent:
        record_sent(
            session,
            [SentItem(delivery_id, None, now, next_lesson, next_send_at)],
            run_id=current.run_id,
        )
        _update_deliveries(
            conn,
            DeliveryStatus.SENT,
            [{"b_id": delivery_id, "b_detail": "resolved as sent"}],
        )
    else:
        record_retry(session, [(delivery_id, next_send_at or now, "resolved as not sent")], now=now)


# --- reporting --------------------------------------------------------------------------------


def count_due(session: Session, course_id: str, now: datetime) -> int:
    """How many subscribers of `course_id` are due at `now` (an index probe)."""
    stmt = select(func.count()).select_from(S).where(*_due_filter(course_id, now))
    return int(_conn(session).execute(stmt).scalar_one())


def due_by_lesson(session: Session, course_id: str, now: datetime) -> dict[str, int]:
    """Due subscribers at `now` counted per next lesson slug (for dry runs)."""
    stmt = (
        select(S.c.next_lesson, func.count())
        .where(*_due_filter(course_id, now))
        .group_by(S.c.next_lesson)
    )
    return {
        lesson: int(count) for lesson, count in _conn(session).execute(stmt) if lesson is not None
    }


def delivery_counts(session: Session, course_id: str) -> dict[str, int]:
    """Ledger rows of `course_id` per status; every status is present (0 when none)."""
    counts = {status.value: 0 for status in DeliveryStatus}
    stmt = select(D.c.status, func.count()).where(D.c.course_id == course_id).group_by(D.c.status)
    for status, count in _conn(session).execute(stmt):
        counts[status] = int(count)
    return counts


def list_in_doubt(session: Session, course_id: str) -> list[InDoubtView]:
    """The in-doubt deliveries of `course_id`, oldest first, for the operator to resolve."""
    stmt = (
        select(
            D.c.id.label("delivery_id"),
            D.c.subscriber_id,
            S.c.email,
            D.c.lesson,
            D.c.run_id,
            D.c.attempts,
            D.c.claimed_at,
            D.c.lease_until,
            D.c.detail,
            D.c.updated_at,
        )
        .select_from(D.join(S, S.c.id == D.c.subscriber_id))
        .where(D.c.course_id == course_id, D.c.status == DeliveryStatus.IN_DOUBT.value)
        .order_by(D.c.id)
    )
    return [InDoubtView(**row._asdict()) for row in _conn(session).execute(stmt)]


# --- provider events --------------------------------------------------------------------------


def add_event(
    session: Session,
    *,
    provider: str,
    provider_event_id: str | None,
    type: str,
    occurred_at: datetime,
    received_at: datetime,
    payload: Mapping[str, Any],
    delivery_id: int | None = None,
    subscriber_id: int | None = None,
) -> int | None:
    """Store a provider event once. Returns its new id, or None when (provider,
    provider_event_id) was stored before (webhooks are redelivered). Events without a provider
    id are always stored.
    """
    conn = _conn(session)
    stmt = (
        _insert_ignoring_conflicts(conn, events, ("provider", "provider_event_id"))
        .values(
            provider=provider,
            provider_event_id=provider_event_id,
            delivery_id=delivery_id,
            subscriber_id=subscriber_id,
            type=type,
            occurred_at=occurred_at,
            received_at=received_at,
            payload=dict(payload),
        )
        .returning(events.c.id)
    )
    return conn.execute(stmt).scalar_one_or_none()
