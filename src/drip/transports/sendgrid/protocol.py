"""SendGrid v3 Mail Send as drip speaks it, without I/O: request bodies in, outcomes out.

Every SendGrid client of `drip.transports.sendgrid` is "build a body here -> POST it -> classify
the answer here"; only the middle step differs between them. This module holds both ends:

- `build_payload` (one email; the body the official library's helper objects would make, value
  for value and key for key), `fast_payload` (the same body, cheaper for the common shape) and
  `bulk_payload` with its helpers (one body for many subscribers of one lesson, with
  substitutions; see `drip.transports.sendgrid.bulk`);
- `classify_status` (HTTP answer -> `SendResult`), `retry_after_seconds` (clamped) and
  `error_text`;
- the API-key check shared by the clients.

It imports neither the `sendgrid` library nor aiohttp (a test checks this).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from email.utils import parseaddr, parsedate_to_datetime, quote
from operator import itemgetter
from typing import Any, Protocol

import orjson
from markupsafe import escape

from drip.errors import FatalTransportError, MissingApiKeyError
from drip.message import BulkParts, OutgoingEmail
from drip.render import LIST_UNSUBSCRIBE_POST, BulkLesson, Reader
from drip.transports.base import (
    MAX_DETAIL,
    MAX_PROVIDER_ID,
    Outcome,
    Scrubber,
    SendResult,
    clamp_retry_after,
)

MAIL_SEND_PATH = "/v3/mail/send"
DEFAULT_TIMEOUT = 30.0
MAX_BODY_TEXT = 65536
"""Characters of an error body read for its message (the message is then cut much shorter)."""
MAX_PERSONALIZATIONS = 1000
"""SendGrid's limit per request (personalizations and recipients)."""
KEY_PREFIX = "%drip"
"""How every bulk substitution key starts (a nonce and the slot follow)."""


def require_api_key(api_key: str | None) -> str:
    """`api_key`, or `MissingApiKeyError` when there is none (the SendGrid library would quietly
    fall back to os.environ; settings come from the caller)."""
    if not api_key:
        raise MissingApiKeyError()
    return api_key


# --- one email ----------------------------------------------------------------------------------


class ApiKeyIncludedException(ValueError):
    """A text or HTML part starts with something shaped like a SendGrid API key.

    The official library refuses such a part with an exception of this name (and no message);
    `build_payload` does the same, so the FAILED detail recorded for it is unchanged.
    """


_API_KEY = re.compile(r"SG\.[0-9a-zA-Z]+\.[0-9a-zA-Z]+")
"""The library's check (`ValidateApiKey`): matched at the start of a part only."""


def _party(address: str, name: str | None) -> dict[str, str]:
    """`Email(address, name).get()` of the official library: a name alone makes it parse the
    address ("Name <a@b>"), and a parsed address without '@' becomes the name."""
    if address and not name:
        parsed_name, parsed = parseaddr(address)
        if "@" not in parsed:
            parsed_name, parsed = parsed, ""
        party = {"name": parsed_name} if parsed_name else {}
        if parsed:
            party["email"] = parsed
        return party
    party = {} if name is None else {"name": name}
    party["email"] = address
    return party


_NEEDS_QUOTES = re.compile(r'[,;"]').search


def recipient_name(name: str) -> str:
    """`name` as SendGrid takes it in `to.name`: in double quotes, with '"' and '\\' escaped
    (RFC 5322 quoted-string, `email.utils.quote`), when it contains ',' or ';' or '"'; as it is
    otherwise.

    SendGrid's Mail Send limitations: "The to.name, cc.name, and bcc.name personalizations cannot
    include either the ; or , characters" -- such a message can be dropped after the 202. Its
    libraries wrap such names in double quotes, which SendGrid reads as one display name; a '"'
    alone would leave an unbalanced quote in the header SendGrid writes. Names without these
    characters stay unquoted (some mail clients show the quotes).
    """
    return f'"{quote(name)}"' if _NEEDS_QUOTES(name) else name


