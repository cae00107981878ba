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

What a transport can do is declared, with defaults, on `Transport` / `TransportBase`: `window`
(emails per call), `submit` and `pipelines` (calls that overlap), `fills_bulk_parts` (bulk mode).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from drip.errors import FatalTransportError
from drip.message import OutgoingEmail


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
        exception is the `FatalTransportError` that `send` raised; a pipelining transport
        returns at once instead."""
        done: Future[list[SendResult]] = Future()
        try:
            done.set_result(self.send(emails))
        except FatalTransportError as exc:
            done.set_exception(exc)
        return done

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


def utc_now() -> datetime:
    """The wall clock, timezone-aware: the default `clock` of the transports."""
    return datetime.now(UTC)


def scrub(text: str, secret: str | None) -> str:
    """`text` with `secret` (API key, SMTP password) replaced by "[redacted]".

    A server or proxy could echo a credential back in an error; no result or error may carry it.
    """
    return text.replace(secret, "[redacted]") if secret else text


def scrub_result(result: SendResult, secret: str | None) -> SendResult:
    """`result` with `secret` removed from its detail (the same object when it has none)."""
    if not secret or secret not in result.detail:
        return result
    return SendResult(
        result.delivery_id,
        result.outcome,
        result.provider_id,
        result.retry_after,
        scrub(result.detail, secret),
    )


def sender_domain(sender: str) -> str:
    """The domain of `sender` (an address, or 'Name <address>'): the text after its last '@'."""
    return sender.rpartition("@")[2].strip(" >")


def message_id_domain_for(email: OutgoingEmail, configured: str | None) -> str:
    """The right-hand side of `email`'s Message-ID: `configured` (DRIP_FROM's domain or the
    caller's choice), else the sender's domain, else "localhost"."""
    return configured or sender_domain(email.from_address) or "localhost"
