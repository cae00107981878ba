"""The fast client's HTTP step in a second process, so that its CPU runs on another core.

In one process the aiohttp loop (about half of the CPU per email) and the send engine's main
thread (claims, compose, records) share one GIL. With DRIP_SENDGRID_PROCESS=on (or auto for a
big run, bulk calls included) the transport's loop thread keeps building the request bodies
and ships them, a frame per chunk of a call, to a child process that runs the same `HttpLoop`
(keep-alive pool, AIMD, rate bucket, redirects refused, `classify_status`, `Scrubber`); the
child ships the results back as plain tuples and the loop thread completes the call. A bulk
request's body is not built in the parent: its `PlainBody` (a tuple per reader) is shipped and
the child builds it.

The channel is the child's stdin (parent -> child) and stdout (child -> parent): frames of a
4-byte length and a `marshal` payload (both ends are the same interpreter). The first frame
carries the options and the API key (never argv or the environment, which others can read:
the child's environment is the parent's without any DRIP_* or SENDGRID_* variable).

Faults:
- The child ignores SIGINT and SIGTERM from its first statement: the parent decides what an
  interrupt means (stop handing over, record the windows in flight, release the rest).
- The parent dies (even SIGKILL): the child reads end of file, starts no new request, cuts
  those in flight and exits at once (no orphan left waiting for answers nobody will read).
- The child dies: every job of the calls in flight without an answer comes back IN_DOUBT (it
  may have been posted) with a fatal message, so the run stops and records them. A child that
  dies before saying it is ready (one frame, after its imports) read no call: its calls come
  back without results (not attempted) and a fatal message ("could not start"). A transport
  kept across ticks (`drip worker`) starts a new child at its next call.
- close(): the parent waits for its calls in flight (as in-thread), then closes the child's
  stdin; the child closes its connections (a call still in flight ends in doubt, as in-thread)
  and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import marshal
import os
import struct
import subprocess
import sys
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from drip.transports.base import Outcome, Scrubber, SendResult, unexpected_failure
from drip.transports.sendgrid.http import Call, Feed, HttpLoop, Job, PlainBody, build_body

log = logging.getLogger(__name__)

HEADER = struct.Struct(">I")
PIPE_SIZE = 1 << 20
READ_LIMIT = 1 << 26
CHUNK = 32
"""Bodies per frame: the child starts posting a call after its first chunk."""
OUTCOMES = {outcome.value: outcome for outcome in Outcome}
"""Outcome by value: a dict lookup, not the Enum call's machinery (per email)."""
EXIT_TIMEOUT = 10.0
"""How long close() waits for the child to answer its calls and exit before killing it."""

# Signals are ignored before any import, so that a Ctrl-C or SIGTERM while the child starts
# cannot kill it either.
CHILD_CODE = (
    "import signal; signal.signal(signal.SIGINT, signal.SIG_IGN);"
    " signal.signal(signal.SIGTERM, signal.SIG_IGN);"
    " from drip.transports.sendgrid.process import serve; serve()"
)

Answer = tuple[list[tuple[Any, ...] | None], str | None, str | None, float | None]
"""A call's answer from the child: results as tuples (or None), fatal, stop reason, its wait."""


def _send_frame(writer: asyncio.WriteTransport, value: Any) -> None:
    payload = marshal.dumps(value)
    writer.write(HEADER.pack(len(payload)))
    writer.write(payload)  # not joined: a call's frame is megabytes


async def _read_frame(reader: asyncio.StreamReader) -> Any:
    """The next frame's value; `asyncio.IncompleteReadError` at end of file."""
    (size,) = HEADER.unpack(await reader.readexactly(HEADER.size))
    return marshal.loads(await reader.readexactly(size))


async def _pipes(
    read_from: Any, write_to: Any
) -> tuple[asyncio.StreamReader, asyncio.WriteTransport]:
    """Non-blocking ends of the channel on the running loop: neither side ever blocks its loop
    on the other (bodies of a call are megabytes, a pipe holds 64 KB)."""
    loop = asyncio.get_running_loop()
    if sys.platform == "linux":
        for pipe in (read_from, write_to):
            # Fewer wake-ups per call; best effort (the system may cap the size).
            with contextlib.suppress(OSError):
                fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    # A buffer limit above a call's frame: the default (64 KB) pauses and resumes the pipe
    # every 128 KB while a frame of megabytes arrives.
    reader = asyncio.StreamReader(limit=READ_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), read_from)
    writer, _ = await loop.connect_write_pipe(asyncio.Protocol, write_to)
    return reader, writer