def build_payload(email: OutgoingEmail) -> dict[str, Any]:
    """The /v3/mail/send JSON body for one email (pure).

    One personalization with one recipient; content text/plain then text/html; `email.headers`
    as headers; `email.custom_args` as custom_args, with `drip_delivery_id` always equal to
    `email.delivery_id` so provider events can be matched to the ledger row. Equal, in value and
    key order, to what the official library's helper objects build (`Mail().get()`; tests compare
    the two), including its refusals: `ApiKeyIncludedException` for a part that starts with an
    API key, and `KeyError` for a recipient whose address the helper cannot find.
    """
    for part in (email.text, email.html):
        if _API_KEY.match(part):
            raise ApiKeyIncludedException()
    to = _party(email.to_address, email.to_name)
    if "email" not in to:
        raise KeyError("email")
    if "name" in to:
        to["name"] = recipient_name(to["name"])
    payload: dict[str, Any] = {}
    sender = _party(email.from_address, email.from_name)
    if sender:
        payload["from"] = sender
    payload["subject"] = email.subject
    payload["personalizations"] = [{"to": [to]}]
    payload["content"] = [
        {"type": "text/plain", "value": email.text},
        {"type": "text/html", "value": email.html},
    ]
    # The helper inserts each header and custom arg at the front of its list: reversed order.
    if email.headers:
        payload["headers"] = dict(reversed(list(email.headers.items())))
    custom_args = {**email.custom_args, "drip_delivery_id": email.delivery_id}
    payload["custom_args"] = dict(reversed(custom_args.items()))
    return payload


_PLAIN_ADDRESS = re.compile(
    r"[A-Za-z0-9_%+-]+(?:\.[A-Za-z0-9_%+-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+"
)
"""Addresses the official helper passes through unchanged when they come without a name."""


def _plain_party(address: str, name: str | None) -> dict[str, str] | None:
    """`_party(address, name)` for the shapes where it is a plain copy, else None."""
    if name:
        return {"name": name, "email": address}
    if name is None and _PLAIN_ADDRESS.fullmatch(address):
        return {"email": address}
    return None  # "" or an address the helper would parse (parseaddr): let it


def fast_payload(email: OutgoingEmail) -> dict[str, Any]:
    """`build_payload(email)`, equal and in the same key order, with less work per email.

    Only for the common shape: sender and recipient that are copied as they are (a name that
    needs quotes, see `recipient_name`, is not), non-empty text
    and html that cannot trip the API-key check (which matches at the start of a part); anything
    else goes through `build_payload` itself. tests/test_transport_sendgrid_fast.py compares the
    two with the official library on generated emails.
    """
    return _fast_payload(email, email.text, email.html)


def _fast_payload(email: OutgoingEmail, text: str, html: str) -> dict[str, Any]:
    """`fast_payload` with these text and html parts in place of the email's own."""
    sender = _plain_party(email.from_address, email.from_name)
    to = _plain_party(email.to_address, email.to_name)
    if (
        sender is None
        or to is None
        or (email.to_name and _NEEDS_QUOTES(email.to_name))
        or not text
        or not html
        or text.startswith("SG.")
        or html.startswith("SG.")
    ):
        return build_payload(replace(email, text=text, html=html))
    payload: dict[str, Any] = {
        "from": sender,
        "subject": email.subject,
        "personalizations": [{"to": [to]}],
        "content": [{"type": "text/plain", "value": text}, {"type": "text/html", "value": html}],
    }
    if email.headers:
        payload["headers"] = dict(reversed(list(email.headers.items())))
    custom_args = {**email.custom_args, "drip_delivery_id": email.delivery_id}
    payload["custom_args"] = dict(reversed(custom_args.items()))
    return payload


# --- one email's body spliced from its lesson's parts ------------------------------------------

_TEXT_MARK = "\x00drip-text-part\x00"
_HTML_MARK = "\x00drip-html-part\x00"
_ENCODED_PARTS: dict[int, tuple[tuple[str, ...], tuple[bytes, ...]]] = {}
"""id(parts) -> (parts, each literal part JSON-encoded): the parts tuples are the renderer's,
shared by every email of a lesson variant; the tuple is kept so its id is never reused."""


def _json_inner(text: str) -> bytes:
    """`text` as it appears inside a JSON string (orjson's escaping, without the quotes)."""
    return orjson.dumps(text)[1:-1]


