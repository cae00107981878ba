"""OutgoingEmail -> a standards-conforming MIME message (for SMTP and the file outbox).

Pure: the `date` is a parameter. (`make_msgid` mixes the time and randomness into the id; that is
its job and no logic here depends on it.)

Security contract: values a subscriber or author controls (display names, the subject) can never
add a header. They are neutralised: control characters (CR, LF, NUL, ...) become spaces and the
RFC 2047 opener "=?" is broken with a zero-width space, because the `email` package decodes
encoded words it finds in a value (`=?UTF-8?Q?=0A?=` would otherwise become a raw newline).
Machine-made values (addresses, extra headers, the delivery id) are rejected with `MimeError`
instead; both addresses must pass `drip.addresses.ascii_address`, the rule `drip course check`
applies to the sender, and are written with their ASCII (IDNA) domain. As a last line of
defence every header is folded once more and checked to be a single logical line before the
message is returned.
"""

from __future__ import annotations

import binascii
import random
import re
import sys
import unicodedata
from collections.abc import Callable
from datetime import datetime
from email.errors import HeaderParseError
from email.headerregistry import Address, BaseHeader, HeaderRegistry, UnstructuredHeader
from email.message import EmailMessage
from email.policy import SMTP, EmailPolicy
from email.utils import format_datetime, make_msgid
from typing import Any, cast

from drip.addresses import ascii_address
from drip.errors import InvalidAddressError, MimeError
from drip.message import OutgoingEmail

MAX_LINE_OCTETS = 998  # RFC 5322 2.1.1, without the CRLF
MAX_DISPLAY_NAME = 200  # characters; longer names are cut (stored names have at most 100)
DELIVERY_ID_HEADER = "Drip-Delivery-Id"
"""The delivery id, for looking a message up in relay logs (`drip deliveries resolve ID`). Not
`X-Drip-Delivery-Id`: RFC 6648 retired the `X-` prefix, and SpamAssassin's RAND_MKTG_HEADER
takes `X-` + two or four letters + `-Delivery-Id` for a randomised tracking header."""
VERBATIM_HEADERS = ("List-Unsubscribe", "List-Unsubscribe-Post", DELIVERY_ID_HEADER)
# Headers build_mime writes itself; `OutgoingEmail.headers` may not set them.
RESERVED_HEADERS = frozenset(
    name.lower()
    for name in (
        "From",
        "To",
        "Cc",
        "Bcc",
        "Subject",
        "Date",
        "Message-ID",
        "MIME-Version",
        "Content-Type",
        "Content-Transfer-Encoding",
        "Content-Disposition",
        "Sender",
        "Reply-To",
        "Return-Path",
        "Received",
        DELIVERY_ID_HEADER,
    )
)
HEADER_NAME_RE = re.compile(r"[!-9;-~]+")  # RFC 5322 ftext: printable ASCII except ':'
VERBATIM_VALUE_RE = re.compile(r"[ -~]*")  # printable ASCII and space only
DOMAIN_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")


class _VerbatimHeader(UnstructuredHeader):
    """An ASCII header written exactly as given: never RFC 2047-encoded, never decoded.

    Why: the default policy encodes a long unbreakable value such as a List-Unsubscribe URL as
    `=?utf-8?q?...?=`, which receivers do not decode, so one-click unsubscribe would break.
    """

    name: str  # provided by BaseHeader, which the registry mixes in at run time

    @classmethod
    def parse(cls, value: str, kwds: dict[str, Any]) -> None:
        kwds["parse_tree"] = cls.value_parser(value)
        kwds["decoded"] = value

    def fold(self, *, policy: Any) -> str:
        return f"{self.name}: {self}{policy.linesep}"


def _policy() -> EmailPolicy[EmailMessage]:
    registry = HeaderRegistry()
    for name in VERBATIM_HEADERS:
        registry.map_to_type(name.lower(), cast("type[BaseHeader]", _VerbatimHeader))
    return SMTP.clone(header_factory=registry)


POLICY = _policy()


def neutralise(value: str, *, limit: int | None = None) -> str:
    """Make untrusted text safe for a header value; it can never start a new header.

    Control and line/paragraph-separator characters become spaces, runs of whitespace collapse,
    "=?" gets a zero-width space so it is not read as an encoded word, and the result is cut to
    `limit` characters when given.
    """
    spaced = "".join(" " if unicodedata.category(ch) in ("Cc", "Zl", "Zp") else ch for ch in value)
    cleaned = " ".join(spaced.split()).replace("=?", "=\u200b?")
    if limit is not None and len(cleaned) > limit:
        cleaned = cleaned[: limit - 1].rstrip() + "…"
    return cleaned


