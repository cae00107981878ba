"""Bulk mode: one SendGrid request carries a lesson to up to 1,000 subscribers.

A lesson email differs between subscribers only in its slots (name, unsubscribe URL, manage
URL): `drip.render` fills precompiled parts with per-subscriber values. SendGrid can do that
filling itself: `content` is shared by the whole request and each personalization carries
`substitutions`. So `BulkSendGridTransport` groups the emails of a `send` call that share parts,
subject and sender, writes the parts with substitution keys in place of the slots, and puts each
subscriber's values, headers (List-Unsubscribe) and custom_args (drip_delivery_id...) in their
personalization (the body is `protocol.bulk_payload`).

Escaping: the HTML part shows a value HTML-escaped, the text part as it is, so each slot has two
keys (`...h<slot>...` and `...t<slot>...`) with the escaped and the raw value. Keys carry a nonce
chosen so that no key occurs in the lesson text; a subscriber whose values contain the key
prefix (which SendGrid might substitute again) is sent on its own, like an email without bulk
parts.

The send engine hands bulk mode a window as `drip.render.ComposedEmails` (a `Reader` tuple per
reader, the lesson's shared part once): it is grouped by that shared part and each request goes
to the inner transport as plain values (`http.PlainBody`), so with a sending process
(DRIP_SENDGRID_PROCESS) the request bodies are built there, off this process's GIL. Any other
sequence of emails is grouped and built email by email, as before.

Outcomes: one answer covers the whole request. 202 -> every subscriber SENT; 400/413 (one bad
address fails the whole request, nothing was accepted) -> those subscribers are sent one by one
instead, so only the bad one fails; 429/5xx -> all RETRY; a lost answer -> all IN_DOUBT. After a
crash, up to `window` (= recipients per request x requests in flight) subscribers can be in doubt.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future
from functools import partial
from typing import Any

import orjson

from drip.errors import FatalTransportError
from drip.message import OutgoingEmail
from drip.render import BulkLesson, ComposedEmails
from drip.transports.base import (
    Outcome,
    SendResult,
    TransportBase,
    not_attempted,
    unexpected_failure,
)
from drip.transports.sendgrid.fast import FastSendGridTransport
from drip.transports.sendgrid.http import PlainBody
from drip.transports.sendgrid.protocol import (
    MAX_PERSONALIZATIONS,
    bulk_payload,
    bulk_safe,
    fill_parts,
    group_key,
    lesson_bulk_safe,
    plain_readers,
    reader_bulk_safe,
)

DEFAULT_REQUESTS_IN_FLIGHT = 4


class BulkSendGridTransport(TransportBase):
    """A transport that sends bulk-safe emails many per request over a `FastSendGridTransport`.

    Emails that are not bulk-safe (no parts, a value containing the key prefix, other headers)
    go through the inner transport one by one, as do the subscribers of a bulk request refused
    with 400/413. `window` (recipients per request x requests in flight) is what the delivery
    loop hands over per call, and the bound on in-doubt subscribers after a crash.
    """

    name = "sendgrid"
    pipelines = True
    fills_bulk_parts = True
    """Emails may come with empty html/text and their bulk parts (see `protocol.fill_parts`)."""

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
        if not isinstance(emails, ComposedEmails):
            emails = list(emails)
        return self.inner.submit_coroutine(self.send_async(emails))

    async def send_async(self, emails: Sequence[OutgoingEmail]) -> list[SendResult]:
        """`send` inside the inner transport's loop: the bulk requests, then the emails sent on
        their own (not bulk-safe, or in a bulk request refused as a whole). An unexpected error
        is raised as `FatalTransportError` with the results known (`drip.transports.base`)."""
        results: dict[int, SendResult] = {}
        try:
            chunks, singles = self._plan(emails)
            refused, fatal = await self._send_chunks(emails, chunks, results)
            if fatal is not None:
                raise FatalTransportError(fatal)
            singles = sorted(singles + refused)
            if singles:
                await self._send_singles(emails, singles, results)
            return [results[i] for i in range(len(emails))]
        except FatalTransportError as exc:
            raise FatalTransportError(str(exc), [results[i] for i in sorted(results)]) from None
        except Exception as exc:
            known = [results[i] for i in sorted(results)]
            raise unexpected_failure(exc, known, self.inner.scrubber) from None

    def _plan(self, emails: Sequence[OutgoingEmail]) -> tuple[list[list[int]], list[int]]:
        """(indices of each bulk request, indices of the emails to send on their own)."""
        groups: dict[Any, list[int]] = {}
        singles: list[int] = []
        if isinstance(emails, ComposedEmails):
            # The compact form: grouped by their shared lesson, no `OutgoingEmail` made.
            safe: dict[BulkLesson, bool] = {}
            for index, reader in enumerate(emails.readers):
                lesson = reader.lesson
                fits = safe.get(lesson)
                if fits is None:
                    fits = safe[lesson] = lesson_bulk_safe(lesson)
                if fits and reader_bulk_safe(reader):
                    groups.setdefault(lesson, []).append(index)
                else:
                    singles.append(index)
        else:
            for index, email in enumerate(emails):
                if bulk_safe(email):
                    groups.setdefault(group_key(email), []).append(index)
                else:
                    singles.append(index)
        chunks = [
            members[start : start + self.per_request]
            for members in groups.values()
            for start in range(0, len(members), self.per_request)
        ]
        return chunks, singles

    async def _send_chunks(
        self,
        emails: Sequence[OutgoingEmail],
        chunks: list[list[int]],
        results: dict[int, SendResult],
    ) -> tuple[list[int], str | None]:
        """Send one request per chunk and fill `results` from the answers.

        Returns (the indices of requests refused as a whole, the fatal message or None).
        """
        if not chunks:
            return [], None
        if isinstance(emails, ComposedEmails):
            readers = emails.readers
            ids = [reader.delivery_id for reader in readers]
            # Plain values: the sending process, when there is one, builds these bodies.
            jobs: list[tuple[str, Callable[[], bytes]]] = [
                (f"bulk-{n}", PlainBody("bulk-readers", plain_readers([readers[i] for i in chunk])))
                for n, chunk in enumerate(chunks)
            ]
        else:
            ids = [email.delivery_id for email in emails]
            jobs = [
                (f"bulk-{n}", partial(_bulk_body, [emails[i] for i in chunk]))
                for n, chunk in enumerate(chunks)
            ]
        answers, fatal, call = await self.inner.post_all_async(jobs, emails=len(emails))
        refused: list[int] = []
        for chunk, answer in zip(chunks, answers, strict=True):
            if answer is None:
                if fatal is None:
                    reason = call.stop_reason or "the call ended early"
                    skipped = self.inner.scrubber.results(
                        not_attempted([emails[i] for i in chunk], reason, call.stop_retry_after)
                    )
                    results.update(zip(chunk, skipped, strict=True))
            elif answer.outcome is Outcome.FAILED:
                refused.extend(chunk)  # nothing was accepted; find the one bad subscriber
            else:
                for i in chunk:
                    results[i] = SendResult(
                        ids[i],
                        answer.outcome,
                        answer.provider_id,
                        answer.retry_after,
                        answer.detail,
                    )
        return refused, fatal

    async def _send_singles(
        self, emails: Sequence[OutgoingEmail], singles: list[int], results: dict[int, SendResult]
    ) -> None:
        """Send these emails one per request (filled from their bulk parts) into `results`."""
        try:
            alone = await self.inner.send_async([fill_parts(emails[i]) for i in singles])
        except FatalTransportError as exc:
            done = {r.delivery_id: r for r in exc.results}
            for i in singles:
                if emails[i].delivery_id in done:
                    results[i] = done[emails[i].delivery_id]
            raise
        results.update(zip(singles, alone, strict=True))


def _bulk_body(emails: Sequence[OutgoingEmail]) -> bytes:
    return orjson.dumps(bulk_payload(emails))