class SendingProcess:
    """The parent's end: starts the child at once and posts calls through it (a `Sender`).

    Created and used on the transport's loop thread only. `dead` turns true when the child's
    output ends (it exited or was killed); the transport then starts a new one.
    """

    def __init__(self, api_key: str, scrubber: Scrubber, options: dict[str, Any]) -> None:
        self.scrubber = scrubber
        self.dead = False
        self.started = False
        """The child said it is ready; before that it read no call (a death posts nothing)."""
        # The child needs no setting: none of the secrets (key, database URL...) goes with it.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DRIP_", "SENDGRID_"))}
        # The child imports this very drip, whatever its current directory or install.
        here = str(Path(__file__).resolve().parents[3])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [here, env.get("PYTHONPATH")]))
        # Popen forks and execs at once (spawn-safe with threads and open database connections).
        self._process = subprocess.Popen(
            [sys.executable, "-c", CHILD_CODE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        self._calls: dict[int, asyncio.Future[Answer | None]] = {}
        self._next_call = 0
        self._writer: asyncio.WriteTransport | None = None
        self._reading: asyncio.Task[None] | None = None
        self._opening = asyncio.get_running_loop().create_task(self._open(api_key, options))

    async def _open(self, api_key: str, options: dict[str, Any]) -> None:
        """Open the channel, send the options and start reading the answers."""
        reader, self._writer = await _pipes(self._process.stdout, self._process.stdin)
        _send_frame(self._writer, {"api_key": api_key, **options})
        self._reading = asyncio.create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        """Complete each call with its answer until the child's output ends, then every call
        still waiting with None."""
        try:
            await _read_frame(reader)  # the child is ready: from here on it may post
            self.started = True
            while True:
                call_id, *answer = await _read_frame(reader)
                future = self._calls.pop(call_id)
                if not future.done():
                    future.set_result(tuple(answer))
        except (asyncio.IncompleteReadError, OSError):
            pass  # the child exited
        finally:
            self.dead = True
            for future in self._calls.values():
                if not future.done():
                    future.set_result(None)
            self._calls.clear()

    async def post_all(
        self, jobs: Sequence[tuple[str, Callable[[], bytes]]]
    ) -> tuple[list[SendResult | None], str | None, Call]:
        """`HttpLoop.post_all` through the child: the bodies are built here, posted there.

        Shipped CHUNK bodies at a time, so the child starts posting while the rest are built.
        A builder's unexpected error ships no further body: the fatal message, with the results
        of those shipped. If the child dies before answering, every job shipped is IN_DOUBT and
        the fatal message names the child's end.
        """
        call = Call(len(jobs))
        if not jobs:
            return call.results, None, call
        answer, failure, shipped = await self._ship(jobs, call)
        if answer is None and not self.started:
            status = await self._exit_status()
            message = f"the SendGrid sending process could not start ({status})"
            return call.results, self.scrubber.text(message), call
        if answer is None:
            status = await self._exit_status()
            call.fatal = self.scrubber.text(
                f"the SendGrid sending process ended unexpectedly ({status})"
            )
            detail = f"request handed to the sending process, no answer: it ended ({status})"
            for index in shipped:
                call.results[index] = SendResult(jobs[index][0], Outcome.IN_DOUBT, detail=detail)
            return call.results, call.fatal, call
        results, call.fatal, call.stop_reason, call.stop_retry_after = answer
        for index, result in enumerate(results):
            if result is not None:
                delivery_id, outcome, provider_id, retry_after, detail = result
                call.results[index] = SendResult(
                    delivery_id, OUTCOMES[outcome], provider_id, retry_after, detail
                )
        call.fatal = call.fatal or failure
        return call.results, call.fatal, call

    async def _ship(
        self, jobs: Sequence[tuple[str, Callable[[], bytes]]], call: Call
    ) -> tuple[Answer | None, str | None, list[int]]:
        """Build the bodies and hand them to the child, a chunk per frame. A body that gives
        FAILED goes to `call.results` and is shipped as None, as is every body after an
        unexpected error. A `PlainBody` is shipped as its name and values: the child builds it.
        Returns the child's answer (None if it ended first), that error's message, and the
        indices of the bodies shipped."""
        await self._opening
        if self.dead or self._writer is None or self._writer.is_closing():
            return None, None, []
        call_id = self._next_call
        self._next_call += 1
        future: asyncio.Future[Answer | None] = asyncio.get_running_loop().create_future()
        self._calls[call_id] = future
        failure: str | None = None
        shipped: list[int] = []
        for start in range(0, len(jobs), CHUNK):
            entries: list[tuple[str, bytes] | tuple[str, str, Any] | None] = []
            for index in range(start, min(start + CHUNK, len(jobs))):
                label, build = jobs[index]
                if isinstance(build, PlainBody) and failure is None:
                    shipped.append(index)  # built by the child (a failure there is its result)
                    entries.append((label, build.name, build.args))
                    continue
                body: bytes | SendResult | None = None
                if failure is None:
                    try:
                        body = build_body(label, build, self.scrubber)
                    except Exception as exc:
                        failure = str(unexpected_failure(exc, (), self.scrubber))
                if isinstance(body, SendResult):
                    call.results[index] = body
                elif body is not None:
                    shipped.append(index)
                    entries.append((label, body))
                    continue
                entries.append(None)
            if self._writer.is_closing():
                break  # the child is gone: the reader answers None
            _send_frame(self._writer, (call_id, start, len(jobs), entries))
            await asyncio.sleep(0)  # the pipe drains, answers come in, between chunks
        return await future, failure, shipped

    async def _exit_status(self) -> str:
        """How the child ended, for the message (waits up to a second for it to be reaped)."""
        for _ in range(100):
            code = self._process.poll()
            if code is not None:
                return f"killed by signal {-code}" if code < 0 else f"exit status {code}"
            await asyncio.sleep(0.01)
        return "its output closed"

    async def close(self) -> None:
        """End of file to the child: it cuts the calls still in flight (in doubt), answers them
        and exits; killed after EXIT_TIMEOUT seconds."""
        try:
            await self._opening
        except Exception:  # the channel never opened: the child gets end of file below
            log.debug("the channel to the sending process did not open", exc_info=True)
        if self._writer is not None:
            self._writer.close()
        elif self._process.stdin is not None:
            self._process.stdin.close()
        try:
            if self._reading is not None:
                await asyncio.wait_for(asyncio.shield(self._reading), EXIT_TIMEOUT)
            for _ in range(int(EXIT_TIMEOUT * 100)):
                if self._process.poll() is not None:
                    break
                await asyncio.sleep(0.01)
        except TimeoutError:
            pass
        if self._process.poll() is None:
            log.warning("the SendGrid sending process did not exit; killing it")
            self._process.kill()
            self._process.wait()


# --- the child --------------------------------------------------------------------------------


def serve() -> None:
    """The child's main: answer calls from stdin on stdout until end of file."""
    asyncio.run(_serve())


async def _serve() -> None:
    reader, writer = await _pipes(os.fdopen(0, "rb", 0), os.fdopen(1, "wb", 0))
    sys.stdout = sys.stderr  # nothing else may write into the channel
    options = await _read_frame(reader)
    http = HttpLoop(options.pop("api_key"), **options)
    _send_frame(writer, None)  # ready
    calls: set[asyncio.Task[None]] = set()
    feeds: dict[int, tuple[list[Job | None], Feed]] = {}
    while True:
        try:
            call_id, start, total, entries = await _read_frame(reader)
        except asyncio.IncompleteReadError:
            break  # closed, or the parent is gone
        if start == 0:
            jobs: list[Job | None] = [None] * total
            feeds[call_id] = (jobs, Feed())
            task = asyncio.create_task(_answer(http, writer, call_id, *feeds[call_id]))
            calls.add(task)
            task.add_done_callback(calls.discard)
        jobs, feed = feeds[call_id]
        for offset, entry in enumerate(entries):
            if entry is None:
                continue
            if len(entry) == 2:  # (label, body)
                jobs[start + offset] = (entry[0], partial(bytes, entry[1]))
            else:  # (label, PlainBody's name, its values): the body is built when posted
                jobs[start + offset] = (entry[0], PlainBody(entry[1], entry[2]))
        feed.add(len(entries))
        if feed.arrived == total:
            del feeds[call_id]
    # Closed (the parent already waited for its calls) or the parent is gone: start nothing,
    # cut what is still in flight (in doubt; with the parent gone nobody waits for answers,
    # and a child waiting 30 s for a held answer would outlive its parent), answer, exit.
    http.stopping = True
    for _jobs, feed in feeds.values():
        feed.add(0)  # a call still waiting for bodies wakes up, sees `stopping` and ends
    await http.close()
    if calls:
        await asyncio.gather(*calls, return_exceptions=True)
    writer.close()


async def _answer(
    http: HttpLoop,
    writer: asyncio.WriteTransport,
    call_id: int,
    jobs: list[Job | None],
    feed: Feed,
) -> None:
    results, fatal, call = await http.post_all(jobs, feed)
    plain = [
        None
        if r is None
        else (r.delivery_id, r.outcome.value, r.provider_id, r.retry_after, r.detail)
        for r in results
    ]
    if not writer.is_closing():
        _send_frame(writer, (call_id, plain, fatal, call.stop_reason, call.stop_retry_after))
