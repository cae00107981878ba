"""The delivery ledger: claiming due lessons, marking them sending, recording outcomes,
releasing claims and resolving in-doubt deliveries.

One ledger row per (subscriber, lesson), created when first claimed and never deleted, so a
lesson goes out at most once whatever runs crash or overlap.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import (
    BigInteger,
    Connection,
    Row,
    Select,
    and_,
    bindparam,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.orm import Session

from drip.claim_policy import ClaimAction, Defer, decide_claim
from drip.errors import NotFoundError, StateError
from drip.statuses import DeliveryStatus
from drip.store._bulk_update import update_rows
from drip.store._sql import (
    ACTIVE,
    COMPLETED,
    D,
    S,
    chunks,
    clean_text,
    connection,
    due_filter,
    in_list,
)
from drip.store.capabilities import capabilities_of
from drip.store.values import Claim, ClaimBatch, SentItem

log = logging.getLogger(__name__)

MoveOn = Callable[
    [str, str, datetime | None, frozenset[str], str | None],
    tuple[str | None, datetime | None] | None,
]
"""`move_on(timezone, lesson already sent, last_sent_at, every lesson sent, send_time)`: the
subscriber's next lesson and its moment ((None, None): the course is done), or None when that
cannot be told. `send_time` is the reader's own "HH:MM" (None: the course's)."""

IN_DOUBT_DETAIL = (
    "the run that claimed it ended without recording an outcome (crashed or killed); it may or"
    " may not have been sent"
)

# --- claiming ---------------------------------------------------------------------------------


def claim_due(
    session: Session,
    *,
    course_id: str,
    now: datetime,
    limit: int,
    run_id: str,
    lease: timedelta,
    defer: Defer | None = None,
    move_on: MoveOn | None = None,
    only: Sequence[int] | None = None,
    sending: bool = False,
) -> ClaimBatch:
    """Claim up to `limit` due lessons of `course_id` for run `run_id`, oldest due first.

    Due: 'active' with next_send_at <= now, in (next_send_at, id) order. What happens to each
    due subscriber is `drip.claim_policy.decide_claim`'s decision on the ledger row of
    (subscriber, next_lesson): claimed (a new row, or an old one again with attempts + 1),
    deferred to the moment `defer(timezone, lesson)` names, left to another run until its lease
    ends, marked 'in_doubt' (a 'sending' row past its lease: counted in `newly_in_doubt`), or
    held (next_send_at NULL). A claimed subscriber's next_send_at becomes the lease end so no
    other run picks it meanwhile. Call `mark_sending` just before handing claims to a transport.
    A subscriber whose next lesson the ledger already has as sent (a reordered course) moves on
    to what `move_on(timezone, lesson, last_sent_at, lessons sent)` names — (None, None):
    completed; None: held with the reason — and is claimed for it in this call if it is due.
    `only`: consider just these subscriber ids (the web app sends lesson 1 to a reader who has
    just confirmed, through this same claim). `sending`: the claims are made 'sending' at once,
    for a caller that hands all of them to a transport right after the commit (what
    `mark_sending` would do next, one row write per claim fewer: the claim already saw each
    subscriber active, in this transaction).

    The caller must commit right after and before sending anything: the claim is what makes a
    concurrent or later run leave these lessons alone. PostgreSQL: FOR UPDATE SKIP LOCKED, so
    concurrent runs claim disjoint sets; SQLite: the transaction holds the write lock.
    """
    if limit < 1:
        return ClaimBatch([], 0)
    conn = connection(session)
    lease_until = now + lease
    status = DeliveryStatus.SENDING if sending else DeliveryStatus.CLAIMED
    claims: list[Claim] = []
    newly_in_doubt = rescheduled = 0
    # Loop because rows that cannot be claimed still use up a pick; each pass moves every picked
    # row out of the due set, so this ends.
    while len(claims) < limit:
        picked = _pick_due(conn, course_id, now, limit - len(claims), only)
        if not picked:
            break
        plan = _plan(picked, now, defer)
        claims.extend(_apply(conn, plan, course_id, run_id, now, lease_until, status))
        _move_past_sent(conn, plan.past_sent, move_on, now)
        newly_in_doubt += len(plan.in_doubt)
        rescheduled += plan.deferred
    return ClaimBatch(claims, newly_in_doubt, rescheduled)


@dataclass(slots=True)
class _ClaimPlan:
    """One pick's rows, sorted by the claim policy's decisions."""

    new: list[Row[Any]] = field(default_factory=list)
    again: list[Row[Any]] = field(default_factory=list)
    in_doubt: list[Row[Any]] = field(default_factory=list)
    past_sent: list[Row[Any]] = field(default_factory=list)
    """Due for a lesson the ledger has as sent: they move on (see `_move_past_sent`)."""
    held: list[tuple[int, str]] = field(default_factory=list)
    """(subscriber id, why): next_send_at becomes NULL, held_reason says why."""
    rescheduled: list[tuple[int, datetime | None]] = field(default_factory=list)
    """(subscriber id, next_send_at): deferred, or waiting for another run's lease to end."""
    deferred: int = 0
    """How many of `rescheduled` were deferred (not another run's)."""


