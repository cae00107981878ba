"""The HTTP step of the fast SendGrid client: POST prepared bodies from one event loop.

`HttpLoop` keeps the keep-alive pool, the AIMD limit on requests in flight and the rate bucket,
and maps each answer with `protocol.classify_status` (see `sendgrid.fast` for how failures map to
outcomes). It is the one implementation of the HTTP step: `FastSendGridTransport` runs it in its
loop thread, or `sendgrid.process` runs it in a second process.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Protocol

import aiohttp
import orjson

from drip.config import DEFAULT_SENDGRID_API_URL, DEFAULT_SENDGRID_WINDOW
from drip.errors import ConfigError, FatalTransportError
from drip.transports.base import (
    MAX_ERROR,
    Outcome,
    Scrubber,
    SendResult,
    unexpected_failure,
    utc_now,
)
from drip.transports.sendgrid.protocol import (
    DEFAULT_TIMEOUT,
    MAIL_SEND_PATH,
    build_failure,
    classify_status,
    plain_readers_body,
    require_api_key,
)

DEFAULT_WINDOW = DEFAULT_SENDGRID_WINDOW
DEFAULT_CONNECT_TIMEOUT = 10.0
USER_AGENT = "drip (aiohttp keep-alive)"


class Sender(Protocol):
    """What posts a call's bodies: `HttpLoop` in the loop thread, or the sending process's
    parent end (`sendgrid.process.SendingProcess`). Both run on the transport's loop."""

    async def post_all(
        self, jobs: Sequence[tuple[str, Callable[[], bytes]]]
    ) -> tuple[list[SendResult | None], str | None, Call]: ...

    async def close(self) -> None: ...


