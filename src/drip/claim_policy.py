"""What a run does with one due subscriber, given the ledger row of its next lesson: the rules
`store.claim_due` applies, as a pure function (no database, no I/O) so they can be read and
tested on their own.

By the ledger row of (subscriber, next lesson):
- none -> CLAIM_NEW: inserted 'claimed' by this run, attempts 1;
- 'retry', 'failed' (re-armed by an operator), or 'claimed' past its lease (its run died before
  handing it to a transport: nothing went out) -> CLAIM_AGAIN: 'claimed' by this run, attempts + 1;
- either of those while `defer` names a later moment -> DEFER: due again then, not claimed;
- 'sending' past its lease (the run crashed while the message was with the transport) ->
  MARK_IN_DOUBT: the row becomes 'in_doubt', the subscriber is held (next_send_at NULL);
- 'claimed' or 'sending' within its lease (another run has it) -> WAIT: due again at the lease
  end, not claimed;
- 'sent' (the course was reordered: the subscriber's next lesson already went out) ->
  PAST_SENT: not sent again; the subscriber moves on to the next lesson it has not had;
- anything else ('in_doubt') -> HOLD_SETTLED: held with the reason, never sent twice.
A subscriber due with no next lesson at all (inconsistent) -> HOLD_NO_LESSON: held and logged.
A subscriber whose timezone this host cannot load (`defer` raises `UnknownTimezoneError`) ->
HOLD_UNKNOWN_ZONE: held with the reason; nobody else is affected.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from drip.errors import UnknownTimezoneError
from drip.statuses import DeliveryStatus

__all__ = ["ClaimAction", "ClaimDecision", "Defer", "DueRow", "decide_claim"]

Defer = Callable[[str, str], datetime | None]
"""`defer(timezone, lesson)`: a later moment when the subscriber must not get mail now (a late
run inside quiet hours), else None."""


class DueRow(Protocol):
    """A due subscriber joined with the ledger row of its next lesson (None: no row yet)."""

    @property
    def timezone(self) -> str: ...
    @property
    def next_lesson(self) -> str | None: ...
    @property
    def delivery_status(self) -> str | None: ...
    @property
    def lease_until(self) -> datetime | None: ...


class ClaimAction(enum.Enum):
    CLAIM_NEW = "claim_new"
    """No ledger row yet: insert one, 'claimed' by this run, attempts 1."""
    CLAIM_AGAIN = "claim_again"
    """Known not sent ('retry', 'failed' re-armed, a claim whose run died before handing it
    over): 'claimed' by this run, attempts + 1."""
    DEFER = "defer"
    """Claimable, but not now: the subscriber is due again at `ClaimDecision.at`."""
    WAIT = "wait"
    """Another run holds it within its lease: the subscriber is due again at the lease end
    (`ClaimDecision.at`), when the row is either settled or reclaimable."""
    MARK_IN_DOUBT = "mark_in_doubt"
    """'sending' past its lease: the run crashed while the message was with the transport, so
    it may have gone out. The row becomes 'in_doubt' and the subscriber is held."""
    HOLD_NO_LESSON = "hold_no_lesson"
    """Active and due with no next lesson (inconsistent): held, not sent."""
    PAST_SENT = "past_sent"
    """The ledger has the lesson as sent (a lesson moved after one not yet sent): never sent
    twice; the subscriber moves on to the first following lesson it has not had."""
    HOLD_SETTLED = "hold_settled"
    """The ledger has the lesson in doubt: held, never sent twice."""
    HOLD_UNKNOWN_ZONE = "hold_unknown_zone"
    """The subscriber's timezone cannot be loaded on this host: held, the run goes on."""


@dataclass(frozen=True, slots=True)
class ClaimDecision:
    action: ClaimAction
    at: datetime | None = None
    """DEFER and WAIT: the subscriber's new next_send_at. None for every other action."""


# The decisions that carry no moment, made once (claim_due asks for thousands per batch).
_CLAIM_NEW = ClaimDecision(ClaimAction.CLAIM_NEW)
_CLAIM_AGAIN = ClaimDecision(ClaimAction.CLAIM_AGAIN)
_MARK_IN_DOUBT = ClaimDecision(ClaimAction.MARK_IN_DOUBT)
_HOLD_NO_LESSON = ClaimDecision(ClaimAction.HOLD_NO_LESSON)
_HOLD_SETTLED = ClaimDecision(ClaimAction.HOLD_SETTLED)
_PAST_SENT = ClaimDecision(ClaimAction.PAST_SENT)
_HOLD_UNKNOWN_ZONE = ClaimDecision(ClaimAction.HOLD_UNKNOWN_ZONE)

_CLAIMED = DeliveryStatus.CLAIMED.value
_SENDING = DeliveryStatus.SENDING.value
_SENT = DeliveryStatus.SENT.value
_RECLAIMABLE = frozenset({DeliveryStatus.RETRY.value, DeliveryStatus.FAILED.value})


def decide_claim(row: DueRow, now: datetime, defer: Defer | None = None) -> ClaimDecision:
    """What a run claiming at `now` does with the due subscriber `row` (see the module's table).

    `defer` is asked only about a row that would otherwise be claimed.
    """
    lesson = row.next_lesson
    if lesson is None:
        return _HOLD_NO_LESSON
    status = row.delivery_status
    if status is None:
        claim = _CLAIM_NEW
    elif status in _RECLAIMABLE:
        claim = _CLAIM_AGAIN
    else:
        # A ledger row always has a lease end; None only stands for "no row" in the outer join.
        lease_until = row.lease_until
        lease_ended = lease_until is not None and lease_until <= now
        if status == _CLAIMED and lease_ended:
            claim = _CLAIM_AGAIN  # its run died before handing it over: nothing went out
        elif status == _SENDING and lease_ended:
            return _MARK_IN_DOUBT
        elif status in (_CLAIMED, _SENDING):
            return ClaimDecision(ClaimAction.WAIT, lease_until)
        elif status == _SENT:
            return _PAST_SENT
        else:
            return _HOLD_SETTLED
    if defer is not None:
        try:
            later = defer(row.timezone, lesson)
        except UnknownTimezoneError:
            return _HOLD_UNKNOWN_ZONE  # this one subscriber, not the whole run
        if later is not None:
            return ClaimDecision(ClaimAction.DEFER, later)
    return claim