# Bound once: the loop below compares every picked row's decision with these.
_CLAIM_NEW = ClaimAction.CLAIM_NEW
_CLAIM_AGAIN = ClaimAction.CLAIM_AGAIN
_MARK_IN_DOUBT = ClaimAction.MARK_IN_DOUBT
_HOLD_NO_LESSON = ClaimAction.HOLD_NO_LESSON
_DEFER = ClaimAction.DEFER
_PAST_SENT = ClaimAction.PAST_SENT
_RESCHEDULE = frozenset({_DEFER, ClaimAction.WAIT})


def _plan(picked: Sequence[Row[Any]], now: datetime, defer: Defer | None) -> _ClaimPlan:
    plan = _ClaimPlan()
    for row in picked:
        decision = decide_claim(row, now, defer)
        action = decision.action
        if action is _CLAIM_NEW:
            plan.new.append(row)
        elif action is _CLAIM_AGAIN:
            plan.again.append(row)
        elif action in _RESCHEDULE:
            plan.rescheduled.append((row.id, decision.at))
            plan.deferred += action is _DEFER
        elif action is _PAST_SENT:
            plan.past_sent.append(row)
        elif action is _MARK_IN_DOUBT:
            plan.in_doubt.append(row)
            plan.held.append((row.id, in_doubt_reason(row.next_lesson, IN_DOUBT_DETAIL)))
        else:
            plan.held.append((row.id, _held(row, action)))
    return plan


def _held(row: Row[Any], action: ClaimAction) -> str:
    """Why a due subscriber is held instead of claimed; also logged."""
    if action is _HOLD_NO_LESSON:
        reason = "active and due with no next lesson (inconsistent); set its progress by hand"
    elif action is ClaimAction.HOLD_UNKNOWN_ZONE:
        reason = unknown_zone_reason(row.timezone)
    else:
        reason = (
            f"due for lesson {row.next_lesson!r}, which the ledger already has as"
            f" {row.delivery_status!r}; never sent twice"
        )
    log.warning("subscriber %s held: %s", row.id, reason)
    return reason


def unknown_zone_reason(timezone: str) -> str:
    """The held_reason of a subscriber whose timezone this host cannot load."""
    return (
        f"timezone {timezone!r} cannot be loaded on this host; install tzdata or give"
        " the subscriber an IANA zone such as Asia/Tokyo"
    )


def in_doubt_reason(lesson: str, detail: str | None) -> str:
    """The held_reason of a subscriber whose delivery of `lesson` is in doubt."""
    return (
        f"lesson {lesson!r} is in doubt ({detail or 'no detail'}); look it up at the provider and"
        " settle it with 'drip deliveries resolve'"
    )


def failed_reason(lesson: str, detail: str | None) -> str:
    """The held_reason of a subscriber whose delivery of `lesson` failed for good."""
    return (
        f"lesson {lesson!r} failed ({detail or 'no detail'}); fix the cause, then"
        " 'drip deliveries retry'"
    )