class TokenBucket:
    """At most `rate` tokens per second on average, bursts up to `capacity`.

    Used from one event loop only (no locks needed). `monotonic` is a clock for intervals, not
    the wall-clock `now`: rate limiting is about elapsed time.
    """

    def __init__(
        self,
        rate: float,
        capacity: float | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0:
            raise ConfigError(f"DRIP_SENDGRID_RATE must be a positive number, not {rate!r}")
        self.rate = float(rate)
        self.capacity = float(capacity if capacity is not None else max(1.0, rate / 10))
        self._monotonic = monotonic
        self._tokens = self.capacity
        self._stamp = monotonic()

    def _refill(self) -> None:
        now = self._monotonic()
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def delay_for(self, tokens: float = 1.0) -> float:
        """Take `tokens` now (the balance may go negative) and return how long to wait first."""
        self._refill()
        self._tokens -= tokens
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    async def take(self, tokens: float = 1.0) -> None:
        """Wait until `tokens` may be spent. Callers queue fairly: each reserves its share."""
        wait = self.delay_for(tokens)
        if wait > 0:
            await asyncio.sleep(wait)


class Aimd:
    """The number of requests allowed in flight: additive increase, multiplicative decrease.

    Starts at `ceiling`; `decrease()` halves it (never below 1) after a 429/5xx, `increase()`
    adds 1/limit per success, i.e. about +1 per window of successes, back up to `ceiling`.
    """

    def __init__(self, ceiling: int) -> None:
        self.ceiling = ceiling
        self.limit = float(ceiling)

    def increase(self) -> None:
        self.limit = min(float(self.ceiling), self.limit + 1.0 / self.limit)

    def decrease(self) -> None:
        self.limit = max(1.0, self.limit / 2)

    @property
    def allowed(self) -> int:
        return max(1, int(self.limit))


class Call:
    """The state of one `send` call inside the loop."""

    def __init__(self, count: int) -> None:
        self.results: list[SendResult | None] = [None] * count
        self.next_index = 0
        self.stop_reason: str | None = None
        self.stop_retry_after: float | None = None
        self.fatal: str | None = None


Job = tuple[str, Callable[[], bytes]]
"""A request to make: its label (the delivery id, or "bulk-<n>") and its body's builder."""

PLAIN_BUILDERS: dict[str, Callable[[Any], bytes]] = {"bulk-readers": plain_readers_body}
"""The body builders a `PlainBody` names."""


class PlainBody:
    """A body builder that is a name in PLAIN_BUILDERS and plain (`marshal`-able) values: the
    sending process is sent these and builds the body itself, off the parent's GIL (bulk
    bodies: a tuple per reader in, a megabyte of JSON out)."""

    __slots__ = ("args", "name")

    def __init__(self, name: str, args: Any) -> None:
        self.name = name
        self.args = args

    def __call__(self) -> bytes:
        return PLAIN_BUILDERS[self.name](self.args)


class Feed:
    """The jobs of a call that arrive while it runs: the sending process starts posting a call's
    first bodies while the rest are still being built and shipped by the parent."""

    def __init__(self) -> None:
        self.arrived = 0
        self._event = asyncio.Event()

    def add(self, count: int) -> None:
        """`count` more jobs are in place."""
        self.arrived += count
        self._event.set()

    async def more(self) -> None:
        """Wait until more jobs are in place."""
        self._event.clear()
        await self._event.wait()


def build_body(label: str, build: Callable[[], bytes], scrubber: Scrubber) -> bytes | SendResult:
    """The body `build` makes, or FAILED when it raises `ValueError`/`TypeError` (an email
    that cannot be encoded); any other exception propagates (see `HttpLoop.post_all`)."""
    try:
        return build()
    except (ValueError, TypeError) as exc:
        return scrubber.result(build_failure(label, exc))


class HttpLoop:
    """POSTs prepared bodies to Mail Send from one event loop: the keep-alive pool, the AIMD
    limit and the rate bucket, shared by every call. The one implementation of the HTTP step:
    it runs in the transport's loop thread, or in the sending process (`sendgrid.process`).

    Options as for `FastSendGridTransport`. `stopping`, once set, starts no new request in
    any call (the sending process's parent is gone).
    """

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
    ) -> None:
        self.scrubber = Scrubber(require_api_key(api_key), users=("apikey",))
        if window < 1:
            raise ConfigError(f"DRIP_SENDGRID_WINDOW must be at least 1, not {window}")
        if rate is not None:
            TokenBucket(rate)  # validate now: a config error must surface before any claim
        self._url = base_url.rstrip("/") + MAIL_SEND_PATH
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=timeout
        )
        self.window = window
        self.aimd = Aimd(window)
        self._rate = rate
        self._bucket: TokenBucket | None = None
        self._clock = clock
        self.session: aiohttp.ClientSession | None = None
        self.stopping = False

    async def _get_session(self) -> aiohttp.ClientSession:
        if self.session is None:
            connector = aiohttp.TCPConnector(limit=self.window, keepalive_timeout=30)
            self.session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                headers=self._headers,
                json_serialize=lambda value: orjson.dumps(value).decode(),
                raise_for_status=False,
            )
            if self._rate is not None:
                self._bucket = TokenBucket(self._rate, monotonic=asyncio.get_running_loop().time)
        return self.session

    async def close(self) -> None:
        """Close the connections (requests still in flight end in doubt)."""
        if self.session is not None:
            await self.session.close()
            self.session = None

    async def post_all(
        self, jobs: Sequence[Job | None], feed: Feed | None = None
    ) -> tuple[list[SendResult | None], str | None, Call]:
        """POST one body per job (label, body builder), up to the AIMD limit in flight.

        Returns (results in job order, fatal message or None, call state). A result is None for
        a job not started (after an outage-like or fatal answer) or that met the fatal answer.
        A builder that raises `ValueError`/`TypeError` gives FAILED. Any other exception (see
        `drip.transports.base`) is the fatal message "the transport failed unexpectedly: ...",
        with every result known kept. With a `feed`, `jobs` is filled in place while the call
        runs (up to `feed.arrived`); a job left None is skipped (no result).
        """
        call = Call(len(jobs))
        try:
            await self._send_all(jobs if feed is not None else list(jobs), call, feed)
        except Exception as exc:
            call.fatal = call.fatal or str(unexpected_failure(exc, (), self.scrubber))
        fatal = None if call.fatal is None else self.scrubber.text(call.fatal, MAX_ERROR)
        return call.results, fatal, call

    async def _send_all(
        self, jobs: Sequence[Job | None], call: Call, feed: Feed | None = None
    ) -> None:
        running: set[asyncio.Task[None]] = set()
        wake = asyncio.Event()

        def done(task: asyncio.Task[None]) -> None:
            running.discard(task)
            wake.set()

        if self.stopping:
            return
        try:
            session = await self._get_session()
            while (
                call.next_index < len(jobs)
                and call.stop_reason is None
                and call.fatal is None
                and not self.stopping
            ):
                if len(running) >= self.aimd.allowed:
                    wake.clear()
                    await wake.wait()
                    continue
                index = call.next_index
                if feed is not None and index >= feed.arrived:
                    await feed.more()
                    continue
                call.next_index += 1
                job = jobs[index]
                if job is None:
                    continue
                if self._bucket is not None:
                    await self._bucket.take()
                label, build = job
                task = asyncio.create_task(self._send_one(session, label, build, index, call))
                running.add(task)
                task.add_done_callback(done)
        finally:
            # Requests in flight finish and keep their outcome, whatever stopped the loop.
            if running:
                await asyncio.gather(*running, return_exceptions=True)

    async def _send_one(
        self,
        session: aiohttp.ClientSession,
        label: str,
        build: Callable[[], bytes],
        index: int,
        call: Call,
    ) -> None:
        """Build and POST job `index` of `call` and record its result there. A fatal answer or
        an unexpected error gives this job no result (it was not handed over) and sets
        `call.fatal`, so no new request starts."""
        try:
            body = build_body(label, build, self.scrubber)
            if isinstance(body, SendResult):
                call.results[index] = body
                return
            # Clean as it comes (classify_status and post_body scrub what the server said).
            result = await self.post_body(session, label, body)
        except FatalTransportError as exc:
            call.fatal = call.fatal or str(exc)
            return
        except Exception as exc:  # not an outcome (a host the IDNA codec refuses, a bug)
            call.fatal = call.fatal or str(unexpected_failure(exc, (), self.scrubber))
            return
        call.results[index] = result
        if result.outcome is Outcome.SENT:
            self.aimd.increase()
        elif result.outcome in (Outcome.RETRY, Outcome.IN_DOUBT):
            if result.outcome is Outcome.RETRY:
                self.aimd.decrease()
            if call.stop_reason is None:
                call.stop_reason = f"SendGrid answered {label}: {result.detail}"
                call.stop_retry_after = result.retry_after

    async def post_body(
        self, session: aiohttp.ClientSession, delivery_id: str, body: bytes
    ) -> SendResult:
        """POST one prepared body and classify the answer.

        Raises `FatalTransportError` (without results) for 401/403/404/405 and 3xx. The result
        is clean: what the server or the connection said went through the `Scrubber`.
        """
        try:
            # Never follow a redirect: it would re-post the email (and the key) elsewhere.
            async with session.post(self._url, data=body, allow_redirects=False) as response:
                status = response.status
                data = await response.read()
                headers = response.headers
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            detail = f"request not sent, SendGrid unreachable: {type(exc).__name__} {exc}"
            return SendResult(delivery_id, Outcome.RETRY, detail=self.scrubber.text(detail))
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            detail = f"request sent, answer lost: {type(exc).__name__} {exc}".strip()
            return SendResult(delivery_id, Outcome.IN_DOUBT, detail=self.scrubber.text(detail))
        return classify_status(
            delivery_id, status, headers, data, self._clock(), self.scrubber.text
        )
