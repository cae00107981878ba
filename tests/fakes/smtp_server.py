"""A real SMTP server (aiosmtpd) on loopback that answers each transaction from a script.

Script steps (strings, the same in Python and on the command line), one per transaction, taken
at MAIL FROM:

    250            accept the message (the default step)
    450 421 550..  answer that code after the final '.' (421 also closes the connection)
    mail:451       answer MAIL FROM with that code (rcpt:550 likewise for RCPT TO)
    drop           read the whole message, then drop the connection without a reply
    mail:drop      drop the connection at MAIL FROM (rcpt:drop likewise)
    550+nul        a reply whose text is full of NUL and control characters, 2,000 characters
                   long (any code and stage: mail:451+nul...)
    slow:S         read the whole message, wait S seconds, then accept (past the client's timeout:
                   the relay has the message, the reply is lost)

`messages` lists every message whose data arrived; `accepted` is True for 250 and for `drop`
(the relay got the message, only the reply is lost: the in-doubt case). With `users` the server
offers AUTH (without `tls_context`, in the clear: loopback only); a wrong password gets 535,
which with `echo_auth` repeats what the client sent (the password in plain, the AUTH PLAIN
blob base64("\\0user\\0password") and base64(password) of AUTH LOGIN): a hostile server.
With `tls_context` it offers STARTTLS; with `implicit_tls` the whole connection is TLS (smtps).

As a process: `python -m tests.fakes.smtp_server --port 0 --script 250,450,drop` prints the
port on its first stdout line and serves until SIGTERM/SIGINT; `--record FILE` appends one JSON
line per message (flushed at once, so it survives a SIGKILL).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import signal
import ssl
import threading
import urllib.parse
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Self, cast

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

STAGES = ("mail", "rcpt", "end")


@dataclass(frozen=True)
class Step:
    """One parsed script step (see the module docstring for the notation)."""

    text: str
    stage: str = "end"
    code: int = 250
    drop: bool = False
    hostile: bool = False
    delay: float = 0.0

    @classmethod
    def parse(cls, text: str) -> Step:
        text = text.strip()
        if text.startswith("slow:"):
            return cls(text, delay=float(text.split(":", 1)[1]))
        stage, _, action = text.rpartition(":")
        stage = stage or "end"
        if stage not in STAGES:
            raise ValueError(f"unknown stage in step {text!r}; use mail:, rcpt: or none")
        if action == "drop":
            return cls(text, stage, 0, True)
        action, plus, suffix = action.partition("+")
        if plus and suffix != "nul":
            raise ValueError(f"unknown suffix in step {text!r}; only +nul")
        code = int(action)
        if not 200 <= code <= 599:
            raise ValueError(f"not an SMTP reply code: {text!r}")
        return cls(text, stage, code, hostile=bool(plus))


@dataclass
class ReceivedMessage:
    """One message whose data reached the server."""

    number: int
    step: str
    accepted: bool
    mail_from: str
    rcpt_tos: list[str]
    data: bytes = field(repr=False)
    delivery_id: str | None = None

    def parsed(self) -> EmailMessage:
        """The message as the recipient's mail client would read it."""
        message = message_from_bytes(self.data, policy=policy.default)
        assert isinstance(message, EmailMessage)
        return message


