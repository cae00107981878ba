"""What every transport promises: one `SendResult` per email, outcomes instead of exceptions.

The delivery service hands a batch of `OutgoingEmail` values to `Transport.send` and records each
returned `SendResult` in the ledger. The outcome decides what the ledger does with the row:

- `SENT`: the provider (or relay, or outbox directory) accepted the message.
- `RETRY`: nothing was accepted; try again later (after `retry_after` seconds when given).
- `FAILED`: the provider refused this message for good (bad address, too large...).
- `IN_DOUBT`: the request was written but its answer was lost; the message may or may not have
  been accepted. Never retried silently: the ledger records it and a reconcile step decides.

A problem that concerns the whole run (bad API key, SMTP authentication refused) is not an
outcome: `send` raises `FatalTransportError`, carrying the results it already has.

Unexpected errors. `send` raises nothing but `FatalTransportError`; `submit` never raises and its
future fails with nothing else. Any other exception inside a transport (a host name the IDNA
codec refuses, a closed transport, a bug) is turned into `FatalTransportError("the transport
failed unexpectedly: <type>: <message>")` carrying every result known so far (`unexpected_failure`,
`guarded`): the send engine records those, stops the run and releases every email without a
result, as for any fatal answer. The email being handed over when the error struck gets no result
(it counts as not attempted), except where the transport knows the message was written: SMTP after
the final '.' records it IN_DOUBT.

Texts. Every `detail`, `provider_id` and error message a transport produces goes through its
`Scrubber`: no NUL or control characters (a PostgreSQL text column refuses NUL), no credential
in any form, cut to a size the ledger stores; `retry_after` is within [0, MAX_RETRY_AFTER].

What a transport can do is declared, with defaults, on `Transport` / `TransportBase`: `window`
(emails per call), `submit` and `pipelines` (calls that overlap), `fills_bulk_parts` (bulk mode).
"""

from __future__ import annotations

import base64
import enum
import json
import logging
import math
import re
import traceback
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from types import TracebackType
from typing import Protocol, Self, runtime_checkable
from urllib.parse import quote, quote_plus

from drip.errors import FatalTransportError
from drip.message import OutgoingEmail

log = logging.getLogger(__name__)


class Outcome(enum.Enum):
    """How one send attempt ended, from the ledger's point of view (see the module docstring)."""

    SENT = "sent"
    RETRY = "retry"
    FAILED = "failed"
    IN_DOUBT = "in_doubt"


@dataclass(frozen=True)
class SendResult:
    """The outcome for one email.

    `provider_id` is the provider's message id (SendGrid X-Message-Id, the outbox file name...)
    when the message was accepted. `retry_after` is a hint in seconds for `RETRY`. `detail` is a
    short human-readable reason; it never contains a secret (API key, SMTP password).
    """

    delivery_id: str
    outcome: Outcome
    provider_id: str | None = None
    retry_after: float | None = None
    detail: str = ""