def _encoded_literals(parts: tuple[str, ...]) -> tuple[bytes, ...]:
    entry = _ENCODED_PARTS.get(id(parts))
    if entry is None or entry[0] is not parts:
        entry = (parts, tuple(_json_inner(part) for part in parts[::2]))
        _ENCODED_PARTS[id(parts)] = entry
    return entry[1]


def _splice_into(pieces: list[bytes], parts: tuple[str, ...], values: Mapping[str, str]) -> None:
    """Append the JSON-encoded fill of `parts` with `values` to `pieces`: the pre-encoded
    literals with the encoded values between them (JSON escapes character by character, so the
    pieces' encodings joined are the whole's encoding)."""
    literals = _encoded_literals(parts)
    pieces.append(literals[0])
    for index, slot in enumerate(parts[1::2], start=1):
        pieces.append(_json_inner(values[slot]))
        pieces.append(literals[index])


def _starts_safely(parts: tuple[str, ...]) -> bool:
    """The filled part is not empty and cannot start with an API key ("SG."), told from the
    literals alone."""
    first = parts[0]
    return len(first) >= 3 and not first.startswith("SG.")


def spliced_body(email: OutgoingEmail) -> bytes | None:
    """`orjson.dumps(fast_payload(fill_parts(email)))` for an email left unfilled with its bulk
    parts (`Renderer.lesson(fill=False)`), without filling its text and html as strings: the
    lesson's literal parts are JSON-encoded once and spliced with this reader's encoded values.

    None when this shortcut cannot tell that the result would be the same (no parts, a part that
    starts with a slot, a shape `fast_payload` hands to `build_payload`): fill and encode then.
    """
    bulk = email.bulk
    if bulk is None or email.html or email.text:
        return None
    if not (_starts_safely(bulk.text) and _starts_safely(bulk.html)):
        return None
    sender = _plain_party(email.from_address, email.from_name)
    to = _plain_party(email.to_address, email.to_name)
    if sender is None or to is None or (email.to_name and _NEEDS_QUOTES(email.to_name)):
        return None
    body = orjson.dumps(_fast_payload(email, _TEXT_MARK, _HTML_MARK))
    text_mark, html_mark = _json_inner(_TEXT_MARK), _json_inner(_HTML_MARK)
    if body.count(text_mark) != 1 or body.count(html_mark) != 1:
        return None  # a marker inside another field: let the plain path encode it
    values = bulk.values
    escaped = {slot: str(escape(value)) for slot, value in values.items()}
    head, _, rest = body.partition(text_mark)
    middle, _, tail = rest.partition(html_mark)
    pieces = [head]
    _splice_into(pieces, bulk.text, values)
    pieces.append(middle)
    _splice_into(pieces, bulk.html, escaped)
    pieces.append(tail)
    return b"".join(pieces)  # the lesson's text is copied once, here


def build_failure(label: str, exc: Exception) -> SendResult:
    """FAILED for a request body that could not be built (the builder refused the email); the
    client cleans and cuts the detail."""
    return SendResult(
        label, Outcome.FAILED, detail=f"cannot build the request: {type(exc).__name__} {exc}"
    )


# --- answers ------------------------------------------------------------------------------------


class Headers(Protocol):
    """Response headers: `http.client.HTTPMessage`, aiohttp's `CIMultiDictProxy`, a dict in
    tests."""

    def get(self, name: str, /) -> str | None: ...


def retry_after_seconds(headers: Headers | None, now: datetime) -> float | None:
    """Seconds to wait, from Retry-After (seconds or HTTP date) or X-RateLimit-Reset (epoch).

    Returns None when neither header is present or readable (NaN included), else a finite number
    within [0, MAX_RETRY_AFTER]: an infinite, absurdly large or far-future answer is clamped.
    """
    if headers is None:
        return None
    retry_after = (headers.get("Retry-After") or "").strip()
    if retry_after:
        seconds = _seconds(retry_after)
        if seconds is None:
            seconds = _until_date(retry_after, now)
        if seconds is not None:
            return clamp_retry_after(seconds)
    reset = (headers.get("X-RateLimit-Reset") or "").strip()
    if reset:
        epoch = _seconds(reset)
        if epoch is not None:
            return clamp_retry_after(epoch - now.timestamp())
    return None


