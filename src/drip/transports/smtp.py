"""SMTP over smtplib: one connection kept open across messages and `send` calls.

DRIP_SMTP_URL forms: `smtp://user:pass@host:587` (STARTTLS; required on port 587 or with
`?starttls=1`, skipped with `?starttls=0`), `smtp://127.0.0.1:1025` (a local relay, plain) and
`smtps://user:pass@host:465` (implicit TLS).

Outcomes follow RFC 5321 4.2.1: a 4xx reply is temporary (RETRY), 5xx permanent (FAILED), 421
means the server is closing (RETRY, rest of the batch not attempted). The DATA phase is driven
step by step instead of with `SMTP.data` so we know whether the final '.' was written: a
connection lost after it is IN_DOUBT (the relay may have queued the message), before it RETRY.
"""

from __future__ import annotations

import contextlib
import re
import smtplib
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import partial
from urllib.parse import parse_qs, unquote, urlsplit

from drip.errors import ConfigError, DripError, FatalTransportError
from drip.message import OutgoingEmail
from drip.mime import build_mime, to_bytes
from drip.transports.base import (
    MAX_ERROR,
    Outcome,
    Scrubber,
    SendResult,
    TransportBase,
    guarded,
    message_id_domain_for,
    not_attempted,
    utc_now,
)

DEFAULT_TIMEOUT = 30.0
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
_LINE_ENDS = re.compile(rb"\r\n|\r|\n")
_LEADING_DOT = re.compile(rb"(?m)^\.")


@dataclass(frozen=True)
class SmtpTarget:
    """Where and how to connect, parsed from DRIP_SMTP_URL. The password is kept out of repr."""

    host: str
    port: int
    implicit_tls: bool
    starttls: bool
    username: str | None = None
    password: str | None = field(default=None, repr=False)


