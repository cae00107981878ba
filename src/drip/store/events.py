"""Provider events (deliveries, bounces, complaints as reported by the provider), stored once,
and what they change: suppressed addresses, and the evidence that settles in-doubt deliveries.

The webhook's hot path is `add_events` + `suppress_addresses`: a few statements per batch
whatever its size (one INSERT ... ON CONFLICT DO NOTHING that looks the ledger ids up itself,
one UPDATE of the named deliveries' `event_flags` (on PostgreSQL in the same statement), one
UPDATE per suppression status).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import orjson
from sqlalchemy import BigInteger, Connection, Select, String, exists, select, update
from sqlalchemy.orm import Session

from drip.models import SQLITE_SHA256_HEX, events, suppressions
from drip.statuses import SUPPRESSED_STATUSES, DeliveryStatus, SubscriberStatus
from drip.store._bulk_update import converter, update_rows
from drip.store._sql import D, S, chunks, clean_text, connection, in_list, insert_ignoring_conflicts
from drip.store.capabilities import capabilities_of
from drip.store.privacy import ERASED

E = events


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
    outcome: int = 0,
) -> int | None:
    """Store a provider event once. Returns its new id, or None when (provider,
    provider_event_id) was stored before (webhooks are redelivered). Events without a provider
    id are always stored. `outcome` (`DeliveryOutcome` bits) is set on delivery `delivery_id`.
    One event as given, for tests and tools; the webhook stores through `add_events`, which
    also refuses events about erased addresses.
    """
    conn = connection(session)
    if outcome and delivery_id is not None:
        _flag_deliveries(conn, {delivery_id: outcome})
    stmt = (
        insert_ignoring_conflicts(conn, events, ("provider", "provider_event_id"))
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


# --- batches (the webhook) --------------------------------------------------------------------


class NewEvent(NamedTuple):
    """One provider event to store. `delivery_ref` is the ledger id the provider echoed back;
    it is stored as `delivery_id` only when that delivery exists (else NULL, the payload keeps
    what was sent). `outcome`: the `DeliveryOutcome` bits this event sets on that delivery."""

    provider_event_id: str | None
    type: str
    occurred_at: datetime
    payload: Mapping[str, Any]
    delivery_ref: int | None = None
    outcome: int = 0


def add_events(
    session: Session, provider: str, batch: Sequence[NewEvent], *, received_at: datetime
) -> int:
    """Store a batch of provider events, each (provider, provider_event_id) once. Returns how
    many were new (the others were stored before: a redelivery).

    Each event's delivery_id is its `delivery_ref` when that delivery exists (else NULL), and
    its subscriber_id that delivery's; both are looked up by the INSERT itself. Each event's
    `outcome` bits are OR-ed into its delivery's `event_flags`, redelivered events included
    (setting a bit twice changes nothing). One statement for both (PostgreSQL) or one
    executemany for each (SQLite), below SQLAlchemy's per-row parameter processing, which costs
    more than the SQL here.
    """
    if not batch:
        return 0
    conn = connection(session)
    at = converter(E.c.occurred_at, conn.dialect) or (lambda value: value)
    received = at(received_at)
    rows = []
    outcomes: dict[int, int] = {}
    for event in batch:
        event_id, kind, payload = event.provider_event_id, event.type, event.payload
        if event.outcome and event.delivery_ref is not None:
            ref = event.delivery_ref
            outcomes[ref] = outcomes.get(ref, 0) | event.outcome
        rows.append(
            (
                event_id if event_id is None or event_id.isprintable() else clean_text(event_id),
                event.delivery_ref,
                kind if kind.isprintable() else clean_text(kind),
                at(event.occurred_at),
                payload if type(payload) is dict else dict(payload),
            )
        )
    if capabilities_of(conn.dialect).array_params:
        # One round trip: the UPDATE rides along as a data-modifying WITH.
        return _insert_events(conn, provider, received, rows, outcomes)
    stored = _insert_events(conn, provider, received, rows)
    if outcomes:
        _flag_deliveries(conn, outcomes)
    return stored


def _flag_deliveries(conn: Connection, outcomes: Mapping[int, int]) -> None:
    """OR each delivery's bits into its `event_flags` ({delivery id: bits}; unknown ids are
    ignored). Rows whose bits are all set already are not written, so a redelivered batch
    writes nothing. Rows are taken in id order, the order the send path's set-based UPDATEs
    lock them in too."""
    capabilities = capabilities_of(conn.dialect)
    mark = capabilities.placeholder
    if capabilities.array_params:
        conn.exec_driver_sql(_flag_sql(mark), _flag_arrays(outcomes))
        return
    ids = sorted(outcomes)
    conn.exec_driver_sql(
        f"UPDATE {D.name} SET event_flags = event_flags | {mark}"
        f" WHERE id = {mark} AND (event_flags & {mark}) <> {mark}",
        [(outcomes[i], i, outcomes[i], outcomes[i]) for i in ids],
    )


def _flag_sql(mark: str) -> str:
    """PostgreSQL: the UPDATE of `_flag_deliveries`, for the parameters of `_flag_arrays`. The
    ids come sorted and drive the join (a nested loop over them, or a hash join probing with
    them), so the rows are locked in id order."""
    return (
        f"UPDATE {D.name} AS d SET event_flags = d.event_flags | u.bits"
        f" FROM unnest({mark}::bigint[], {mark}::integer[]) AS u(id, bits)"
        " WHERE d.id = u.id AND (d.event_flags & u.bits) <> u.bits"
    )


def _flag_arrays(outcomes: Mapping[int, int]) -> tuple[str, str]:
    """The sorted ids and their bits, as array text literals: psycopg dumps a list of ints
    element by element in Python (about 5 ms for a batch's 600 deliveries), str.join in C."""
    ids = sorted(outcomes)
    return _int_array(ids), _int_array([outcomes[delivery_id] for delivery_id in ids])


def _int_array(values: list[int]) -> str:
    """PostgreSQL's text form of an integer array: `{1,2,3}`."""
    return "{" + ",".join(map(str, values)) + "}"


_STORED_COLUMNS = (
    "provider, provider_event_id, delivery_id, subscriber_id, type, occurred_at, received_at,"
    " payload"
)
_CONFLICT = "ON CONFLICT (provider, provider_event_id) DO NOTHING"


def _erased(address: str, hex_sha256: str) -> str:
    """SQL: true when `address` (an SQL expression), trimmed and lower-cased, is on the
    suppression list as erased at the person's request. `hex_sha256` formats the dialect's hex
    SHA-256 of a text. That plain hash is the address's `email_hash`: a provider reports the
    canonical address drip sent to, which is its own normalised form."""
    return (
        f"EXISTS (SELECT 1 FROM {suppressions.name} AS s WHERE s.reason = '{ERASED}'"
        f" AND s.email_hash = {hex_sha256.format(f'lower(trim({address}))')})"
    )


_PG_SHA256 = "encode(sha256(convert_to({}, 'UTF8')), 'hex')"
_PG_PAYLOAD_EMAIL = "r.p ->> 'email'"
_SQLITE_SHA256 = SQLITE_SHA256_HEX + "({})"
_SQLITE_PAYLOAD_EMAIL = "json_extract(r.p, '$.email')"


def _insert_events(
    conn: Connection,
    provider: str,
    received: Any,
    rows: list[tuple[Any, ...]],
    outcomes: Mapping[int, int] | None = None,
) -> int:
    """INSERT the rows (provider_event_id, delivery_ref, type, occurred_at, payload: values in
    their stored form, the payload a dict) of one provider received at `received`, skipping
    (provider, provider_event_id) pairs stored before, and events whose delivery the ledger
    does not hold (none named, or deleted) that are about an address erased at the person's
    request (opens and clicks keep coming after an erase, and the payload holds the address;
    the check runs only for the rows the ledger join did not find, a few per batch); returns
    how many were inserted.

    PostgreSQL: the whole batch is one JSON parameter (serialised by orjson in one call, each
    row an object with one-letter keys) read by json_to_recordset and joined to the ledger: one
    round trip, and none of the per-element quoting text arrays of JSON would cost. The payload
    column is `json` (migration 0006), so each payload is stored as its text slice of the
    parameter, not parsed into jsonb. With `outcomes` ({delivery id: bits}), the same statement
    runs `_flag_deliveries`' UPDATE first, as a data-modifying WITH (one round trip less; both
    read the ledger as the statement began, and the INSERT reads no column the UPDATE writes).
    SQLite: one executemany, the ledger looked up by primary key per row inside SQLite.
    """
    capabilities = capabilities_of(conn.dialect)
    mark = capabilities.placeholder
    if capabilities.array_params:
        types = {
            "i": E.c.provider_event_id,
            "d": E.c.delivery_id,
            "t": E.c.type,
            "o": E.c.occurred_at,
            "p": E.c.payload,
        }
        columns = ", ".join(f"{key} {col.type.compile(conn.dialect)}" for key, col in types.items())
        flag = f"WITH flagged AS ({_flag_sql(mark)}) " if outcomes else ""
        sql = (
            f"{flag}INSERT INTO {E.name} ({_STORED_COLUMNS})"
            f" SELECT {mark}, r.i, ledger.id, ledger.subscriber_id, r.t, r.o, {mark}, r.p"
            f" FROM ROWS FROM (json_to_recordset({mark}::json) AS ({columns}))"
            f" WITH ORDINALITY AS r(i, d, t, o, p, n)"
            f" LEFT JOIN {D.name} AS ledger ON ledger.id = r.d"
            f" WHERE ledger.id IS NOT NULL OR NOT {_erased(_PG_PAYLOAD_EMAIL, _PG_SHA256)}"
            f" ORDER BY r.n {_CONFLICT}"
        )
        batch = orjson.dumps([{"i": i, "d": d, "t": t, "o": o, "p": p} for i, d, t, o, p in rows])
        values = (provider, received, batch.decode())
        params = (*_flag_arrays(outcomes), *values) if outcomes else values
        return int(conn.exec_driver_sql(sql, params).rowcount)
    # One look-up of the ledger per row (a join); SQLite wants a WHERE in an INSERT ... SELECT
    # with ON CONFLICT (a parsing ambiguity), and here it has one.
    sql = (
        f"INSERT INTO {E.name} ({_STORED_COLUMNS})"
        f" SELECT {mark}, {mark}, ledger.id, ledger.subscriber_id, {mark}, {mark}, {mark}, r.p"
        f" FROM (SELECT {mark} AS ref, {mark} AS p) AS r"
        f" LEFT JOIN {D.name} AS ledger ON ledger.id = r.ref"
        f" WHERE ledger.id IS NOT NULL OR NOT {_erased(_SQLITE_PAYLOAD_EMAIL, _SQLITE_SHA256)}"
        f" {_CONFLICT}"
    )
    many = [
        (provider, event_id, kind, occurred, received, ref, orjson.dumps(payload).decode())
        for event_id, ref, kind, occurred, payload in rows
    ]
    return int(conn.exec_driver_sql(sql, many).rowcount)


def suppress_addresses(
    session: Session, changes: Iterable[tuple[str, SubscriberStatus]], now: datetime
) -> int:
    """Suppress addresses for good, every course enrolment of each: (email, 'bounced' |
    'complained' | 'unsubscribed'). Returns the enrolments changed.

    The first suppression of an address stays (a bounce does not turn an unsubscribe into a
    bounce), except that a complaint overrides any other. Within one call an address takes a
    complaint if it has one, else its first change. The row's next_send_at becomes NULL at once:
    a run that already claimed the reader's lesson gives it back unsent at hand-over
    (`mark_sending` checks the status), and its bookkeeping never overwrites this status.
    Emails are compared lower-cased, as they are stored.
    """
    target: dict[str, SubscriberStatus] = {}
    for email, status in changes:
        status = SubscriberStatus(status)
        if status not in SUPPRESSED_STATUSES:
            raise ValueError(f"not a suppression: {status.value!r}")
        address = email.strip().lower()
        if status is SubscriberStatus.COMPLAINED or address not in target:
            target[address] = status
    if not target:
        return 0
    conn = connection(session)
    suppressed = [member.value for member in SUPPRESSED_STATUSES]
    changed = 0
    for status in (
        SubscriberStatus.UNSUBSCRIBED,
        SubscriberStatus.BOUNCED,
        SubscriberStatus.COMPLAINED,
    ):
        emails = sorted(address for address, wanted in target.items() if wanted is status)
        if not emails:
            continue
        overridable = (
            S.c.status != status.value
            if status is SubscriberStatus.COMPLAINED
            else S.c.status.not_in(suppressed)
        )
        stmt = (
            update(S)
            .where(in_list(conn, S.c.email, "emails", String()), overridable)
            .values(
                status=status.value,
                status_changed_at=now,
                next_send_at=None,
                confirmation_wanted_at=None,
            )
        )
        for chunk in chunks(emails):
            changed += conn.execute(stmt, {"emails": list(chunk)}).rowcount
    return changed


# --- in-doubt deliveries and their evidence ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class InDoubtEvidence:
    """An in-doubt delivery, locked for the transaction, with what the provider said of it."""

    delivery_id: int
    subscriber_id: int
    email: str
    timezone: str
    lesson: str
    claimed_at: datetime
    lease_until: datetime
    """By then the message was handed over, or never will be (its run is presumed dead)."""
    proof: str | None
    """The type of the first stored provider event naming this delivery (one of the types
    asked for), or None."""


def in_doubt_evidence(
    session: Session,
    course_id: str,
    *,
    provider: str,
    proof_types: Collection[str],
    delivery_ids: Sequence[int] | None = None,
) -> list[InDoubtEvidence]:
    """The course's in-doubt deliveries (only those among `delivery_ids` when given), oldest
    first, each with the first stored `provider` event of `proof_types` naming it. Row-locked on
    PostgreSQL (delivery and subscriber, skipping rows locked elsewhere), so settling them cannot
    race another settler."""
    conn = connection(session)
    proof = (
        select(E.c.type)
        .where(E.c.delivery_id == D.c.id, E.c.provider == provider, E.c.type.in_(proof_types))
        .order_by(E.c.occurred_at, E.c.id)
        .limit(1)
        .scalar_subquery()
    )
    stmt: Select[Any] = (
        select(
            D.c.id,
            D.c.subscriber_id,
            S.c.email,
            S.c.timezone,
            D.c.lesson,
            D.c.claimed_at,
            D.c.lease_until,
            proof.label("proof"),
        )
        .select_from(D.join(S, S.c.id == D.c.subscriber_id))
        .where(D.c.course_id == course_id, D.c.status == DeliveryStatus.IN_DOUBT.value)
        .order_by(D.c.claimed_at, D.c.id)
    )
    if capabilities_of(conn.dialect).skip_locked:
        # Rows another transaction holds (settling them, or recording its run) are left to it
        # or to the next pass: a send never waits on another's rows.
        stmt = stmt.with_for_update(of=[D, S], skip_locked=True)
    if delivery_ids is None:
        return [InDoubtEvidence(*row) for row in conn.execute(stmt)]
    if not delivery_ids or not _any_in_doubt(conn, course_id):
        return []  # the webhook's usual case: one index probe, not a look-up of every id
    found: list[InDoubtEvidence] = []
    narrowed = stmt.where(in_list(conn, D.c.id, "ids", BigInteger()))
    for chunk in chunks(sorted(set(delivery_ids))):
        found.extend(InDoubtEvidence(*row) for row in conn.execute(narrowed, {"ids": list(chunk)}))
    return found


def _any_in_doubt(conn: Connection, course_id: str) -> bool:
    in_doubt = exists().where(
        D.c.course_id == course_id, D.c.status == DeliveryStatus.IN_DOUBT.value
    )
    return bool(conn.execute(select(in_doubt)).scalar())


def latest_reported_claim(session: Session, *, provider: str, type: str) -> datetime | None:
    """When the newest ledger delivery that `provider` reported a `type` event for was claimed
    (None: no such event). The newest delivery is the one with the highest id: an index probe on
    events.delivery_id, stepping back over other event types."""
    conn = connection(session)
    newest = (
        select(E.c.delivery_id)
        .where(E.c.delivery_id.is_not(None), E.c.provider == provider, E.c.type == type)
        .order_by(E.c.delivery_id.desc())
        .limit(1)
        .scalar_subquery()
    )
    return conn.execute(select(D.c.claimed_at).where(D.c.id == newest)).scalar_one_or_none()


def set_delivery_details(session: Session, details: Sequence[tuple[int, str]]) -> None:
    """Replace the `detail` of these deliveries (delivery_id, detail): one statement."""
    update_rows(
        connection(session),
        D,
        ("detail",),
        [(clean_text(detail), delivery_id) for delivery_id, detail in details],
    )
