"""Settings: read once from the environment by an entry point, then passed down as a value.

Nothing below the entry points (the CLI, the worker) reads `os.environ`; they call
`load_settings(os.environ)` and hand the frozen `Settings` to the functions they call.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import parseaddr
from pathlib import Path
from typing import Literal, TypeVar, get_args
from urllib.parse import urlsplit

from drip.errors import ConfigError, MissingApiKeyError

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_DATABASE_URL = "sqlite:///drip.db"
DEFAULT_SENDGRID_API_URL = "https://api.sendgrid.com"
TransportName = Literal["sendgrid", "smtp", "outbox"]
SendGridClient = Literal["fast", "official"]
BulkMode = Literal["off", "auto"]
SendGridProcess = Literal["auto", "on", "off"]
TRANSPORTS: tuple[TransportName, ...] = get_args(TransportName)
SENDGRID_CLIENTS: tuple[SendGridClient, ...] = get_args(SendGridClient)
BULK_MODES: tuple[BulkMode, ...] = get_args(BulkMode)
SENDGRID_PROCESSES: tuple[SendGridProcess, ...] = get_args(SendGridProcess)
WebSends = Literal["now", "queue"]
WEB_SENDS: tuple[WebSends, ...] = get_args(WebSends)
DEFAULT_SENDGRID_WINDOW = 256
MIN_SECRET_KEY_LENGTH = 32
MIN_SECRET_KEY_BITS = 128
"""A signing key must be at least this long and this rich (length x log2(distinct characters)):
a short or repetitive key is recovered offline from one link, and then any link can be forged."""
GENERATE_KEY_HINT = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
_URL_UNSAFE = frozenset(' "<>\\^`{|}')


DEFAULT_CONFIRMATIONS_PER_HOUR = 500


@dataclass(frozen=True)
class Settings:
    """Everything drip needs to know about its surroundings. Secrets are kept out of `repr`."""

    base_url: str = DEFAULT_BASE_URL
    database_url: str = DEFAULT_DATABASE_URL
    course_dir: Path = Path("course")
    templates_dir: Path = Path("templates/email")
    transport: TransportName = "outbox"
    outbox_dir: Path = Path("outbox")
    sendgrid_api_key: str | None = field(default=None, repr=False)
    sendgrid_api_url: str = DEFAULT_SENDGRID_API_URL
    smtp_url: str | None = field(default=None, repr=False)
    from_address: str | None = None
    secret_keys: tuple[str, ...] = field(default=(), repr=False)
    """Link-signing keys from DRIP_SECRET_KEY (comma-separated; the first signs, all verify)."""
    sendgrid_client: SendGridClient = "fast"
    """DRIP_SENDGRID_CLIENT: 'fast' (aiohttp, keep-alive, concurrent) or 'official' (the
    sendgrid library, one request at a time)."""
    sendgrid_rate: float | None = None
    """DRIP_SENDGRID_RATE: at most this many requests per second (the provider's limit)."""
    sendgrid_window: int = DEFAULT_SENDGRID_WINDOW
    """DRIP_SENDGRID_WINDOW: requests in flight (fast client); after a crash at most this many
    emails are in doubt."""
    sendgrid_process: SendGridProcess = "auto"
    """DRIP_SENDGRID_PROCESS: where the fast client's HTTP loop runs. 'on': in a second process
    (its CPU on another core), 'off': in a thread of this process, 'auto': a second process
    when the first call fills the window on a machine with more than one CPU."""
    bulk: BulkMode = "off"
    """DRIP_BULK: 'auto' sends a lesson as one body with per-recipient substitutions, up to
    1,000 recipients per request, when the transport and the lesson allow it; 'off' never."""

    web_templates_dir: Path = Path("templates/web")
    """DRIP_WEB_TEMPLATES_DIR: the pages of `drip serve`."""
    allowed_origins: tuple[str, ...] = ()
    """DRIP_ALLOWED_ORIGINS: origins (scheme://host[:port]) whose pages may embed the signup
    form in a frame and call POST /api/subscribe (CORS); none by default."""
    trusted_proxies: int = 0
    """DRIP_TRUSTED_PROXIES: how many reverse proxies in front of `drip serve` set
    X-Forwarded-For/-Proto/-Host; 0 (the default) trusts none of those headers."""
    sendgrid_webhook_key: str | None = field(default=None, repr=False)
    """DRIP_SENDGRID_WEBHOOK_KEY: the base64 public key SendGrid shows for the signed Event
    Webhook; without it POST /webhooks/sendgrid answers 503."""
    confirmations_per_hour: int = DEFAULT_CONFIRMATIONS_PER_HOUR
    """DRIP_CONFIRMATIONS_PER_HOUR: signups (each may send one confirmation email) the web app
    accepts per hour, counted where the rate limits are (DRIP_RATELIMIT_STORAGE_URL); above it
    POST /subscribe answers 429."""
    web_sends: WebSends = "now"
    """DRIP_WEB_SENDS: 'now' (the default): each `drip serve` worker sends the confirmation
    emails its signups queue, and lesson 1 after a confirm, in a background thread at once;
    'queue': the web app only queues them (durably, in the database) and `drip worker` or
    `drip send` sends them, so the web's CPU goes to requests alone."""
    ratelimit_storage_url: str = "memory://"
    """DRIP_RATELIMIT_STORAGE_URL: where `drip serve` counts requests for its rate limits
    (memory:// per process; e.g. redis://host:6379 to share them between workers and hosts)."""

    @property
    def uses_embedded_database(self) -> bool:
        return self.database_url == DEFAULT_DATABASE_URL


Choice = TypeVar("Choice", bound=str)


def _choice(name: str, value: str, choices: tuple[Choice, ...]) -> Choice:
    """`value` (trimmed, lower-cased) if one of `choices`, else a `ConfigError` naming them."""
    wanted = value.strip().lower()
    for choice in choices:
        if choice == wanted:
            return choice
    raise ConfigError(f"{name}={wanted!r} is not known; use one of {', '.join(choices)}")


def _check_host(name: str, host: str | None, shown: str) -> str:
    """`host` if it is an IP address or a valid DNS name, else a `ConfigError` for `name`.

    Caught here rather than at the first connection, which would fail after claims were made.
    """
    if not host:
        raise ConfigError(f"{name}={shown} has no host name")
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    try:
        ascii_host = host.encode("idna").decode("ascii")
    except UnicodeError:
        ascii_host = ""
    labels = ascii_host.rstrip(".").split(".")
    if not ascii_host or len(ascii_host) > 253 or not all(_valid_label(label) for label in labels):
        raise ConfigError(f"{name}={shown}: {host!r} is not a valid host name")
    return host


def _valid_label(label: str) -> bool:
    return (
        0 < len(label) <= 63
        and not label.startswith("-")
        and not label.endswith("-")
        and all(ch.isascii() and (ch.isalnum() or ch == "-") for ch in label)
    )


def is_loopback(host: str | None) -> bool:
    """True for localhost and the loopback addresses (127.0.0.0/8, ::1)."""
    if host is None:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_USERINFO = re.compile(r"^([^:/?#]*://)[^/?#]*@")


def _shown_url(value: str) -> str:
    """`value` quoted for an error message, with any user:password@ replaced by ***@."""
    return repr(_USERINFO.sub(r"\1***@", value))


def _http_url(name: str, value: str, *, https_unless_loopback: bool = False) -> str:
    """`value` without a trailing slash if it is a usable http(s) URL, else a `ConfigError`
    (which never shows a user or password the URL holds).

    With `https_unless_loopback` plain http is refused except for a loopback host (a secret
    travels with each request).
    """
    example = "set it like https://example.com"
    shown = _shown_url(value)
    if any(ch in _URL_UNSAFE or not ch.isprintable() or not ch.isascii() for ch in value):
        raise ConfigError(
            f"{name}={shown} contains characters a URL may not hold (spaces, quotes, non-ASCII);"
            f" percent-encode them or use the punycode host name, {example}"
        )
    try:
        parts = urlsplit(value)
        host = parts.hostname
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number
    except ValueError as exc:  # e.g. "http://[::1" (an unclosed IPv6 literal)
        raise ConfigError(f"{name}={shown} is not a valid URL ({exc}); {example}") from exc
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{name}={shown} is not an http(s) URL; {example}")
    _check_host(name, host, shown)
    if https_unless_loopback and parts.scheme != "https" and not is_loopback(host):
        raise ConfigError(
            f"{name}={shown} uses plain http to a host that is not this machine; the API key"
            " would travel unencrypted: use https"
        )
    return value.rstrip("/")


def _smtp_url(value: str) -> str:
    """`value` if it is a usable smtp:// or smtps:// URL; errors never show it (a password)."""
    usage = (
        "DRIP_SMTP_URL must look like smtp://user:pass@host:587 or smtps://host:465"
        " (the value is not shown because it may hold a password)"
    )
    try:
        parts = urlsplit(value)
        host = parts.hostname
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number
    except ValueError as exc:
        raise ConfigError(usage) from exc
    if parts.scheme not in ("smtp", "smtps") or not host:
        raise ConfigError(usage)
    _check_host("DRIP_SMTP_URL", host, "(not shown)")
    return value


def _origins(raw: str) -> tuple[str, ...]:
    """DRIP_ALLOWED_ORIGINS split at commas or spaces; each must be a bare http(s) origin."""
    origins = []
    for item in raw.replace(",", " ").split():
        url = _http_url("DRIP_ALLOWED_ORIGINS", item)
        parts = urlsplit(url)
        if parts.path or parts.query or parts.fragment or parts.username is not None:
            raise ConfigError(
                f"DRIP_ALLOWED_ORIGINS: {item!r} is not an origin; write only scheme://host[:port],"
                " e.g. https://blog.example.com"
            )
        origins.append(f"{parts.scheme}://{parts.netloc}".lower())
    return tuple(origins)


def _count(name: str, value: str) -> int:
    """A small non-negative whole number from the environment, else a `ConfigError`."""
    text = value.strip()
    if not text.isascii() or not text.isdigit() or int(text) > 10:
        raise ConfigError(f"{name}={value!r} must be a whole number from 0 to 10, e.g. {name}=1")
    return int(text)


def _secret_keys(raw: str) -> tuple[str, ...]:
    """DRIP_SECRET_KEY split at commas; every key must be long and varied enough."""
    keys = tuple(key.strip() for key in raw.split(",") if key.strip())
    for position, key in enumerate(keys, start=1):
        bits = len(key) * math.log2(max(len(set(key)), 2))
        if len(key) < MIN_SECRET_KEY_LENGTH or bits < MIN_SECRET_KEY_BITS:
            which = f"key {position} of DRIP_SECRET_KEY" if len(keys) > 1 else "DRIP_SECRET_KEY"
            raise ConfigError(
                f"{which} is too weak to sign links ({len(key)} characters,"
                f" {len(set(key))} different): anyone could forge unsubscribe and confirm links;"
                f" use at least {MIN_SECRET_KEY_LENGTH} random characters, e.g. {GENERATE_KEY_HINT}"
            )
    return keys


def _positive(name: str, value: str | None, kind: type[int] | type[float]) -> float | None:
    """An optional positive number from the environment; None when unset or empty."""
    if value is None or not value.strip():
        return None
    try:
        number = kind(value.strip())
    except ValueError:
        number = 0
    if number <= 0:
        raise ConfigError(f"{name}={value!r} is not a positive number; set e.g. {name}=100")
    return float(number)


def load_settings(environ: Mapping[str, str]) -> Settings:
    """Build `Settings` from an environment mapping.

    Raises `ConfigError` naming the variable when a value is invalid or a chosen transport lacks
    what it needs, so a run fails before it claims any work.
    """
    get = environ.get
    api_key = get("SENDGRID_API_KEY") or None
    transport = _choice(
        "DRIP_TRANSPORT", get("DRIP_TRANSPORT") or ("sendgrid" if api_key else "outbox"), TRANSPORTS
    )
    smtp_url = get("DRIP_SMTP_URL") or None
    if transport == "sendgrid" and not api_key:
        raise MissingApiKeyError()
    if transport == "smtp":
        if not smtp_url:
            raise ConfigError(
                "DRIP_TRANSPORT=smtp needs DRIP_SMTP_URL, e.g. smtp://user:pass@host:587"
            )
        _smtp_url(smtp_url)
    client = _choice(
        "DRIP_SENDGRID_CLIENT", get("DRIP_SENDGRID_CLIENT") or "fast", SENDGRID_CLIENTS
    )
    process = _choice(
        "DRIP_SENDGRID_PROCESS", get("DRIP_SENDGRID_PROCESS") or "auto", SENDGRID_PROCESSES
    )
    bulk = _choice("DRIP_BULK", get("DRIP_BULK") or "off", BULK_MODES)
    web_sends = _choice("DRIP_WEB_SENDS", get("DRIP_WEB_SENDS") or "now", WEB_SENDS)
    from_address = get("DRIP_FROM") or None
    if from_address is not None and "@" not in parseaddr(from_address)[1]:
        raise ConfigError(
            f"DRIP_FROM={from_address!r} has no email address; write it as"
            " 'Name <address@example.com>' or 'address@example.com'"
        )
    return Settings(
        sendgrid_client=client,
        sendgrid_rate=_positive("DRIP_SENDGRID_RATE", get("DRIP_SENDGRID_RATE"), float),
        sendgrid_window=int(
            _positive("DRIP_SENDGRID_WINDOW", get("DRIP_SENDGRID_WINDOW"), int)
            or DEFAULT_SENDGRID_WINDOW
        ),
        sendgrid_process=process,
        bulk=bulk,
        web_sends=web_sends,
        base_url=_http_url("DRIP_BASE_URL", get("DRIP_BASE_URL") or DEFAULT_BASE_URL),
        database_url=get("DRIP_DATABASE_URL") or DEFAULT_DATABASE_URL,
        course_dir=Path(get("DRIP_COURSE_DIR") or "course"),
        templates_dir=Path(get("DRIP_TEMPLATES_DIR") or "templates/email"),
        transport=transport,
        outbox_dir=Path(get("DRIP_OUTBOX_DIR") or "outbox"),
        sendgrid_api_key=api_key,
        sendgrid_api_url=_http_url(
            "DRIP_SENDGRID_API_URL",
            get("DRIP_SENDGRID_API_URL") or DEFAULT_SENDGRID_API_URL,
            https_unless_loopback=True,
        ),
        smtp_url=smtp_url,
        from_address=from_address,
        secret_keys=_secret_keys(get("DRIP_SECRET_KEY") or ""),
        web_templates_dir=Path(get("DRIP_WEB_TEMPLATES_DIR") or "templates/web"),
        allowed_origins=_origins(get("DRIP_ALLOWED_ORIGINS") or ""),
        trusted_proxies=_count("DRIP_TRUSTED_PROXIES", get("DRIP_TRUSTED_PROXIES") or "0"),
        sendgrid_webhook_key=(get("DRIP_SENDGRID_WEBHOOK_KEY") or "").strip() or None,
        ratelimit_storage_url=get("DRIP_RATELIMIT_STORAGE_URL") or "memory://",
        confirmations_per_hour=int(
            _positive("DRIP_CONFIRMATIONS_PER_HOUR", get("DRIP_CONFIRMATIONS_PER_HOUR"), int)
            or DEFAULT_CONFIRMATIONS_PER_HOUR
        ),
    )


LOCAL_SECRET_FILE = Path("drip-secret.key")


def signing_keys(settings: Settings) -> tuple[str, ...]:
    """The keys that sign links. Called by entry points only (it may create a file).

    With DRIP_SECRET_KEY set, those keys. With the embedded SQLite default and no key, a random
    key kept in `drip-secret.key` beside the database (created on first use, mode 0600), so links
    keep working across runs. Any other database needs DRIP_SECRET_KEY: every host must sign alike.
    """
    if settings.secret_keys:
        return settings.secret_keys
    if not settings.uses_embedded_database:
        raise ConfigError(
            "DRIP_SECRET_KEY is not set; it signs the links in emails and must be the same on"
            f" every host: set it to a long random string (e.g. {GENERATE_KEY_HINT})"
        )
    for _ in range(50):
        try:
            fd = os.open(LOCAL_SECRET_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            key = LOCAL_SECRET_FILE.read_text(encoding="ascii").strip()
            if key:
                return (key,)
            time.sleep(0.01)  # another process created it a moment ago and is writing it
            continue
        key = secrets.token_urlsafe(32)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(key + "\n")
        return (key,)
    raise ConfigError(f"{LOCAL_SECRET_FILE} is empty; delete it or set DRIP_SECRET_KEY")
