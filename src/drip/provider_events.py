"""What SendGrid's events do to drip: stored once, addresses suppressed at once, in-doubt
deliveries settled.

- `record_sendgrid_events` (the webhook, one transaction per batch): store the events (deduped
  by `sg_event_id`), mark on each delivery what they report of it (`outcome_of`: the bits
  `drip stats` counts), suppress the addresses that bounced, complained or unsubscribed (every
  enrolment, for good), and settle as sent the course's in-doubt deliveries the events name.
  Events about an address erased at the person's request are not stored (GDPR).
- `settle_in_doubt` (`delivery.send_due`, before it claims anything): apply
  `drip.settle_policy.decide_in_doubt` to every in-doubt delivery of the course: sent when an
  event names it, sent again when the webhook shows it never reached SendGrid, else left to
  wait (and to the operator's `drip deliveries resolve`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from drip import schedule, store
from drip.course import Course
from drip.errors import UnknownTimezoneError
from drip.models import DeliveryOutcome
from drip.settle_policy import GRACE, InDoubtFacts, Settle, decide_in_doubt
from drip.store.events import InDoubtEvidence, NewEvent
from drip.transports.sendgrid.events import KNOWN_TYPES, ParsedEvents, SendGridEvent

log = logging.getLogger(__name__)

PROVIDER = "sendgrid"

_OUTCOME_BY_TYPE = {
    "delivered": DeliveryOutcome.DELIVERED.value,
    "open": DeliveryOutcome.OPENED.value,
    "click": DeliveryOutcome.CLICKED.value,
    "bounce": DeliveryOutcome.BOUNCED.value,
    "dropped": DeliveryOutcome.BOUNCED.value,
    "spamreport": DeliveryOutcome.COMPLAINED.value,
}
_OPENED = DeliveryOutcome.OPENED.value
_MACHINE_OPENED = DeliveryOutcome.MACHINE_OPENED.value


def outcome_of(event: SendGridEvent) -> int:
    """The `DeliveryOutcome` bits a SendGrid event reports of its delivery (0: none, e.g.
    `processed`). An open is a machine open when SendGrid says so (`sg_machine_open`: true,
    e.g. Apple Mail Privacy Protection); migration 0004 backfills by this same rule."""
    outcome = _OUTCOME_BY_TYPE.get(event.type, 0)
    if outcome == _OPENED and event.payload.get("sg_machine_open") is True:
        return _MACHINE_OPENED
    return outcome


@dataclass(frozen=True, slots=True)
class Settled:
    """What one settling pass did."""

    sent: int = 0
    not_sent: int = 0
    waiting: int = 0


@dataclass(frozen=True, slots=True)
class EventsRecorded:
    """What one webhook batch did."""

    received: int
    stored: int
    """New events. The rest were stored before (SendGrid redelivered them), or are about an
    address erased at the person's request (`store.add_events`)."""
    skipped: int
    """Items that were not events (see `parse_events`)."""
    suppressed: int
    """Enrolments that became bounced, complained or unsubscribed."""
    settled_sent: int
    """In-doubt deliveries settled as sent by these events."""

    def as_dict(self) -> dict[str, int]:
        return {
            "received": self.received,
            "stored": self.stored,
            "duplicates": self.received - self.stored,
            "skipped": self.skipped,
            "suppressed": self.suppressed,
            "settled_sent": self.settled_sent,
        }


