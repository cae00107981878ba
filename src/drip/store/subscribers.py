"""Subscribers: enrolment, confirmation, status changes, suppression, and the batched look-ups
and inserts of an import.

The rules: a suppressed enrolment ('unsubscribed', 'bounced', 'complained') is never
re-activated here; `next_send_at` is set only for an 'active' subscriber with a next lesson.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Row,
    Select,
    String,
    and_,
    bindparam,
    case,
    delete,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from drip.errors import NotFoundError, SuppressedAddressError
from drip.models import events
from drip.statuses import SUPPRESSED_STATUSES, UNCONFIRMED_TTL, DeliveryStatus, SubscriberStatus
from drip.store._sql import (
    ACTIVE,
    D,
    S,
    chunks,
    connection,
    insert_ignoring_conflicts,
)
from drip.store.capabilities import capabilities_of
from drip.store.ledger import failed_reason, in_doubt_reason
from drip.store.privacy import is_suppressed
from drip.store.values import AddResult, ExistingSubscriber, NewSubscriber, SubscriberView


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
    `SuppressedAddressError`, and so does an address on the suppression list (erased). Safe
    against a concurrent add of the same address.
    """
    conn = connection(session)
    email = email.strip().lower()
    if is_suppressed(session, email):  # erased at the person's request (store.privacy)
        raise SuppressedAddressError(f"{email} was erased at the person's request; {_NEVER}")
    status = SubscriberStatus.ACTIVE if confirmed else SubscriberStatus.PENDING
    stmt = (
        insert_ignoring_conflicts(conn, S, ("course_id", "email"))
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
            session,
            row.id,
            now=now,
            first_lesson=first_lesson,
            first_send_at=first_send_at,
            consent_source=consent_source,
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
    status: SubscriberStatus | None = None,
) -> dict[str, Any]:
    if status is not None and status not in KEPT_STATUSES:
        raise ValueError(f"a new row cannot start {status.value!r}")
    if status is not None:
        # Kept from an export: a reader who never gets a lesson (pending, finished, suppressed).
        return {
            **_new_row(
                course_id,
                new,
                now=now,
                consent_source=consent_source,
                confirmed=False,
                first_lesson=first_lesson,
            ),
            "status": status.value,
        }
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
    stmt = reader_select().where(S.c.course_id == course_id, S.c.email == email.strip().lower())
    row = connection(session).execute(stmt).one_or_none()
    return None if row is None else subscriber_view(row)


def get_subscriber_by_id(session: Session, subscriber_id: int) -> SubscriberView | None:
    stmt = reader_select().where(S.c.id == subscriber_id)
    row = connection(session).execute(stmt).one_or_none()
    return None if row is None else subscriber_view(row)


_KEPT_HOLDS = (DeliveryStatus.FAILED.value, DeliveryStatus.IN_DOUBT.value)


def _paused_hold(column: Any) -> Any:
    """(SQL) `column` of a paused subscriber's next-lesson delivery when the ledger has it failed
    or in doubt, else NULL. The CASE runs the lookup for paused rows only (a few), so a list of
    millions costs no more than before."""
    found = (
        select(column)
        .where(
            D.c.subscriber_id == S.c.id,
            D.c.lesson == S.c.next_lesson,
            D.c.status.in_(_KEPT_HOLDS),
        )
        .scalar_subquery()
    )
    return case((S.c.status == SubscriberStatus.PAUSED.value, found), else_=None)


def reader_select() -> Select[Any]:
    """select(S) with what `subscriber_view` needs to tell a held reader: the status and detail
    of a paused reader's failed or in-doubt next lesson (`hold_status`, `hold_detail`)."""
    return select(
        S,
        _paused_hold(D.c.status).label("hold_status"),
        _paused_hold(D.c.detail).label("hold_detail"),
    )


def held_condition() -> Any:
    """(SQL, over `S`) The subscriber waits on the operator: active with a next lesson and no
    moment to send it (`held_reason` says why), or paused with that lesson failed or in doubt
    (a resume keeps it held: only `drip deliveries retry|resolve` moves it on)."""
    return or_(
        and_(S.c.status == ACTIVE, S.c.next_lesson.is_not(None), S.c.next_send_at.is_(None)),
        and_(S.c.status == SubscriberStatus.PAUSED.value, hold_kept()),
    )