@runtime_checkable
class Transport(Protocol):
    """A way out for email. Implementations: sendgrid (official, fast, bulk), smtp, outbox, memory.

    `send` returns exactly one result per input email, in the same order. It does not raise for
    problems of one message or a temporary outage (those are outcomes); it raises only
    `FatalTransportError`. `submit` is `send` returning a future. `close` releases connections
    and may be called more than once. `TransportBase` documents each member and its default.
    """

    name: str
    window: int
    pipelines: bool
    fills_bulk_parts: bool

    def send(self, emails: Sequence[OutgoingEmail]) -> list[SendResult]: ...

    def submit(self, emails: Sequence[OutgoingEmail]) -> Future[list[SendResult]]: ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class TransportBase:
    """Every hook of `Transport` with its default, and the context-manager plumbing
    (`with make_transport(...)`). A new transport implements `send` and overrides what it does
    differently.
    """

    name = "base"
    """Short name for messages and reports ("sendgrid", "smtp", ...)."""
    window: int = 1
    """How many emails the send loop hands over per call. A transport that keeps several
    requests in flight says how many (the fast SendGrid client: DRIP_SENDGRID_WINDOW; bulk mode:
    recipients per request x requests in flight); after a crash that many can be in doubt."""
    pipelines: bool = False
    """True when `submit` returns before the call is done, so the send loop prepares the next call
    while this one is in flight (the fast and bulk SendGrid clients). False: `submit` sends at
    once and the send loop records each call before it starts the next."""
    fills_bulk_parts: bool = False
    """True when the transport fills html and text from `OutgoingEmail.bulk` itself (bulk mode),
    so the send loop may hand over emails with both left empty."""

    def send(self, emails: Sequence[OutgoingEmail]) -> list[SendResult]:
        """One result per email, in input order; see `Transport` and the module docstring."""
        raise NotImplementedError

    def submit(self, emails: Sequence[OutgoingEmail]) -> Future[list[SendResult]]:
        """`send` as a future. The default sends now and returns a finished future, whose
        exception is the `FatalTransportError` that `send` raised (any other exception becomes
        one, see `unexpected_failure`); a pipelining transport returns at once instead."""
        try:
            return finished(self.send(emails))
        except FatalTransportError as exc:
            return finished(exc)
        except Exception as exc:
            return finished(unexpected_failure(exc, (), _PLAIN))

    def close(self) -> None:
        """Release resources; the default has none."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def not_attempted(
    emails: Sequence[OutgoingEmail], reason: str, retry_after: float | None
) -> list[SendResult]:
    """`RETRY` results for emails a transport chose not to try after an outage-like answer.

    Used after a 429, a 5xx, a refused connection or an in-doubt answer: hammering a service
    that is down or throttling us only makes things worse, and the ledger retries them later.
    """
    return [
        SendResult(
            email.delivery_id,
            Outcome.RETRY,
            retry_after=retry_after,
            detail=f"not attempted: {reason}",
        )
        for email in emails
    ]


def finished(
    outcome: list[SendResult] | FatalTransportError,
) -> Future[list[SendResult]]:
    """A future already done: with these results, or failed with this error."""
    done: Future[list[SendResult]] = Future()
    if isinstance(outcome, FatalTransportError):
        done.set_exception(outcome)
    else:
        done.set_result(outcome)
    return done


def utc_now() -> datetime:
    """The wall clock, timezone-aware: the default `clock` of the transports."""
    return datetime.now(UTC)


MAX_DETAIL = 300
"""Characters of `SendResult.detail` kept (after cleaning and scrubbing)."""
MAX_PROVIDER_ID = 200
"""Characters of `SendResult.provider_id` kept: the size of the ledger's column."""
MAX_ERROR = 2000
"""Characters of a `FatalTransportError` message kept."""
MAX_RETRY_AFTER = 24 * 3600.0
"""The longest wait a `RETRY` result may ask for, in seconds: a provider's absurd or infinite
Retry-After becomes this."""
REDACTED = "[redacted]"
MIN_PREFIX = 8
"""A piece of a credential this long or longer at the start of one of its forms is redacted: the
prefix a server (or anyone) left when it cut a text short."""

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
"""What a stored or printed text may not contain: C0/C1 controls except tab and newline (NUL
breaks PostgreSQL text, escapes rewrite a terminal), DEL, and lone surrogates (not UTF-8)."""