def record_sendgrid_events(
    sessions: sessionmaker[Session], course: Course, parsed: ParsedEvents, *, now: datetime
) -> EventsRecorded:
    """Store and apply one webhook batch in one transaction (a database failure raises, and
    nothing of the batch is kept: SendGrid posts it again)."""
    # Positional (provider_event_id, type, occurred_at, payload, delivery_ref, outcome): a
    # NamedTuple built by keywords costs twice as much, 1,000 times per batch.
    batch = [
        NewEvent(
            event.event_id,
            event.type,
            event.occurred_at,
            event.payload,
            event.delivery_id,
            outcome_of(event),
        )
        for event in parsed.events
    ]
    # Oldest first: the first suppression of an address is the one that stays (but a complaint).
    changes = [
        (event.occurred_at, event.email, event.suppress)
        for event in parsed.events
        if event.suppress is not None and event.email is not None
    ]
    changes.sort(key=lambda change: change[0])
    with sessions() as session, session.begin():
        stored = store.add_events(session, PROVIDER, batch, received_at=now)
        suppressed = store.suppress_addresses(
            session, [(email, status) for _, email, status in changes], now
        )
        named = {
            event.delivery_id
            for event in parsed.events
            if event.proves_sent and event.delivery_id is not None
        }
        settled = Settled()
        if named:
            settled = _settle(session, course, now, delivery_ids=sorted(named), only_proven=True)
    return EventsRecorded(
        received=len(batch),
        stored=stored,
        skipped=parsed.skipped,
        suppressed=suppressed,
        settled_sent=settled.sent,
    )


def settle_in_doubt(
    sessions: sessionmaker[Session], course: Course, *, now: datetime, grace: timedelta = GRACE
) -> Settled:
    """Settle the course's in-doubt deliveries as `drip.settle_policy` decides, in one
    transaction. Cheap when nothing is in doubt (an index probe)."""
    with sessions() as session, session.begin():
        settled = _settle(session, course, now, grace=grace)
    if settled.sent or settled.not_sent:
        log.info(
            "in-doubt deliveries settled by SendGrid's events: %d sent, %d not sent (due again);"
            " %d still in doubt",
            settled.sent,
            settled.not_sent,
            settled.waiting,
        )
    return settled


def _settle(
    session: Session,
    course: Course,
    now: datetime,
    *,
    delivery_ids: list[int] | None = None,
    only_proven: bool = False,
    grace: timedelta = GRACE,
) -> Settled:
    rows = store.in_doubt_evidence(
        session, course.id, provider=PROVIDER, proof_types=KNOWN_TYPES, delivery_ids=delivery_ids
    )
    sent: list[tuple[int, str]] = []
    not_sent: list[tuple[int, datetime, str]] = []
    witness: datetime | None = None
    witness_known = only_proven
    for row in rows:
        if row.proof is None and not witness_known:
            witness = store.latest_reported_claim(session, provider=PROVIDER, type="processed")
            witness_known = True
        decision = decide_in_doubt(InDoubtFacts(row.proof, row.lease_until, witness), now, grace)
        if decision is Settle.SENT:
            _resolve_sent(session, course, row)
            sent.append((row.delivery_id, f"settled as sent: SendGrid reported {row.proof!r}"))
        elif decision is Settle.NOT_SENT:
            detail = (
                "settled as not sent: SendGrid reported no event for it within"
                f" {grace} of its lease end, while it reported later deliveries; sent again"
            )
            not_sent.append((row.delivery_id, now, detail))
    if sent:
        store.set_delivery_details(session, sent)
    if not_sent:
        store.record_retry(session, not_sent, now=now)
    return Settled(len(sent), len(not_sent), len(rows) - len(sent) - len(not_sent))


def _resolve_sent(session: Session, course: Course, row: InDoubtEvidence) -> None:
    """Record the delivery sent at its claim moment (as its run would have) and move the reader
    on as `lifecycle.resolve --sent` does; held with the reason when what follows cannot be
    told (the lesson was removed, or the reader's timezone cannot be loaded)."""
    hold_reason: str | None = None
    next_lesson: str | None = row.lesson
    next_send_at: datetime | None = None
    if not course.has_lesson(row.lesson):
        hold_reason = (
            f"lesson {row.lesson!r} was settled as sent but is no longer in the course; put it"
            " back in course.toml or move this reader on"
        )
    else:
        try:
            following = schedule.after_send(
                course, row.timezone, row.lesson, sent_at=row.claimed_at
            )
        except UnknownTimezoneError:
            hold_reason = store.unknown_zone_reason(row.timezone)
        else:
            next_lesson, next_send_at = following.lesson, following.send_at
    store.resolve_in_doubt(
        session,
        row.delivery_id,
        sent=True,
        now=row.claimed_at,
        next_lesson=next_lesson,
        next_send_at=next_send_at,
        hold_reason=hold_reason,
    )
