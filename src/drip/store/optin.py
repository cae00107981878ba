"""The web side of a subscription: a double opt-in requested from the signup form, the queue of
owed confirmation emails (`subscribers.confirmation_wanted_at`), a fresh opt-in of a reader who
had unsubscribed, and an unsubscribe by link that also gives back the reader's claims not yet
handed to a transport.

Rules kept here:
- One queue entry per subscriber (a column, not a table): however often an address is
  submitted, at most one confirmation email is owed at a time, and none while one went out less
  than `interval` ago.
- Bounced and complained enrolments are never queued nor re-opened; an unsubscribed one is
  re-opened only by `reopen` (the caller checked that the person confirmed a link sent after
  the unsubscribe).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from weakref import WeakKeyDictionary

from sqlalchemy import (
    Connection,
    Engine,
    and_,
    bindparam,
    case,
    create_engine,
    event,
    exists,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from drip.models import suppressions
from drip.statuses import DeliveryStatus, SubscriberStatus
from drip.store._sql import ACTIVE, D, S, connection, insert_ignoring_conflicts
from drip.store.privacy import email_hash, is_suppressed
from drip.store.subscribers import _new_row, unsubscribe
from drip.store.values import NewSubscriber

PENDING = SubscriberStatus.PENDING.value
UNSUBSCRIBED = SubscriberStatus.UNSUBSCRIBED.value
OPT_IN_STATUSES = (PENDING, UNSUBSCRIBED)
"""The states in which a confirmation email may be owed."""


@dataclass(frozen=True)
class Signup:
    """What the signup form stores of a new address (validated by the caller)."""

    course_id: str
    email: str
    name: str | None
    timezone: str
    consent_source: str


@dataclass(frozen=True)
class OptinRequest:
    subscriber_id: int
    status: SubscriberStatus
    created: bool
    queued: bool
    """A confirmation email is now owed (it was not already, and none went out recently)."""

    @classmethod
    def stored(cls, subscriber_id: int) -> OptinRequest:
        """The answer for a new address `insert_pending` stored as `subscriber_id`."""
        return cls(subscriber_id, SubscriberStatus.PENDING, created=True, queued=True)


@dataclass(frozen=True)
class OwedConfirmation:
    subscriber_id: int
    email: str


def _may_queue(now: datetime, interval: timedelta) -> Any:
    """SQL: this subscriber may be owed a new confirmation email at `now`."""
    return and_(
        S.c.status.in_(OPT_IN_STATUSES),
        S.c.confirmation_wanted_at.is_(None),
        or_(S.c.confirmation_sent_at.is_(None), S.c.confirmation_sent_at <= now - interval),
    )


def request_optin(
    session: Session, signup: Signup, *, now: datetime, interval: timedelta
) -> OptinRequest:
    """Someone asked, on the web, to receive `signup.course_id` at `signup.email`.

    New address: a 'pending' subscriber with a confirmation owed. Pending or unsubscribed: a
    confirmation is owed again unless one is already owed or went out less than `interval`
    ago; the stored name and timezone are kept (the person who filled in the form is not known
    to own the address). Active, paused, completed, bounced, complained: nothing changes.
    Erased at the person's request (`privacy.is_suppressed`): nothing is stored nor owed, and
    the answer is `OptinRequest(0, UNSUBSCRIBED, created=False, queued=False)`.
    Safe against a concurrent request for the same address.

    A new address, the common case, costs one statement (`insert_pending`): the INSERT carries
    the suppression check and reports the new id.
    """
    new_id = insert_pending(connection(session), signup, now=now)
    if new_id is not None:
        return OptinRequest.stored(new_id)
    return request_known(
        session, course_id=signup.course_id, email=signup.email, now=now, interval=interval
    )


def request_known(
    session: Session, *, course_id: str, email: str, now: datetime, interval: timedelta
) -> OptinRequest:
    """`request_optin` for an address that `insert_pending` did not store (known for the
    course, or erased): what such an address gets, as `request_optin` says."""
    if is_suppressed(session, email):
        return OptinRequest(0, SubscriberStatus.UNSUBSCRIBED, created=False, queued=False)
    found = (
        connection(session)
        .execute(select(S.c.id, S.c.status).where(S.c.course_id == course_id, S.c.email == email))
        .one()
    )
    queued = queue_confirmation(session, found.id, now=now, interval=interval)
    return OptinRequest(found.id, SubscriberStatus(found.status), created=False, queued=queued)


def insert_pending_now(engine: Engine, signup: Signup, *, now: datetime) -> int | None:
    """`insert_pending` on its own, committed: the signup form's hot path, without an ORM
    session.

    PostgreSQL: one round trip. The statement runs in autocommit (no BEGIN nor COMMIT) straight
    on psycopg (`_Direct`: SQLAlchemy's per-execution work cost as much CPU as psycopg's), on a
    pool of the same database kept for it whose checkouts are not pinged first (the engine's
    pre-ping is a round trip of its own). A connection found dead instead fails the INSERT,
    which then runs once more on a fresh one (if the lost one had committed, the retry finds
    the address known: None, and `request_known` answers as for any known address).
    SQLite: a transaction as usual (the engine's 'begin' listener issues BEGIN IMMEDIATE,
    which waits for the write lock)."""
    values = _pending_values(signup, now)
    if engine.dialect.name == "sqlite":
        with engine.begin() as conn:
            found: int | None = conn.execute(_insert_new(conn), values).scalar_one_or_none()
            return found
    import psycopg  # only here: SQLite runs never load the driver

    direct = _direct(engine)
    params = {key: direct.bind(key, value) for key, value in values.items()}
    for attempt in (1, 2):
        raw = direct.pool.raw_connection()
        driver = raw.driver_connection
        assert isinstance(driver, psycopg.Connection)
        try:
            row = driver.execute(direct.sql, params).fetchone()
            return None if row is None else int(row[0])
        except psycopg.Error as exc:
            if attempt == 1 and driver.broken:
                # The server restarted or the link was cut: the pool's other connections are
                # likely dead too. Drop them all, as SQLAlchemy does on a disconnect.
                raw.invalidate()
                direct.pool.dispose()
                continue
            # As SQLAlchemy raises it (the web answers OperationalError with its 503 page).
            raise DBAPIError.instance(
                direct.sql, params, exc, psycopg.Error, connection_invalidated=driver.broken
            ) from exc
        finally:
            raw.close()
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class _Direct:
    """`_insert_new` rendered once for psycopg, and the autocommit pool it runs on."""

    pool: Engine
    sql: str
    processors: dict[str, Callable[[Any], Any] | None]

    def bind(self, key: str, value: Any) -> Any:
        """`value` as SQLAlchemy would pass it to the driver (UTCDateTime: naive UTC)."""
        process = self.processors[key]
        return value if process is None or value is None else process(value)


_DIRECT: WeakKeyDictionary[Engine, _Direct] = WeakKeyDictionary()
_DIRECT_LOCK = threading.Lock()


def _direct(engine: Engine) -> _Direct:
    """The `_Direct` of `engine` (PostgreSQL): its pool has the same URL, runs in autocommit and
    does not ping at checkout; built once per engine, disposed with it."""
    found = _DIRECT.get(engine)
    if found is not None:
        return found
    with _DIRECT_LOCK:  # gthread workers: one pool per engine, not one per racing thread
        found = _DIRECT.get(engine)
        if found is not None:
            return found
        pool = create_engine(engine.url, isolation_level="AUTOCOMMIT", pool_pre_ping=False)
        with pool.connect() as conn:
            compiled = _insert_new(conn).compile(dialect=pool.dialect)
        processors = {
            key: bind.type.bind_processor(pool.dialect) for key, bind in compiled.binds.items()
        }
        found = _DIRECT[engine] = _Direct(pool, str(compiled), processors)
        event.listen(engine, "engine_disposed", lambda _: pool.dispose())
    return found


def insert_pending(conn: Connection, signup: Signup, *, now: datetime) -> int | None:
    """Store `signup` as a new 'pending' subscriber with a confirmation email owed, in one
    statement: its id, or None when the address is already known for the course or was erased
    (nothing is then written; `request_optin` says what such an address gets). Atomic on its
    own, so it may run in autocommit."""
    values = _pending_values(signup, now)
    new_id: int | None = conn.execute(_insert_new(conn), values).scalar_one_or_none()
    return new_id


def _pending_values(signup: Signup, now: datetime) -> dict[str, Any]:
    """The parameters of `_insert_new` for a new pending subscriber."""
    row = _new_row(
        signup.course_id,
        NewSubscriber(signup.email, signup.name, signup.timezone, None),
        now=now,
        consent_source=signup.consent_source,
        confirmed=False,
        first_lesson="",
    )
    row["confirmation_wanted_at"] = now
    values = {column: row[column] for column in _INSERTED_COLUMNS}
    values["erased_hash"] = email_hash(signup.email)
    return values


_INSERTED_COLUMNS = (
    "course_id",
    "email",
    "name",
    "timezone",
    "status",
    "created_at",
    "consent_at",
    "consent_source",
    "status_changed_at",
    "confirmation_wanted_at",
)
"""The columns `insert_pending` sets on a new subscriber (`_new_row` gives the others None)."""
_INSERTS: dict[str, Any] = {}


def _insert_new(conn: Connection) -> Any:
    """INSERT INTO subscribers (...) SELECT <the row> WHERE the address is not erased
    ON CONFLICT DO NOTHING RETURNING id: built once per dialect, the values bound at execution
    (the signup form's hot path; building the statement with its values costs more than
    running it). Parameters: the `_INSERTED_COLUMNS` and `erased_hash`."""
    name = conn.dialect.name
    stmt = _INSERTS.get(name)
    if stmt is None:
        # Typed bind parameters: psycopg's dialect casts each to its column's type (PostgreSQL
        # would otherwise type a NULL in the select list as text); SQLite stores them as is.
        # The WHERE is also what lets SQLite read the ON CONFLICT after a SELECT (without one
        # it parses as a join's ON).
        values = [bindparam(column, type_=S.c[column].type) for column in _INSERTED_COLUMNS]
        erased = exists().where(suppressions.c.email_hash == bindparam("erased_hash"))
        source = select(*values).where(~erased)
        stmt = (
            insert_ignoring_conflicts(conn, S, ("course_id", "email"))
            .from_select(list(_INSERTED_COLUMNS), source)
            .returning(S.c.id)
        )
        _INSERTS[name] = stmt
    return stmt


def queue_confirmation(
    session: Session, subscriber_id: int, *, now: datetime, interval: timedelta
) -> bool:
    """Owe a confirmation email to a pending or unsubscribed subscriber, unless one is already
    owed or went out less than `interval` before `now`. True if it is now owed."""
    result = connection(session).execute(
        update(S)
        .where(S.c.id == subscriber_id, _may_queue(now, interval))
        .values(confirmation_wanted_at=now)
    )
    return bool(result.rowcount)


def take_owed_confirmations(
    session: Session,
    course_id: str,
    *,
    now: datetime,
    limit: int,
    lease: timedelta,
    interval: timedelta,
) -> list[OwedConfirmation]:
    """Take up to `limit` owed confirmation emails, oldest first, for sending now: each is
    pushed `lease` into the future so that no other process takes it meanwhile (settle them
    with `confirmations_sent` / `confirmations_later` before the lease ends; after a crash they
    are taken again once it has). Entries that are no longer owed (the subscriber confirmed,
    bounced, or got one less than `interval` ago) are dropped, not returned.

    Safe with several senders at once: an entry is returned to one of them only.
    """
    conn = connection(session)
    owed = and_(
        S.c.course_id == course_id,
        S.c.confirmation_wanted_at.is_not(None),
        S.c.confirmation_wanted_at <= now,
    )
    picked = [
        row.id
        for row in conn.execute(
            select(S.c.id).where(owed).order_by(S.c.confirmation_wanted_at, S.c.id).limit(limit)
        )
    ]
    if not picked:
        return []
    still_owed = and_(
        S.c.status.in_(OPT_IN_STATUSES),
        or_(S.c.confirmation_sent_at.is_(None), S.c.confirmation_sent_at <= now - interval),
    )
    taken = conn.execute(
        update(S)
        .where(S.c.id.in_(picked), owed)
        .values(
            confirmation_wanted_at=case(
                (still_owed, bindparam("lease_end", now + lease, S.c.confirmation_wanted_at.type)),
                else_=None,
            )
        )
        .returning(S.c.id, S.c.email, S.c.confirmation_wanted_at)
    ).all()
    return sorted(
        (OwedConfirmation(row.id, row.email) for row in taken if row.confirmation_wanted_at),
        key=lambda item: item.subscriber_id,
    )


def confirmations_sent(session: Session, subscriber_ids: list[int], now: datetime) -> None:
    """These confirmation emails went out (or may have): no longer owed; sent at `now`."""
    if subscriber_ids:
        connection(session).execute(
            update(S)
            .where(S.c.id.in_(subscriber_ids))
            .values(confirmation_sent_at=now, confirmation_wanted_at=None)
        )


def confirmations_later(session: Session, subscriber_ids: list[int], at: datetime | None) -> None:
    """These confirmation emails were not sent: owed again from `at`, or dropped (None) when the
    provider refused them for good. Only subscribers who may still be owed one are touched."""
    if subscriber_ids:
        connection(session).execute(
            update(S)
            .where(S.c.id.in_(subscriber_ids), S.c.status.in_(OPT_IN_STATUSES))
            .values(confirmation_wanted_at=at)
        )


def count_owed_confirmations(session: Session, course_id: str) -> int:
    """How many confirmation emails are owed (the partial index answers)."""
    return int(
        connection(session)
        .execute(
            select(func.count())
            .select_from(S)
            .where(S.c.course_id == course_id, S.c.confirmation_wanted_at.is_not(None))
        )
        .scalar_one()
    )


def reopen(
    session: Session,
    subscriber_id: int,
    *,
    now: datetime,
    next_send_at: datetime | None,
    consent_source: str,
) -> bool:
    """Unsubscribed -> active again after a new, confirmed opt-in: the reader resumes at the
    lesson it stopped at (`next_lesson` is kept), due at `next_send_at`; a reader who had had
    every lesson becomes 'completed'. True if this call re-opened it.
    """
    finished = S.c.next_lesson.is_(None)
    result = connection(session).execute(
        update(S)
        .where(S.c.id == subscriber_id, S.c.status == UNSUBSCRIBED)
        .values(
            status=case((finished, SubscriberStatus.COMPLETED.value), else_=ACTIVE),
            next_send_at=case(
                (finished, None), else_=bindparam("reopen_at", next_send_at, S.c.next_send_at.type)
            ),
            confirmed_at=now,
            consent_at=now,
            consent_source=consent_source,
            status_changed_at=now,
            held_reason=None,
            paused_at=None,
            paused_until=None,
            confirmation_wanted_at=None,
        )
    )
    return bool(result.rowcount)


NOT_SENT_UNSUBSCRIBED = "not sent: the reader unsubscribed before its turn came"


def unsubscribe_by_link(session: Session, subscriber_id: int, now: datetime) -> bool:
    """Unsubscribe at once (see `subscribers.unsubscribe`), drop any owed confirmation, and give
    back the reader's claims that no run has handed to a transport yet ('claimed' -> 'retry', not
    an attempt), so that a run holding them skips them. False if it was already suppressed.

    On PostgreSQL a run marking one of those claims 'sending' at this moment either commits
    first (the row is then 'sending': see `count_handing_over`) or waits for this transaction
    and then finds the row no longer 'claimed'.
    """
    changed = unsubscribe(session, subscriber_id, now)
    conn = connection(session)
    conn.execute(update(S).where(S.c.id == subscriber_id).values(confirmation_wanted_at=None))
    conn.execute(
        update(D)
        .where(D.c.subscriber_id == subscriber_id, D.c.status == DeliveryStatus.CLAIMED.value)
        .values(
            status=DeliveryStatus.RETRY.value,
            attempts=D.c.attempts - 1,
            updated_at=now,
            detail=NOT_SENT_UNSUBSCRIBED,
        )
    )
    return changed


def count_handing_over(session: Session, subscriber_id: int, now: datetime) -> int:
    """The subscriber's deliveries a live run is handing to a transport right now ('sending',
    lease not over)."""
    return int(
        connection(session)
        .execute(
            select(func.count())
            .select_from(D)
            .where(
                D.c.subscriber_id == subscriber_id,
                D.c.status == DeliveryStatus.SENDING.value,
                D.c.lease_until > now,
            )
        )
        .scalar_one()
    )
