"""`POST /webhooks/sendgrid`: SendGrid's signed Event Webhook.

Answers (SendGrid posts a batch again on anything but 2xx, for up to a day):
- 503 when no verification key is configured (DRIP_SENDGRID_WEBHOOK_KEY) or it is not a P-256
  public key; `drip serve` warns at start (`startup_warning`);
- 413 for a body over `MAX_BODY_BYTES` (5 MB; SendGrid's batches are far smaller);
- 403 when the signature or its timestamp does not verify (`transports.sendgrid.events`);
- 200 with counts when the batch was stored and applied (`provider_events`), including a
  redelivered batch (nothing is applied twice);
- 200 and one log line for a body that is not a JSON array of events (posting it again would
  not help);
- 503 when the database fails: nothing of the batch was kept, SendGrid posts it again.
No CSRF (the signature is the authentication) and no per-IP rate limit (SendGrid posts from a few
addresses). Logs name the check that failed and the body's size, never a header or the body.
"""

from __future__ import annotations

import logging

from flask import Blueprint, Response, jsonify, request
from sqlalchemy.exc import SQLAlchemyError

from drip.config import Settings
from drip.errors import DatabaseUnavailableError
from drip.provider_events import record_sendgrid_events
from drip.transports.sendgrid.events import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    SignatureError,
    UnreadableEvents,
    load_verification_key,
    parse_events,
    verify_signature,
)
from drip.web.context import current
from drip.web.security import allow_body, csrf

log = logging.getLogger("drip.web.webhooks")

MAX_BODY_BYTES = 5 * 1024 * 1024
PATH = "/webhooks/sendgrid"

bp = Blueprint("webhooks", __name__)


def startup_warning(settings: Settings) -> str | None:
    """What `drip serve` should warn about at start for this endpoint, or None when it is
    ready: no verification key, or one that is not a P-256 public key. Never quotes the key."""
    if not settings.sendgrid_webhook_key:
        return (
            f"DRIP_SENDGRID_WEBHOOK_KEY is not set: {PATH} answers 503 and SendGrid's events"
            " (bounces, complaints, unsubscribes, in-doubt settling) are not received"
        )
    try:
        load_verification_key(settings.sendgrid_webhook_key)
    except ValueError as exc:
        return f"DRIP_SENDGRID_WEBHOOK_KEY: {exc}; {PATH} answers 503 until it is fixed"
    return None


def _answer(status: int, **fields: object) -> tuple[Response, int]:
    return jsonify(fields), status


@bp.post(PATH)
@allow_body(MAX_BODY_BYTES)
def sendgrid_events() -> tuple[Response, int]:
    context = current()
    key_text = context.settings.sendgrid_webhook_key
    if not key_text:
        return _answer(503, error="the SendGrid event webhook is not configured")
    try:
        key = load_verification_key(key_text)
    except ValueError:
        log.error("SendGrid webhook refused: DRIP_SENDGRID_WEBHOOK_KEY is not a P-256 public key")
        return _answer(503, error="the SendGrid event webhook is not configured")
    body = request.get_data(cache=False)  # 413 past the limit, while reading
    now = context.now()
    try:
        verify_signature(
            key,
            signature=request.headers.get(SIGNATURE_HEADER),
            timestamp=request.headers.get(TIMESTAMP_HEADER),
            body=body,
            now=now,
        )
    except SignatureError as exc:
        log.warning("SendGrid webhook refused (%d bytes): %s", len(body), exc)
        return _answer(403, error="signature verification failed")
    try:
        parsed = parse_events(body, received_at=now)
    except UnreadableEvents as exc:
        log.warning("SendGrid webhook: signed body ignored: %s", exc)
        return _answer(200, ignored=True)
    try:
        recorded = record_sendgrid_events(context.sessions, context.course, parsed, now=now)
    except (SQLAlchemyError, DatabaseUnavailableError) as exc:
        log.error(
            "SendGrid webhook: %d events not stored, the database failed (%s); SendGrid will"
            " post them again",
            len(parsed.events),
            type(exc).__name__,
        )
        return _answer(503, error="the database is unavailable; post again later")
    if parsed.skipped:
        log.warning("SendGrid webhook: %d items were not events; ignored", parsed.skipped)
    return _answer(200, **recorded.as_dict())


csrf.exempt(sendgrid_events)  # the signature is the authentication
