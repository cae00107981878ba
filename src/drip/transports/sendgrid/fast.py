"""SendGrid v3 Mail Send over aiohttp: keep-alive connections and many requests in flight.

The same two pure ends as the official-library client (`drip.transports.sendgrid.protocol`):
`fast_payload` makes the request body (equal to `build_payload`'s) and `classify_status` maps
the answer, so payloads and outcomes are identical; only the HTTP step differs. The official
client opens a new connection per call and sends one request at a time (~19 emails/s at 50 ms
latency); this one keeps up to `window` requests in flight over pooled connections (Little's
law: rate x latency, e.g. 2,800/s x 0.05 s = 140, so the default 256 leaves head-room for slower
answers).

An asyncio loop runs in one background thread for the transport's lifetime, so connections stay
open across calls; `send` blocks the caller until every email of the call has a result, `submit`
returns a future at once so the caller can prepare the next call meanwhile. The HTTP step itself
(`sendgrid.http.HttpLoop`) runs in that thread or, with DRIP_SENDGRID_PROCESS, in a second
process (`sendgrid.process`) so that its CPU is not taken from the sending thread's GIL; the
request bodies are built in this process either way.

How failures map to outcomes:
- connection refused / connect timeout: RETRY (nothing was written);
- any error after the connection was made (reset, read timeout, broken answer): IN_DOUBT. aiohttp
  cannot tell "request half written" from "answer lost", so a lost connection is never retried
  silently (SendGrid has no idempotency key);
- 429 / 5xx: RETRY with the server's wait hint, and the limit on requests in flight is halved
  (AIMD: it grows back by about one per window of successes);
- after an outage-like answer no new request of the call starts; those come back RETRY
  ("not attempted"), while requests already in flight finish and keep their real outcome;
- 401/403/404/405 and 3xx (redirects are never followed): `FatalTransportError`. Its `results`
  hold every outcome the call already has, in input order: with several requests in flight
  these may include emails after the one that met the fatal answer (they were sent concurrently
  and must be recorded, not released).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import weakref
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import Future
from concurrent.futures import wait as wait_for
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
import orjson

from drip.config import DEFAULT_SENDGRID_API_URL, SendGridProcess
from drip.errors import ConfigError, FatalTransportError
from drip.message import OutgoingEmail
from drip.transports.base import (
    SendResult,
    TransportBase,
    finished,
    not_attempted,
    unexpected_failure,
    utc_now,
)
from drip.transports.sendgrid.http import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_WINDOW,
    Aimd,
    Call,
    HttpLoop,
    Sender,
    TokenBucket,
)
from drip.transports.sendgrid.protocol import (
    DEFAULT_TIMEOUT,
    fast_payload,
    fill_parts,
    spliced_body,
)

if TYPE_CHECKING:
    from drip.transports.sendgrid.process import SendingProcess

__all__ = ["Aimd", "FastSendGridTransport", "TokenBucket"]

log = logging.getLogger(__name__)

AUTO_MIN_REQUESTS = 128
"""DRIP_SENDGRID_PROCESS=auto starts the sending process for a first call of this many requests
(or a full window): below it, the process's start-up would cost more than it saves."""
T = TypeVar("T")


def _shutdown(
    loop: asyncio.AbstractEventLoop,
    thread: threading.Thread,
    senders: list[Sender],
    pending: set[Future[list[SendResult]]],
) -> None:
    """Close the senders, stop the loop and its thread (from close() or garbage collection).

    Calls still `pending` (close() already gave them time to finish) lose their connections
    here: their requests end in doubt or not attempted, and their futures complete before the
    loop stops, so nobody waits for them forever.
    """
    if loop.is_closed():
        return

    async def close_senders() -> None:
        for sender in senders:
            await sender.close()
        senders.clear()

    if threading.current_thread() is thread:
        # Collected inside the loop: it cannot wait for itself; stop after closing.
        task = loop.create_task(close_senders())
        task.add_done_callback(lambda _: loop.stop())
        return
    try:
        asyncio.run_coroutine_threadsafe(close_senders(), loop).result(timeout=15)
        wait_for(list(pending), timeout=10)
    except Exception:  # a wedged loop must not turn close() into an error
        log.warning("the SendGrid connection pool did not close cleanly", exc_info=True)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)
    if not thread.is_alive():
        loop.close()