class FakeSmtp:
    """The server; use as a context manager or `start()` / `stop()`.

    `users` maps user names to passwords (enables AUTH). `script` steps are used once each, then
    `default`. Counters: `messages`, `transactions`, `auth_failures`, `logins`, `peers` (one per
    connection that sent MAIL FROM: connection reuse checks).

    aiosmtpd 1.4 emits a DeprecationWarning (Session.login_data) on every successful AUTH, from
    its server thread; test modules running with warnings as errors must ignore it.
    """

    def __init__(
        self,
        *,
        script: Iterable[str] = (),
        default: str = "250",
        host: str = "127.0.0.1",
        port: int = 0,
        users: Mapping[str, str] | None = None,
        tls_context: ssl.SSLContext | None = None,
        implicit_tls: bool = False,
        record: Path | None = None,
        echo_auth: bool = False,
        echo_credentials: bool = False,
    ) -> None:
        self.default = Step.parse(default)
        self.echo_auth = echo_auth or echo_credentials
        self.echo_credentials = echo_credentials
        self.echoed = ""
        """With `echo_credentials`: the last login's credentials as a hostile relay quotes them
        (`echo_credentials_text`), appended to every scripted refusal."""
        self.users = dict(users or {})
        self.record = record
        self._script: deque[Step] = deque(Step.parse(s) for s in script)
        self._lock = threading.Lock()
        self.messages: list[ReceivedMessage] = []
        self.transactions = 0
        self.logins = 0
        self.auth_failures = 0
        self.peers: set[Any] = set()  # client (host, port) of each connection that sent MAIL
        self._steps: dict[int, Step] = {}
        kwargs: dict[str, Any] = {}
        if self.users:
            kwargs["authenticator"] = self._authenticate
            # Plain AUTH is allowed only when the test asked for no TLS at all (loopback).
            kwargs["auth_require_tls"] = tls_context is not None and not implicit_tls
        if tls_context is not None and not implicit_tls:
            kwargs["tls_context"] = tls_context
        self._controller = _Controller(
            _Handler(self),
            hostname=host,
            port=port,
            ssl_context=tls_context if implicit_tls else None,
            **kwargs,
        )

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self._controller.port)

    def url(self, user: str | None = None, password: str | None = None, query: str = "") -> str:
        """A DRIP_SMTP_URL pointing here."""
        scheme = "smtps" if self._controller.ssl_context is not None else "smtp"
        auth = f"{user}:{password}@" if user is not None else ""
        return f"{scheme}://{auth}127.0.0.1:{self.port}" + (f"?{query}" if query else "")

    def start(self) -> Self:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

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
            self.transactions += 1
            return self._script.popleft() if self._script else self.default

    @property
    def accepted(self) -> list[ReceivedMessage]:
        with self._lock:
            return [m for m in self.messages if m.accepted]

    def accepted_ids(self) -> Counter[str]:
        """How many times each Drip-Delivery-Id was accepted (exactly-once checks)."""
        return Counter(m.delivery_id or "" for m in self.accepted)

    def _store(self, message: ReceivedMessage) -> None:
        with self._lock:
            self.messages.append(message)
            if self.record is not None:
                line = {
                    "number": message.number,
                    "step": message.step,
                    "accepted": message.accepted,
                    "delivery_id": message.delivery_id,
                    "rcpt_tos": message.rcpt_tos,
                }
                with self.record.open("a", encoding="utf-8") as out:
                    out.write(json.dumps(line) + "\n")
                    out.flush()

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = (
            isinstance(data, LoginPassword)
            and self.users.get(data.login.decode()) == data.password.decode()
        )
        with self._lock:
            if ok:
                self.logins += 1
            else:
                self.auth_failures += 1
        if self.echo_credentials and isinstance(data, LoginPassword):
            self.echoed = echo_credentials_text(data.login, data.password)
        if ok or not self.echo_auth or not isinstance(data, LoginPassword):
            return AuthResult(success=ok, handled=False, auth_data=data)
        return AuthResult(
            success=False, handled=False, message=_echo(mechanism, data), auth_data=data
        )


def echo_credentials_text(login: bytes, password: bytes) -> str:
    """The credentials as a hostile relay quotes them back: the password plain, base64 and
    URL-encoded, and the AUTH PLAIN blob."""
    blob = base64.b64encode(b"\0" + login + b"\0" + password).decode()
    secret = password.decode()
    return (
        f"password={secret} base64={base64.b64encode(password).decode()} AUTH PLAIN {blob}"
        f" url={urllib.parse.quote(secret, safe='')}"
    )