def _seconds(text: str) -> float | None:
    """`text` as a number; None when it is not one (NaN included)."""
    try:
        seconds = float(text)
    except ValueError:
        return None
    return None if math.isnan(seconds) else seconds


def _until_date(text: str, now: datetime) -> float | None:
    try:
        when = parsedate_to_datetime(text)
        if when.tzinfo is None:
            return None
        return (when - now).total_seconds()
    except (TypeError, ValueError, OverflowError):
        return None


def error_text(body: bytes | str | None) -> str:
    """The messages of a SendGrid error body (`{"errors": [{"message": ...}]}`) on one line.

    Not cut to a detail's length here: the client scrubs secrets first, then cuts (a cut before
    scrubbing could leave a piece of the key). Only the first MAX_BODY_TEXT characters are read.
    """
    if not body:
        return ""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    text = text[:MAX_BODY_TEXT]
    try:
        data = json.loads(text)
        messages = [str(err.get("message", "")) for err in data.get("errors", [])]
        text = "; ".join(m for m in messages if m) or text
    except (ValueError, AttributeError, TypeError):
        pass
    return " ".join(text.split())


_PLAIN = Scrubber()


def classify_status(
    delivery_id: str,
    status: int,
    headers: Headers | None,
    body: bytes | str | None,
    now: datetime,
    clean: Callable[[str], str] = _PLAIN.text,
) -> SendResult:
    """Map an HTTP answer from /v3/mail/send to a result (pure).

    2xx SENT (provider_id from X-Message-Id); 429 and 5xx RETRY with the server's wait hint;
    other 4xx FAILED for this message. 401/403 (bad key), 404/405 (DRIP_SENDGRID_API_URL does
    not point at the API, which would otherwise fail every message for good) and 3xx (a
    redirect: the URL is not the API's; the clients never follow one) raise
    `FatalTransportError` without results; the caller adds the batch's earlier results.
    `clean` (the client's `Scrubber.text`: no control characters, no secret, cut short) is
    applied to everything the server said (error text, X-Message-Id, Location) before it goes
    into the result or an error message, so the result is clean as it is (the fast client's
    hot path passes it on without another look).
    """
    reason = clean(error_text(body)) if body else ""
    detail = (f"HTTP {status}: {reason}" if reason else f"HTTP {status}")[:MAX_DETAIL]
    if 200 <= status < 300:
        message_id = headers.get("X-Message-Id") if headers is not None else None
        provider_id = clean(message_id)[:MAX_PROVIDER_ID] or None if message_id else None
        return SendResult(delivery_id, Outcome.SENT, provider_id=provider_id, detail=detail)
    if status in (401, 403):
        raise FatalTransportError(
            f"SendGrid refused the API key ({detail}); check SENDGRID_API_KEY and that the key"
            " has the Mail Send permission. Nothing more was sent in this run."
        )
    if status in (404, 405):
        raise FatalTransportError(
            f"SendGrid API URL does not serve /v3/mail/send ({detail}); check"
            " DRIP_SENDGRID_API_URL. Nothing more was sent in this run."
        )
    if 300 <= status < 400:
        location = (headers.get("Location") if headers is not None else None) or ""
        target = clean(location) if location.strip() else "nowhere (no Location)"
        raise FatalTransportError(
            f"the SendGrid API URL answered with a redirect to {target}; set"
            " DRIP_SENDGRID_API_URL to the API itself"
        )
    if status == 429 or status >= 500:
        return SendResult(
            delivery_id,
            Outcome.RETRY,
            retry_after=retry_after_seconds(headers, now),
            detail=detail,
        )
    if 400 <= status < 500:
        return SendResult(delivery_id, Outcome.FAILED, detail=detail)
    # 1xx: not an answer Mail Send gives; nothing says the message was taken.
    return SendResult(delivery_id, Outcome.RETRY, detail=f"unexpected answer {detail}")


# --- many subscribers of one lesson in one request (bulk mode) ------------------------------------


