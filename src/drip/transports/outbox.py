"""A local outbox: each email becomes `<delivery_id>.eml` in a directory (try-out, previews, CI).

Files are written atomically (temporary file in the same directory, fsync, `os.replace`, fsync of
the directory), so a crash leaves either the whole message or none; a stray `.*.tmp` file from a
killed run is never taken for a message. Writing the same delivery id again replaces the file.
"""

from __future__ import annotations

import binascii
import contextlib
import os
import random
import re
import sys
import tempfile
from collections.abc import Callable, Sequence
from datetime import datetime
from email.utils import format_datetime, make_msgid
from functools import partial
from pathlib import Path

from drip.errors import DripError, FatalTransportError, MimeError
from drip.message import OutgoingEmail
from drip.mime import (
    DELIVERY_ID_HEADER,
    DOMAIN_RE,
    MAX_LINE_OCTETS,
    POLICY,
    RESERVED_HEADERS,
    neutralise,
)
from drip.mime import _address as mime_address  # the same checks as build_mime's
from drip.mime import _verbatim as verbatim_value
from drip.transports.base import (
    Outcome,
    Scrubber,
    SendResult,
    TransportBase,
    guarded,
    message_id_domain_for,
    not_attempted,
    utc_now,
)

_CLEAN = Scrubber()
"""The outbox has no secret; its texts are only cleaned and cut like every transport's."""

# A delivery id becomes a file name: no separators, no leading dot, no surprises.
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so whoever reads it (and a crash) sees the old file or the new."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    # The rename itself must reach the disk, or a power cut could undo the "sent" file.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class OutboxTransport(TransportBase):
    """Writes each email as an RFC 5322 `.eml` file under `directory`: the bytes of
    `drip.mime.build_mime` + `to_bytes`, written by `MimeWriter` (same checks, far less CPU).

    Dated `email.date` (the send run's moment), else `clock()`. SENT with `provider_id` = the
    file name. A delivery id that cannot be a file name is FAILED;
    a write error is RETRY and stops the batch. Raises `FatalTransportError` when the directory
    cannot be created.
    """

    name = "outbox"

    def __init__(
        self,
        directory: Path,
        *,
        message_id_domain: str | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.directory = Path(directory)
        self._message_id_domain = message_id_domain
        self._clock = clock
        self._writer = MimeWriter()

    def path_for(self, delivery_id: str) -> Path:
        """Where the message for `delivery_id` is (or would be) written."""
        return self.directory / f"{delivery_id}.eml"

    def send(self, emails: Sequence[OutgoingEmail]) -> list[SendResult]:
        """Write each email; see `Transport.send` (and `drip.transports.base` for unexpected
        errors)."""
        return guarded(_CLEAN, partial(self._write_each, emails))

    def _write_each(self, emails: Sequence[OutgoingEmail], results: list[SendResult]) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FatalTransportError(
                f"cannot create the outbox directory {self.directory}: {exc.strerror};"
                " set DRIP_OUTBOX_DIR to a writable directory"
            ) from None
        for index, email in enumerate(emails):
            result = self._write(email)
            results.append(result)
            if result.outcome is Outcome.RETRY:
                results.extend(not_attempted(emails[index + 1 :], result.detail, None))
                break

    def _write(self, email: OutgoingEmail) -> SendResult:
        did = email.delivery_id
        if not _SAFE_NAME.fullmatch(did):
            return SendResult(
                did, Outcome.FAILED, detail=f"delivery id {did!r} cannot be used as a file name"
            )
        domain = message_id_domain_for(email, self._message_id_domain)
        try:
            data = self._writer.mime_bytes(
                email, date=email.date or self._clock(), message_id_domain=domain
            )
        except (DripError, ValueError, TypeError) as exc:
            return SendResult(did, Outcome.FAILED, detail=f"cannot build the message: {exc}")
        path = self.path_for(did)
        try:
            write_atomically(path, data)
        except OSError as exc:
            return SendResult(did, Outcome.RETRY, detail=f"cannot write {path}: {exc.strerror}")
        return SendResult(did, Outcome.SENT, provider_id=path.name, detail=f"wrote {path}")


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
            self._line("From", sender, lambda: mime_address("From", *sender)),
            _folded("To", mime_address("To", email.to_address, email.to_name)),
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
            head.append(_folded(name, verbatim_value(name, value)))
        did = email.delivery_id
        if not did or " " in did:
            raise MimeError(f"delivery id {did!r} must be non-empty without spaces")
        head.append(_folded(DELIVERY_ID_HEADER, verbatim_value(DELIVERY_ID_HEADER, did)))
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