def _echo(mechanism: str, data: LoginPassword) -> str:
    """A 535 that repeats the credentials the client sent, as it sent them."""
    login, password = data.login, data.password
    if mechanism == "PLAIN":
        sent = base64.b64encode(b"\0" + login + b"\0" + password).decode()
    else:
        sent = f"{base64.b64encode(login).decode()} {base64.b64encode(password).decode()}"
    return f"535 5.7.8 {mechanism} {sent} refused; password was {password.decode()}"


class _Controller(Controller):
    """A Controller that can listen on port 0 (aiosmtpd's own start() connects to `port`)."""

    def _trigger_server(self) -> None:
        # Port 0 asks the OS for a free port; learn which one before aiosmtpd connects to it.
        server = cast(asyncio.Server, self.server)
        self.port = server.sockets[0].getsockname()[1]
        super()._trigger_server()  # type: ignore[no-untyped-call]


HOSTILE_TEXT = ("no\x00 such \x1b[31muser\x1b[0m \x07\x08\x0b\x0c\x7f" * 10).ljust(2000, "\x00")
"""The text of a `+nul` reply."""


def _reply(server: SMTP, step: Step, echoed: str = "") -> str:
    """The reply for a non-accepting step; closes the connection for 421 and drops. `echoed`
    (a hostile relay's quote of the credentials) is appended to the text."""
    if step.drop:
        # abort(): no reply, no FIN handshake courtesy; the client sees the connection vanish.
        cast(asyncio.Transport, server.transport).abort()
        return "250 OK"  # goes nowhere: the transport is gone
    if step.code == 421:
        assert server.transport is not None
        # close() after the reply is flushed, as a server shutting down does.
        asyncio.get_running_loop().call_soon(server.transport.close)
        return f"421 4.3.2 scripted {step.text} {echoed}".rstrip()
    klass = step.code // 100
    text = HOSTILE_TEXT if step.hostile else f"scripted {step.text}"
    return f"{step.code} {klass}.0.0 {text} {echoed}".rstrip()


class _Handler:
    def __init__(self, fake: FakeSmtp) -> None:
        self.fake = fake

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        step = self.fake._next_step()
        self.fake._steps[id(session)] = step
        self.fake.peers.add(session.peer)
        if step.stage == "mail":
            return _reply(server, step, self.fake.echoed)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        step = self.fake._steps.get(id(session), self.fake.default)
        if step.stage == "rcpt":
            return _reply(server, step, self.fake.echoed)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        step = self.fake._steps.pop(id(session), self.fake.default)
        data = envelope.original_content or b""
        accepted = step.drop or step.code == 250
        parsed = message_from_bytes(data, policy=policy.default)
        with self.fake._lock:
            number = len(self.fake.messages) + 1
        self.fake._store(
            ReceivedMessage(
                number,
                step.text,
                accepted,
                envelope.mail_from or "",
                list(envelope.rcpt_tos),
                data,
                parsed.get("Drip-Delivery-Id"),
            )
        )
        if step.delay:
            await asyncio.sleep(step.delay)
        if step.code == 250 and not step.drop:
            return "250 2.0.0 OK: queued"
        return _reply(server, step, self.fake.echoed)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--script", default="", help="comma-separated steps, e.g. 250,450,drop")
    parser.add_argument("--default", default="250", help="step once the script is used up")
    parser.add_argument("--user", action="append", default=[], help="USER:PASSWORD (enables AUTH)")
    parser.add_argument("--record", type=Path, default=None, help="JSON-lines log of messages")
    args = parser.parse_args(argv)
    users = dict(u.split(":", 1) for u in args.user)
    fake = FakeSmtp(
        script=[s for s in args.script.split(",") if s.strip()],
        default=args.default,
        host=args.host,
        port=args.port,
        users=users,
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