def substitution_keys(parts: Sequence[tuple[str, ...]]) -> tuple[str, Callable[[str, str], str]]:
    """(key prefix, key(kind, slot)) for these parts: a prefix that no literal part contains.

    The nonce is derived from the text (so the same lesson gives the same keys) and changed
    until it does not collide.
    """
    literal = "".join("".join(p[::2]) for p in parts)
    seed = hashlib.sha256(literal.encode()).hexdigest()
    for start in range(0, len(seed) - 8):
        prefix = f"{KEY_PREFIX}{seed[start : start + 8]}"
        if prefix not in literal:
            break
    else:  # pragma: no cover - 56 distinct 8-hex nonces all present in one lesson
        raise ValueError("no collision-free substitution key for this lesson")

    def key(kind: str, slot: str) -> str:
        return f"{prefix}{kind}{slot}%"

    return prefix, key


def template(parts: tuple[str, ...], kind: str, key: Callable[[str, str], str]) -> str:
    """The parts joined with a substitution key in each slot."""
    pieces = list(parts)
    pieces[1::2] = [key(kind, slot) for slot in parts[1::2]]
    return "".join(pieces)


def substitutions(bulk: BulkParts, key: Callable[[str, str], str]) -> dict[str, str]:
    """One subscriber's values: HTML-escaped under the `h` keys, raw under the `t` keys."""
    return _substitute(bulk, _slot_keys(bulk, key))


_SlotKeys = tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]
"""((html key, slot) ..., (text key, slot) ...): the keys of a request, made once for all."""


def _slot_keys(bulk: BulkParts, key: Callable[[str, str], str]) -> _SlotKeys:
    html = tuple((key("h", slot), slot) for slot in dict.fromkeys(bulk.html[1::2]))
    text = tuple((key("t", slot), slot) for slot in dict.fromkeys(bulk.text[1::2]))
    return html, text


def _substitute(bulk: BulkParts, keys: _SlotKeys) -> dict[str, str]:
    values = bulk.values
    found = {html_key: str(escape(values[slot])) for html_key, slot in keys[0]}
    found.update((text_key, values[slot]) for text_key, slot in keys[1])
    return found


def fill_parts(email: OutgoingEmail) -> OutgoingEmail:
    """`email` with html and text filled from its bulk parts when they were left empty
    (`Renderer.lesson(fill=False)`), for a subscriber sent on its own; otherwise `email`."""
    bulk = email.bulk
    if bulk is None or email.html or email.text:
        return email
    escaped = {slot: str(escape(value)) for slot, value in bulk.values.items()}
    html, text = list(bulk.html), list(bulk.text)
    html[1::2] = [escaped[slot] for slot in bulk.html[1::2]]
    text[1::2] = [bulk.values[slot] for slot in bulk.text[1::2]]
    return replace(email, html="".join(html), text="".join(text))


def _expected_headers(bulk: BulkParts) -> dict[str, str]:
    return {
        "List-Unsubscribe": f"<{bulk.values.get('unsubscribe_url', '')}>",
        "List-Unsubscribe-Post": LIST_UNSUBSCRIBE_POST,
    }


def bulk_safe(email: OutgoingEmail) -> bool:
    """True when this email is exactly its bulk parts filled with its values (so SendGrid's
    substitution gives the same email) and no value could be mistaken for a key."""
    bulk = email.bulk
    if bulk is None:
        return False
    values = bulk.values
    for value in values.values():
        if KEY_PREFIX in value:
            return False
    headers = email.headers
    if type(headers) is not dict:
        headers = dict(headers)
    if headers != _expected_headers(bulk):
        return False
    # Per slot, no sets: this runs once per subscriber.
    return all(slot in values for slot in bulk.html[1::2]) and all(
        slot in values for slot in bulk.text[1::2]
    )


def group_key(email: OutgoingEmail) -> tuple[Any, ...]:
    """What the emails of one bulk request share: parts, subject and sender."""
    assert email.bulk is not None
    # The parts tuples are shared per compiled lesson variant; compare by value to stay exact.
    return (email.bulk.html, email.bulk.text, email.subject, email.from_address, email.from_name)


