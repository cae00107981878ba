"""The states of an enrolment and of a ledger row: plain enums, no I/O.

Their own module so that pure code (the claim policy) can name them without importing the
database models; `drip.models` builds its CHECK constraints from them and re-exports them.
"""

from __future__ import annotations

import enum
from datetime import timedelta

__all__ = ["SUPPRESSED_STATUSES", "UNCONFIRMED_TTL", "DeliveryStatus", "SubscriberStatus"]


class SubscriberStatus(enum.StrEnum):
    """Where one enrolment stands. The last three are suppressions: never mailed again."""

    PENDING = "pending"
    ACTIVE = "active"
    PAUSED = "paused"
    COMPLETED = "completed"
    UNSUBSCRIBED = "unsubscribed"
    BOUNCED = "bounced"
    COMPLAINED = "complained"


SUPPRESSED_STATUSES = frozenset(
    {SubscriberStatus.UNSUBSCRIBED, SubscriberStatus.BOUNCED, SubscriberStatus.COMPLAINED}
)

UNCONFIRMED_TTL = timedelta(days=30)
"""A signup never confirmed ('pending') is deleted this long after the last thing that happened
to it (`store.subscribers.purge_unconfirmed`, run by every `drip send`)."""


class DeliveryStatus(enum.StrEnum):
    """Where one (subscriber, lesson) send stands in the ledger."""

    CLAIMED = "claimed"
    """Reserved by a run, not yet handed to a transport: claimable again once its lease ends."""
    SENDING = "sending"
    """Handed to a transport by a run that has not recorded the outcome yet. If that run dies,
    the message may or may not have gone out: past the lease it becomes 'in_doubt'."""
    SENT = "sent"
    """The provider accepted it."""
    RETRY = "retry"
    """Known not sent; will be claimed again when the subscriber is due."""
    FAILED = "failed"
    """Permanently refused by the provider; the subscriber is held for the operator."""
    IN_DOUBT = "in_doubt"
    """Maybe sent (crash or a lost response); an operator or a provider event decides."""
