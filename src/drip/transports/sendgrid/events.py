"""SendGrid's Event Webhook as drip reads it, without I/O: signature in, typed events out.

- `load_verification_key`: the public key SendGrid shows under "Signed Event Webhook Requests"
  (base64 of the DER SubjectPublicKeyInfo of an ECDSA P-256 key; a PEM block is taken too).
- `verify_signature`: the ECDSA P-256 / SHA-256 signature (base64 DER, header
  `X-Twilio-Email-Event-Webhook-Signature`) over the timestamp header's text followed by the raw
  body, and the timestamp's freshness: refused when older than `MAX_AGE` (replays) or more than
  `MAX_SKEW` in the future (a small allowance for the two clocks).
- `parse_events`: the body (a JSON array of event objects) into `SendGridEvent` values with what
  each one means for drip (`suppress`, `proves_sent`), and a count of the items it could not use.

What each event does (docs/reliability.md, "SendGrid event webhook"):
- `bounce` -> the address is 'bounced', except `type: "blocked"` (the receiving server refused
  this message for now, often for the sender's reputation: SendGrid itself does not suppress
  blocks, and suppressing every reader of a blocked domain for good would be far worse);
- `dropped` -> 'bounced', except when SendGrid names the reason as its own suppression list
  ("Unsubscribed Address" -> 'unsubscribed', "Spam Reporting Address" -> 'complained') or as the
  message rather than the address ("Spam Content", an SMTPAPI header): no suppression then;
- `spamreport` -> 'complained'; `unsubscribe`, `group_unsubscribe` -> 'unsubscribed';
- `processed`, `deferred`, `delivered`, `open`, `click`, `group_resubscribe`: recorded only
  (a resubscribe never re-activates anyone);
- every one of these SendGrid types proves SendGrid had the message (it reports only on
  messages it accepted): an in-doubt delivery it names by `drip_delivery_id` was sent.
Unknown types are stored and do nothing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from drip.statuses import SubscriberStatus

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

__all__ = [
    "MAX_AGE",
    "MAX_SKEW",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "ParsedEvents",
    "SendGridEvent",
    "SignatureError",
    "UnreadableEvents",
    "load_verification_key",
    "parse_events",
    "verify_signature",
]

SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"
MAX_AGE = timedelta(minutes=5)
"""A signed request older than this is refused (a replay, or a queue that held it too long:
SendGrid signs each attempt afresh, so its retry carries a new timestamp)."""
MAX_SKEW = timedelta(seconds=60)
"""How far in the future a timestamp may be: the two clocks' disagreement, not more."""
MAX_SIGNATURE_CHARS = 200
"""A base64 DER P-256 signature is at most 96 characters; anything much longer is refused
before decoding."""
MAX_TIMESTAMP_CHARS = 12
"""Unix seconds have 10 digits until 2286."""

PROVIDER_EVENT_ID_CHARS = 200
"""The events table's provider_event_id width; a longer sg_event_id is kept as its SHA-256."""
TYPE_CHARS = 32
"""The events table's type width."""
_MAX_ID = 2**63 - 1
_EARLIEST = datetime(1971, 1, 1, tzinfo=UTC)
_LATEST = datetime(9998, 12, 31, tzinfo=UTC)

KNOWN_TYPES = frozenset(
    {
        "processed",
        "dropped",
        "deferred",
        "delivered",
        "bounce",
        "open",
        "click",
        "spamreport",
        "unsubscribe",
        "group_unsubscribe",
        "group_resubscribe",
    }
)
"""The Event Webhook's event types. Every one is about a message SendGrid accepted."""

_SUPPRESS_BY_TYPE = {
    "bounce": SubscriberStatus.BOUNCED,
    "dropped": SubscriberStatus.BOUNCED,
    "spamreport": SubscriberStatus.COMPLAINED,
    "unsubscribe": SubscriberStatus.UNSUBSCRIBED,
    "group_unsubscribe": SubscriberStatus.UNSUBSCRIBED,
}
_DROPPED_BY_REASON = {
    "unsubscribed address": SubscriberStatus.UNSUBSCRIBED,
    "spam reporting address": SubscriberStatus.COMPLAINED,
}
_DROPPED_FOR_THE_MESSAGE = ("spam content", "smtpapi")
"""Reasons that are about the message, not the address: no suppression."""