def personalization(email: OutgoingEmail, key: Callable[[str, str], str]) -> dict[str, Any]:
    """The per-subscriber part of a bulk request (same to / headers / custom_args as a single
    send)."""
    assert email.bulk is not None
    return _personalization(email, _slot_keys(email.bulk, key))


def _personalization(email: OutgoingEmail, keys: _SlotKeys) -> dict[str, Any]:
    assert email.bulk is not None
    to: dict[str, str] = {"email": email.to_address}
    if email.to_name:
        to["name"] = recipient_name(email.to_name)
    return {
        "to": [to],
        "headers": dict(email.headers),
        "custom_args": {**email.custom_args, "drip_delivery_id": email.delivery_id},
        "substitutions": _substitute(email.bulk, keys),
    }


def bulk_payload(emails: Sequence[OutgoingEmail]) -> dict[str, Any]:
    """The v3 Mail Send body for emails that share bulk parts, subject and sender (pure).

    Raises ValueError when they do not share them or are more than MAX_PERSONALIZATIONS.
    """
    if not emails or len(emails) > MAX_PERSONALIZATIONS:
        raise ValueError(f"a bulk request holds 1..{MAX_PERSONALIZATIONS} emails")
    first = emails[0]
    assert first.bulk is not None
    shared = group_key(first)
    if any(group_key(email) != shared for email in emails):
        raise ValueError("bulk emails must share their parts, subject and sender")
    _, key = substitution_keys((first.bulk.html, first.bulk.text))
    # The parts are shared, so are their keys: made once per request, not per subscriber.
    keys = _slot_keys(first.bulk, key)
    return _bulk_request(
        (first.from_address, first.from_name),
        first.subject,
        [_personalization(email, keys) for email in emails],
        (first.bulk.html, first.bulk.text),
        key,
    )


def _bulk_request(
    sender: tuple[str, str | None],
    subject: str,
    personalizations: list[dict[str, Any]],
    parts: tuple[tuple[str, ...], tuple[str, ...]],
    key: Callable[[str, str], str],
) -> dict[str, Any]:
    """The body of a bulk request: the sender (address, name), the subject, the
    personalizations and the shared (html, text) parts with `key`'s substitution keys."""
    address, name = sender
    from_: dict[str, str] = {"email": address}
    if name:
        from_["name"] = name
    return {
        "from": from_,
        "subject": subject,
        "personalizations": personalizations,
        "content": [
            {"type": "text/plain", "value": template(parts[1], "t", key)},
            {"type": "text/html", "value": template(parts[0], "h", key)},
        ],
    }


READER_SLOTS = ("name", "unsubscribe_url", "manage_url")
"""The slots a `Reader` fills, in the order of its fields `shown_name`, `unsubscribe_url`,
`manage_url`."""
_HTML_SPECIAL = re.compile("[&<>\"']").search


def _html_value(value: str) -> str:
    """`str(escape(value))`, without markupsafe's Markup object for a value it leaves as it is
    (most: the links are URL-safe, most names have none of & < > " ')."""
    return str(escape(value)) if _HTML_SPECIAL(value) else value


def reader_bulk_safe(reader: Reader) -> bool:
    """`bulk_safe` for a reader of `ComposedEmails`: its headers are the expected ones and its
    values are all there by construction; only a value holding the key prefix is not."""
    return not (
        KEY_PREFIX in reader.shown_name
        or KEY_PREFIX in reader.unsubscribe_url
        or KEY_PREFIX in reader.manage_url
    )


def lesson_bulk_safe(lesson: BulkLesson) -> bool:
    """Every slot of the lesson's parts is one a `Reader` fills."""
    return all(slot in READER_SLOTS for slot in lesson.html[1::2] + lesson.text[1::2])


ReaderRow = tuple[str, str, str, str | None, str, str, str]
"""A `Reader`'s first seven fields (without its lesson): plain values, for `marshal`."""
PlainReaders = tuple[
    tuple[tuple[str, ...], tuple[str, ...], str, str, str | None, str], list[ReaderRow]
]
"""Readers of one bulk request as plain values: (their lesson's html, text, subject, sender
address, sender name, slug), and a `ReaderRow` each."""


