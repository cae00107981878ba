"""Is there anything for `drip send` to do? A quick, conservative answer before loading anything.

Cron runs `drip send` every minute or few, and nearly every run finds nothing due. Loading
SQLAlchemy, the course's Markdown, the templates and the transport to learn that costs about a
second of CPU; these few index probes through the database's own driver (the standard library's
sqlite3, or psycopg) cost milliseconds. The answer is conservative: `nothing_to_do` returns True
only when every step of a run (see `drip.delivery.send_due`) would find no row to act on, and
False whenever it is not sure (no database file yet, a schema it does not know, an unreadable
course.toml, a database it cannot reach or a URL it does not parse): the caller then takes the
full path, which also reports any error properly.

`due_by_lesson` answers `drip send --dry-run` the same way: the due readers counted per lesson
in one grouped search of the due index, without building the mailer or rendering the course
(about 1.3 s at ten million readers; `drip course check` is what checks a course).

The conditions mirror the store's queries; tests/test_idle.py checks them against a real
`send_due`, on SQLite and PostgreSQL, for every kind of pending work, and tests/test_dry_run.py
checks the counts against the store's.
"""

from __future__ import annotations

import sqlite3
import tomllib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from drip.statuses import UNCONFIRMED_TTL, DeliveryStatus, SubscriberStatus

DUE = (
    "course_id = {course} AND next_send_at IS NOT NULL AND next_send_at <= {now}"
    " AND status = {active}"
)
"""The subscribers due at {now}: store._sql.due_filter written for the drivers, word for word
the partial index's predicate (next_send_at IS NOT NULL) so that it is an index search."""
_DUE_BY_LESSON = f"SELECT next_lesson, count(*) FROM subscribers WHERE {DUE} GROUP BY next_lesson"
_PROBES = (
    # Due lessons (store._sql.due_filter), which includes claims whose lease ended.
    f"SELECT 1 FROM subscribers WHERE {DUE} LIMIT 1",
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


def _placed(statement: str, placeholder: str) -> str:
    """`statement` with each parameter written as the driver wants it (`placeholder` % name)."""
    return statement.format(**{name: placeholder % name for name in _PARAMETERS})


def _statements(placeholder: str) -> list[str]:
    """The probes as the driver wants them (see `_placed`)."""
    return [_placed(probe, placeholder) for probe in _PROBES]


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

    def idle(run: _Run) -> bool:
        return not any(run(probe) for probe in _PROBES)

    return _query(database_url, course_dir, now, idle) is True


def due_by_lesson(
    database_url: str, course_dir: Path, now: datetime
) -> dict[str | None, int] | None:
    """How many subscribers of the course in `course_dir` are due at `now`, per next lesson slug
    (None for a due reader without one), in one grouped index search: what `drip send --dry-run`
    reports (store.reports.count_due and due_by_lesson). None when this cannot be told cheaply:
    the caller then takes the full path."""

    def counts(run: _Run) -> dict[str | None, int]:
        return {lesson: int(count) for lesson, count in run(_DUE_BY_LESSON)}

    return _query(database_url, course_dir, now, counts)


_Run = Callable[[str], list[tuple[Any, ...]]]
"""Runs one statement written with {name} parameters (see _PARAMETERS); returns its rows."""
T = TypeVar("T")


def _query(
    database_url: str, course_dir: Path, now: datetime, work: Callable[[_Run], T]
) -> T | None:
    """`work` on a read-only driver connection to `database_url` (sqlite3 or psycopg), with the
    course's parameters at `now`; None when the course id, the URL, the connection or a statement
    fails (no database file yet, a schema it does not know, a database it cannot reach)."""
    course = course_id(course_dir)
    if course is None:
        return None
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
        return _sqlite_query(database_url, {**params, **stamps}, work)
    if scheme in ("postgresql", "postgres") and url.scheme in (scheme, f"{scheme}+psycopg"):
        conninfo = url._replace(scheme="postgresql").geturl()
        moments = {"now": _naive_utc(now), "cutoff": _naive_utc(cutoff)}
        return _postgresql_query(conninfo, {**params, **moments}, work)
    return None


def _sqlite_query(database_url: str, params: dict[str, Any], work: Callable[[_Run], T]) -> T | None:
    # sqlite:///relative/path or sqlite:////absolute/path; anything more (a query string, a
    # memory database) is left to the full path.
    path = database_url.partition(":///")[2]
    if not path or "?" in path or path.startswith(":memory:"):
        return None
    database = Path(path)
    if not database.is_file():
        return None
    try:
        # Read-only, and never waiting: a writer holding the file means work is going on.
        connection = sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True, timeout=0)
    except sqlite3.Error:
        return None

    def run(statement: str) -> list[tuple[Any, ...]]:
        return connection.execute(_placed(statement, ":%s"), params).fetchall()

    try:
        return work(run)
    except sqlite3.Error:  # no such table or column (an older schema), busy, corrupt
        return None
    finally:
        connection.close()


def _postgresql_query(conninfo: str, params: dict[str, Any], work: Callable[[_Run], T]) -> T | None:
    try:
        import psycopg
    except ImportError:
        return None
    try:
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as connection:

            def run(statement: str) -> list[tuple[Any, ...]]:
                return connection.execute(_placed(statement, "%%(%s)s"), params).fetchall()

            return work(run)
    except psycopg.Error:  # unreachable, refused, an older schema: the full path says which
        return None
