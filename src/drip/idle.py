"""Is there anything for `drip send` to do? A quick, conservative answer before loading anything.

Cron runs `drip send` every minute or few, and nearly every run finds nothing due. Loading
SQLAlchemy, the course's Markdown, the templates and the transport to learn that costs about a
second of CPU; these few index probes through the database's own driver (the standard library's
sqlite3, or psycopg) cost milliseconds. The answer is conservative: `nothing_to_do` returns True
only when every step of a run (see `drip.delivery.send_due`) would find no row to act on, and
False whenever it is not sure (no database file yet, a schema it does not know, an unreadable
course.toml, a database it cannot reach or a URL it does not parse): the caller then takes the
full path, which also reports any error properly.

The conditions mirror the store's queries; tests/test_idle.py checks them against a real
`send_due`, on SQLite and PostgreSQL, for every kind of pending work.
"""

from __future__ import annotations

import sqlite3
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from drip.statuses import UNCONFIRMED_TTL, DeliveryStatus, SubscriberStatus

_PROBES = (
    # Due lessons (store._sql.due_filter), which includes claims whose lease ended.
    "SELECT 1 FROM subscribers WHERE course_id = {course} AND next_send_at IS NOT NULL"
    " AND next_send_at <= {now} AND status = {active} LIMIT 1",
    # Timed pauses that ended (store.preferences.resume_ended_pauses).
    "SELECT 1 FROM subscribers WHERE course_id = {course} AND paused_until IS NOT NULL"
    " AND paused_until <= {now} LIMIT 1",
    # Confirmation emails the signup form queued (store.optin.take_owed_confirmations).
    "SELECT 1 FROM subscribers WHERE course_id = {course} AND confirmation_wanted_at IS NOT NULL"
    " AND confirmation_wanted_at <= {now} LIMIT 1",
    # In-doubt deliveries the settle policy may settle (provider_events.settle_in_doubt).
    "SELECT 1 FROM deliveries WHERE course_id = {course} AND status = {in_doubt} LIMIT 1",
    # Signups never confirmed, quiet for UNCONFIRMED_TTL (store.subscribers.purge_unconfirmed).
    "SELECT 1 FROM subscribers WHERE course_id = {course} AND status = {pending}"
    " AND created_at < {cutoff} AND consent_at < {cutoff} AND confirmed_at IS NULL"
    " AND last_sent_at IS NULL"
    " AND (confirmation_sent_at IS NULL OR confirmation_sent_at < {cutoff})"
    " AND (confirmation_wanted_at IS NULL OR confirmation_wanted_at < {cutoff})"
    " AND NOT EXISTS (SELECT 1 FROM deliveries WHERE deliveries.subscriber_id = subscribers.id)"
    " LIMIT 1",
)
_PARAMETERS = ("course", "now", "cutoff", "active", "pending", "in_doubt")


def _statements(placeholder: str) -> list[str]:
    """The probes with each parameter written as the driver wants it (`placeholder` % name)."""
    return [probe.format(**{name: placeholder % name for name in _PARAMETERS}) for probe in _PROBES]


def sqlite_timestamp(moment: datetime) -> str:
    """`moment` as the store writes timestamps in SQLite (models.SQLITE_DATETIME_FORMAT: naive
    UTC with microseconds), so that comparing the strings compares the instants."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _naive_utc(moment: datetime) -> datetime:
    """`moment` as the store writes timestamps in PostgreSQL (timestamp without time zone)."""
    return moment.astimezone(UTC).replace(tzinfo=None)


def course_id(course_dir: Path) -> str | None:
    """The `id` in `course_dir`/course.toml, or None when it cannot be read as a plain string."""
    try:
        with (course_dir / "course.toml").open("rb") as file:
            value = tomllib.load(file).get("id")
    except (OSError, tomllib.TOMLDecodeError):
        return None
    return value if isinstance(value, str) and value else None


def nothing_to_do(database_url: str, course_dir: Path, now: datetime) -> bool:
    """True when a `drip send` at `now` on `database_url` for the course in `course_dir` would
    claim, send, settle, resume and purge nothing; False when it would, or when this cannot be told
    cheaply."""
    course = course_id(course_dir)
    if course is None:
        return False
    params: dict[str, Any] = {
        "course": course,
        "active": SubscriberStatus.ACTIVE.value,
        "pending": SubscriberStatus.PENDING.value,
        "in_doubt": DeliveryStatus.IN_DOUBT.value,
    }
    cutoff = now - UNCONFIRMED_TTL
    url = urlsplit(database_url)
    scheme = url.scheme.partition("+")[0]
    if scheme == "sqlite":
        stamps = {"now": sqlite_timestamp(now), "cutoff": sqlite_timestamp(cutoff)}
        return _sqlite_idle(database_url, {**params, **stamps})
    if scheme in ("postgresql", "postgres") and url.scheme in (scheme, f"{scheme}+psycopg"):
        conninfo = url._replace(scheme="postgresql").geturl()
        moments = {"now": _naive_utc(now), "cutoff": _naive_utc(cutoff)}
        return _postgresql_idle(conninfo, {**params, **moments})
    return False


def _sqlite_idle(database_url: str, params: dict[str, Any]) -> bool:
    # sqlite:///relative/path or sqlite:////absolute/path; anything more (a query string, a
    # memory database) is left to the full path.
    path = database_url.partition(":///")[2]
    if not path or "?" in path or path.startswith(":memory:"):
        return False
    database = Path(path)
    if not database.is_file():
        return False
    try:
        # Read-only, and never waiting: a writer holding the file means work is going on.
        connection = sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True, timeout=0)
    except sqlite3.Error:
        return False
    try:
        probes = _statements(":%s")
        return not any(connection.execute(probe, params).fetchone() for probe in probes)
    except sqlite3.Error:  # no such table or column (an older schema), busy, corrupt
        return False
    finally:
        connection.close()


def _postgresql_idle(conninfo: str, params: dict[str, Any]) -> bool:
    try:
        import psycopg
    except ImportError:
        return False
    probes = _statements("%%(%s)s")
    try:
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as connection:
            return not any(connection.execute(probe, params).fetchone() for probe in probes)
    except psycopg.Error:  # unreachable, refused, an older schema: the full path says which
        return False
