"""A fake SendGrid v3 Mail Send API on loopback: checks every request, answers from a script.

Script steps (strings, the same in Python and on the command line):

    202            accept: 202, empty body, X-Message-Id header (the default step)
    400 413 500..  answer that status with a SendGrid-style error body
    429:N          429 with Retry-After: N (seconds); plain `429` means Retry-After: 1
    429@T          429 with X-RateLimit-Reset: T (epoch seconds), no Retry-After
    429:V          429 with Retry-After: V as it is, absurd values included (inf, 1e15, nan, -5,
                   an HTTP date)
    delay:S        sleep S seconds, then accept (the message counts as accepted: this is the
                   "answer lost after the provider took it" case when S exceeds the client timeout)
    reset          read the whole request, then reset the connection (RST); not accepted
    reset-early    reset the connection before reading the request body; not accepted
    truncate       accept, then answer 202 with a body cut short of its Content-Length and close
    truncate-head  accept, then close in the middle of the status line
    redirect:C:URL answer status C (301, 302, 303, 307, 308) with Location: URL; not accepted
    nul:S          answer status S with an error text full of NUL and control characters, 5,000
                   characters long (2xx: the same in X-Message-Id)
    echo-cut:S     the same as echo:S (the key already sits across a cut at 300 characters)
    echo-line      accept, then answer with a broken status line quoting the key (unreadable:
                   the client cannot know the message was accepted)
    echo:S         a hostile server echoing the credential: the body of status S repeats the
                   bearer token it received in plain, base64 and URL-encoded forms, after 280
                   characters (so a cut at 300 lands inside it) and cut to a 20-character prefix;
                   a 2xx answer puts the token in X-Message-Id
    longid         accept, with an X-Message-Id of 500 characters

Each POST /v3/mail/send takes the next step; when the script is used up, `default` applies.
Requests are checked first: a wrong or missing `Authorization: Bearer <api_key>` is answered 401
and a payload that breaks the v3 schema as drip uses it (`drip.transports.sendgrid.validate`,
the check the benchmark's fake provider applies too) 400; both are listed in `problems` without
using a script step.

As a process: `python -m tests.fakes.sendgrid_server --port 0 --api-key K --script 202,429:2`
prints the port on its first stdout line and serves until SIGTERM/SIGINT. `GET /_fake/stats`
returns the counters as JSON; `POST /_fake/script` (a JSON list of steps) appends steps;
`--record FILE` appends one JSON line per request (flushed, so it survives a SIGKILL of the
client or the server); `--latency S` delays every answer (benchmarks).

`Witness` is a second loopback server that answers 202 to anything and records every request
(method, path, headers, body): the target of a redirect, to prove nothing reached it.
"""

from __future__ import annotations

import argparse
import base64
import json
import signal
import socket
import struct
import sys
import threading
import time
import urllib.parse
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Self

from drip.transports.sendgrid.protocol import MAIL_SEND_PATH
from drip.transports.sendgrid.validate import delivery_ids_of, validate_request_payload

KINDS = ("reset", "reset-early", "truncate", "truncate-head", "longid", "echo-line")
"""Steps that are a bare word (see the module docstring)."""


@dataclass(frozen=True)
class Step:
    """One parsed script step (see the module docstring for the notation)."""

    text: str
    status: int = 202
    retry_after: str | None = None
    ratelimit_reset: str | None = None
    delay: float = 0.0
    kind: str = "answer"
    """answer, reset, reset-early, truncate, truncate-head, longid, redirect, nul or echo."""
    location: str | None = None

    @classmethod
    def parse(cls, text: str) -> Step:
        text = text.strip()
        if text in KINDS:
            return cls(
                text,
                status=202 if text in ("truncate", "truncate-head", "longid", "echo-line") else 0,
                kind=text,
            )
        if text.startswith("delay:"):
            return cls(text, delay=float(text.split(":", 1)[1]))
        if text.startswith("redirect:"):
            _, code, location = text.split(":", 2)
            return cls(text, status=_status(code), kind="redirect", location=location)
        if text.startswith(("nul:", "echo:", "echo-cut:")):
            kind, _, code = text.partition(":")
            return cls(text, status=_status(code), kind="echo" if kind == "echo-cut" else kind)
        if text.startswith("429@"):
            return cls(text, status=429, ratelimit_reset=text[4:])
        if text.startswith("429"):
            return cls(text, status=429, retry_after=text[4:] if ":" in text else "1")
        return cls(text, status=_status(text))

    @property
    def reset(self) -> bool:
        return self.kind in ("reset", "reset-early")

    @property
    def accepts(self) -> bool:
        return self.kind != "redirect" and not self.reset and 200 <= self.status < 300


def _status(text: str) -> int:
    status = int(text)
    if not 100 <= status <= 599:
        raise ValueError(f"not an HTTP status: {text}")
    return status


@dataclass
class Received:
    """What the fake saw and did for one POST /v3/mail/send."""

    number: int
    step: str
    status: int  # 0 when the connection was reset
    accepted: bool
    delivery_id: str | None
    message_id: str | None
    authorization: str
    payload: Any = field(repr=False)
    problems: list[str] = field(default_factory=list)

    @property
    def delivery_ids(self) -> list[str]:
        """Every reader's delivery id in this request (many for a bulk request)."""
        return delivery_ids_of(self.payload)


