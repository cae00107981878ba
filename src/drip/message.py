"""The value that flows from rendering to a transport: one email for one recipient."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class BulkParts:
    """How a lesson email was made, for bulk sending (`drip.transports.sendgrid.bulk`).

    `html` and `text` are the lesson's precompiled parts, shared by every subscriber of the same
    lesson and name variant: literal, slot name, literal, slot name, ..., literal. `values` holds
    this subscriber's raw slot values (name, unsubscribe_url, manage_url); the HTML part shows them
    HTML-escaped, the text part as they are.
    """

    html: tuple[str, ...]
    text: tuple[str, ...]
    values: Mapping[str, str]


@dataclass(frozen=True)
class OutgoingEmail:
    """A fully rendered email, ready for any transport.

    `delivery_id` is the ledger row's id (a string); transports attach it so provider events and
    received messages can be traced back (`custom_args` for SendGrid, `Drip-Delivery-Id` for
    SMTP). `headers` holds extra headers such as List-Unsubscribe; they are never From/To/Subject.
    """

    delivery_id: str
    to_address: str
    to_name: str | None
    from_address: str
    from_name: str | None
    subject: str
    html: str
    text: str
    headers: Mapping[str, str] = field(default_factory=dict)
    custom_args: Mapping[str, str] = field(default_factory=dict)
    bulk: BulkParts | None = field(default=None, compare=False, repr=False)
    """Set for lesson emails: lets a bulk-capable transport send to many subscribers at once."""
    date: datetime | None = None
    """The moment of the send run (aware), for the Date header of SMTP and outbox messages:
    the send engine sets it to the run's `now` (so `drip send --now T` dates its emails T).
    None: the transport's clock."""