def _pick_due(
    conn: Connection,
    course_id: str,
    now: datetime,
    limit: int,
    only: Sequence[int] | None = None,
) -> list[Row[Any]]:
    joined = S.outerjoin(D, and_(D.c.subscriber_id == S.c.id, D.c.lesson == S.c.next_lesson))
    stmt: Select[Any] = (
        select(
            S.c.id,
            S.c.email,
            S.c.name,
            S.c.timezone,
            S.c.next_lesson,
            S.c.send_time,
            D.c.id.label("delivery_id"),
            D.c.status.label("delivery_status"),
            D.c.attempts,
            D.c.lease_until,
        )
        .select_from(joined)
        .where(*due_filter(course_id, now))
        .order_by(S.c.next_send_at, S.c.id)
        .limit(limit)
    )
    if only is not None:
        stmt = stmt.where(S.c.id.in_(list(only)))
    if capabilities_of(conn.dialect).skip_locked:
        # Rows another run is claiming right now are skipped, not waited for.
        stmt = stmt.with_for_update(skip_locked=True, of=S)
    # .all(): one fetchall, not a fetchone per row (iterating the result).
    return list(conn.execute(stmt).all())


def _apply(
    conn: Connection,
    plan: _ClaimPlan,
    course_id: str,
    run_id: str,
    now: datetime,
    lease_until: datetime,
    status: DeliveryStatus,
) -> list[Claim]:
    """Carry out `plan`: a few set-based statements whatever its size; the claims get `status`
    ('claimed', or 'sending'). Returns the claims."""
    delivery_ids = _insert_claims(conn, plan.new, course_id, run_id, now, lease_until, status)
    _claim_again(conn, plan.again, run_id, now, lease_until, status)
    _mark_in_doubt(conn, plan.in_doubt, now)
    if plan.rescheduled:
        conn.execute(
            update(S)
            .where(S.c.id == bindparam("b_id"))
            .values(next_send_at=bindparam("b_at", type_=S.c.next_send_at.type)),
            [{"b_id": sid, "b_at": at} for sid, at in plan.rescheduled],
        )
    hold(conn, plan.held)
    _set_next_send_at(conn, [row.id for row in (*plan.new, *plan.again)], lease_until)
    claims = [_claim(row, delivery_ids[row[0]], 1) for row in plan.new]  # row[0]: its id
    claims.extend(_claim(row, row.delivery_id, row.attempts + 1) for row in plan.again)
    return claims


def _insert_claims(
    conn: Connection,
    rows: Sequence[Row[Any]],
    course_id: str,
    run_id: str,
    now: datetime,
    lease_until: datetime,
    status: DeliveryStatus,
) -> dict[int, int]:
    """Insert a ledger row with `status` (attempts 1) for each subscriber's next lesson. Returns
    {subscriber id: delivery id}."""
    delivery_ids: dict[int, int] = {}
    if not rows:
        return delivery_ids
    stmt = _insert_claims_statement(conn, course_id, run_id, now, lease_until, status)
    for chunk in chunks(rows):
        # .all(): one fetchall, not a fetchone per row; (subscriber, delivery) pairs as they are.
        delivery_ids.update(conn.execute(stmt, {"ids": [row.id for row in chunk]}).all())
    return delivery_ids


def _insert_claims_statement(
    conn: Connection,
    course_id: str,
    run_id: str,
    now: datetime,
    lease_until: datetime,
    status: DeliveryStatus,
) -> Any:
    """INSERT one `status` delivery of its next lesson per subscriber in the bound list `ids`,
    RETURNING (subscriber id, delivery id). One INSERT ... SELECT: the shared values are bound
    once, not once per row."""

    def shared(value: Any, column: Any) -> Any:
        return literal(value, type_=column.type)

    source = select(
        S.c.id,
        shared(course_id, D.c.course_id),
        S.c.next_lesson,
        shared(status.value, D.c.status),
        shared(run_id, D.c.run_id),
        shared(1, D.c.attempts),
        shared(now, D.c.claimed_at),
        shared(lease_until, D.c.lease_until),
        shared(now, D.c.updated_at),
    ).where(in_list(conn, S.c.id, "ids", BigInteger()))
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
    return insert(D).from_select(columns, source).returning(D.c.subscriber_id, D.c.id)


