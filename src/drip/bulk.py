"""Bulk mode: one SendGrid request carries a lesson to up to 1,000 readers.

A lesson email differs between readers only in its slots (name, unsubscribe URL, manage URL):
`drip.render` fills precompiled parts with per-reader values. SendGrid can do that filling itself:
`content` is shared by the whole request and each personalization carries `substitutions`. So
`BulkSendGridTransport` groups the emails of a `send` call that share parts, subject and sender,
writes the parts with substitution keys in place of the slots, and puts each reader's values,
headers (List-Unsubscribe) and custom_args (drip_delivery_id...) in their personalization.

Escaping: the HTML part shows a value HTML-escaped, the text part as it is, so each slot has two
keys (`...h<slot>...` and `...t<slot>...`) with the escaped and the raw value. Keys carry a nonce
chosen so that no key occurs in the lesson text; a reader whose values contain the key prefix
(which SendGrid might substitute again) is sent on its own, like an email without bulk parts.

Outcomes: one answer covers the whole request. 202 -> every reader SENT; 400/413 (one bad address
fails the whole request, nothing was accepted) -> those readers are sent one by one instead, so
only the bad one fails; 429/5xx -> all RETRY; a lost answer -> all IN_DOUBT. After a crash, up to
`window` (= recipients per request x requests in flight) readers can be in doubt.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import replace
from functools import partial
from typing import Any

import orjson
from markupsafe import escape

from drip.message import BulkParts, OutgoingEmail
from drip.render import LIST_UNSUBSCRIBE_POST
from drip.transports.base import FatalTransportError, Outcome, SendResult, TransportBase
from drip.transports.sendgrid_fast import FastSendGridTransport

MAX_PERSONALIZATIONS = 1000
"""SendGrid's limit per request (personalizations and recipients)."""
DEFAULT_REQUESTS_IN_FLIGHT = 4
KEY_PREFIX = "%drip"


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
    """One reader's values: HTML-escaped under the `h` keys, raw under the `t` keys."""
    values: dict[str, str] = {}
    for slot in set(bulk.html[1::2]):
        values[key("h", slot)] = str(escape(bulk.values[slot]))
    for slot in set(bulk.text[1::2]):
        values[key("t", slot)] = bulk.values[slot]
    return values


def fill_parts(email: OutgoingEmail) -> OutgoingEmail:
    """`email` with html and text filled from its bulk parts when they were left empty
    (`Renderer.lesson(fill=False)`), for a reader sent on its own; otherwise `email` itself."""
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
    if any(KEY_PREFIX in value for value in bulk.values.values()):
        return False
    if dict(email.headers) != _expected_headers(bulk):
        return False
    slots = set(bulk.html[1::2]) | set(bulk.text[1::2])
    return slots <= bulk.values.keys()


def personalization(email: OutgoingEmail, key: Callable[[str, str], str]) -> dict[str, Any]:
    """The per-reader part of a bulk request (same to / headers / custom_args as a single send)."""
    assert email.bulk is not None
    to: dict[str, str] = {"email": email.to_address}
    if email.to_name:
        to["name"] = email.to_name
    return {
        "to": [to],
        "headers": dict(email.headers),
        "custom_args": {**email.custom_args, "drip_delivery_id": email.delivery_id},
        "substitutions": substitutions(email.bulk, key),
    }


def bulk_payload(emails: Sequence[OutgoingEmail]) -> dict[str, Any]:
    """The v3 Mail Send body for emails that share bulk parts, subject and sender (pure).

    Raises ValueError when they do not share them or are more than MAX_PERSONALIZATIONS.
    """
    if not emails or len(emails) > MAX_PERSONALIZATIONS:
        raise ValueError(f"a bulk request holds 1..{MAX_PERSONALIZATIONS} emails")
    first = emails[0]
    assert first.bulk is not None
    if any(_group_key(email) != _group_key(first) for email in emails):
        raise ValueError("bulk emails must share their parts, subject and sender")
    _, key = substitution_keys((first.bulk.html, first.bulk.text))
    sender: dict[str, str] = {"email": first.from_address}
    if first.from_name:
        sender["name"] = first.from_name
    return {
        "from": sender,
        "subject": first.subject,
        "personalizations": [personalization(email, key) for email in emails],
        "content": [
            {"type": "text/plain", "value": template(first.bulk.text, "t", key)},
            {"type": "text/html", "value": template(first.bulk.html, "h", key)},
        ],
    }