def parse_smtp_url(url: str) -> SmtpTarget:
    """Parse `smtp://[user:pass@]host[:port][?starttls=0|1]` or `smtps://...`.

    Default ports: 25 for smtp, 465 for smtps. STARTTLS is required on port 587 or with
    `starttls=1`. Raises `ConfigError` (never quoting the URL: it may hold a password).
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(
            "DRIP_SMTP_URL is not a valid URL; write it like smtp://user:pass@host:587"
            " (the value is not shown because it may hold a password)"
        ) from exc
    if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
        raise ConfigError(
            "DRIP_SMTP_URL must look like smtp://user:pass@host:587 or smtps://host:465"
            " (the value is not shown because it may hold a password)"
        )
    implicit_tls = parts.scheme == "smtps"
    port = port or (465 if implicit_tls else 25)
    flag = parse_qs(parts.query).get("starttls", [""])[-1].strip().lower()
    if flag not in ("", "0", "1", "true", "false", "yes", "no"):
        raise ConfigError("DRIP_SMTP_URL: starttls must be 1 or 0")
    starttls = not implicit_tls and (
        flag in ("1", "true", "yes") or (port == 587 and flag not in ("0", "false", "no"))
    )
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    return SmtpTarget(parts.hostname, port, implicit_tls, starttls, username, password)


def _wire_data(message: bytes) -> bytes:
    """The DATA payload: CRLF line ends, leading dots doubled, ended by CRLF '.' CRLF."""
    data = _LINE_ENDS.sub(b"\r\n", message)
    data = _LEADING_DOT.sub(b"..", data)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"


def _reply_text(reply: bytes | str) -> str:
    """A server reply on one line; the transport's `Scrubber` cleans and cuts it (after
    scrubbing: a cut first could leave a piece of the password)."""
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    return " ".join(text.split())


class _Retry(Exception):
    """Internal: the connection is unusable; the rest of the batch is not attempted."""

    def __init__(self, result: SendResult) -> None:
        super().__init__(result.detail)
        self.result = result


class SmtpTransport(TransportBase):
    """Sends each email as one SMTP transaction (MAIL, RCPT, DATA) on a reused connection.

    The MIME message comes from `drip.mime.build_mime` dated `email.date` (the send run's
    moment), else `clock()`; `provider_id` is its Message-ID. The Message-ID domain is
    `message_id_domain`, else the sender's domain.
    `ssl_context` defaults to the system's verifying context (tests pass one trusting their CA).
    Raises `ConfigError` for a malformed URL or a password that would travel unencrypted to a
    host other than loopback.
    """

    name = "smtp"

    def __init__(
        self,
        url: str,
        *,
        message_id_domain: str | None = None,
        clock: Callable[[], datetime] = utc_now,
        timeout: float = DEFAULT_TIMEOUT,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.target = parse_smtp_url(url)
        t = self.target
        if t.username and not (t.implicit_tls or t.starttls) and t.host not in LOOPBACK_HOSTS:
            raise ConfigError(
                f"DRIP_SMTP_URL would send the SMTP password to {t.host}:{t.port} unencrypted;"
                " use smtps:// or add ?starttls=1"
            )
        self._scrub = Scrubber(t.password, users=[t.username] if t.username else [])
        self._message_id_domain = message_id_domain
        self._clock = clock
        self._timeout = timeout
        self._ssl_context = ssl_context or ssl.create_default_context()
        self._smtp: smtplib.SMTP | None = None

    # -- connection ------------------------------------------------------------------------

    def _fatal(self, message: str) -> FatalTransportError:
        return FatalTransportError(self._scrub.text(message, MAX_ERROR))

    def _untrusted(self, where: str, exc: ssl.SSLCertVerificationError) -> FatalTransportError:
        return self._fatal(
            f"TLS certificate of SMTP server {where} not trusted ({exc.verify_message});"
            " fix the server certificate or the host name in DRIP_SMTP_URL"
        )

    def _connect(self) -> smtplib.SMTP:
        """Open, secure and log in. Raises `_Retry` (server away) or `FatalTransportError`."""
        t = self.target
        where = f"{t.host}:{t.port}"
        smtp: smtplib.SMTP
        try:
            if t.implicit_tls:
                smtp = smtplib.SMTP_SSL(
                    t.host, t.port, timeout=self._timeout, context=self._ssl_context
                )
            else:
                smtp = smtplib.SMTP(t.host, t.port, timeout=self._timeout)
        except ssl.SSLCertVerificationError as exc:
            raise self._untrusted(where, exc) from None
        except (OSError, smtplib.SMTPException) as exc:
            raise _Retry(
                SendResult("", Outcome.RETRY, detail=f"cannot connect to {where}: {exc}")
            ) from None
        try:
            self._secure_and_login(smtp, where)
        except BaseException:
            smtp.close()
            raise
        return smtp

    def _secure_and_login(self, smtp: smtplib.SMTP, where: str) -> None:
        t = self.target
        try:
            smtp.ehlo_or_helo_if_needed()
            if t.starttls:
                if not smtp.has_extn("starttls"):
                    raise self._fatal(
                        f"SMTP server {where} does not offer STARTTLS, which DRIP_SMTP_URL"
                        " requires (port 587 or ?starttls=1); add ?starttls=0 only for a"
                        " trusted local relay"
                    )
                smtp.starttls(context=self._ssl_context)
                smtp.ehlo()
            if t.username is not None:
                smtp.login(t.username, t.password or "")
        except smtplib.SMTPAuthenticationError as exc:
            if 400 <= exc.smtp_code < 500:  # 454: temporary authentication failure
                raise _Retry(
                    SendResult(
                        "", Outcome.RETRY, detail=f"SMTP login: {exc.smtp_code} temporary failure"
                    )
                ) from None
            raise self._fatal(
                f"SMTP server {where} refused the login for {t.username!r} ({exc.smtp_code}"
                f" {self._scrub.text(_reply_text(exc.smtp_error))}); check the user and password"
                " in DRIP_SMTP_URL"
            ) from None
        except smtplib.SMTPNotSupportedError:
            raise self._fatal(
                f"SMTP server {where} does not offer AUTH; remove the user from DRIP_SMTP_URL"
                " or use the submission port"
            ) from None
        except ssl.SSLCertVerificationError as exc:
            raise self._untrusted(where, exc) from None
        except (OSError, smtplib.SMTPException) as exc:
            raise _Retry(
                SendResult("", Outcome.RETRY, detail=f"SMTP session setup with {where}: {exc}")
            ) from None

    def _check_reused(self) -> None:
        """Drop a connection kept from an earlier call if the server closed it meanwhile (NOOP)."""
        if self._smtp is None:
            return
        try:
            code, _ = self._smtp.noop()
            if code == 250:
                return
        except (OSError, smtplib.SMTPException):
            pass
        self._drop()

    def _connection(self) -> smtplib.SMTP:
        if self._smtp is None:
            self._smtp = self._connect()
        return self._smtp

    def _drop(self) -> None:
        if self._smtp is not None:
            try:
                self._smtp.close()
            finally:
                self._smtp = None

    def close(self) -> None:
        """Say QUIT politely when still connected; never raises."""
        if self._smtp is not None:
            with contextlib.suppress(OSError, smtplib.SMTPException):
                self._smtp.quit()
            self._drop()

    # -- sending ---------------------------------------------------------------------------

    def send(self, emails: Sequence[OutgoingEmail]) -> list[SendResult]:
        """Send each email; see `Transport.send`. Raises `FatalTransportError` on auth failure
        or an unexpected error (see `drip.transports.base`), with the earlier results."""
        try:
            return guarded(self._scrub, partial(self._send_each, emails))
        except FatalTransportError:
            self._drop()  # the session may be mid-transaction: start the next call afresh
            raise

    def _send_each(self, emails: Sequence[OutgoingEmail], results: list[SendResult]) -> None:
        self._check_reused()
        for index, email in enumerate(emails):
            try:
                smtp = self._connection()
                result = self._send_one(smtp, email)
            except _Retry as stop:
                self._drop()
                result = replace(stop.result, delivery_id=email.delivery_id)
                results.append(result)
                reason = f"SMTP connection lost at {email.delivery_id}: {result.detail}"
                results.extend(not_attempted(emails[index + 1 :], reason, None))
                break
            results.append(result)
            if result.outcome is Outcome.IN_DOUBT:
                reason = f"no reply for {email.delivery_id}: {result.detail}"
                results.extend(not_attempted(emails[index + 1 :], reason, None))
                break

    def _send_one(self, smtp: smtplib.SMTP, email: OutgoingEmail) -> SendResult:
        did = email.delivery_id
        try:
            domain = message_id_domain_for(email, self._message_id_domain)
            message = build_mime(email, date=email.date or self._clock(), message_id_domain=domain)
            data = _wire_data(to_bytes(message))
        except (DripError, ValueError, TypeError) as exc:
            return SendResult(did, Outcome.FAILED, detail=f"cannot build the message: {exc}")
        message_id = message["Message-ID"]
        options: list[str] = []
        if not (email.from_address + email.to_address).isascii():
            if not smtp.has_extn("smtputf8"):
                return SendResult(
                    did, Outcome.FAILED, detail="non-ASCII address but the server lacks SMTPUTF8"
                )
            options.append("SMTPUTF8")
        try:
            code, reply = smtp.mail(email.from_address, options)
            if code != 250:
                return self._refused(smtp, did, "MAIL FROM", code, reply)
            code, reply = smtp.rcpt(email.to_address)
            if code not in (250, 251):
                return self._refused(smtp, did, "RCPT TO", code, reply)
            code, reply = smtp.docmd("DATA")
            if code != 354:
                return self._refused(smtp, did, "DATA", code, reply)
            smtp.send(data)
        except (OSError, smtplib.SMTPException) as exc:
            # Nothing is queued without the final '.', which was not (fully) written.
            raise _Retry(
                SendResult(did, Outcome.RETRY, detail=f"before end of data: {exc}")
            ) from None
        try:
            code, reply = smtp.getreply()
        except Exception as exc:  # whatever it is, the message was written: never re-sent blind
            self._drop()
            known = isinstance(exc, (OSError, smtplib.SMTPException))
            cause = f"{exc}" if known else f"{type(exc).__name__}: {exc}"
            return SendResult(
                did,
                Outcome.IN_DOUBT,
                detail=f"message written, reply lost (the relay may have queued it): {cause}",
            )
        if code == 250:
            return SendResult(
                did,
                Outcome.SENT,
                provider_id=str(message_id) if message_id else None,
                detail=f"{code} {_reply_text(reply)}",
            )
        if 400 <= code < 600:
            return self._refused(smtp, did, "end of data", code, reply)
        self._drop()
        return SendResult(did, Outcome.IN_DOUBT, detail=f"message written, unreadable reply {code}")

    def _refused(
        self, smtp: smtplib.SMTP, did: str, stage: str, code: int, reply: bytes
    ) -> SendResult:
        """Outcome for a non-success reply; resets the transaction so the connection is reusable."""
        detail = f"{stage}: {code} {_reply_text(reply)}"
        if code == 421:
            raise _Retry(SendResult(did, Outcome.RETRY, detail=f"server closing, {detail}"))
        try:
            smtp.rset()
        except (OSError, smtplib.SMTPException):
            self._drop()
        if 400 <= code < 500:
            return SendResult(did, Outcome.RETRY, detail=detail)
        if 500 <= code < 600:
            return SendResult(did, Outcome.FAILED, detail=detail)
        # A reply that is not an SMTP code (-1: unreadable): the transaction state is unknown.
        raise _Retry(SendResult(did, Outcome.RETRY, detail=f"unexpected reply, {detail}"))