def confirm_subscriber(
    session: Session,
    subscriber_id: int,
    *,
    now: datetime,
    first_lesson: str,
    first_send_at: datetime | None,
    consent_source: str | None = None,
) -> bool:
    """Pending -> active with the first lesson scheduled. True if this call confirmed it.

    `consent_source`: the consent was obtained elsewhere (the operator said so): it replaces the
    signup's consent record (`consent_at` = now). None: the reader confirmed the double opt-in,
    whose signup is the consent record. Already active/paused/completed: False (confirm links
    get clicked twice). Suppressed: raises `SuppressedAddressError`; unknown id: `NotFoundError`.
    """
    conn = connection(session)
    consent = (
        {} if consent_source is None else {"consent_at": now, "consent_source": consent_source}
    )
    result = conn.execute(
        update(S)
        .where(S.c.id == subscriber_id, S.c.status == SubscriberStatus.PENDING.value)
        .values(
            status=ACTIVE,
            confirmed_at=now,
            status_changed_at=now,
            next_lesson=first_lesson,
            next_send_at=first_send_at,
            **consent,
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
    result = connection(session).execute(
        update(S).where(S.c.id == subscriber_id).values(confirmation_sent_at=now)
    )
    if not result.rowcount:
        raise NotFoundError(f"no subscriber with id {subscriber_id}")


def _transition(
    session: Session, subscriber_id: int, where: Any, values: Mapping[str, Any]
) -> bool:
    conn = connection(session)
    result = conn.execute(update(S).where(S.c.id == subscriber_id, where).values(**values))
    if result.rowcount:
        return True
    _status_of(conn, subscriber_id)  # raises NotFoundError for an unknown id
    return False


def pause(
    session: Session, subscriber_id: int, now: datetime, *, until: datetime | None = None
) -> bool:
    """Active -> paused (nothing is sent until `resume`, or until `until` has passed: `drip send`
    then resumes it, see `store.resume_ended_pauses`). False if it was not active."""
    return _transition(
        session,
        subscriber_id,
        S.c.status == ACTIVE,
        {
            "status": SubscriberStatus.PAUSED.value,
            "paused_at": now,
            "paused_until": until,
            "status_changed_at": now,
            "next_send_at": None,
        },
    )


def hold_kept() -> Any:
    """True (SQL) for a subscriber whose next lesson the ledger has 'failed' or 'in_doubt': the
    operator must retry or resolve it, so a resume never makes it due (it would be sent again)."""
    return (
        select(D.c.id)
        .where(
            D.c.subscriber_id == S.c.id,
            D.c.lesson == S.c.next_lesson,
            # Not IN (...): an expanding list cannot be part of an executemany.
            or_(
                D.c.status == DeliveryStatus.FAILED.value,
                D.c.status == DeliveryStatus.IN_DOUBT.value,
            ),
        )
        .exists()
    )


def resume_values(at: Any, now: Any, hold_reason: str | None = None) -> dict[str, Any]:
    """The SET clause of a resume at `now` with the next lesson at `at` (SQL values): 'completed'
    when the last lesson went out meanwhile; a failed or in-doubt hold stays held with its
    reason (`hold_kept`); otherwise 'active' at `at`."""
    finished = S.c.next_lesson.is_(None)
    values: dict[str, Any] = {
        "status": case((finished, SubscriberStatus.COMPLETED.value), else_=ACTIVE),
        "next_send_at": case((finished, None), (hold_kept(), None), else_=at),
        "paused_at": None,
        "paused_until": None,
        "status_changed_at": now,
    }
    if hold_reason is not None:
        values["held_reason"] = case((hold_kept(), S.c.held_reason), else_=hold_reason)
    return values


def resume(
    session: Session,
    subscriber_id: int,
    *,
    now: datetime,
    next_send_at: datetime | None,
    hold_reason: str | None = None,
) -> bool:
    """Paused -> active, next lesson at `next_send_at` (computed by the caller from
    drip.schedule and the subscriber's `next_lesson`), or held (next_send_at None) with
    `hold_reason` when that moment cannot be told. A paused subscriber whose last lesson went
    out meanwhile becomes 'completed'. One held for a failed or in-doubt delivery of its next
    lesson stays held with its reason: only `drip deliveries retry|resolve` sends that lesson
    again. False if it was not paused.
    """
    at = bindparam("resume_at", next_send_at, S.c.next_send_at.type)
    return _transition(
        session,
        subscriber_id,
        S.c.status == SubscriberStatus.PAUSED.value,
        resume_values(at, now, hold_reason),
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
    result = connection(session).execute(
        update(S)
        .where(S.c.email == email.strip().lower(), overridable)
        .values(status=target.value, status_changed_at=now, next_send_at=None)
    )
    return result.rowcount


KEPT_STATUSES = frozenset(
    {SubscriberStatus.PENDING, SubscriberStatus.COMPLETED, *SUPPRESSED_STATUSES}
)
"""The states an imported row keeps from the file's `status` column (an export): none of them
gets a lesson, so keeping them can never mail anyone who did not ask."""


# --- import (batched) -------------------------------------------------------------------------


def existing_subscribers(
    session: Session, course_id: str, emails: Sequence[str]
) -> dict[str, ExistingSubscriber]:
    """The enrolments in `course_id` among `emails` (normalised), keyed by email."""
    conn = connection(session)
    found: dict[str, ExistingSubscriber] = {}
    columns = (S.c.email, S.c.id, S.c.status, S.c.timezone)
    stmt: Select[Any]
    if capabilities_of(conn.dialect).array_params:
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
    for chunk in chunks(emails):
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
    status: SubscriberStatus | None = None,
) -> int:
    """Insert new enrolments, skipping any that exist (ON CONFLICT DO NOTHING). Returns how many
    were inserted. Confirmed rows start 'active' at their `first_send_at`. `status` (one of
    KEPT_STATUSES, from an export) makes every row start in that state instead, with no lesson
    scheduled: an unsubscribed reader moved to a new database stays unsubscribed.
    """
    if not rows:
        return 0
    conn = connection(session)
    values = [
        _new_row(
            course_id,
            row,
            now=now,
            consent_source=consent_source,
            confirmed=confirmed,
            first_lesson=first_lesson,
            status=status,
        )
        for row in rows
    ]
    # executemany + RETURNING: SQLAlchemy batches it into multi-row INSERTs ("insertmanyvalues")
    # and the returned ids count exactly the rows that were new.
    stmt = insert_ignoring_conflicts(conn, S, ("course_id", "email")).returning(S.c.id)
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
    result = connection(session).execute(stmt, [{"b_id": sid, "b_at": at} for sid, at in items])
    return result.rowcount


# --- helpers ----------------------------------------------------------------------------------


def subscriber_view(row: Row[Any]) -> SubscriberView:
    """A `subscribers` row as the value the store hands out; from `reader_select`, a paused
    reader whose next lesson failed or is in doubt comes out held, with the ledger's reason."""
    values = row._asdict()
    values["status"] = SubscriberStatus(values["status"])
    hold_status = values.pop("hold_status", None)
    hold_detail = values.pop("hold_detail", None)
    if hold_status is not None:
        reason = failed_reason if hold_status == DeliveryStatus.FAILED.value else in_doubt_reason
        values["held_by_delivery"] = True
        values["held_reason"] = reason(values["next_lesson"], hold_detail)
    return SubscriberView(**values)


def _status_of(conn: Connection, subscriber_id: int) -> SubscriberStatus:
    status = conn.execute(select(S.c.status).where(S.c.id == subscriber_id)).scalar_one_or_none()
    if status is None:
        raise NotFoundError(f"no subscriber with id {subscriber_id}")
    return SubscriberStatus(status)


def _suppressed(email: str, course_id: str, status: SubscriberStatus) -> SuppressedAddressError:
    return SuppressedAddressError(f"{email} is {status.value} in course {course_id}; {_NEVER}")


_NEVER = (
    "drip never subscribes such an address again by itself. Leave it out; only the person can"
    " ask to come back"
)


# --- housekeeping -------------------------------------------------------------------------------


def purge_unconfirmed(session: Session, course_id: str, now: datetime) -> int:
    """Delete the signups of `course_id` that were never confirmed and have been quiet for
    UNCONFIRMED_TTL (created, consent recorded, confirmation asked for and sent all before
    then), with the provider events about them (a confirmation email's). Returns how many.

    Set-based: two DELETEs whatever the number. Never touches a reader who has a history: one
    confirmed once, sent a lesson, or in the ledger at all. A reader who unsubscribed and signs
    up again stays 'unsubscribed' until it confirms (`optin.request_optin`), so it is never
    'pending' and never purged here.
    """
    cutoff = now - UNCONFIRMED_TTL
    # ix_subscribers_pending (course_id, created_at) WHERE status = 'pending' makes this a
    # probe; drip.idle asks the same question before a run loads anything.
    quiet = and_(
        S.c.course_id == course_id,
        S.c.status == SubscriberStatus.PENDING.value,
        S.c.confirmed_at.is_(None),
        S.c.last_sent_at.is_(None),
        S.c.created_at < cutoff,
        S.c.consent_at < cutoff,
        or_(S.c.confirmation_sent_at.is_(None), S.c.confirmation_sent_at < cutoff),
        or_(S.c.confirmation_wanted_at.is_(None), S.c.confirmation_wanted_at < cutoff),
        ~select(D.c.id).where(D.c.subscriber_id == S.c.id).exists(),
    )
    conn = connection(session)
    conn.execute(delete(events).where(events.c.subscriber_id.in_(select(S.c.id).where(quiet))))
    return conn.execute(delete(S).where(quiet)).rowcount
