"""Helpers for the transport tests: one email, what a transport delivered, clients wired to
the loopback fakes (tests/fakes), and the fakes as their own processes.

The fixtures these tests share (`sendgrid`, `smtp`, and the TLS contexts `server_tls` /
`client_tls`) are in tests/conftest.py.
"""

from __future__ import annotations

import base64
import socket
import subprocess
import sys
import unicodedata
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any
from urllib.parse import quote

from tests.fakes.sendgrid_server import FakeSendGrid
from tests.support import ROOT

from drip.message import BulkParts, OutgoingEmail
from drip.transports.base import Transport
from drip.transports.sendgrid.bulk import BulkSendGridTransport
from drip.transports.sendgrid.fast import FastSendGridTransport
from drip.transports.sendgrid.official import SendGridTransport
from drip.transports.smtp import SmtpTransport

NOW = datetime(2025, 3, 1, 7, 30, tzinfo=UTC)
API_KEY = "SG.sentinel-api-key-7f3a9c"
SMTP_PASSWORD = "sentinel-smtp-pass-5e1b"
SMTP_USER = "mailer"
SENDGRID_CLIENTS = ("official", "fast", "bulk")
TIMEOUT = 0.5  # client timeout for the "answer never comes" cases


def clock() -> datetime:
    return NOW


def make_email(n: int = 1, **changes: Any) -> OutgoingEmail:
    email = OutgoingEmail(
        delivery_id=f"d{n}",
        to_address=f"reader{n}@example.com",
        to_name="山田 太郎",
        from_address="course@example.org",
        from_name="ドリップ講座",
        subject=f"第{n}回: 最初の一歩",
        html=f"<p>こんにちは、山田さん。</p><p>レッスン {n}/8</p>",
        text=f"こんにちは、山田さん。\n\nレッスン {n}/8\n.先頭のドット\n",
        headers={
            "List-Unsubscribe": f"<https://drip.example.org/u/tok{n}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
        custom_args={
            "drip_delivery_id": f"d{n}",
            "drip_lesson": "01-intro",
            "drip_subscriber": str(100 + n),
        },
    )
    return replace(email, **changes)


def bulk_email(n: int = 1, name: str = "山田 太郎", **changes: Any) -> OutgoingEmail:
    """`make_email(n)` with bulk parts (html and text left empty, as the send loop composes them
    for bulk mode): bulk mode sends it in a bulk request with others of the same lesson."""
    unsubscribe = f"https://drip.example.org/u/tok{n}"
    parts = BulkParts(
        html=("<p>こんにちは、", "name", "さん。</p><p>最初の一歩</p>"),
        text=("こんにちは、", "name", "さん。\n\n最初の一歩\n"),
        values={"name": name, "unsubscribe_url": unsubscribe, "manage_url": unsubscribe},
    )
    fields: dict[str, Any] = {
        "to_name": name,
        "subject": "第1回: 最初の一歩",
        "html": "",
        "text": "",
        "bulk": parts,
    }
    return make_email(n, **{**fields, **changes})


# -- what a transport delivered, read back from where it went ---------------------------------


@dataclass(frozen=True)
class Seen:
    """The parts of a delivered message every transport must carry unchanged."""

    delivery_id: str
    to: str
    subject: str
    text: str
    html: str
    list_unsubscribe: str
    extra: dict[str, str] = field(default_factory=dict, compare=False)


def body(text: str) -> str:
    """A body as a subscriber sees it: MIME text travels with CRLF and a final line break."""
    return text.replace("\r\n", "\n").rstrip("\n")


def expected(email: OutgoingEmail) -> Seen:
    return Seen(
        email.delivery_id,
        email.to_address,
        email.subject,
        body(email.text),
        body(email.html),
        email.headers["List-Unsubscribe"],
    )


def seen_in_mime(data: bytes) -> Seen:
    msg = message_from_bytes(data, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    plain, html = msg.get_body(("plain",)), msg.get_body(("html",))
    assert plain is not None and html is not None
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    return Seen(
        str(msg["Drip-Delivery-Id"]),
        msg["To"].addresses[0].addr_spec,
        str(msg["Subject"]),
        body(plain.get_content()),
        body(html.get_content()),
        str(msg["List-Unsubscribe"]),
        {"Message-ID": str(msg["Message-ID"]), "Date": str(msg["Date"])},
    )


def seen_in_payload(payload: dict[str, Any]) -> Seen:
    content = {c["type"]: c["value"] for c in payload["content"]}
    return Seen(
        payload["custom_args"]["drip_delivery_id"],
        payload["personalizations"][0]["to"][0]["email"],
        payload["subject"],
        body(content["text/plain"]),
        body(content["text/html"]),
        payload["headers"]["List-Unsubscribe"],
        payload["custom_args"],
    )


def sendgrid_transport(fake: FakeSendGrid, key: str = API_KEY) -> SendGridTransport:
    return SendGridTransport(key, base_url=fake.url, timeout=TIMEOUT, clock=clock)


def sendgrid_client(
    client: str, fake: FakeSendGrid, key: str = API_KEY, **kwargs: Any
) -> Transport:
    """A SendGrid client of kind `client` ("official", "fast" or "bulk") pointed at `fake`."""
    options: dict[str, Any] = {"base_url": fake.url, "timeout": TIMEOUT, "clock": clock}
    options.update(kwargs)
    if client == "official":
        return SendGridTransport(key, **options)
    options.setdefault("window", 1)
    fast = FastSendGridTransport(key, **options)
    return BulkSendGridTransport(fast, per_request=3) if client == "bulk" else fast


def smtp_transport(url: str, **kwargs: Any) -> SmtpTransport:
    return SmtpTransport(url, clock=clock, timeout=TIMEOUT, message_id_domain="drip.test", **kwargs)


def free_port() -> int:
    """A port nothing listens on (bound then released): connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_process(module: str, *args: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", module, "--port", "0", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip().isdigit(), f"{module} printed {line!r} instead of its port"
    return proc, int(line)


def stop_process(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    proc.wait(timeout=10)
    if proc.stdout is not None:
        proc.stdout.close()


# -- secret hygiene ----------------------------------------------------------------------------


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def secret_forms(secret: str, user: str) -> list[str]:
    """`secret` as a hostile server could echo it: plain, URL-encoded, base64, and inside the
    base64 of `user:secret` (HTTP Basic) and of NUL user NUL secret (SMTP AUTH PLAIN)."""
    return [
        secret,
        quote(secret, safe=""),
        _b64(secret),
        _b64(f"{user}:{secret}"),
        _b64(f"\0{user}\0{secret}"),
    ]


def leaks(text: str, secret: str, user: str) -> list[str]:
    """The pieces of `secret` found in `text`: its first 8 characters (a prefix that survived a
    cut) or any 12 characters in a row of one of its forms."""
    found = [secret[:8]] if secret[:8] in text else []
    for form in secret_forms(secret, user):
        form = form.rstrip("=")
        found += [form[i : i + 12] for i in range(0, len(form) - 11, 2) if form[i : i + 12] in text]
    return found


def control_characters(text: str) -> list[str]:
    """The control characters (other than tab and newline) and surrogates in `text`."""
    return [c for c in text if c not in "\t\n" and unicodedata.category(c) in ("Cc", "Cs")]