def clamp_retry_after(seconds: float | None) -> float | None:
    """`seconds` within [0, MAX_RETRY_AFTER]; None for None or NaN (no usable hint)."""
    if seconds is None or math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _base64_forms(data: bytes) -> set[str]:
    """The base64 texts that show `data` wherever it sits in a larger encoded blob: the whole
    encoding, and for each alignment (offset mod 3) the run of characters that encode `data`
    alone; standard and URL-safe alphabets."""
    forms = {base64.b64encode(data).decode()}
    for offset in (1, 2):
        encoded = base64.b64encode(bytes(offset) + data).decode()
        total = offset + len(data)
        forms.add(encoded[4 : 4 * (total // 3)])
    forms |= {form.replace("+", "-").replace("/", "_") for form in forms}
    return {form for form in forms if len(form) >= 6}


def secret_forms(secret: str, users: Iterable[str] = ()) -> set[str]:
    """`secret` as it can show up in a reply: plain, URL-encoded, JSON-escaped, base64 (alone or
    inside a larger blob), and the base64 of `user:secret` (HTTP Basic) and NUL user NUL secret
    (SMTP AUTH PLAIN) for each of `users`."""
    forms = {secret, quote(secret, safe=""), quote_plus(secret), json.dumps(secret)[1:-1]}
    forms |= _base64_forms(secret.encode())
    for user in users:
        for blob in (f"{user}:{secret}", f"\0{user}\0{secret}"):
            forms.add(base64.b64encode(blob.encode()).decode())
    return {form for form in forms if form}


class Scrubber:
    """Cleans every text a transport returns or raises: provider replies, exception messages.

    `text` removes control characters (`_CONTROL`), then every form of the secrets
    (`secret_forms`) and any prefix of MIN_PREFIX or more characters of one, then cuts to a
    length: scrubbing before cutting, so a cut never leaves a piece of a credential. Secrets are
    the API key or SMTP password; `users` are the user names they travel with. Without secrets it
    only cleans and cuts.
    """

    def __init__(self, *secrets: str | None, users: Iterable[str] = ()) -> None:
        users = tuple(users)
        forms: set[str] = set()
        for secret in secrets:
            if secret:
                forms |= secret_forms(secret, users)
        # Longest first: a long form is redacted whole before a shorter one inside it.
        self._forms = tuple(sorted(forms, key=len, reverse=True))
        # One search says whether a text holds the start of any form (the common case: not).
        heads = sorted({re.escape(form[:MIN_PREFIX]) for form in self._forms})
        self._heads = re.compile("|".join(heads)) if heads else None

    def text(self, text: str, limit: int = MAX_DETAIL) -> str:
        """`text` cleaned, scrubbed, then cut to `limit` characters."""
        if not text.isprintable() and _CONTROL.search(text) is not None:
            text = _CONTROL.sub("", text)
        if self._heads is not None and self._heads.search(text) is not None:
            text = self._redact(text)
        return text if len(text) <= limit else text[:limit]

    def _redact(self, text: str) -> str:
        spans: list[tuple[int, int]] = []
        for form in self._forms:
            head = form[:MIN_PREFIX]
            start = text.find(head)
            while start != -1:
                end = start + len(head)
                stop = min(len(text), start + len(form))
                while end < stop and text[end] == form[end - start]:
                    end += 1
                spans.append((start, end))
                start = text.find(head, end)
        if not spans:
            return text
        pieces: list[str] = []
        last = 0
        for start, end in sorted(spans):
            if end <= last:
                continue
            if start >= last:
                pieces += [text[last:start], REDACTED]
            last = end
        pieces.append(text[last:])
        return "".join(pieces)

    def result(self, result: SendResult) -> SendResult:
        """`result` with its detail and provider_id cleaned and scrubbed, and its retry_after
        within [0, MAX_RETRY_AFTER] (the same object when nothing changes)."""
        detail = self.text(result.detail)
        provider_id = result.provider_id
        if provider_id is not None:
            provider_id = self.text(provider_id, MAX_PROVIDER_ID) or None
        retry_after = clamp_retry_after(result.retry_after)
        if (
            detail == result.detail
            and provider_id == result.provider_id
            and retry_after == result.retry_after
        ):
            return result
        return replace(result, detail=detail, provider_id=provider_id, retry_after=retry_after)

    def results(self, results: Iterable[SendResult]) -> list[SendResult]:
        """Each of `results` through `result`."""
        return [self.result(result) for result in results]

    def fatal(
        self, exc: FatalTransportError, results: Sequence[SendResult] | None = None
    ) -> FatalTransportError:
        """`exc` with its message and results (or `results`, when given) scrubbed."""
        known = exc.results if results is None else results
        return FatalTransportError(self.text(str(exc), MAX_ERROR), self.results(known))


_PLAIN = Scrubber()

UNEXPECTED = "the transport failed unexpectedly"


def unexpected_failure(
    exc: Exception, results: Iterable[SendResult], scrubber: Scrubber
) -> FatalTransportError:
    """The `FatalTransportError` for an exception that is not a transport outcome (see the
    module docstring): its message names the cause, `results` are those known so far. The
    traceback goes to the debug log, scrubbed like the message."""
    cause = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    trace = "".join(traceback.format_exception(exc))
    log.debug("%s", scrubber.text(f"{UNEXPECTED}:\n{trace}", len(trace) + 100))
    return FatalTransportError(
        scrubber.text(f"{UNEXPECTED}: {cause}", MAX_ERROR), scrubber.results(results)
    )


def guarded(scrubber: Scrubber, send_each: Callable[[list[SendResult]], None]) -> list[SendResult]:
    """Run `send_each`, which appends one result per email it handled to the list it is given,
    and return that list through `scrubber`. A `FatalTransportError` from it, or any other
    exception (`unexpected_failure`), is raised as a `FatalTransportError` carrying the results
    appended so far. How the sequential transports (official SendGrid, SMTP, outbox) send."""
    results: list[SendResult] = []
    try:
        send_each(results)
    except FatalTransportError as exc:
        raise scrubber.fatal(exc, results) from None
    except Exception as exc:
        raise unexpected_failure(exc, results, scrubber) from None
    return scrubber.results(results)


def sender_domain(sender: str) -> str:
    """The domain of `sender` (an address, or 'Name <address>'): the text after its last '@'."""
    return sender.rpartition("@")[2].strip(" >")


def message_id_domain_for(email: OutgoingEmail, configured: str | None) -> str:
    """The right-hand side of `email`'s Message-ID: `configured` (DRIP_FROM's domain or the
    caller's choice), else the sender's domain, else "localhost"."""
    return configured or sender_domain(email.from_address) or "localhost"