def _claim_again(
    conn: Connection,
    rows: Sequence[Row[Any]],
    run_id: str,
    now: datetime,
    lease_until: datetime,
    status: DeliveryStatus,
) -> None:
    """Existing ledger rows become `status` ('claimed' or 'sending') for `run_id`, attempts + 1."""
    if not rows:
        return
    reclaim = (
        update(D)
        .where(in_list(conn, D.c.id, "ids", BigInteger()))
        .values(
            status=status.value,
            run_id=run_id,
            attempts=D.c.attempts + 1,
            claimed_at=now,
            lease_until=lease_until,
            updated_at=now,
        )
    )
    for chunk in chunks(rows):
        conn.execute(reclaim, {"ids": [row.delivery_id for row in chunk]})


def _mark_in_doubt(conn: Connection, rows: Sequence[Row[Any]], now: datetime) -> None:
    """'sending' rows whose run died become 'in_doubt' (the caller holds their subscribers)."""
    if not rows:
        return
    doubt = (
        update(D)
        .where(in_list(conn, D.c.id, "ids", BigInteger()))
        .values(
            status=DeliveryStatus.IN_DOUBT.value,
            updated_at=now,
            detail=IN_DOUBT_DETAIL,
        )
    )
    for chunk in chunks(rows):
        conn.execute(doubt, {"ids": [row.delivery_id for row in chunk]})


def _move_past_sent(
    conn: Connection, rows: Sequence[Row[Any]], move_on: MoveOn | None, now: datetime
) -> None:
    """Subscribers due for a lesson already sent move on to the next one they have not had."""
    if not rows:
        return
    ids = [row.id for row in rows]
    sent = sent_lessons(conn, ids) if move_on is not None else {}
    # Read here, not by _pick_due: converting it for every due reader cost more than this
    # query for the few who move on.
    last_sent = _last_sent_at(conn, ids) if move_on is not None else {}
    advance: list[tuple[Any, ...]] = []
    complete: list[tuple[Any, ...]] = []
    held: list[tuple[int, str]] = []
    for row in rows:
        answer = None
        if move_on is not None:
            answer = move_on(
                row.timezone,
                row.next_lesson,
                last_sent.get(row.id),
                sent.get(row.id, frozenset()),
                row.send_time,
            )
        if answer is None:
            held.append((row.id, _held(row, ClaimAction.HOLD_SETTLED)))
        elif answer[0] is None:
            complete.append((COMPLETED, now, None, None, row.id))
        else:
            advance.append((answer[0], answer[1], row.id))
        log.info("subscriber %s already had %r; moving on", row.id, row.next_lesson)
    update_rows(conn, S, ("next_lesson", "next_send_at"), advance, only_active=True)
    update_rows(
        conn,
        S,
        ("status", "status_changed_at", "next_lesson", "next_send_at"),
        complete,
        only_active=True,
    )
    hold(conn, held)


def _last_sent_at(conn: Connection, subscriber_ids: Sequence[int]) -> dict[int, datetime | None]:
    """Each subscriber's last_sent_at."""
    stmt = select(S.c.id, S.c.last_sent_at).where(in_list(conn, S.c.id, "ids", BigInteger()))
    found: dict[int, datetime | None] = {}
    for chunk in chunks(subscriber_ids):
        found.update((row[0], row[1]) for row in conn.execute(stmt, {"ids": list(chunk)}))
    return found


def sent_lessons(conn: Connection, subscriber_ids: Sequence[int]) -> dict[int, frozenset[str]]:
    """The lessons the ledger has as sent, per subscriber."""
    found: dict[int, set[str]] = {}
    stmt = select(D.c.subscriber_id, D.c.lesson).where(
        in_list(conn, D.c.subscriber_id, "ids", BigInteger()),
        D.c.status == DeliveryStatus.SENT.value,
    )
    for chunk in chunks(subscriber_ids):
        for subscriber_id, lesson in conn.execute(stmt, {"ids": list(chunk)}):
            found.setdefault(subscriber_id, set()).add(lesson)
    return {key: frozenset(value) for key, value in found.items()}


def hold(conn: Connection, held: Sequence[tuple[int, str]]) -> None:
    """Hold these subscribers: next_send_at NULL, held_reason set (one statement per batch)."""
    update_rows(conn, S, ("next_send_at", "held_reason"), [(None, why, sid) for sid, why in held])


