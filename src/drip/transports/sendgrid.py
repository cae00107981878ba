"""SendGrid v3 Mail Send over the official `sendgrid` library.

Sending is `build_payload` (pure) -> one POST /v3/mail/send per email -> `classify_status` (pure).
Only the middle step does I/O, so a faster HTTP path can reuse the two pure ends.

How failures map to outcomes (python_http_client sits on urllib): urllib wraps every `OSError`
raised while connecting and writing the request in `URLError`, and lets errors raised while
waiting for or reading the response through unwrapped. So `URLError` means "the request was not
fully written" (RETRY), while a bare timeout / reset / `http.client` error means "written, answer
lost" (IN_DOUBT). SendGrid has no idempotency key, so an in-doubt message is never re-sent here.
"""

from __future__ import annotations

import http.client
import json
import logging
import re
import urllib.error
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

import python_http_client.exceptions as http_errors  # type: ignore[import-untyped]
from sendgrid import SendGridAPIClient  # type: ignore[import-untyped]
from sendgrid.helpers.mail import (  # type: ignore[import-untyped]
    CustomArg,
    From,
    Header,
    HtmlContent,
    Mail,
    PlainTextContent,
    Subject,
    To,
)
from sendgrid.helpers.mail.exceptions import SendGridException  # type: ignore[import-untyped]

from drip.config import DEFAULT_SENDGRID_API_URL
from drip.errors import ConfigError
from drip.message import OutgoingEmail
from drip.transports.base import (
    FatalTransportError,
    Outcome,
    SendResult,
    TransportBase,
    not_attempted,
)

DEFAULT_TIMEOUT = 30.0
MAX_DETAIL = 300

_BEARER = re.compile(r"Bearer\s+[^\s'\",}]+")