def plain_readers(readers: Sequence[Reader]) -> PlainReaders:
    """These readers (sharing one lesson) as plain values, which the sending process can be
    sent (`marshal`) to build their body there (`plain_readers_body`)."""
    lesson = readers[0].lesson
    if any(reader.lesson is not lesson for reader in readers):
        raise ValueError("bulk readers must share their lesson")
    shared = (
        lesson.html,
        lesson.text,
        lesson.subject,
        lesson.from_address,
        lesson.from_name,
        lesson.slug,
    )
    return shared, [reader[:7] for reader in readers]


def plain_readers_body(plain: PlainReaders) -> bytes:
    """The JSON body of `readers_payload` for readers given as `plain_readers`."""
    (html, text, subject, from_address, from_name, slug), rows = plain
    lesson = BulkLesson(html, text, subject, from_address, from_name, slug, None)
    return orjson.dumps(readers_payload(lesson, rows))


def readers_payload(lesson: BulkLesson, rows: Sequence[ReaderRow]) -> dict[str, Any]:
    """`bulk_payload` of the emails of `lesson` to these readers (`drip.render.reader_email`),
    equal and in the same key order, made from the tuples: no `OutgoingEmail` per reader. The
    lesson's slots are `READER_SLOTS` (`lesson_bulk_safe`), each reader is `reader_bulk_safe`.
    """
    if not rows or len(rows) > MAX_PERSONALIZATIONS:
        raise ValueError(f"a bulk request holds 1..{MAX_PERSONALIZATIONS} emails")
    _, key = substitution_keys((lesson.html, lesson.text))
    # The keys in `_slot_keys`' order (HTML, then text), and where each one's value is in
    # (escaped name, escaped unsubscribe URL, escaped manage URL, name, unsubscribe URL, manage
    # URL): one C call picks a reader's values.
    html_slots = dict.fromkeys(lesson.html[1::2])
    text_slots = dict.fromkeys(lesson.text[1::2])
    keys = [key("h", slot) for slot in html_slots] + [key("t", slot) for slot in text_slots]
    where = [READER_SLOTS.index(slot) for slot in html_slots]
    where += [3 + READER_SLOTS.index(slot) for slot in text_slots]
    pick = itemgetter(*where) if len(where) > 1 else lambda values: (values[where[0]],)
    slug = lesson.slug
    personalizations: list[dict[str, Any]] = []
    append = personalizations.append
    for delivery_id, subscriber_id, address, name, shown_name, unsubscribe, manage in rows:
        # A checked URL has no < > " ' (`check_url`): only "&" needs escaping, if any.
        values = (
            _html_value(shown_name) if shown_name else "",
            unsubscribe if "&" not in unsubscribe else str(escape(unsubscribe)),
            manage if "&" not in manage else str(escape(manage)),
            shown_name,
            unsubscribe,
            manage,
        )
        append(
            {
                "to": [
                    {"email": address, "name": recipient_name(name)} if name else {"email": address}
                ],
                "headers": {
                    "List-Unsubscribe": f"<{unsubscribe}>",
                    "List-Unsubscribe-Post": LIST_UNSUBSCRIBE_POST,
                },
                "custom_args": {
                    "drip_delivery_id": delivery_id,
                    "drip_lesson": slug,
                    "drip_subscriber": subscriber_id,
                },
                "substitutions": dict(zip(keys, pick(values), strict=True)),
            }
        )
    return _bulk_request(
        (lesson.from_address, lesson.from_name),
        lesson.subject,
        personalizations,
        (lesson.html, lesson.text),
        key,
    )


def apply_substitutions(payload: Mapping[str, Any], index: int) -> tuple[str, str]:
    """(text, html) that personalization `index` receives after SendGrid substitutes (a plain
    replace of each key by its value, as SendGrid does for legacy substitutions)."""
    content = {part["type"]: part["value"] for part in payload["content"]}
    text, html = content["text/plain"], content["text/html"]
    for key, value in payload["personalizations"][index]["substitutions"].items():
        text = text.replace(key, value)
        html = html.replace(key, value)
    return text, html
