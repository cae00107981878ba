"""The plain values the store takes and returns (frozen dataclasses, never ORM objects)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from drip.statuses import SubscriberStatus


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
    held_reason: str | None = None
    """Why the subscriber is held; meaningful only while `is_held`."""
    paused_until: datetime | None = None
    """A 'paused' reader's pause ends then; None: until resumed."""
    send_time: str | None = None
    """The reader's own "HH:MM" for lessons after the first; None: the course's."""
    confirmation_wanted_at: datetime | None = None
    """A double opt-in email is owed since then (queued, not sent yet)."""
    held_by_delivery: bool = False
    """Paused, and the ledger has its next lesson failed or in doubt: held all the same (read by
    `store.reader_select`; False from other queries)."""

    def as_dict(self) -> dict[str, Any]:
        """The subscriber as `drip subscribers list --json` prints it (one object per line)."""
        return {
            "email": self.email,
            "name": self.name,
            "status": self.status.value,
            "timezone": self.timezone,
            "next_lesson": self.next_lesson,
            "next_send_at": self.next_send_at.isoformat() if self.next_send_at else None,
            "last_sent_at": self.last_sent_at.isoformat() if self.last_sent_at else None,
            "held": self.is_held,
            "held_reason": self.held_reason if self.is_held else None,
        }

    @property
    def is_held(self) -> bool:
        """Waiting on the operator: active with a next lesson but no moment to send it, or
        paused with that lesson failed or in doubt (`held_by_delivery`)."""
        if self.status is SubscriberStatus.PAUSED:
            return self.held_by_delivery
        return (
            self.status is SubscriberStatus.ACTIVE
            and self.next_lesson is not None
            and self.next_send_at is None
        )


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


class Claim(NamedTuple):
    """One lesson claimed for sending by one run: the ledger row exists and is 'claimed' (or
    'sending': `claim_due(sending=True)`).

    A NamedTuple (immutable, made straight from the fetched values): one per due reader on the
    send hot path, where a frozen dataclass's per-field init showed in the profile."""

    delivery_id: int
    subscriber_id: int
    email: str
    name: str | None
    timezone: str
    lesson: str
    attempts: int
    send_time: str | None = None
    """The reader's own "HH:MM" for lessons after the first; None: the course's."""


@dataclass(frozen=True, slots=True)
class ClaimBatch:
    claims: list[Claim]
    newly_in_doubt: int
    """'sending' rows whose lease ran out (a crashed run), now 'in_doubt' and not claimed."""
    rescheduled: int = 0
    """Due subscribers moved to a later moment instead of claimed (a late run inside quiet hours
    or on a day off)."""


class SentItem(NamedTuple):
    """The provider accepted a delivery. `next_lesson` None means the course is complete.

    A NamedTuple, like `Claim`: one per reader recorded."""

    delivery_id: int
    provider_id: str | None
    now: datetime
    next_lesson: str | None
    next_send_at: datetime | None


@dataclass(frozen=True, slots=True)
class DeliveryView:
    """One ledger row with its subscriber's address, as the operator's listings show it."""

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

    def as_dict(self) -> dict[str, Any]:
        """The delivery as `drip deliveries in-doubt|failed --json` print it (one per line)."""
        return {
            "delivery_id": self.delivery_id,
            "email": self.email,
            "lesson": self.lesson,
            "claimed_at": self.claimed_at.isoformat(),
            "detail": self.detail,
        }

    def as_row(self) -> str:
        """The delivery as one tab-separated line of `drip deliveries in-doubt|failed`."""
        return (
            f"{self.delivery_id}\t{self.email}\t{self.lesson}\t"
            f"{self.claimed_at.isoformat()}\t{self.detail or ''}"
        )
