"""The signup form (`GET /`), its target (`POST /subscribe`) and the JSON variant
(`POST /api/subscribe`, CORS for DRIP_ALLOWED_ORIGINS).

`/subscribe` also takes the copy-paste form on the author's blog, a cross-site POST that cannot
carry our CSRF cookie, so it is protected otherwise: a honeypot field, rate limits (per client
IP, per address, and a global hourly cap), and an Origin/Referer check that allows only our base
URL and DRIP_ALLOWED_ORIGINS. Our own form — whose POST carries `Origin: null`, as every page here
is `no-referrer`, and which may be framed by the blog, where no cookie is sent — proves itself
with a signed, time-limited form token instead of the session cookie.

Whatever state the address is in (new, pending, confirmed, unsubscribed, bounced), a valid
submission gets the same "check your inbox" page and the same work: one short transaction that
may queue a confirmation email; `drip.web.outbound` sends it off the request path.
"""

from __future__ import annotations

import functools
import hashlib
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Response, current_app, jsonify, render_template, request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from itsdangerous import BadSignature, TimestampSigner
from limits import RateLimitItem, parse_many
from limits.strategies import RateLimiter

from drip import lifecycle
from drip.addresses import MAX_NAME_LENGTH
from drip.web.context import current
from drip.web.outbound import outbound
from drip.web.pages import course_summary
from drip.web.security import DEFAULT_LIMIT, csrf

bp = Blueprint("signup", __name__)

PER_IP = parse_many("10 per minute; 60 per hour")
"""Signup submissions per client IP (DRIP_TRUSTED_PROXIES says which address that is)."""
PER_ADDRESS = parse_many("5 per hour")
"""Submissions per address, whatever its state (a confirmation email goes out at most once per
lifecycle.CONFIRMATION_INTERVAL anyway)."""
PER_IP_REFUSED = parse_many(DEFAULT_LIMIT)
"""Refused (403) posts per client IP: the app's default limit, counted by the view."""
FORM_TOKEN_MAX_AGE = 24 * 3600
HONEYPOT = "homepage"
"""A field people never see nor fill in (hidden, not focusable); bots fill every field."""
COMMON_ZONES = (
    "Asia/Tokyo",
    "Asia/Seoul",
    "Asia/Shanghai",
    "Asia/Taipei",
    "Asia/Hong_Kong",
    "Asia/Singapore",
    "Asia/Bangkok",
    "Asia/Ho_Chi_Minh",
    "Asia/Manila",
    "Asia/Jakarta",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Asia/Dubai",
    "Australia/Sydney",
    "Australia/Lord_Howe",
    "Pacific/Auckland",
    "Pacific/Honolulu",
    "America/Los_Angeles",
    "America/Denver",
    "America/Chicago",
    "America/New_York",
    "America/Toronto",
    "America/Sao_Paulo",
    "Europe/London",
    "Europe/Paris",
    "Europe/Berlin",
    "Europe/Amsterdam",
    "UTC",
)


@dataclass(frozen=True)
class _Refused:
    """Why a submission was not taken: a field (400) or a rate limit (429)."""

    status: int
    field: str | None = None
    message: str = ""
    retry_after: int = 0


# --- the form ---------------------------------------------------------------------------------


@bp.get("/")
def form() -> str:
    return _form_page({}, None)


def _form_page(values: dict[str, str], error: _Refused | None) -> str:
    context = current()
    default_zone = context.course.settings.timezone
    zones = list(dict.fromkeys((default_zone, *COMMON_ZONES)))
    chosen = values.get("timezone") or default_zone
    if chosen not in zones:
        zones.insert(0, chosen)
    return render_template(
        "signup.html",
        values=values,
        error=error,
        zones=zones,
        chosen_zone=chosen,
        summary=course_summary(context.course),
        form_token=_signer().sign(b"signup").decode(),
        honeypot=HONEYPOT,
    )


def _signer() -> TimestampSigner:
    return TimestampSigner(str(current_app.secret_key), salt="drip.signup-form")


def _form_token_ok(token: str | None) -> bool:
    if not token:
        return False
    try:
        _signer().unsign(token, max_age=FORM_TOKEN_MAX_AGE)
    except BadSignature:
        return False
    return True


# --- POST /subscribe --------------------------------------------------------------------------