def _email_body(email: OutgoingEmail) -> bytes:
    """The JSON body for one email (`fast_payload`), serialised with orjson. An email left
    unfilled with its bulk parts (this transport `fills_bulk_parts`) is spliced from its
    lesson's pre-encoded parts (`spliced_body`), or filled first when that cannot be done."""
    if email.bulk is not None and not email.html and not email.text:
        spliced = spliced_body(email)
        if spliced is not None:
            return spliced
        email = fill_parts(email)
    return orjson.dumps(fast_payload(email))


class FastSendGridTransport(TransportBase):
    """Sends each email with one POST /v3/mail/send, up to `window` in flight, keep-alive.

    `rate` (emails/s, DRIP_SENDGRID_RATE) caps the average request rate with a token bucket
    shared by all requests of this transport. `timeout` bounds the wait for an answer once the
    request is written; `connect_timeout` bounds opening a connection. `clock` is read only to
    turn Retry-After dates and X-RateLimit-Reset into seconds (in this process's loop; the
    sending process reads its own UTC clock). `process` (DRIP_SENDGRID_PROCESS) says where the
    HTTP step runs: "on" in a second process (`sendgrid.process`), "off" in the loop thread,
    "auto" in a second process, started at the first call that fills the window on a machine
    with more than one CPU, once it is ready (the calls meanwhile run in the loop thread); the
    rate bucket and the AIMD limit are then the child's. Thread-safe for one caller at a time;
    `submit` lets calls overlap (the delivery loop keeps two windows going); `close` may be
    called more than once.
    """

    name = "sendgrid"
    pipelines = True
    fills_bulk_parts = True
    """Lesson emails may come unfilled with their bulk parts: their bodies are spliced from the
    lesson's pre-encoded parts (`protocol.spliced_body`), never filled as strings."""

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str = DEFAULT_SENDGRID_API_URL,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        window: int = DEFAULT_WINDOW,
        rate: float | None = None,
        clock: Callable[[], datetime] = utc_now,
        process: SendGridProcess = "off",
    ) -> None:
        self._options: dict[str, Any] = dict(
            base_url=base_url,
            timeout=timeout,
            connect_timeout=connect_timeout,
            window=window,
            rate=rate,
        )
        self._api_key = api_key
        self.http = HttpLoop(api_key, clock=clock, **self._options)
        """The HTTP step in this process (unused while the sending process does it)."""
        self.scrubber = self.http.scrubber
        """Cleans every text this transport (and bulk mode over it) returns or raises."""
        if process not in ("auto", "on", "off"):
            raise ConfigError(f"DRIP_SENDGRID_PROCESS={process!r} is not known")
        self.process = process
        self.window = window
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._senders: list[Sender] = [self.http]
        self._child: SendingProcess | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._closed = False
        self._pending: set[Future[list[SendResult]]] = set()
        self.drain_timeout = connect_timeout + timeout + 1.0
        """How long `close` waits for the calls in flight: the longest one request may take."""

    @property
    def aimd(self) -> Aimd:
        """The in-thread limit on requests in flight (the sending process keeps its own)."""
        return self.http.aimd

    # --- lifecycle ------------------------------------------------------------------------------

    def _start(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            return self._start_locked()

    def _start_locked(self) -> asyncio.AbstractEventLoop:
        if self._closed:
            raise RuntimeError("this SendGrid transport is closed")
        if self._loop is None:
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="drip-sendgrid", daemon=True)
            thread.start()
            self._loop, self._thread = loop, thread
            # Also runs when a transport is dropped without close(): no leaked sockets or
            # sending process.
            self._finalizer = weakref.finalize(
                self, _shutdown, loop, thread, self._senders, self._pending
            )
        return self._loop

    @property
    def _session(self) -> aiohttp.ClientSession | None:
        return self.http.session

    def close(self) -> None:
        """Let the calls in flight finish (for at most `drain_timeout` seconds), then close the
        connections, end the sending process if any and stop the loop thread; safe to call
        more than once. A call submitted after this fails with `FatalTransportError` (nothing
        handed over)."""
        with self._lock:
            self._closed = True
            finalizer = self._finalizer
            pending = list(self._pending)
        if pending and threading.current_thread() is not self._thread:
            wait_for(pending, timeout=self.drain_timeout)
        if finalizer is not None:
            finalizer()

    # --- sending --------------------------------------------------------------------------------

    def send(self, emails: Sequence[OutgoingEmail]) -> list[SendResult]:
        """Send each email; see `Transport.send` and the module docstring for outcomes.

        Raises `FatalTransportError` on 401/403/404/405 and 3xx, or an unexpected error (see
        `drip.transports.base`), with the results the call already has.
        """
        return self.submit(emails).result()

    def submit(self, emails: Sequence[OutgoingEmail]) -> Future[list[SendResult]]:
        """Start sending and return at once: the future gives what `send` would return (or
        raises its `FatalTransportError`). Calls may overlap; all share the AIMD limit, the rate
        bucket and the connection pool, so at most 2 x `window` requests are in flight for two
        overlapping calls. Never raises: a closed transport gives a failed future.
        """
        return self.submit_coroutine(self.send_async(list(emails)))

    def submit_coroutine(
        self, coro: Coroutine[Any, Any, list[SendResult]]
    ) -> Future[list[SendResult]]:
        """Run a send coroutine on the transport's loop thread; its future at once (also used by
        bulk mode). Whatever stops it that is not a `FatalTransportError` (the transport is
        closed, a bug) fails the future with one (`drip.transports.base.unexpected_failure`)."""
        try:
            with self._lock:  # one lock with close(): a call is either refused or waited for
                loop = self._start_locked()
                future = asyncio.run_coroutine_threadsafe(self._guard(coro), loop)
                self._pending.add(future)
        except Exception as exc:
            coro.close()
            return finished(unexpected_failure(exc, (), self.scrubber))
        future.add_done_callback(self._pending.discard)
        return future

    async def _guard(self, coro: Coroutine[Any, Any, list[SendResult]]) -> list[SendResult]:
        try:
            return await coro
        except FatalTransportError:
            raise
        except Exception as exc:  # the last resort; errors while sending are caught in the call
            raise unexpected_failure(exc, (), self.scrubber) from None

    def run_soon(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        """Schedule `coro` on the transport's loop thread."""
        return asyncio.run_coroutine_threadsafe(coro, self._start())

    async def send_async(self, emails: Sequence[OutgoingEmail]) -> list[SendResult]:
        """`send` inside the transport's loop."""
        if not emails:
            return []
        jobs = [(email.delivery_id, partial(_email_body, email)) for email in emails]
        results, fatal, call = await self.post_all_async(jobs)
        if fatal is not None:
            raise FatalTransportError(fatal, [r for r in results if r is not None])
        out: list[SendResult] = []
        for email, result in zip(emails, results, strict=True):
            if result is None:
                reason = call.stop_reason or "the call ended early"
                out.extend(
                    self.scrubber.results(not_attempted([email], reason, call.stop_retry_after))
                )
            else:
                out.append(result)
        return out

    async def post_all_async(
        self, jobs: Sequence[tuple[str, Callable[[], bytes]]], emails: int | None = None
    ) -> tuple[list[SendResult | None], str | None, Call]:
        """POST one body per job (label, body builder): `HttpLoop.post_all`, in this process or
        in the sending process. Used by `send` (one email per job) and by bulk mode (many
        recipients per job: `emails` says how many in all, for "auto"). When the sending
        process dies, every job without an answer is IN_DOUBT (it may have been posted) and the
        fatal message says so."""
        sender = await self._sender(len(jobs) if emails is None else emails)
        return await sender.post_all(jobs)

    async def _sender(self, emails: int) -> Sender:
        """Who posts a call of `emails` emails. With "auto", calls go through this
        process's loop until the first that fills the window (or AUTO_MIN_REQUESTS) on a machine
        with more than one CPU starts the sending process, and on while it starts (its start-up
        never delays a call): a second process pays off only for big runs, and a run's first
        calls may be single confirmation emails. Once it is ready it takes every call. One that
        died is started again (a worker keeps its transport across ticks)."""
        if self.process == "off":
            return self.http
        if self.process == "auto" and self._child is None:
            big = emails >= min(self.window, AUTO_MIN_REQUESTS)
            if not big or (os.cpu_count() or 1) < 2 or os.name != "posix":
                return self.http
        if self._child is None or self._child.dead:
            from drip.transports.sendgrid.process import SendingProcess

            if self._child is not None:  # dead: reap it and close its pipes
                self._senders.remove(self._child)
                await self._child.close()
            self._child = SendingProcess(self._api_key, self.scrubber, self._options)
            self._senders.append(self._child)
        if self.process == "auto" and not self._child.started:
            return self.http
        return self._child