def _set_next_send_at(conn: Connection, ids: Sequence[int], value: datetime | None) -> None:
    stmt = (
        update(S)
        .where(in_list(conn, S.c.id, "ids", BigInteger()))
        .values(next_send_at=bindparam("b_at", type_=S.c.next_send_at.type))
    )
    for chunk in chunks(ids):
        conn.execute(stmt, {"ids": list(chunk), "b_at": value})


def _claim(row: Sequence[Any], delivery_id: int, attempts: int) -> Claim:
    # One per claimed reader: the row read by index (_pick_due's first six columns: id, email,
    # name, timezone, next_lesson, send_time), several times cheaper than a Row's attributes.
    return Claim(delivery_id, row[0], row[1], row[2], row[3], row[4], attempts, row[5])


def mark_sending(session: Session, delivery_ids: Sequence[int], now: datetime) -> list[int]:
    """These claims are about to be handed to a transport: 'claimed' -> 'sending'.

    Only claims whose subscriber is still 'active' are marked; the others (an unsubscribe or a
    pause since the claim) go back to 'retry', unsent, so a subscriber who unsubscribed while a long
    run was going gets nothing after that. Returns the ids marked 'sending': send only those.
    Commit before sending. After a crash, only 'sending' rows can have gone out (they become
    'in_doubt'); rows still 'claimed' are sent by a later run.
    """
    conn = connection(session)
    still_active = select(S.c.id).where(S.c.id == D.c.subscriber_id, S.c.status == ACTIVE).exists()
    claimed = D.c.status == DeliveryStatus.CLAIMED.value
    mark = (
        update(D)
        .where(in_list(conn, D.c.id, "ids", BigInteger()), claimed, still_active)
        .values(status=DeliveryStatus.SENDING.value, updated_at=now)
        .returning(D.c.id)
    )
    release = (
        update(D)
        .where(in_list(conn, D.c.id, "ids", BigInteger()), claimed)
        .values(
            status=DeliveryStatus.RETRY.value,
            attempts=D.c.attempts - 1,  # not an attempt
            updated_at=now,
            detail="not sent: the reader was no longer active when its turn came",
        )
    )
    marked: list[int] = []
    for chunk in chunks(delivery_ids):
        now_sending = [row[0] for row in conn.execute(mark, {"ids": list(chunk)}).all()]
        marked.extend(now_sending)
        if len(now_sending) < len(set(chunk)):
            # Only then can a claim of the chunk still be 'claimed' (the usual window has none).
            conn.execute(release, {"ids": list(chunk)})
    return marked


# --- recording outcomes -----------------------------------------------------------------------


_MINE = frozenset({DeliveryStatus.CLAIMED.value, DeliveryStatus.SENDING.value})
"""A run's open rows: claimed, and maybe handed to the transport."""
_OPEN = _MINE | {DeliveryStatus.IN_DOUBT.value}


class _Settling(NamedTuple):
    """A delivery about to change state, with its subscriber, locked for this transaction.

    A NamedTuple, made straight from the fetched row: one per delivery recorded, so a frozen
    dataclass's per-field init showed in the send loop's profile."""

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
    """Current state of deliveries and their subscribers; row-locked (PostgreSQL) so an unsubscribe
    committed concurrently is either seen here or applied after this transaction (and wins).

    Two statements, each by its table's primary key (the deliveries, then their subscribers,
    each locked in id order, as the webhook does), not one join: PostgreSQL planned the join of
    a 4,000-delivery window as a merge join that read the subscribers' key from the first id
    up to the window's (every reader before it, again for each window of a run).
    """
    deliveries: Select[Any] = (
        select(D.c.id, D.c.status, D.c.run_id, D.c.lesson, D.c.subscriber_id)
        .where(in_list(conn, D.c.id, "ids", BigInteger()))
        .order_by(D.c.id)
    )
    readers: Select[Any] = (
        select(S.c.id, S.c.status, S.c.next_lesson)
        .where(in_list(conn, S.c.id, "ids", BigInteger()))
        .order_by(S.c.id)
    )
    if capabilities_of(conn.dialect).row_locks:
        deliveries = deliveries.with_for_update()
        readers = readers.with_for_update()
    found: dict[int, _Settling] = {}
    for chunk in chunks(sorted(set(delivery_ids))):
        rows = conn.execute(deliveries, {"ids": list(chunk)}).all()
        wanted = sorted({row[4] for row in rows})  # row[4]: the subscriber id
        subscriber = {row[0]: row for row in conn.execute(readers, {"ids": wanted}).all()}
        for row in rows:
            reader = subscriber.get(row[4])
            if reader is not None:  # the foreign key keeps it there; a join would drop it
                found[row[0]] = _Settling._make((*row, reader[1], reader[2]))
    return found