@bp.post("/subscribe")
def subscribe() -> tuple[str, int] | tuple[str, int, dict[str, str]]:
    fields = request.form
    if not (_origin_allowed() or _form_token_ok(fields.get("form_token"))):
        wait = _hit(_limiter().limiter, PER_IP_REFUSED, "signup-refused-ip", _client_ip())
        if wait:
            return _limited_page(wait)
        return (
            render_template(
                "error.html",
                code=403,
                title="このページからは登録できません",
                text="お手数ですが、講座の登録ページから直接お申し込みください。",
            ),
            403,
        )
    values = {key: fields.get(key, "") for key in ("email", "name", "timezone")}
    refused = _take(values, fields.get(HONEYPOT, ""), source="web form")
    if refused is None:
        return _check_inbox_page(), 200
    if refused.status == 429:
        return _limited_page(refused.retry_after)
    return _form_page(values, refused), 400


def counts_own_limits() -> bool:
    """A Flask-Limiter request filter: True for `POST /subscribe`, which counts every limit of
    its own in the view (the default per-IP limit for refused posts, PER_IP, PER_ADDRESS and
    the hourly cap for the others), so the extension's per-request work is skipped there. Its
    answers carry no X-RateLimit-* headers; a 429 has Retry-After."""
    return request.endpoint == "signup.subscribe"


