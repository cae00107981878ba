"""When an in-doubt delivery settles itself: the rule `drip.provider_events.settle_in_doubt`
applies (run by every `drip send` and `drip worker` tick, and by the webhook for the deliveries
its events name), as a pure function (no database, no I/O).

An in-doubt delivery was handed to SendGrid and the answer was lost (or its run died), so
SendGrid may or may not have it. SendGrid reports on every message it accepted (`processed`
first, then `delivered`, `bounce` ...), tagged with the custom arg `drip_delivery_id`, so:

- SENT: a SendGrid event naming the delivery is stored: SendGrid had it. The reader moves on
  as if the send had been answered 202.
- NOT_SENT: no event names it, and both
  1. the webhook has reported a `processed` event for a delivery claimed at or after this one's
     lease end (so after this one was handed over, if it ever was): events are flowing, and
     `processed` events are enabled; and
  2. `GRACE` has passed since the lease end: SendGrid retries a batch our endpoint failed to
     take (a 5xx while the database was down) for up to 24 hours, so a `processed` event for
     this delivery could still be on its way until then.
  Then SendGrid never had it: the same lesson is due again at once (quiet hours permitting).
- WAIT: otherwise (the webhook is not set up, silent, or not caught up; or within GRACE). The
  reader stays held, listed by `drip deliveries in-doubt`; the operator can still settle it
  with `drip deliveries resolve ID --sent|--not-sent` at any time.

What remains possible: SendGrid had the message and never reported it (its retries given up
after a day of failed posts), which NOT_SENT turns into a second copy. A delivery handed over
through another transport (SMTP) while SendGrid events for later deliveries arrive would be
settled NOT_SENT too: settle those by hand before switching transports.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

__all__ = ["GRACE", "InDoubtFacts", "Settle", "decide_in_doubt"]

GRACE = timedelta(hours=24)
"""How long after an in-doubt delivery's lease end a missing event still means "maybe":
SendGrid's retry window for a batch the webhook did not take."""


class Settle(enum.Enum):
    SENT = "sent"
    NOT_SENT = "not_sent"
    WAIT = "wait"


@dataclass(frozen=True, slots=True)
class InDoubtFacts:
    proof: str | None
    """The type of a stored SendGrid event naming the delivery, or None."""
    lease_until: datetime
    """The delivery's lease end: it was handed over before then, or never."""
    latest_processed_claim: datetime | None
    """When the newest delivery SendGrid reported `processed` for was claimed (None: never)."""


def decide_in_doubt(facts: InDoubtFacts, now: datetime, grace: timedelta = GRACE) -> Settle:
    """SENT, NOT_SENT or WAIT for one in-doubt delivery at `now` (see the module's rules)."""
    if facts.proof is not None:
        return Settle.SENT
    witness = facts.latest_processed_claim
    if witness is None or witness < facts.lease_until:
        return Settle.WAIT
    if now < facts.lease_until + grace:
        return Settle.WAIT
    return Settle.NOT_SENT