class _RedactBearer(logging.Filter):
    """python_http_client logs the request headers, Authorization included, at DEBUG level."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "Bearer" in message:
            record.msg = _BEARER.sub("Bearer [redacted]", message)
            record.args = None
        return True


_REDACT_FILTER = _RedactBearer()


def _install_log_redaction() -> None:
    logger = logging.getLogger("python_http_client.client")
    if _REDACT_FILTER not in logger.filters:
        logger.addFilter(_REDACT_FILTER)


class _Headers(Protocol):
    """Response headers: `http.client.HTTPMessage` in practice, a dict in tests."""

    def get(self, name: str, /) -> str | None: ...


def _utc_now() -> datetime:
    return datetime.now(UTC)


def build_payload(email: OutgoingEmail) -> dict[str, Any]:
    """The v3 /v3/mail/send JSON body for one email (pure).

    One personalization with one recipient; content text/plain then text/html; `email.headers` as
    headers; `email.custom_args` as custom_args, with `drip_delivery_id` always equal to
    `email.delivery_id` so provider events can be matched to the ledger row.
    Raises `SendGridException` (e.g. an API key found in the body) or `ValueError` for an email
    the helpers refuse.
    """
    mail = Mail()
    mail.from_email = From(email.from_address, email.from_name)
    mail.to = To(email.to_address, email.to_name)
    mail.subject = Subject(email.subject)
    mail.content = PlainTextContent(email.text)
    mail.content = HtmlContent(email.html)
    for key, value in email.headers.items():
        mail.header = Header(key, value)
    custom_args = {**email.custom_args, "drip_delivery_id": email.delivery_id}
    for key, value in custom_args.items():
        mail.custom_arg = CustomArg(key, value)
    payload: dict[str, Any] = mail.get()
    return payload


def retry_after_seconds(headers: _Headers | None, now: datetime) -> float | None:
    """Seconds to wait, from Retry-After (seconds or HTTP date) or X-RateLimit-Reset (epoch).

    Returns None when neither header is present or readable; never a negative number.
    """
    if headers is None:
        return None
    retry_after = (headers.get("Retry-After") or "").strip()
    if retry_after:
        try:
            return max(0.0, float(retry_after))
        except ValueError:
            pass
        try:
            when = parsedate_to_datetime(retry_after)
        except (TypeError, ValueError):
            when = None
        if when is not None and when.tzinfo is not None:
            return max(0.0, (when - now).total_seconds())
    reset = (headers.get("X-RateLimit-Reset") or "").strip()
    if reset:
        try:
            return max(0.0, float(reset) - now.timestamp())
        except ValueError:
            return None
    return None


def error_text(body: bytes | str | None) -> str:
    """The messages of a SendGrid error body (`{"errors": [{"message": ...}]}`), shortened."""
    if not body:
        return ""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        data = json.loads(text)
        messages = [str(err.get("message", "")) for err in data.get("errors", [])]
        text = "; ".join(m for m in messages if m) or text
    except (ValueError, AttributeError, TypeError):
        pass
    text = " ".join(text.split())
    return text[:MAX_DETAIL]


def classify_status(
    delivery_id: str,
    status: int,
    headers: _Headers | None,
    body: bytes | str | None,
    now: datetime,
) -> SendResult:
    """Map an HTTP answer from /v3/mail/send to a result (pure).

    2xx SENT (provider_id from X-Message-Id); 429 and 5xx RETRY with the server's wait hint;
    other 4xx FAILED for this message. 401/403 (bad key) and 404/405 (DRIP_SENDGRID_API_URL does
    not point at the API, which would otherwise fail every message for good) raise
    `FatalTransportError` without results; the caller adds the batch's earlier results.
    """
    reason = error_text(body)
    detail = f"HTTP {status}" + (f": {reason}" if reason else "")
    if 200 <= status < 300:
        provider_id = headers.get("X-Message-Id") if headers is not None else None
        return SendResult(delivery_id, Outcome.SENT, provider_id=provider_id, detail=detail)
    if status in (401, 403):
        raise FatalTransportError(
            f"SendGrid refused the API key ({detail}); check SENDGRID_API_KEY and that the key"
            " has the Mail Send permission. Nothing more was sent in this run."
        )
    if status in (404, 405):
        raise FatalTransportError(
            f"SendGrid API URL does not serve /v3/mail/send ({detail}); check"
            " DRIP_SENDGRID_API_URL. Nothing more was sent in this run."
        )
    if status == 429 or status >= 500:
        return SendResult(
            delivery_id,
            Outcome.RETRY,
            retry_after=retry_after_seconds(headers, now),
            detail=detail,
        )
    if 400 <= status < 500:
        return SendResult(delivery_id, Outcome.FAILED, detail=detail)
    # 1xx/3xx: not an answer Mail Send gives; nothing says the message was taken.
    return SendResult(delivery_id, Outcome.RETRY, detail=f"unexpected answer {detail}")


class SendGridTransport(TransportBase):
    """Sends each email with one POST to SendGrid's v3 Mail Send endpoint.

    After an outage-like answer (429, 5xx, unreachable, in doubt) the rest of the batch is not
    attempted and comes back as RETRY. `clock` is read only to turn Retry-After dates and
    X-RateLimit-Reset into seconds.
    """

    name = "sendgrid"

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str = DEFAULT_SENDGRID_API_URL,
        timeout: float = DEFAULT_TIMEOUT,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        if not api_key:
            # The library would quietly fall back to os.environ; settings come from the caller.
            raise ConfigError("the sendgrid transport needs SENDGRID_API_KEY; set it to your key")
        _install_log_redaction()
        self._secret = api_key
        self._client = SendGridAPIClient(api_key=api_key, host=base_url.rstrip("/"))
        self._timeout = timeout
        self._clock = clock

    def _scrub(self, text: str) -> str:
        # A server or proxy could echo the Authorization header back; never let the key out.
        return text.replace(self._secret, "[redacted]")

    def send(self, emails: Sequence[OutgoingEmail]) -> list[SendResult]:
        """Send each email; see `Transport.send`.

        Raises `FatalTransportError` on 401/403/404/405, with the batch's earlier results.
        """
        results: list[SendResult] = []
        for index, email in enumerate(emails):
            try:
                result = self._send_one(email)
            except FatalTransportError as exc:
                raise FatalTransportError(self._scrub(str(exc)), results) from None
            result = SendResult(
                result.delivery_id,
                result.outcome,
                result.provider_id,
                result.retry_after,
                self._scrub(result.detail),
            )
            results.append(result)
            if result.outcome in (Outcome.RETRY, Outcome.IN_DOUBT):
                reason = f"SendGrid answered {email.delivery_id}: {result.detail}"
                results.extend(not_attempted(emails[index + 1 :], reason, result.retry_after))
                break
        return results

    def _send_one(self, email: OutgoingEmail) -> SendResult:
        try:
            payload = build_payload(email)
        except (SendGridException, ValueError, TypeError) as exc:
            return SendResult(
                email.delivery_id,
                Outcome.FAILED,
                detail=f"cannot build the request: {type(exc).__name__} {exc}"[:MAX_DETAIL],
            )
        try:
            response = self._client.client.mail.send.post(
                request_body=payload, timeout=self._timeout
            )
        except http_errors.HTTPError as exc:
            return classify_status(
                email.delivery_id, int(exc.status_code), exc.headers, exc.body, self._clock()
            )
        except urllib.error.URLError as exc:
            return SendResult(
                email.delivery_id,
                Outcome.RETRY,
                detail=f"request not sent, SendGrid unreachable: {exc.reason}",
            )
        except (OSError, http.client.HTTPException) as exc:
            return SendResult(
                email.delivery_id,
                Outcome.IN_DOUBT,
                detail=f"request sent, answer lost: {type(exc).__name__} {exc}".strip(),
            )
        return classify_status(
            email.delivery_id,
            int(response.status_code),
            response.headers,
            response.body,
            self._clock(),
        )