def _limited_page(retry_after: int) -> tuple[str, int, dict[str, str]]:
    page = render_template("signup_limited.html", retry_minutes=max(1, -(-retry_after // 60)))
    return page, 429, {"Retry-After": str(retry_after)}


_CHECK_INBOX_KEY = "drip.check_inbox"
_CHECK_INBOX_KEPT = 8


def _check_inbox_page() -> str:
    """The "check your inbox" page, the same for every accepted submission (new or known
    address, or a honeypot): rendered once per app and script root (a trusted proxy's
    X-Forwarded-Prefix changes its links), then served from memory."""
    pages: dict[str, str] = current_app.extensions.setdefault(_CHECK_INBOX_KEY, {})
    root = request.script_root
    page = pages.get(root)
    if page is None:
        page = render_template("check_inbox.html")
        if len(pages) < _CHECK_INBOX_KEPT:
            pages[root] = page
    return page


# --- POST /api/subscribe ----------------------------------------------------------------------


@bp.route("/api/subscribe", methods=["POST", "OPTIONS"])
def api_subscribe() -> Response:
    origin = request.headers.get("Origin")
    cors = origin is not None and origin.lower() in current().settings.allowed_origins
    if origin is not None and not cors and not _same_site(origin):
        response = jsonify(error="forbidden", message="このサイトからは登録できません。")
        response.status_code = 403
    elif request.method == "OPTIONS":
        response = Response(status=204)
        response.headers["Access-Control-Allow-Methods"] = "POST"
        response.headers["Access-Control-Allow-Headers"] = "Content-Type"
        response.headers["Access-Control-Max-Age"] = "600"
    else:
        response = _api_answer(request.get_json(silent=True))
    if cors:
        assert origin is not None
        response.headers["Access-Control-Allow-Origin"] = origin
    response.vary.add("Origin")
    return response


def _api_answer(body: Any) -> Response:
    if not isinstance(body, dict):
        response = jsonify(error="invalid", message="JSON のオブジェクトを送ってください。")
        response.status_code = 400
        return response
    values = {key: body.get(key) for key in ("email", "name", "timezone")}
    text = {key: value if isinstance(value, str) else "" for key, value in values.items()}
    honeypot = body.get(HONEYPOT)
    refused = _take(text, honeypot if isinstance(honeypot, str) else "", source="web api")
    if refused is None:
        response = jsonify(status="check_inbox", message=CHECK_INBOX)
        response.status_code = 202
    elif refused.status == 429:
        response = jsonify(error="rate_limited", message=RATE_LIMITED)
        response.status_code = 429
        response.headers["Retry-After"] = str(refused.retry_after)
    else:
        response = jsonify(error="invalid", field=refused.field, message=refused.message)
        response.status_code = 400
    return response


# Cross-site by design (the blog's form, the JSON API): no CSRF cookie; see the module docstring.
csrf.exempt(subscribe)
csrf.exempt(api_subscribe)

CHECK_INBOX = (
    "確認メールをお送りしました。メール内のリンクを開いて、登録を完了してください。"
    "届かない場合は、迷惑メールフォルダもご確認ください。"
)
RATE_LIMITED = (
    "短時間にたくさんのお申し込みがありました。しばらくしてから、もう一度お試しください。"
)


# --- shared -----------------------------------------------------------------------------------


def _take(values: dict[str, str], honeypot: str, *, source: str) -> _Refused | None:
    """Rate-limit, validate and store one submission; None when it was taken (or silently
    dropped: a honeypot). Never touches the transport."""
    rates = _limiter().limiter
    wait = _hit(rates, PER_IP, "signup-ip", _client_ip())
    if wait:
        return _Refused(429, retry_after=wait)
    if honeypot.strip():
        return None  # the same answer as a real signup: nothing stored, nothing sent
    email = values.get("email", "").strip()
    if not email:
        return _Refused(400, "email", "メールアドレスを入力してください。")
    context = current()
    try:
        fields = lifecycle.check_signup(
            context.course,
            email=email,
            name=values.get("name") or None,
            timezone=values.get("timezone") or None,
        )
    except lifecycle.InvalidSignupError as exc:
        return _Refused(400, exc.field, _japanese(exc.field, str(exc)))
    wait = _hit(rates, PER_ADDRESS, "signup-address", _digest(fields.email))
    if not wait:
        cap = _hourly(context.settings.confirmations_per_hour)
        wait = _hit(rates, cap, "signup-all", context.course.id)
    if wait:
        return _Refused(429, retry_after=wait)
    result = lifecycle.store_signup(
        context.sessions, context.course, fields, now=context.now(), consent_source=source
    )
    if result.queued:
        outbound(current_app).wake()
    return None


@functools.cache
def _hourly(count: int) -> list[RateLimitItem]:
    return parse_many(f"{count} per hour")


def _client_ip() -> str:
    return get_remote_address() or "unknown"


def _limiter() -> Limiter:
    limiter = current_app.extensions["drip.limiter"]
    assert isinstance(limiter, Limiter)
    return limiter


def _hit(rates: RateLimiter, items: list[RateLimitItem], *keys: str) -> int:
    """Count one request against each of `items`; 0 if all allow it, else the seconds until the
    first exhausted one allows again."""
    for item in items:
        if not rates.hit(item, *keys):
            reset = rates.get_window_stats(item, *keys).reset_time
            return max(1, int(reset - time.time()) + 1)
    return 0


def _digest(address: str) -> str:
    """Rate-limit keys never hold an address (they may live in a shared Redis)."""
    return hashlib.sha256(address.encode()).hexdigest()[:32]


def _japanese(field: str, message: str) -> str:
    if field == "email":
        if "ASCII" in message:
            return (
                "メールアドレスの @ より前は、半角の英数字と . _ + - で入力してください"
                "（日本語入力をオフにして、もう一度入力してください）。"
            )
        return (
            "メールアドレスの形式が正しくありません。"
            "もう一度ご確認ください（例: yamada@example.com）。"
        )
    if field == "name":
        if "control character" in message:
            return "お名前に使えない文字（改行などの制御文字）が含まれています。"
        if "web address" in message:
            return "お名前に URL やドメイン名は入れられません。お名前だけを入力してください。"
        if "longer than" in message:
            return f"お名前は {MAX_NAME_LENGTH} 文字以内で入力してください。"
        return "お名前に使えない文字が含まれています。"
    return "タイムゾーンを一覧から選んでください。"


def _origin_of(url: str) -> str | None:
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    try:
        port = parts.port
    except ValueError:
        return None
    default = {"http": 80, "https": 443}[parts.scheme]
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    suffix = f":{port}" if port is not None and port != default else ""
    return f"{parts.scheme}://{host}{suffix}".lower()


def _allowed() -> set[str]:
    settings = current().settings
    own = _origin_of(settings.base_url)
    return {*settings.allowed_origins, *([own] if own else [])}


def _same_site(origin: str) -> bool:
    return _origin_of(origin) in _allowed()


def _origin_allowed() -> bool:
    """The POST comes from our base URL or an allowed origin (Origin, else Referer). A request
    with neither header is not a browser form post from another page: allowed (rate limits
    and the honeypot still apply). `Origin: null` (a sandboxed or no-referrer page) is not."""
    origin = request.headers.get("Origin")
    if origin is not None:
        return _origin_of(origin) in _allowed()
    referer = request.headers.get("Referer")
    if referer is not None:
        return _origin_of(referer) in _allowed()
    return True