def _update_deliveries(
    conn: Connection, status: DeliveryStatus, params: list[dict[str, Any]]
) -> None:
    """Set `status` (and each param's b_detail / b_now) on deliveries by b_id (one executemany)."""
    if not params:
        return
    keys = [key for key in ("b_detail", "b_now") if key in params[0]]
    columns = ["status", *({"b_detail": "detail", "b_now": "updated_at"}[key] for key in keys)]
    rows = [(status.value, *(p[key] for key in keys), p["b_id"]) for p in params]
    update_rows(conn, D, columns, rows)


_UNSEEN = object()


LOCK_CONFLICTS = frozenset({"40P01", "40001"})
"""PostgreSQL's deadlock_detected and serialization_failure: the server rolled the transaction
back to break a conflict with another one; it may simply run again."""


def lost_lock_conflict(exc: BaseException) -> bool:
    """True when `exc` is the database ending this transaction to break a lock conflict with a
    concurrent one (e.g. the webhook flagging and suppressing while `drip send` records: both
    lock deliveries and subscribers). Nothing of the transaction was written; run it again."""
    return getattr(getattr(exc, "orig", None), "sqlstate", None) in LOCK_CONFLICTS


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
    conn = connection(session)
    state = _settling(conn, (item.delivery_id for item in items))
    sent = DeliveryStatus.SENT.value
    deliveries_sent: list[tuple[Any, ...]] = []
    advance: list[tuple[Any, ...]] = []
    complete: list[tuple[Any, ...]] = []
    progress_only: list[tuple[Any, ...]] = []
    touched_only: list[tuple[Any, ...]] = []
    cleaned: dict[str | None, Any] = {}
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
        # A bulk request's readers share one provider id: cleaned once.
        provider_id = cleaned.get(item.provider_id, _UNSEEN)
        if provider_id is _UNSEEN:
            provider_id = cleaned[item.provider_id] = clean_text(item.provider_id)
        deliveries_sent.append((sent, now, now, provider_id, item.delivery_id))
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

    update_rows(conn, D, ("status", "sent_at", "updated_at", "provider_id"), deliveries_sent)
    progress = ("next_lesson", "next_send_at", "last_sent_at")
    update_rows(conn, S, progress, advance, only_active=True)
    update_rows(conn, S, ("status", "status_changed_at", *progress), complete, only_active=True)
    update_rows(conn, S, ("next_lesson", "last_sent_at"), progress_only)
    update_rows(conn, S, ("last_sent_at",), touched_only)
    return len(deliveries_sent)


def _hold_or_reschedule(
    conn: Connection, rows: list[tuple[_Settling, datetime | None, str | None]]
) -> None:
    """Subscribers still waiting for the lesson of these deliveries get next_send_at = the
    moment, or are held (NULL) with the reason."""
    update_rows(
        conn,
        S,
        ("next_send_at", "held_reason"),
        [(at, why, row.subscriber_id) for row, at, why in rows if row.on_track],
        only_active=True,
    )


def _settle(
    session: Session,
    delivery_ids_details: Sequence[tuple[int, str, datetime | None]],
    *,
    allowed: frozenset[str],
    status: DeliveryStatus,
    now: datetime | None,
    reason: Callable[[str, str | None], str] | None = None,
) -> int:
    """Move deliveries to `status` with their detail; their subscribers, if still waiting for the
    lesson, are due again at the given moment, or held with `reason(lesson, detail)`."""
    conn = connection(session)
    state = _settling(conn, (delivery_id for delivery_id, _, _ in delivery_ids_details))
    changed: list[dict[str, Any]] = []
    subscribers_after: list[tuple[_Settling, datetime | None, str | None]] = []
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
        detail = clean_text(detail) or ""
        params: dict[str, Any] = {"b_id": delivery_id, "b_detail": detail}
        if now is not None:
            params["b_now"] = now
        changed.append(params)
        why = reason(current.lesson, detail) if next_at is None and reason is not None else None
        subscribers_after.append((current, next_at, why))
    _update_deliveries(conn, status, changed)
    _hold_or_reschedule(conn, subscribers_after)
    return len(changed)


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
        reason=failed_reason,
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
        reason=in_doubt_reason,
    )


