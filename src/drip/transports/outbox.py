"""A local outbox: each email becomes `<delivery_id>.eml` in a directory (try-out, previews, CI).

Files are written atomically (temporary file in the same directory, fsync, `os.replace`, fsync of
the directory), so a crash leaves either the whole message or none; a stray `.*.tmp` file from a
killed run is never taken for a message. Writing the same delivery id again replaces the file.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from datetime import datetime
from functools import partial
from pathlib import Path

from drip.errors import DripError, FatalTransportError
from drip.message import OutgoingEmail
from drip.mime import MimeWriter
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
