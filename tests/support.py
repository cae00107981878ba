"""Shared test helpers: the repository's paths, the committed course, a Mailer around any
transport, the environment of a `drip` subprocess, and `ok` for a click result."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from click.testing import Result
from sqlalchemy import Engine

from drip.course import Course, load_course
from drip.db import alembic_config
from drip.delivery import Mailer
from drip.links import LinkBuilder
from drip.render import Renderer
from drip.transports.base import Transport

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = ROOT / "templates" / "email"
COURSE_DIR = ROOT / "course"
COURSE = load_course(COURSE_DIR)
CLI_KEY = "cli-fixture-key-Xq3vN8kZ1pL0sT7wR2yB5mC9"
"""The DRIP_SECRET_KEY of the `drip` fixture (conftest.py)."""

Drip = Callable[..., Result]
"""`drip(*args, input=None)`: the command line through click (the `drip` fixture)."""


def ok(result: Result) -> Result:
    """`result`, after asserting the command exited 0 (the output is the failure message)."""
    assert result.exit_code == 0, (result.output, result.stderr)
    return result


def drip_env(**extra: str) -> dict[str, str]:
    """The environment of a `drip` subprocess on the committed course: this process's, without
    any DRIP_* setting, plus `extra`; the package imported from src/."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("DRIP_")}
    env.update(
        DRIP_COURSE_DIR=str(COURSE_DIR),
        DRIP_TEMPLATES_DIR=str(TEMPLATES),
        PYTHONPATH=str(ROOT / "src"),
    )
    env.update(extra)
    return env


def make_mailer(transport: Transport, course: Course = COURSE) -> Mailer:
    """The committed templates and test links (https://drip.example.jp, one fixed key)."""
    return Mailer(
        course=course,
        renderer=Renderer(course, TEMPLATES),
        links=LinkBuilder("https://drip.example.jp", ["test-key"]),
        transport=transport,
    )


DAYTIME_ZONES = [
    "Pacific/Honolulu",
    "America/New_York",
    "Europe/London",
    "Asia/Kolkata",
    "Asia/Tokyo",
]
"""At any moment one of these is within 3 hours of 14:00."""


def daytime_zone() -> str:
    """The zone where it is closest to 14:00 now (the real clock): hours away from the course's
    quiet hours either way, for tests of `drip worker`, which has no --now."""
    now = datetime.now(UTC)

    def from_two_pm(zone: str) -> float:
        local = now.astimezone(ZoneInfo(zone))
        return abs(local.hour + local.minute / 60 - 14)

    return min(DAYTIME_ZONES, key=from_two_pm)


POSTGRESQL_ONLY = pytest.mark.parametrize(
    "database_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
"""The conftest's database fixtures (database_url, engine, sessions) on PostgreSQL only: for
what only PostgreSQL does (psycopg directly, row locks between connections)."""


def migrate(engine: Engine, revision: str, *, down: bool = False) -> None:
    """Run alembic to `revision` as drip.db does (SQLite: foreign keys off around rebuilds)."""
    from alembic import command

    with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            conn.rollback()
            conn.connection.driver_connection.execute("PRAGMA foreign_keys = OFF")  # type: ignore[union-attr]
        with conn.begin():
            (command.downgrade if down else command.upgrade)(alembic_config(conn), revision)
