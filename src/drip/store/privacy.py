"""GDPR: everything stored about a reader (export, Art. 15/20), erasing it (Art. 17), and the
hashed suppression list that outlives an erased address.

Erasing keeps one thing: the SHA-256 of the normalised address in `suppressions`, so that an
import or a signup of the same address is refused and an erased person is never mailed again.

Why a plain hash and not a keyed one (an HMAC with DRIP_SECRET_KEY): the entry must match the
same address in every future import and signup, for years, across key rotations and on every
host; a keyed hash would stop matching as soon as the key that made it is retired, and the
erased person would be mailed again. The cost is that someone holding the database can test a
guessed address against the list, which tells them only that the address was once erased here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, String, bindparam, delete, func, or_, select
from sqlalchemy.orm import Session

from drip.addresses import normalize_email
from drip.errors import InvalidAddressError
from drip.models import events, suppressions
from drip.store._sql import D, S, chunks, connection, in_list, insert_ignoring_conflicts
from drip.store.capabilities import capabilities_of

ERASED = "erased"
"""`suppressions.reason` of an address erased at the person's request."""


def email_hash(email: str) -> str:
    """SHA-256 (hex) of the address in the canonical form drip stores (`normalize_email`; an
    address that does not validate: trimmed and lower-cased), so `ＡＢＣ@Example.com` and
    `abc@example.com` hash alike."""
    try:
        canonical = normalize_email(email)
    except InvalidAddressError:
        canonical = email.strip().lower()
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


_IS_SUPPRESSED = (
    select(suppressions.c.id).where(suppressions.c.email_hash == bindparam("hash")).limit(1)
)
"""Built once, the hash bound at execution (every signup runs it)."""


def is_suppressed(session: Session, email: str) -> bool:
    """True when `email` was erased at the person's request: never subscribe or import it."""
    found = connection(session).execute(_IS_SUPPRESSED, {"hash": email_hash(email)})
    return found.first() is not None


def suppressed_emails(session: Session, emails: Sequence[str]) -> set[str]:
    """Those of `emails` that are on the suppression list (one query per chunk)."""
    if not emails:
        return set()
    conn = connection(session)
    by_hash: dict[str, list[str]] = {}
    for email in emails:
        by_hash.setdefault(email_hash(email), []).append(email)
    stmt = select(suppressions.c.email_hash).where(
        in_list(conn, suppressions.c.email_hash, "hashes", String())
    )
    found: set[str] = set()
    for chunk in chunks(list(by_hash)):
        for (digest,) in conn.execute(stmt, {"hashes": list(chunk)}):
            found.update(by_hash[digest])
    return found


def _hold_off_event_writers(session: Session) -> None:
    """Make the transaction's erase and any webhook batch wait for each other.

    A batch stores no event about an erased address (`store.add_events`), but a batch stored
    while an erase runs, neither committed, would not see the address erased, nor the erase
    the batch's events: they would stay. PostgreSQL: the erase locks the events table against
    writers (SHARE ROW EXCLUSIVE; readers go on) until it commits, after any batch in progress
    has committed, so its DELETE sees that batch's events, and a later batch's INSERT runs
    after the erase's commit and sees the address erased. It must come before the erase writes
    or locks any row (it holds nothing a batch waits for while it waits). SQLite: nothing to
    do, BEGIN IMMEDIATE runs one writing transaction at a time."""
    conn = connection(session)
    if capabilities_of(conn.dialect).row_locks:
        conn.exec_driver_sql(f"LOCK TABLE {events.name} IN SHARE ROW EXCLUSIVE MODE")


def _enrolments(session: Session, subscriber_id: int) -> tuple[str, list[int]] | None:
    """The address of `subscriber_id` and the ids of every enrolment of it (all courses)."""
    conn = connection(session)
    email = conn.execute(select(S.c.email).where(S.c.id == subscriber_id)).scalar_one_or_none()
    if email is None:
        return None
    ids = list(conn.execute(select(S.c.id).where(S.c.email == email).order_by(S.c.id)).scalars())
    return email, ids


def _payload_email_is(email: str) -> Any:
    """Events whose provider payload names `email` (a bounce for an address without a delivery
    id): the payload holds the address too."""
    return func.lower(events.c.payload["email"].as_string()) == email


def _plain(row: Any) -> dict[str, Any]:
    """A row as JSON-ready values (datetimes in ISO 8601, UTC)."""
    return {
        key: value.isoformat() if isinstance(value, datetime) else value
        for key, value in row._asdict().items()
    }


def export_subscriber(session: Session, subscriber_id: int) -> dict[str, Any] | None:
    """Everything stored about the person behind `subscriber_id`: every enrolment of the address
    (all courses), each with its deliveries and the provider events about it. None for an
    unknown id. JSON-ready (datetimes as ISO 8601 UTC strings)."""
    found = _enrolments(session, subscriber_id)
    if found is None:
        return None
    email, ids = found
    conn = connection(session)
    enrolments = []
    delivery_ids: list[int] = []
    for sid in ids:
        subscriber = conn.execute(select(S).where(S.c.id == sid)).one()
        rows = conn.execute(select(D).where(D.c.subscriber_id == sid).order_by(D.c.id)).all()
        delivery_ids.extend(row.id for row in rows)
        enrolments.append(
            {"subscriber": _plain(subscriber), "deliveries": [_plain(row) for row in rows]}
        )
    about = [events.c.subscriber_id.in_(ids), _payload_email_is(email)]
    if delivery_ids:
        about.append(in_list(conn, events.c.delivery_id, "dids", BigInteger()))
    stmt = select(events).where(or_(*about)).order_by(events.c.id)
    params = {"dids": delivery_ids} if delivery_ids else {}
    found_events = [_plain(row) for row in conn.execute(stmt, params)]
    return {"email": email, "enrolments": enrolments, "events": found_events}


def erase_subscriber(session: Session, subscriber_id: int, now: datetime) -> bool:
    """Erase the person behind `subscriber_id`: every enrolment of the address (all courses),
    their deliveries and every provider event about them are deleted, and the address's hash is
    added to the suppression list. Returns False for an unknown id (already erased: nothing to
    do, the suppression entry stays). Idempotent.
    """
    _hold_off_event_writers(session)
    found = _enrolments(session, subscriber_id)
    if found is None:
        return False
    email, ids = found
    conn = connection(session)
    delivery_ids = list(conn.execute(select(D.c.id).where(D.c.subscriber_id.in_(ids))).scalars())
    about = [events.c.subscriber_id.in_(ids), _payload_email_is(email)]
    for chunk in chunks(delivery_ids):
        about.append(events.c.delivery_id.in_(list(chunk)))
    conn.execute(delete(events).where(or_(*about)))
    conn.execute(delete(D).where(D.c.subscriber_id.in_(ids)))
    conn.execute(delete(S).where(S.c.id.in_(ids)))
    suppress(session, [email], reason=ERASED, now=now)
    return True


def suppress(session: Session, emails: Iterable[str], *, reason: str, now: datetime) -> None:
    """Add the hashes of `emails` to the suppression list (already there: left as is)."""
    rows = [
        {"email_hash": email_hash(email), "reason": reason, "created_at": now} for email in emails
    ]
    if rows:
        conn = connection(session)
        conn.execute(insert_ignoring_conflicts(conn, suppressions, ("email_hash",)), rows)