class FakeSendGrid:
    """The server; use as a context manager or `start()` / `stop()`. Thread-safe counters.

    `api_key`: the only key accepted (None accepts any Bearer token). `script`: steps used in
    order; `default`: the step once the script is used up. `latency`: seconds added to every
    answer. `record`: a file receiving one JSON line per request.
    """

    def __init__(
        self,
        *,
        api_key: str | None = "SG.test-key",
        script: Iterable[str] = (),
        default: str = "202",
        host: str = "127.0.0.1",
        port: int = 0,
        latency: float = 0.0,
        record: Path | None = None,
    ) -> None:
        self.api_key = api_key
        self.default = Step.parse(default)
        self.latency = latency
        self.record = record
        self._script: deque[Step] = deque(Step.parse(s) for s in script)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.requests: list[Received] = []
        self.problems: list[str] = []
        self.in_flight = 0
        self.most_in_flight = 0
        """The most requests this fake was answering at once (counted over the `latency` wait)."""
        self._server = _Server((host, port), _Handler)
        self._server.fake = self
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Base URL to give the client (DRIP_SENDGRID_API_URL)."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes handlers sleeping in a delay step
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- script and counters ---------------------------------------------------------------

    def add_script(self, *steps: str) -> None:
        parsed = [Step.parse(s) for s in steps]
        with self._lock:
            self._script.extend(parsed)

    def _next_step(self) -> Step:
        with self._lock:
            return self._script.popleft() if self._script else self.default

    def _peek_step(self) -> Step:
        with self._lock:
            return self._script[0] if self._script else self.default

    @property
    def accepted(self) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if r.accepted]

    def accepted_ids(self) -> Counter[str]:
        """How many times each delivery id was accepted (exactly-once checks), counting every
        personalization of a bulk request."""
        return Counter(i for r in self.accepted for i in r.delivery_ids)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": len(self.requests),
                "accepted": sum(r.accepted for r in self.requests),
                "by_status": dict(Counter(str(r.status) for r in self.requests)),
                "accepted_ids": dict(
                    Counter(i for r in self.requests if r.accepted for i in r.delivery_ids)
                ),
                "problems": list(self.problems),
                "script_left": [s.text for s in self._script],
            }

    def _log(self, received: Received) -> None:
        with self._lock:
            self.requests.append(received)
            self.problems.extend(f"request {received.number}: {p}" for p in received.problems)
            if self.record is not None:
                line = {k: v for k, v in asdict(received).items() if k != "payload"}
                with self.record.open("a", encoding="utf-8") as out:
                    out.write(json.dumps(line) + "\n")
                    out.flush()

    def _number(self) -> int:
        with self._lock:
            return len(self.requests) + 1


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog is 5: a client with 64 requests in flight (the fast
    # transport's window) had connections dropped and retried after 1, 3, 7 s on a loaded
    # machine, past the tests' 10 s timeout (an 'in doubt' that SendGrid itself never causes).
    request_queue_size = 256
    fake: FakeSendGrid

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (timeout test) or a reset we caused: expected, not a failure.
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read counters, not access logs."""

    def _reply(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if data:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self._reply(
            status, {"errors": [{"message": message, "field": None, "help": None}]}, headers
        )

    def _reset(self) -> None:
        # SO_LINGER 0: close() sends RST instead of FIN, like a proxy dying mid-request.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    def do_GET(self) -> None:
        if self.path == "/_fake/stats":
            self._reply(200, self.server.fake.stats())
        else:
            self._error(404, "not found")

    def do_POST(self) -> None:
        fake = self.server.fake
        if self.path == MAIL_SEND_PATH and fake._peek_step().kind == "reset-early":
            step = fake._next_step()
            fake._log(Received(fake._number(), step.text, 0, False, None, None, "", None))
            self._reset()
            return
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/_fake/script":
            fake.add_script(*json.loads(raw))
            self._reply(200, fake.stats())
            return
        if self.path != MAIL_SEND_PATH:
            self._error(404, f"no such path {self.path}")
            return
        self._mail_send(fake, raw)

    def _mail_send(self, fake: FakeSendGrid, raw: bytes) -> None:
        number = fake._number()
        authorization = self.headers.get("Authorization", "")
        problems: list[str] = []
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = None
            problems.append("body is not JSON")
        if not (self.headers.get("Content-Type") or "").startswith("application/json"):
            problems.append("Content-Type is not application/json")
        problems += validate_request_payload(payload) if payload is not None else []
        ids = delivery_ids_of(payload)
        delivery_id = ids[0] if ids else None
        shown_auth = "Bearer [key]" if authorization.startswith("Bearer ") else authorization

        def log(step: str, status: int, accepted: bool, message_id: str | None = None) -> None:
            fake._log(
                Received(
                    number,
                    step,
                    status,
                    accepted,
                    delivery_id,
                    message_id,
                    shown_auth,
                    payload,
                    problems,
                )
            )

        if not authorization.startswith("Bearer ") or (
            fake.api_key is not None and authorization != f"Bearer {fake.api_key}"
        ):
            log("auth", 401, False)
            self._error(401, "The provided authorization grant is invalid, expired, or revoked")
            return
        if problems:
            log("invalid", 400, False)
            self._error(400, "; ".join(problems))
            return
        step = fake._next_step()
        if fake.latency:
            with fake._lock:
                fake.in_flight += 1
                fake.most_in_flight = max(fake.most_in_flight, fake.in_flight)
            time.sleep(fake.latency)
            with fake._lock:
                fake.in_flight -= 1
        token = self._token = authorization.removeprefix("Bearer ")
        if step.reset:
            log(step.text, 0, False)
            self._reset()
        elif step.accepts:
            message_id = _message_id(step, number, token)
            # Logged before a delay: the provider has the message, only the answer is slow.
            log(step.text, step.status, True, message_id)
            if step.delay and fake._stopping.wait(step.delay):
                return
            self._accept(step, message_id)
        else:
            log(step.text, step.status, False)
            self._refuse(step, token)

    def _accept(self, step: Step, message_id: str) -> None:
        if step.kind == "echo-line":
            # Accepted, then an unreadable status line quoting the key: the client cannot know.
            self.wfile.write(f"HTTP/1.1 2O2 {echo_text(self._token)}\r\n\r\n".encode())
            self.close_connection = True
            return
        if step.kind not in ("truncate", "truncate-head"):
            self._reply(step.status, None, {"X-Message-Id": message_id})
            return
        if step.kind == "truncate":
            body = b'{"note": "this body is cut short"}'
            self.wfile.write(
                b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\n"
                + f"X-Message-Id: {message_id}\r\nContent-Length: {len(body) + 50}\r\n\r\n".encode()
                + body
            )
        else:
            self.wfile.write(b"HTTP/1.1 20")
        self.wfile.flush()
        self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True

    def _refuse(self, step: Step, token: str) -> None:
        if step.kind == "redirect":
            assert step.location is not None
            self._reply(step.status, None, {"Location": step.location})
        elif step.kind == "nul":
            self._error(step.status, _HOSTILE_TEXT)
        elif step.kind == "echo":
            self._error(step.status, echo_text(token))
        else:
            self._error(step.status, f"scripted {step.text}", _refusal_headers(step))


_HOSTILE_TEXT = ("bad\x00 request \x1b[31mred\x1b[0m \x07\x08\r\x0b\x0c\x7f\x85" * 10).ljust(
    5000, "\x00"
)
"""An error text with NUL and control characters, far longer than any detail may be."""


def echo_text(token: str) -> str:
    """What a hostile server echoing `token` says: padding to put the token across a cut at 300
    characters, then the token in plain, base64 (bare and as `apikey:token` Basic auth) and
    URL-encoded forms, and a 20-character prefix as a server that shortens its texts leaves."""
    b64 = base64.b64encode(token.encode()).decode()
    basic = base64.b64encode(f"apikey:{token}".encode()).decode()
    quoted = urllib.parse.quote(token, safe="")
    return f"{'invalid ' * 36}{token} b64={b64} basic={basic} url={quoted} cut={token[:20]}..."


def _message_id(step: Step, number: int, token: str) -> str:
    if step.kind == "echo":
        return token
    if step.kind == "nul":
        return "fake-\x00\x1b[31m" + str(number)
    if step.kind == "longid":
        return f"fake-{number}-".ljust(500, "x")
    return f"fake-{number}"


def _refusal_headers(step: Step) -> dict[str, str]:
    """The rate-limit headers a scripted refusal carries."""
    headers: dict[str, str] = {}
    if step.retry_after is not None:
        headers["Retry-After"] = step.retry_after
    if step.ratelimit_reset is not None:
        headers.update(
            {
                "X-RateLimit-Limit": "600",
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": step.ratelimit_reset,
            }
        )
    return headers


class Witness:
    """A loopback server that answers 202 to every request and records it: the target of a
    redirect. `requests` holds (method, path, headers, body) for each request received."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        witness = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

            def _record(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                witness.requests.append((self.command, self.path, dict(self.headers), body))
                self.send_response(202)
                self.send_header("X-Message-Id", "witness")
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = do_PUT = do_HEAD = _record

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--api-key", default=None, help="the only key accepted (default: any)")
    parser.add_argument("--script", default="", help="comma-separated steps, e.g. 202,429:2,500")
    parser.add_argument("--default", default="202", help="step once the script is used up")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every answer")
    parser.add_argument("--record", type=Path, default=None, help="JSON-lines log of requests")
    args = parser.parse_args(argv)
    steps = [s for s in args.script.split(",") if s.strip()]
    fake = FakeSendGrid(
        api_key=args.api_key,
        script=steps,
        default=args.default,
        host=args.host,
        port=args.port,
        latency=args.latency,
        record=args.record,
    )
    done = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    with fake:
        print(fake.port, flush=True)
        done.wait()


if __name__ == "__main__":
    main()