def quote_display_name(name: str) -> str:
    """`name` as a quoted string (RFC 5322 3.2.4) when it holds a comma or a semicolon, else as
    it is: for HTTP APIs that take the display name as a separate field and split it at those
    characters (SendGrid drops such a message after accepting it with 202)."""
    if "," not in name and ";" not in name:
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _address(field: str, addr_spec: str, display_name: str | None) -> Address:
    try:
        ascii_spec = ascii_address(addr_spec, what=f"{field} address")
    except InvalidAddressError as exc:
        raise MimeError(str(exc)) from exc
    try:
        return Address(
            display_name=neutralise(display_name or "", limit=MAX_DISPLAY_NAME),
            addr_spec=ascii_spec,
        )
    except (ValueError, IndexError, HeaderParseError) as exc:  # the email package's parser
        raise MimeError(f"{field} address {addr_spec!r} is not a valid address: {exc}") from exc


def _verbatim(name: str, value: str) -> str:
    if not HEADER_NAME_RE.fullmatch(name):
        raise MimeError(f"header name {name!r} is not printable ASCII without ':'")
    if not VERBATIM_VALUE_RE.fullmatch(value) or len(name) + 2 + len(value) > MAX_LINE_OCTETS:
        raise MimeError(
            f"header {name} must be printable ASCII on one line of at most {MAX_LINE_OCTETS}"
            " octets; build URLs with drip.links"
        )
    return value


def _verify_headers(msg: EmailMessage) -> None:
    """Fold every header as the generator will, and refuse any that spans logical lines."""
    linesep = POLICY.linesep
    for name, value in msg.items():
        folded = POLICY.fold(name, value)
        lines = folded[: -len(linesep)].split(linesep) if folded.endswith(linesep) else [folded]
        for number, line in enumerate(lines):
            if "\r" in line or "\n" in line or "\x00" in line:
                raise MimeError(f"header {name} would contain a bare CR, LF or NUL; refused")
            if number and not line.startswith((" ", "\t")):
                raise MimeError(f"header {name} would start a new header line; refused")
            if len(line.encode("utf-8")) > MAX_LINE_OCTETS:
                raise MimeError(f"header {name} has a line over {MAX_LINE_OCTETS} octets")


def build_mime(email: OutgoingEmail, *, date: datetime, message_id_domain: str) -> EmailMessage:
    """Build the multipart/alternative message (text, then HTML; UTF-8, base64 bodies).

    Headers: From, To (display names RFC 2047-encoded when not ASCII), Subject, Date, Message-ID,
    MIME-Version, `email.headers` (e.g. List-Unsubscribe, written verbatim) and
    Drip-Delivery-Id. Raises `MimeError` for a naive `date`, an unusable address, domain or
    delivery id, or an extra header that is reserved or not one line of printable ASCII.
    """
    if date.tzinfo is None or date.utcoffset() is None:
        raise MimeError("the Date of an email must be an aware datetime (UTC)")
    if not DOMAIN_RE.fullmatch(message_id_domain):
        raise MimeError(f"message_id_domain {message_id_domain!r} is not a host name")
    msg = EmailMessage(policy=POLICY)
    msg["From"] = _address("From", email.from_address, email.from_name)
    msg["To"] = _address("To", email.to_address, email.to_name)
    msg["Subject"] = neutralise(email.subject)
    msg["Date"] = format_datetime(date)
    msg["Message-ID"] = make_msgid(domain=message_id_domain)
    msg["MIME-Version"] = "1.0"
    for name, value in email.headers.items():
        if name.lower() in RESERVED_HEADERS:
            raise MimeError(f"header {name} is set by drip itself and cannot be overridden")
        if name in msg:
            raise MimeError(f"header {name} is given twice")
        msg[name] = _verbatim(name, value)
    if not email.delivery_id or " " in email.delivery_id:
        raise MimeError(f"delivery id {email.delivery_id!r} must be non-empty without spaces")
    msg[DELIVERY_ID_HEADER] = _verbatim(DELIVERY_ID_HEADER, email.delivery_id)
    # base64: the Japanese bodies would triple in size as quoted-printable; lines stay at 76.
    msg.set_content(email.text, subtype="plain", charset="utf-8", cte="base64")
    msg.add_alternative(email.html, subtype="html", charset="utf-8", cte="base64")
    for part in msg.iter_parts():
        del part["MIME-Version"]  # set_content adds it to each part; it belongs on the top only
    _verify_headers(msg)
    return msg


def to_bytes(msg: EmailMessage) -> bytes:
    """The message as sent on the wire: CRLF line endings, every line under 998 octets."""
    return msg.as_bytes(policy=POLICY)


# --- the wire bytes without the email package's per-message object model ---------------------
#
# `build_mime` + `to_bytes` cost about 2 ms per message, most of it folding the same From and
# Subject headers (RFC 2047 encoded words) again for every reader. `mime_bytes` writes the same
# bytes as they do (apart from the random Message-ID and MIME boundary): each header is folded
# by the email package exactly as its generator does (`POLICY.fold_binary`), the headers that
# repeat from one message to the next (From, Subject, Date) once, and the bodies are encoded as
# `email.contentmanager` encodes UTF-8 text in base64. tests/test_transport_outbox.py compares
# the two byte for byte over generated messages.

