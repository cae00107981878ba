"""The store: the only package that builds queries. Functions take a Session and plain values.

Everything public is importable from here (`from drip import store; store.claim_due(...)`):
`subscribers` (enrol, confirm, status changes, import look-ups), `ledger` (claim, mark sending,
record outcomes, release, resolve), `reports` (counts and listings), `events` (provider
events), `preferences` (a reader's timed pause, timezone and send time, progress), `privacy`
(GDPR export and erase, the hashed suppression list), `values` (the dataclasses in and out).

Transactions belong to the caller: no function here commits. Use
`with sessions() as session, session.begin(): ...` and keep transactions short (on SQLite every
transaction holds the database's write lock from its start, see `drip.db`).

Data leaves as plain frozen dataclasses, never ORM objects. The hot paths (claiming due lessons,
recording outcomes, importing) are SQLAlchemy Core statements run in batches: one statement per
chunk or one executemany per batch, never one round trip per row where avoidable.

State rules kept here:
- `next_send_at` is non-NULL only for an 'active' subscriber with a `next_lesson`; the send query
  reads the partial index on (course_id, next_send_at) and nothing else.
- An 'unsubscribed', 'bounced' or 'complained' enrolment is never re-activated by this package.
- The ledger row of a (subscriber, lesson) is created when first claimed and never deleted, so a
  lesson goes out at most once; progress is kept by lesson slug, never by position.
"""

from drip.errors import NotFoundError, StateError, SuppressedAddressError
from drip.statuses import DeliveryStatus, SubscriberStatus
from drip.store.events import (
    InDoubtEvidence,
    NewEvent,
    add_event,
    add_events,
    in_doubt_evidence,
    latest_reported_claim,
    set_delivery_details,
    suppress_addresses,
)
from drip.store.ledger import (
    claim_due,
    lost_lock_conflict,
    mark_sending,
    record_failed,
    record_in_doubt,
    record_retry,
    record_sent,
    release_claims,
    resolve_in_doubt,
    retry_failed,
    unknown_zone_reason,
)
from drip.store.preferences import (
    PausedReader,
    ReaderDelivery,
    reader_deliveries,
    resume_ended_pauses,
    set_schedule,
)
from drip.store.privacy import (
    email_hash,
    erase_subscriber,
    export_subscriber,
    is_suppressed,
    suppressed_emails,
)
from drip.store.reports import (
    count_due,
    delivery_counts,
    due_by_lesson,
    lessons_sent,
    list_deliveries,
    list_in_doubt,
    list_subscribers,
)
from drip.store.stats import LessonCounts, Signups, lesson_counts, signups
from drip.store.subscribers import (
    add_subscriber,
    confirm_pending,
    confirm_subscriber,
    existing_subscribers,
    get_subscriber,
    get_subscriber_by_id,
    insert_subscribers,
    mark_confirmation_sent,
    mark_suppressed,
    pause,
    resume,
    unsubscribe,
)
from drip.store.values import (
    AddResult,
    Claim,
    ClaimBatch,
    DeliveryView,
    ExistingSubscriber,
    NewSubscriber,
    SentItem,
    SubscriberView,
)

__all__ = [
    "AddResult",
    "Claim",
    "ClaimBatch",
    "DeliveryStatus",
    "DeliveryView",
    "ExistingSubscriber",
    "InDoubtEvidence",
    "LessonCounts",
    "NewEvent",
    "NewSubscriber",
    "NotFoundError",
    "PausedReader",
    "ReaderDelivery",
    "SentItem",
    "Signups",
    "StateError",
    "SubscriberStatus",
    "SubscriberView",
    "SuppressedAddressError",
    "add_event",
    "add_events",
    "add_subscriber",
    "claim_due",
    "confirm_pending",
    "confirm_subscriber",
    "count_due",
    "delivery_counts",
    "due_by_lesson",
    "email_hash",
    "erase_subscriber",
    "existing_subscribers",
    "export_subscriber",
    "get_subscriber",
    "get_subscriber_by_id",
    "in_doubt_evidence",
    "insert_subscribers",
    "is_suppressed",
    "latest_reported_claim",
    "lesson_counts",
    "lessons_sent",
    "list_deliveries",
    "list_in_doubt",
    "list_subscribers",
    "lost_lock_conflict",
    "mark_confirmation_sent",
    "mark_sending",
    "mark_suppressed",
    "pause",
    "reader_deliveries",
    "record_failed",
    "record_in_doubt",
    "record_retry",
    "record_sent",
    "release_claims",
    "resolve_in_doubt",
    "resume",
    "resume_ended_pauses",
    "retry_failed",
    "set_delivery_details",
    "set_schedule",
    "signups",
    "suppress_addresses",
    "suppressed_emails",
    "unknown_zone_reason",
    "unsubscribe",
]
