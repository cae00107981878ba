"""The web app (`drip serve`): the signup form, confirm, unsubscribe, manage, the provider
webhook and health checks. An entry point like the CLI: it reads the clock and the request and
calls `drip.lifecycle` and `drip.delivery`; no business rule is decided here.

`create_app(settings)` builds one app; each concern is a blueprint in its own module.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from flask import Flask

from drip.config import Settings, signing_keys
from drip.errors import ConfigError
from drip.web import (
    confirm,
    health,
    manage,
    outbound,
    security,
    signup,
    unsubscribe,
    webhooks,
)
from drip.web.context import EXTENSION, WebContext
from drip.wiring import make_mailer, open_ledger


def _utc_now() -> datetime:
    return datetime.now(UTC)


def check_pages(settings: Settings) -> None:
    """Raise `ConfigError` when DRIP_WEB_TEMPLATES_DIR holds no pages (drip run from the wrong
    folder): every request would be answered with a 500."""
    form = settings.web_templates_dir / "signup.html"
    if not form.is_file():
        raise ConfigError(
            f"DRIP_WEB_TEMPLATES_DIR={settings.web_templates_dir}: there is no {form};"
            " run drip in the project folder or set DRIP_WEB_TEMPLATES_DIR to its templates/web"
        )


def create_app(settings: Settings, *, clock: Callable[[], datetime] | None = None) -> Flask:
    """The Flask app of one deployment. Raises `ConfigError` or `CourseError` at once (before
    serving anything, and before a database file is made) for bad settings, missing pages or a
    course that cannot be sent."""
    check_pages(settings)
    engine, sessions, course = open_ledger(settings)
    mailer = make_mailer(settings, course)
    app = Flask(
        __name__,
        template_folder=str(settings.web_templates_dir.resolve()),
        static_folder=str((settings.web_templates_dir / "static").resolve()),
        static_url_path="/static",
    )
    # Flask's session cookie only carries the CSRF token; its key is derived from the link key
    # so that one cannot be used for the other.
    app.secret_key = hmac.new(
        signing_keys(settings)[0].encode(), b"drip.web.session", hashlib.sha256
    ).hexdigest()
    app.config.update(
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.base_url.startswith("https://"),
        WTF_CSRF_TIME_LIMIT=None,  # the token lives as long as the session cookie
        TEMPLATES_AUTO_RELOAD=False,
    )
    app.extensions[EXTENSION] = WebContext(
        settings=settings,
        course=course,
        engine=engine,
        sessions=sessions,
        mailer=mailer,
        clock=clock or _utc_now,
    )
    limiter = security.install(app, settings)
    app.extensions["drip.limiter"] = limiter

    @app.context_processor
    def course_globals() -> dict[str, Any]:
        return {"course": course.settings, "lesson_count": len(course.lessons)}

    app.register_blueprint(health.bp)
    app.register_blueprint(signup.bp)
    limiter.request_filter(signup.counts_own_limits)
    app.register_blueprint(confirm.bp)
    app.register_blueprint(unsubscribe.bp)
    limiter.exempt(health.bp)
    # RFC 8058 one-click unsubscribes come in bursts from a mailbox provider's few addresses: a
    # 429 would leave a reader subscribed. The links are signed; a resubscribe queues at most
    # one confirmation a day.
    limiter.exempt(unsubscribe.bp)
    manage.register(app, limiter)
    app.register_blueprint(webhooks.bp)
    limiter.exempt(webhooks.bp)  # signed requests from SendGrid's few addresses
    return app


def close(app: Flask) -> None:
    """Stop the app's background sender, then close its database connections (tests, and a
    server shutting down): a connection the sender still held would outlive the engine."""
    sender = app.extensions.get(outbound.KEY)
    if isinstance(sender, outbound.Outbound):
        sender.stop()
    context = app.extensions[EXTENSION]
    assert isinstance(context, WebContext)
    context.engine.dispose()