_CRLF = b"\r\n"
_BASE64_CHUNK = 57  # as contentmanager for POLICY's 78: 78 // 4 * 3 bytes -> 76 characters
_BOUNDARY_DIGITS = len(repr(sys.maxsize - 1))  # as email.generator makes a boundary
_PART_HEADERS = {
    subtype: f'Content-Type: text/{subtype}; charset="utf-8"\r\n'
    "Content-Transfer-Encoding: base64\r\n\r\n".encode()
    for subtype in ("plain", "html")
}
_CACHE_LIMIT = 256


def _folded(name: str, value: object) -> bytes:
    """The header line(s) the generator writes for `name: value`, CRLF included; raises
    `MimeError` as `build_mime` does for a line break, a new header line or an overlong line."""
    folded = POLICY.fold_binary(name, POLICY.header_store_parse(name, value)[1])
    lines = folded[:-2].split(_CRLF)
    for number, line in enumerate(lines):
        if b"\r" in line or b"\n" in line or b"\x00" in line:
            raise MimeError(f"header {name} would contain a bare CR, LF or NUL; refused")
        if number and not line.startswith((b" ", b"\t")):
            raise MimeError(f"header {name} would start a new header line; refused")
        if len(line) > MAX_LINE_OCTETS:
            raise MimeError(f"header {name} has a line over {MAX_LINE_OCTETS} octets")
    return folded


def _base64_body(text: str) -> bytes:
    # email.contentmanager's base64 text: lines joined with CRLF, then 57 bytes a line.
    data = _CRLF.join(text.encode("utf-8").splitlines()) + _CRLF
    return b"".join(
        binascii.b2a_base64(data[i : i + _BASE64_CHUNK], newline=False) + _CRLF
        for i in range(0, len(data), _BASE64_CHUNK)
    )


class MimeWriter:
    """`mime_bytes(email, date=..., message_id_domain=...)` is
    `to_bytes(build_mime(email, date=..., message_id_domain=...))`, same checks and errors, with
    the repeated headers folded once (kept for the last _CACHE_LIMIT distinct values)."""

    def __init__(self) -> None:
        self._lines: dict[tuple[str, object], bytes] = {}

    def _line(self, name: str, key: object, make: Callable[[], object]) -> bytes:
        found = self._lines.get((name, key))
        if found is None:
            found = _folded(name, make())
            if len(self._lines) >= _CACHE_LIMIT:
                self._lines.clear()
            self._lines[(name, key)] = found
        return found

    def mime_bytes(self, email: OutgoingEmail, *, date: datetime, message_id_domain: str) -> bytes:
        """See the class; raises `MimeError` as `build_mime` does."""
        if date.tzinfo is None or date.utcoffset() is None:
            raise MimeError("the Date of an email must be an aware datetime (UTC)")
        if not DOMAIN_RE.fullmatch(message_id_domain):
            raise MimeError(f"message_id_domain {message_id_domain!r} is not a host name")
        sender = (email.from_address, email.from_name)
        stamp = format_datetime(date)
        head = [
            self._line("From", sender, lambda: _address("From", *sender)),
            _folded("To", _address("To", email.to_address, email.to_name)),
            self._line("Subject", email.subject, lambda: neutralise(email.subject)),
            self._line("Date", stamp, lambda: stamp),  # not keyed by `date`: equal across zones
            _folded("Message-ID", make_msgid(domain=message_id_domain)),
            b"MIME-Version: 1.0\r\n",
        ]
        seen = {"from", "to", "subject", "date", "message-id", "mime-version"}
        for name, value in email.headers.items():
            if name.lower() in RESERVED_HEADERS:
                raise MimeError(f"header {name} is set by drip itself and cannot be overridden")
            if name.lower() in seen:
                raise MimeError(f"header {name} is given twice")
            seen.add(name.lower())
            head.append(_folded(name, _verbatim(name, value)))
        did = email.delivery_id
        if not did or " " in did:
            raise MimeError(f"delivery id {did!r} must be non-empty without spaces")
        head.append(_folded(DELIVERY_ID_HEADER, _verbatim(DELIVERY_ID_HEADER, did)))
        boundary = b"=" * 15 + b"%0*d" % (_BOUNDARY_DIGITS, random.randrange(sys.maxsize)) + b"=="
        head.append(b'Content-Type: multipart/alternative;\r\n boundary="' + boundary + b'"\r\n')
        delimiter = b"--" + boundary
        return b"".join(
            [
                *head,
                _CRLF,
                delimiter,
                _CRLF,
                _PART_HEADERS["plain"],
                _base64_body(email.text),
                _CRLF,
                delimiter,
                _CRLF,
                _PART_HEADERS["html"],
                _base64_body(email.html),
                _CRLF,
                delimiter,
                b"--",
                _CRLF,
            ]
        )
