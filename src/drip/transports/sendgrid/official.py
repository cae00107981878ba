"""SendGrid v3 Mail Send over the official `sendgrid` library.

Sending is `protocol.build_payload` (pure) -> one POST /v3/mail/send per email ->
`protocol.classify_status` (pure). Only the middle step does I/O; the fast client
(`drip.transports.sendgrid.fast`) shares both ends, so payloads and outcomes are identical.

How failures map to outcomes (python_http_client sits on urllib): urllib wraps every `OSError`
raised while connecting and writing the request in `URLError`, and lets errors raised while
waiting for or reading the response through unwrapped. So `URLError` means "the request was not
fully written" (RETRY), while a bare timeout / reset / `http.client` error means "written, answer
lost" (IN_DOUBT). SendGrid has no idempotency key, so an in-doubt message is never re-sent here.
"""

from __future__ import annotations

import http.client
import logging
import re
import urllib.error
import urllib.request
import weakref
from collections.abc import Callable, Sequence
from datetime import datetime
from email.message import Message
from functools import partial
from typing import IO

import python_http_client.exceptions as http_errors  # type: ignore[import-untyped]
from sendgrid import SendGridAPIClient  # type: ignore[import-untyped]

from drip.config import DEFAULT_SENDGRID_API_URL
from drip.message import OutgoingEmail
from drip.transports.base import (
    Outcome,
    Scrubber,
    SendResult,
    TransportBase,
    guarded,
    not_attempted,
    utc_now,
)
from drip.transports.sendgrid.protocol import (
    DEFAULT_TIMEOUT,
    build_failure,
    build_payload,
    classify_status,
    require_api_key,
)

_BEARER = re.compile(r"Bearer\s+[^\s'\",}]+")


class _RedactSecrets(logging.Filter):
    """python_http_client logs the request headers (Authorization included) and every answer's
    body at DEBUG level: a server echoing the key would put it in the log. Each record's message
    goes through the scrubber of every live transport (the filter only runs for records that
    are emitted, so there is no cost unless DEBUG logging is on)."""

    def __init__(self) -> None:
        super().__init__()
        self.scrubbers: weakref.WeakSet[Scrubber] = weakref.WeakSet()

    def filter(self, record: logging.LogRecord) -> bool:
        message = _BEARER.sub("Bearer [redacted]", record.getMessage())
        for scrubber in list(self.scrubbers):
            message = scrubber.text(message, len(message))
        record.msg, record.args = message, None
        return True


_REDACT_FILTER = _RedactSecrets()


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Refuses every redirect: urllib then raises the 3xx as an `HTTPError`, which
    `classify_status` makes fatal. Following one would turn the POST into a GET (302/303) or
    re-post the email, Authorization header included, to another origin (307/308)."""

    def http_error_302(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: Message,
    ) -> None:
        return None

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


_OPENER = urllib.request.build_opener(_NoRedirects())
"""The opener of every request: urllib's defaults without redirects (python_http_client builds
a default one per request, which follows them)."""


def _install_log_redaction(scrubber: Scrubber) -> None:
    logger = logging.getLogger("python_http_client.client")
    if _REDACT_FILTER not in logger.filters:
        logger.addFilter(_REDACT_FILTER)
    _REDACT_FILTER.scrubbers.add(scrubber)


class SendGridTransport(TransportBase):
    """Sends each email with one POST to SendGrid's v3 Mail Send endpoint, one at a time.

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
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._scrub = Scrubber(require_api_key(api_key), users=("apikey",))
        _install_log_redaction(self._scrub)
        client = SendGridAPIClient(api_key=api_key, host=base_url.rstrip("/"))
        self._endpoint = client.client.mail.send
        # python_http_client passes each request with its own default opener to `_make_request`
        # (its documented hook for tests); give it ours, which does not follow redirects.
        make_request = self._endpoint._make_request
        self._endpoint._make_request = lambda _opener, request, timeout=None: make_request(
            _OPENER, request, timeout=timeout
        )
        self._timeout = timeout
        self._clock = clock

    def send(self, emails: Sequence[OutgoingEmail]) -> list[SendResult]:
        """Send each email; see `Transport.send`.

        Raises `FatalTransportError` on 401/403/404/405 and 3xx, or an unexpected error (see
        `drip.transports.base`), with the batch's earlier results.
        """
        return guarded(self._scrub, partial(self._send_each, emails))

    def _send_each(self, emails: Sequence[OutgoingEmail], results: list[SendResult]) -> None:
        for index, email in enumerate(emails):
            result = self._send_one(email)
            results.append(result)
            if result.outcome in (Outcome.RETRY, Outcome.IN_DOUBT):
                reason = f"SendGrid answered {email.delivery_id}: {result.detail}"
                results.extend(not_attempted(emails[index + 1 :], reason, result.retry_after))
                break

    def _send_one(self, email: OutgoingEmail) -> SendResult:
        try:
            payload = build_payload(email)
        except (ValueError, TypeError) as exc:
            return build_failure(email.delivery_id, exc)
        try:
            response = self._endpoint.post(request_body=payload, timeout=self._timeout)
        except http_errors.HTTPError as exc:
            return classify_status(
                email.delivery_id,
                int(exc.status_code),
                exc.headers,
                exc.body,
                self._clock(),
                self._scrub.text,
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
            self._scrub.text,
        )