class SignatureError(ValueError):
    """The request is not a fresh one signed by SendGrid. The message names the check that
    failed, never a header's or the body's content."""


class UnreadableEvents(ValueError):
    """The body is not a JSON array (the message says what it is, without quoting it)."""


# --- verification -----------------------------------------------------------------------------


@lru_cache(maxsize=8)
def load_verification_key(text: str) -> ec.EllipticCurvePublicKey:
    """The ECDSA P-256 public key SendGrid shows (base64 DER, or a PEM block). Raises
    ValueError, without quoting it, for anything else."""
    # cryptography is imported here and in `verify_signature`, not with the module: `drip send`
    # imports this module (event parsing, for the settling pass) and never verifies.
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import (
        load_der_public_key,
        load_pem_public_key,
    )

    stripped = text.strip()
    try:
        if stripped.startswith("-----BEGIN"):
            key = load_pem_public_key(stripped.encode("ascii"))
        else:
            key = load_der_public_key(base64.b64decode("".join(stripped.split()), validate=True))
    except (ValueError, TypeError, binascii.Error, UnicodeError) as exc:
        raise ValueError(
            "the SendGrid webhook verification key is not a base64 public key (copy it from"
            " Settings > Mail Settings > Event Webhooks > Signature verification)"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("the SendGrid webhook verification key is not an ECDSA P-256 key")
    return key


def verify_signature(
    key: ec.EllipticCurvePublicKey,
    *,
    signature: str | None,
    timestamp: str | None,
    body: bytes,
    now: datetime,
) -> datetime:
    """Check that `body` was signed by SendGrid at `timestamp`, and that `timestamp` is within
    MAX_AGE before `now` and MAX_SKEW after it. Returns the signing moment; raises
    `SignatureError` naming the check that failed.
    """
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    if not signature or not timestamp:
        raise SignatureError(
            f"missing {SIGNATURE_HEADER if not signature else TIMESTAMP_HEADER} header"
        )
    signed_at = _timestamp(timestamp)
    if signed_at < now - MAX_AGE:
        raise SignatureError(f"timestamp is more than {_words(MAX_AGE)} old (a replay?)")
    if signed_at > now + MAX_SKEW:
        raise SignatureError(f"timestamp is more than {_words(MAX_SKEW)} in the future")
    if len(signature) > MAX_SIGNATURE_CHARS:
        raise SignatureError("signature header is too long")
    try:
        der = base64.b64decode(signature.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureError("signature header is not base64") from exc
    try:
        key.verify(der, timestamp.encode("ascii") + body, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise SignatureError("signature does not match the body and timestamp") from exc
    return signed_at


def _timestamp(text: str) -> datetime:
    if len(text) > MAX_TIMESTAMP_CHARS or not text.isascii() or not text.isdigit():
        raise SignatureError("timestamp header is not a Unix time in seconds")
    try:
        return datetime.fromtimestamp(int(text), tz=UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise SignatureError("timestamp header is out of range") from exc


def _words(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    return (
        f"{seconds // 60} minutes" if seconds % 60 == 0 and seconds > 60 else f"{seconds} seconds"
    )


# --- parsing ----------------------------------------------------------------------------------


class SendGridEvent(NamedTuple):
    """One event as drip uses it; `payload` is the event object as SendGrid sent it (less any
    value nested deeper than SendGrid's, and NUL characters, which PostgreSQL cannot store in
    text nor read back from a json value)."""

    event_id: str | None
    """`sg_event_id` (SendGrid's id for this event: the same on a redelivery), or None."""
    type: str
    occurred_at: datetime
    email: str | None
    """Lower-cased and stripped, as drip stores addresses."""
    delivery_id: int | None
    """The ledger id from custom arg `drip_delivery_id`; None for other messages (a
    confirmation's id is not a ledger id) or when absent."""
    suppress: SubscriberStatus | None
    """The status the address gets: 'bounced', 'complained', 'unsubscribed', or None."""
    proves_sent: bool
    """SendGrid had the message (any known event type)."""
    payload: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ParsedEvents:
    events: list[SendGridEvent]
    skipped: int
    """Items that were not event objects with a string `event` (ignored)."""


def parse_events(body: bytes, *, received_at: datetime) -> ParsedEvents:
    """The events of one webhook body. Raises `UnreadableEvents` when the body is not a JSON
    array. Items that are not objects with an `event` string are counted in `skipped`; an event
    without a usable `timestamp` is dated `received_at`. Events repeated in the body (same
    `sg_event_id`) are kept once.
    """
    try:
        items = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise UnreadableEvents(f"the body is not JSON ({len(body)} bytes)") from exc
    if not isinstance(items, list):
        raise UnreadableEvents(f"the body is a JSON {type(items).__name__}, not an array")
    clean = b"\\u0000" in body
    events: list[SendGridEvent] = []
    seen: set[str] = set()
    moments: dict[int | float, datetime] = {}
    skipped = 0
    for item in items:
        # The hot loop of the webhook (about 1,000 items per body): plain checks, no helpers
        # on the common path.
        kind = item.get("event") if type(item) is dict else None
        if type(kind) is not str or not kind:
            skipped += 1
            continue
        event_id = item.get("sg_event_id")
        if type(event_id) is not str or not 0 < len(event_id) <= PROVIDER_EVENT_ID_CHARS:
            event_id = _event_id(event_id)
        if event_id is not None:
            if event_id in seen:
                continue
            seen.add(event_id)
        stamp = item.get("timestamp")
        if type(stamp) is int or type(stamp) is float:
            moment = moments.get(stamp)
            if moment is None:
                moment = moments[stamp] = _occurred_at(stamp, received_at)
        else:
            moment = received_at
        email = item.get("email")
        address = email.strip().lower() if type(email) is str else None
        kind = kind[:TYPE_CHARS]
        # Positional: a NamedTuple built by keywords costs twice as much.
        events.append(
            SendGridEvent(
                event_id,
                kind,
                moment,
                address or None,
                _ledger_id(item.get("drip_delivery_id")),
                _suppression(kind, item) if address and kind in _SUPPRESS_BY_TYPE else None,
                kind in KNOWN_TYPES,
                _payload(item, clean),
            )
        )
    return ParsedEvents(events, skipped)


def _event_id(value: Any) -> str | None:
    if type(value) is not str or not value:
        return None
    if len(value) <= PROVIDER_EVENT_ID_CHARS:
        return value
    return "sha256:" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def _occurred_at(value: int | float, received_at: datetime) -> datetime:
    try:
        moment = datetime.fromtimestamp(value, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return received_at
    return moment if _EARLIEST <= moment <= _LATEST else received_at


def _ledger_id(value: Any) -> int | None:
    """A ledger id given as SendGrid custom args always are: a string of digits."""
    if type(value) is str and 0 < len(value) <= 19 and value.isascii() and value.isdigit():
        number = int(value)
        return number if 0 < number <= _MAX_ID else None
    return None


def _suppression(kind: str, item: Mapping[str, Any]) -> SubscriberStatus | None:
    status = _SUPPRESS_BY_TYPE.get(kind)
    if status is None:
        return None
    if kind == "bounce" and item.get("type") == "blocked":
        return None
    if kind == "dropped":
        reason = item.get("reason")
        reason = reason.strip().lower() if isinstance(reason, str) else ""
        if reason in _DROPPED_BY_REASON:
            return _DROPPED_BY_REASON[reason]
        if any(word in reason for word in _DROPPED_FOR_THE_MESSAGE):
            return None
    return status


_SCALARS = frozenset({str, int, float, bool, type(None)})


def _payload(item: dict[str, Any], clean: bool) -> dict[str, Any]:
    """The event object as stored: SendGrid's fields are scalars, lists of scalars (category)
    or objects of scalars (pool), so anything nested deeper is dropped (it is not SendGrid's,
    and storing it could only fail); with `clean`, NUL characters are removed."""
    kept = item
    for value in item.values():
        if type(value) not in _SCALARS and not _shallow(value):
            kept = {key: value for key, value in item.items() if _shallow(value)}
            break
    return _without_nul(kept) if clean else kept


def _shallow(value: Any) -> bool:
    """A scalar, or a list or object of scalars. (Called for every event's `category` list:
    the element types are checked by `issuperset` over `map`, in C.)"""
    kind = type(value)
    if kind in _SCALARS:
        return True
    if kind is list:
        return _SCALARS.issuperset(map(type, value))
    if kind is dict:
        return _SCALARS.issuperset(map(type, value.values()))
    return False


def _without_nul(value: Any) -> Any:
    """`value` (at most two levels deep, see `_payload`) without NUL characters."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {_without_nul(key): _without_nul(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_nul(item) for item in value]
    return value
