"""Helpers for the web app's tests: settings on a test database, a controllable clock, an app."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from flask import Flask
from tests.support import COURSE_DIR, ROOT, TEMPLATES

from drip.config import Settings
from drip.web import close, create_app

WEB_TEMPLATES = ROOT / "templates" / "web"
TEST_KEY = "k3y-for-tests-0123456789-abcdefghijklmnopqrstuvwxyz"


class Clock:
    """A clock the test moves by hand; starts at a fixed weekday morning (UTC)."""

    def __init__(self, start: datetime | None = None) -> None:
        self.moment = start or datetime(2026, 12, 1, 1, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.moment

    def advance(self, **delta: float) -> datetime:
        self.moment += timedelta(**delta)
        return self.moment


def web_settings(database_url: str, tmp_path: Path, **overrides: Any) -> Settings:
    """Settings for an app on `database_url`, with the committed course and templates, an outbox
    in `tmp_path`, and a fixed signing key."""
    base = Settings(
        database_url=database_url,
        course_dir=COURSE_DIR,
        templates_dir=TEMPLATES,
        web_templates_dir=WEB_TEMPLATES,
        outbox_dir=tmp_path / "outbox",
        secret_keys=(TEST_KEY,),
        base_url="https://drip.example.jp",
    )
    return dataclasses.replace(base, **overrides)


class AppFactory:
    """Builds apps on test databases and closes them all at the end of the test."""

    def __init__(self) -> None:
        self.apps: list[Flask] = []

    def __call__(
        self, database_url: str, tmp_path: Path, clock: Clock | None = None, **overrides: Any
    ) -> Flask:
        settings = web_settings(database_url, tmp_path, **overrides)
        app = create_app(settings, clock=clock or Clock())
        app.config["TESTING"] = True
        self.apps.append(app)
        return app

    def close(self) -> None:
        for app in self.apps:
            close(app)