def release_claims(
    session: Session, run_id: str, now: datetime, *, keep: Collection[int] = ()
) -> int:
    """Give back every open claim of `run_id` (nothing was sent for them) but the deliveries in
    `keep` (handed to a transport, outcome unknown: they stay 'sending' until their lease ends,
    then are in doubt): -> 'retry', and their subscribers, if still waiting for that lesson, are
    due again at `now`. Returns the count.
    """
    conn = connection(session)
    mine = and_(D.c.run_id == run_id, D.c.status.in_(sorted(_MINE)))
    params: dict[str, list[int]] = {}
    if keep:
        mine = and_(mine, ~in_list(conn, D.c.id, "keep", BigInteger()))
        params = {"keep": sorted(keep)}
    waiting = (
        select(D.c.subscriber_id)
        .where(mine, D.c.subscriber_id == S.c.id, D.c.lesson == S.c.next_lesson)
        .exists()
    )
    conn.execute(update(S).where(S.c.status == ACTIVE, waiting).values(next_send_at=now), params)
    result = conn.execute(
        update(D)
        .where(mine)
        .values(
            status=DeliveryStatus.RETRY.value,
            # Nothing was attempted: the claim's count is given back, so runs stopped by a fatal
            # answer never use up a delivery's attempts.
            attempts=D.c.attempts - 1,
            updated_at=now,
            detail="released unsent: the run stopped before sending it",
        ),
        params,
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
    hold_reason: str | None = None,
) -> None:
    """The operator's (or a provider event's) decision on an in-doubt delivery.

    sent=True: recorded 'sent'; the subscriber moves on to `next_lesson` at `next_send_at`
    (or completes when `next_lesson` is None), or, with `hold_reason`, is held for that reason.
    sent=False: 'retry'; the same lesson is due again at `next_send_at` (`next_lesson` is
    ignored). Raises `NotFoundError` or `StateError` when the
    delivery is unknown or not in doubt.
    """
    conn = connection(session)
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
        if hold_reason is not None:
            update_rows(
                conn,
                S,
                ("next_send_at", "held_reason"),
                [(None, hold_reason, current.subscriber_id)],
                only_active=True,
            )
    else:
        record_retry(session, [(delivery_id, next_send_at or now, "resolved as not sent")], now=now)


def retry_failed(
    session: Session, course_id: str, delivery_ids: Sequence[int] | None, now: datetime
) -> list[int]:
    """Re-arm failed deliveries (all of `course_id`'s when `delivery_ids` is None): each becomes
    'retry' with a fresh attempt budget, and its subscriber, if still active and waiting for that
    lesson, is due at `now`. Returns the ids re-armed; the others
    (unknown, not failed, subscriber gone or moved on) are left alone.
    """
    conn = connection(session)
    waiting = and_(S.c.id == D.c.subscriber_id, S.c.status == ACTIVE, S.c.next_lesson == D.c.lesson)
    stmt = (
        select(D.c.id, D.c.subscriber_id)
        .where(
            D.c.course_id == course_id,
            D.c.status == DeliveryStatus.FAILED.value,
            select(S.c.id).where(waiting).exists(),
        )
        .order_by(D.c.id)
    )
    if delivery_ids is not None:
        stmt = stmt.where(D.c.id.in_(list(delivery_ids)))
    rows = list(conn.execute(stmt))
    retry = DeliveryStatus.RETRY.value
    update_rows(
        conn,
        D,
        ("status", "attempts", "detail", "updated_at"),
        [(retry, 0, "re-armed by the operator", now, d) for d, _ in rows],
    )
    update_rows(
        conn,
        S,
        ("next_send_at", "held_reason"),
        [(now, None, s) for _, s in rows],
        only_active=True,
    )
    return [delivery_id for delivery_id, _ in rows]
