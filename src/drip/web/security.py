"""Headers, limits and error pages common to every response of the web app.

- Content-Security-Policy: nothing external, no inline script or style; only the signup page may
  be framed, and only by DRIP_ALLOWED_ORIGINS.
- Referrer-Policy: no-referrer everywhere, so a token in a URL never leaks to another site.
- Cache-Control: no-store on every dynamic page (token pages must not be kept by proxies).
- Forwarded headers are trusted only for DRIP_TRUSTED_PROXIES hops (werkzeug's ProxyFix).
- Errors answer a Japanese page with the status; never a stack trace or a setting.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask, Response, abort, render_template, request
from flask_limiter import Limit, Limiter
from flask_limiter.util import get_remote_address
from flask_wtf.csrf import CSRFError, CSRFProtect
from limits.storage import MemoryStorage
from sqlalchemy.exc import InterfaceError, OperationalError
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from drip.config import Settings

log = logging.getLogger("drip.web")

MAX_FORM_BYTES = 1024 * 1024
"""Bodies above this are refused with 413 before they are read (the webhook allows more)."""
FRAMEABLE_ENDPOINTS = frozenset({"signup.form"})
DEFAULT_LIMIT = "300 per minute"
DEFAULT_LIMITS: list[str | Callable[[], str] | Limit] = [DEFAULT_LIMIT]
"""Per client IP, on every endpoint not exempted; the signup routes add tighter ones
(`POST /subscribe` counts the same limit in its view: `signup.counts_own_limits`)."""

csrf = CSRFProtect()
View = TypeVar("View", bound=Callable[..., Any])


class SweptMemoryStorage(MemoryStorage):
    """limits' in-memory storage (DRIP_RATELIMIT_STORAGE_URL=memory://, the default), with
    expired counters dropped at most once a second, oldest first, by the request that finds one
    due. The stock storage starts a timer thread 10 ms after every count and scans every counter
    each time: with a new client IP and address per signup (a burst: 500 signups/s keep about
    1,500 new counters a second, hourly ones living an hour) each scan costs 45-230 ms at
    150,000 counters, run every ~10 ms. Here a sweep costs what it drops, and no thread starts.

    Only memory: a counter's expiry is already checked when it is read, so sweeping later never
    lets a request through that the limit refuses.
    """

    STORAGE_SCHEME = ["drip-memory"]  # noqa: RUF012 (limits declares it a list)
    SWEEP_SECONDS = 1.0

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False, **options: str):
        self._expiring: list[tuple[float, str]] = []
        """(expiry, key) of every counter window opened, a heap (stale entries are skipped)."""
        self._expiring_lock = threading.Lock()
        self._next_sweep = 0.0
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)

    def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        count = super().incr(key, expiry, amount)
        if count == amount:  # a new window: its counter expires at expirations[key]
            with self._expiring_lock:
                heapq.heappush(self._expiring, (self.expirations.get(key, 0.0), key))
        return count

    def _MemoryStorage__schedule_expiry(self) -> None:
        # Replaces the stock timer thread (limits calls this before every count).
        now = time.time()
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.SWEEP_SECONDS
        self._sweep(now)

    def _sweep(self, now: float) -> None:
        with self._expiring_lock:
            due: list[str] = []
            while self._expiring and self._expiring[0][0] <= now:
                due.append(heapq.heappop(self._expiring)[1])
        for key in due:
            with self.locks[key]:
                if self.expirations.get(key, now + 1) <= now:  # not reopened meanwhile
                    self.storage.pop(key, None)
                    self.expirations.pop(key, None)
            self.locks.pop(key, None)
        if self.events:  # moving windows (not used by drip): the stock scan
            self._MemoryStorage__expire_events()  # type: ignore[attr-defined]


def allow_body(limit: int) -> Callable[[View], View]:
    """Let one view accept bodies up to `limit` bytes instead of MAX_FORM_BYTES."""

    def mark(view: View) -> View:
        view.max_body_bytes = limit  # type: ignore[attr-defined]
        return view

    return mark


def content_security_policy(frame_ancestors: str) -> str:
    return "; ".join(
        [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            "form-action 'self'",
            "base-uri 'none'",
            f"frame-ancestors {frame_ancestors}",
        ]
    )


def install(app: Flask, settings: Settings) -> Limiter:
    """Security headers, body limits, CSRF, rate limits, proxies and error pages on `app`."""
    app.config["MAX_CONTENT_LENGTH"] = MAX_FORM_BYTES
    app.config["MAX_FORM_MEMORY_SIZE"] = MAX_FORM_BYTES
    if settings.trusted_proxies:
        hops = settings.trusted_proxies
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops, x_prefix=hops
        )
    csrf.init_app(app)
    limiter = Limiter(
        get_remote_address,
        app=app,
        default_limits=DEFAULT_LIMITS,
        storage_uri=_storage_uri(settings.ratelimit_storage_url),
        headers_enabled=True,
    )
    framers = " ".join(settings.allowed_origins) or "'none'"
    # Built once: every response carries one of the two.
    framed_policy = content_security_policy(framers)
    unframed_policy = content_security_policy("'none'")

    @app.before_request
    def refuse_large_bodies() -> None:
        # Refused from the Content-Length alone, before anything reads the body; a chunked body
        # without one is cut off by werkzeug at the same limit while it is read.
        view = app.view_functions.get(request.endpoint or "")
        limit = int(getattr(view, "max_body_bytes", MAX_FORM_BYTES))
        request.max_content_length = limit
        if request.content_length is not None and request.content_length > limit:
            abort(413)

    @app.after_request
    def security_headers(response: Response) -> Response:
        headers = response.headers
        frameable = request.endpoint in FRAMEABLE_ENDPOINTS
        headers["Content-Security-Policy"] = framed_policy if frameable else unframed_policy
        if not frameable:
            headers["X-Frame-Options"] = "DENY"
        headers["Referrer-Policy"] = "no-referrer"
        headers["X-Content-Type-Options"] = "nosniff"
        headers["Cross-Origin-Opener-Policy"] = "same-origin"
        headers["Permissions-Policy"] = "camera=(), microphone=(), geolocation=(), payment=()"
        if request.endpoint != "static":
            headers["Cache-Control"] = "no-store"
        return response

    @app.errorhandler(CSRFError)
    def csrf_failed(error: CSRFError) -> tuple[str, int]:
        return error_page(
            400,
            "フォームの有効期限が切れました",
            "ページを読み込み直してから、もう一度お試しください。",
        )

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> tuple[str, int] | HTTPException:
        code = error.code or 500
        title, text = ERROR_TEXTS.get(code, ERROR_TEXTS[500])
        return error_page(code, title, text)

    @app.errorhandler(OperationalError)
    @app.errorhandler(InterfaceError)
    def database_down(error: Exception) -> tuple[str, int]:
        log.error("database unavailable: %s", type(error).__name__)
        title, text = ERROR_TEXTS[503]
        return error_page(503, title, text)

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> tuple[str, int]:
        # Logged with its traceback for the operator; the page shows nothing of it.
        log.exception("unexpected error on %s %s", request.method, request.path)
        title, text = ERROR_TEXTS[500]
        return error_page(500, title, text)

    return limiter


def _storage_uri(url: str) -> str:
    """memory:// is served by `SweptMemoryStorage`; other storages as limits has them."""
    if url.startswith("memory://"):
        return "drip-memory://" + url.removeprefix("memory://")
    return url


ERROR_TEXTS: dict[int, tuple[str, str]] = {
    400: ("リクエストを処理できませんでした", "入力内容をご確認のうえ、もう一度お試しください。"),
    404: ("ページが見つかりません", "リンクが途中で切れていないか、ご確認ください。"),
    405: ("この操作はできません", "ページを開き直して、ボタンからお試しください。"),
    413: ("送信された内容が大きすぎます", "入力内容を短くして、もう一度お試しください。"),
    429: (
        "リクエストが多すぎます",
        "短時間に多くのリクエストがありました。しばらく時間をおいてから、もう一度お試しください。",
    ),
    500: ("エラーが発生しました", "申し訳ありません。しばらくしてから、もう一度お試しください。"),
    503: (
        "ただいま混み合っています",
        "一時的にご利用いただけません。しばらくしてから、もう一度お試しください。",
    ),
}


def error_page(code: int, title: str, text: str) -> tuple[str, int]:
    return render_template("error.html", title=title, text=text, code=code), code
