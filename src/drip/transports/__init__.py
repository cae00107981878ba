"""Ways out for email: SendGrid, SMTP, a local outbox directory, and memory (tests).

`make_transport(settings)` picks one from `Settings.transport`; everything speaks the `Transport`
protocol of `drip.transports.base`. SendGrid is a package (`drip.transports.sendgrid`): a pure
protocol module and three clients (official library, fast aiohttp, bulk mode).
"""

from __future__ import annotations

from drip.config import Settings
from drip.errors import ConfigError, FatalTransportError
from drip.transports.base import Outcome, SendResult, Transport, TransportBase, sender_domain

__all__ = [
    "FatalTransportError",
    "Outcome",
    "SendResult",
    "Transport",
    "TransportBase",
    "make_transport",
]


def make_transport(settings: Settings, *, message_id_domain: str | None = None) -> Transport:
    """The transport `settings.transport` names, configured from `settings`.

    `message_id_domain` is the right-hand side of Message-IDs for SMTP and the outbox; by
    default the domain of `settings.from_address`, else each sender's domain. Modules are
    imported here so that choosing the outbox does not load the SendGrid client. Raises
    `ConfigError` for an unknown transport or a missing key / URL. For SendGrid the fast aiohttp
    client is the default; DRIP_SENDGRID_CLIENT=official selects the official library, and
    DRIP_BULK=auto wraps the fast client in `sendgrid.bulk.BulkSendGridTransport`.
    """
    domain = message_id_domain
    if domain is None and settings.from_address and "@" in settings.from_address:
        domain = sender_domain(settings.from_address) or None
    kind = settings.transport
    if kind == "sendgrid":
        return _sendgrid(settings)
    if kind == "smtp":
        from drip.transports.smtp import SmtpTransport

        if not settings.smtp_url:
            raise ConfigError(
                "DRIP_TRANSPORT=smtp needs DRIP_SMTP_URL, e.g. smtp://user:pass@host:587"
            )
        return SmtpTransport(settings.smtp_url, message_id_domain=domain)
    if kind == "outbox":
        from drip.transports.outbox import OutboxTransport

        return OutboxTransport(settings.outbox_dir, message_id_domain=domain)
    if kind == "memory":
        from drip.transports.memory import MemoryTransport

        return MemoryTransport()
    raise ConfigError(
        f"transport {kind!r} is unknown; set DRIP_TRANSPORT to sendgrid, smtp or outbox"
    )


def _sendgrid(settings: Settings) -> Transport:
    from drip.transports.sendgrid.protocol import require_api_key

    api_key = require_api_key(settings.sendgrid_api_key)
    if settings.sendgrid_client == "official":
        from drip.transports.sendgrid.official import SendGridTransport

        return SendGridTransport(api_key, base_url=settings.sendgrid_api_url)
    # The default: keep-alive connections, `sendgrid_window` requests in flight.
    from drip.transports.sendgrid.fast import FastSendGridTransport

    fast = FastSendGridTransport(
        api_key,
        base_url=settings.sendgrid_api_url,
        window=settings.sendgrid_window,
        rate=settings.sendgrid_rate,
        process=settings.sendgrid_process,
    )
    if settings.bulk == "auto":
        from drip.transports.sendgrid.bulk import BulkSendGridTransport

        return BulkSendGridTransport(fast)
    return fast
