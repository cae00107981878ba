"""The value that flows from rendering to a transport: one email for one recipient."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class OutgoingEmail:
    """A fully rendered email, ready for any transport.

    `delivery_id` is the ledger row's id (a string); transports attach it so provider events and
    received messages can be traced back (`custom_args` for SendGrid, `X-Drip-Delivery-Id` for
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