def apply_substitutions(payload: Mapping[str, Any], index: int) -> tuple[str, str]:
    """(text, html) that personalization `index` receives after SendGrid substitutes (a plain
    replace of each key by its value, as SendGrid does for legacy substitutions)."""
    content = {part["type"]: part["value"] for part in payload["content"]}
    text, html = content["text/plain"], content["text/html"]
    for key, value in payload["personalizations"][index]["substitutions"].items():
        text = text.replace(key, value)
        html = html.replace(key, value)
    return text, html


def _group_key(email: OutgoingEmail) -> tuple[Any, ...]:
    assert email.bulk is not None
    # The parts tuples are shared per compiled lesson variant; compare by value to stay exact.
    return (email.bulk.html, email.bulk.text, email.subject, email.from_address, email.from_name)


class BulkSendGridTransport(TransportBase):
    """A transport that sends bulk-safe emails many per request over a `FastSendGridTransport`.

    Emails that are not bulk-safe (no parts, a value containing the key prefix, other headers)
    go through the inner transport one by one, as do the readers of a bulk request refused with
    400/413. `window` (recipients per request x requests in flight) is what the delivery loop
    hands over per call, and the bound on in-doubt readers after a crash.
    """

    name = "sendgrid"
    fills_bulk_parts = True
    """Emails may come with empty html/text and their bulk parts (see `fill_parts`)."""

    def __init__(
        self,
        inner: FastSendGridTransport,
        *,
        per_request: int = MAX_PERSONALIZATIONS,
        requests_in_flight: int = DEFAULT_REQUESTS_IN_FLIGHT,
    ) -> None:
        if not 1 <= per_request <= MAX_PERSONALIZATIONS:
            raise ValueError(f"per_request must be 1..{MAX_PERSONALIZATIONS}")
        self.inner = inner
        self.per_request = per_request
        self.window = per_request * requests_in_flight

    def close(self) -> None:
        self.inner.close()

    def send(self, emails: Sequence[OutgoingEmail]) -> list[SendResult]:
        """See `Transport.send`; raises `FatalTransportError` with the results so far."""
        return self.submit(emails).result()

    def submit(self, emails: Sequence[OutgoingEmail]) -> Future[list[SendResult]]:
        """Start sending and return at once (see `FastSendGridTransport.submit`)."""
        return self.inner.run_soon(self.send_async(list(emails)))

    async def send_async(self, emails: Sequence[OutgoingEmail]) -> list[SendResult]:
        """`send` inside the inner transport's loop."""
        groups: dict[tuple[Any, ...], list[int]] = {}
        singles: list[int] = []
        for index, email in enumerate(emails):
            if bulk_safe(email):
                groups.setdefault(_group_key(email), []).append(index)
            else:
                singles.append(index)
        chunks = [
            members[start : start + self.per_request]
            for members in groups.values()
            for start in range(0, len(members), self.per_request)
        ]
        results: dict[int, SendResult] = {}
        jobs = [
            (f"bulk-{n}", partial(_bulk_body, [emails[i] for i in chunk]))
            for n, chunk in enumerate(chunks)
        ]
        answers, fatal, call = await self.inner.post_all_async(jobs) if jobs else ([], None, None)
        for chunk, answer in zip(chunks, answers, strict=True):
            if answer is None:
                if fatal is None:
                    reason = call.stop_reason if call is not None else None
                    retry_after = call.stop_retry_after if call is not None else None
                    for i in chunk:
                        results[i] = SendResult(
                            emails[i].delivery_id,
                            Outcome.RETRY,
                            retry_after=retry_after,
                            detail=f"not attempted: {reason or 'the call ended early'}",
                        )
                continue
            if answer.outcome is Outcome.FAILED:
                singles.extend(chunk)  # nothing was accepted; find the one bad reader
                continue
            for i in chunk:
                results[i] = SendResult(
                    emails[i].delivery_id,
                    answer.outcome,
                    answer.provider_id,
                    answer.retry_after,
                    answer.detail,
                )
        if fatal is not None:
            raise FatalTransportError(fatal, [results[i] for i in sorted(results)])
        if singles:
            singles.sort()
            try:
                alone = await self.inner.send_async([fill_parts(emails[i]) for i in singles])
            except FatalTransportError as exc:
                done = {r.delivery_id: r for r in exc.results}
                for i in singles:
                    if emails[i].delivery_id in done:
                        results[i] = done[emails[i].delivery_id]
                raise FatalTransportError(str(exc), [results[i] for i in sorted(results)]) from None
            for i, result in zip(singles, alone, strict=True):
                results[i] = result
        return [results[i] for i in range(len(emails))]


def _bulk_body(emails: Sequence[OutgoingEmail]) -> bytes:
    return orjson.dumps(bulk_payload(emails))
