"""Is there anything for `drip send` to do? A quick, conservative answer for the embedded default.

Cron runs `drip send` every minute and nearly every run finds nothing due. Loading SQLAlchemy,
the course's Markdown, the templates and the transport to learn that costs about a second of
CPU; these few index probes through the standard library's sqlite3 cost milliseconds. The
answer is conservative: `nothing_to_do` returns True only when every step of a run (see
`drip.delivery.send_due`) would find no row to act on, and False whenever it is not sure (no
database file yet, a schema it does not know, an unreadable course.toml, a locked or broken
file): the caller then takes the full path, which also reports any error properly.

The conditions mirror the store's queries; tests/test_idle.py checks them against a real
`send_due` on every kind of pending work. Only the embedded SQLite file is probed: a server
database is reached through its driver anyway.
"""

from __future__ import annotations

import sqlite3
import tomllib
from datetime import UTC, datetime
from pathlib import Path

from drip.statuses import DeliveryStatus, SubscriberStatus

_PROBES = (
    # Due lessons (store._sql.due_filter), which includes claims whose lease ended.
    "SELECT 1 FROM subscribers WHERE course_id = :course AND next_send_at IS NOT NULL"
    " AND next_send_at <= :now AND status = :active LIMIT 1",
    # Timed pauses that ended (store.preferences.resume_ended_pauses).
    "SELECT 1 FROM subscribers WHERE course_id = :course AND paused_until IS NOT NULL"
    " AND paused_until <= :now LIMIT 1",
    # Confirmation emails the signup form queued (store.optin.take_owed_confirmations).
    "SELECT 1 FROM subscribers WHERE course_id = :course AND confirmation_wanted_at IS NOT NULL"
    " AND confirmation_wanted_at <= :now LIMIT 1",
    # In-doubt deliveries the settle policy may settle (provider_events.settle_in_doubt).
    "SELECT 1 FROM deliveries WHERE course_id = :course AND status = :in_doubt LIMIT 1",
)


def sqlite_timestamp(moment: datetime) -> str:
    """`moment` as the store writes timestamps in SQLite (models.SQLITE_DATETIME_FORMAT: naive
    UTC with microseconds), so that comparing the strings compares the instants."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def course_id(course_dir: Path) -> str | None:
    """The `id` in `course_dir`/course.toml, or None when it cannot be read as a plain string."""
    try:
        with (course_dir / "course.toml").open("rb") as file:
            value = tomllib.load(file).get("id")
    except (OSError, tomllib.TOMLDecodeError):
        return None
    return value if isinstance(value, str) and value else None


def nothing_to_do(database: Path, course_dir: Path, now: datetime) -> bool:
    """True when a `drip send` at `now` on the SQLite file `database` for the course in
    `course_dir` would claim, send, settle and resume nothing; False when it would, or
    when this cannot be told cheaply."""
    course = course_id(course_dir)
    if course is None or not database.is_file():
        return False
    params = {
        "course": course,
        "now": sqlite_timestamp(now),
        "active": SubscriberStatus.ACTIVE.value,
        "in_doubt": DeliveryStatus.IN_DOUBT.value,
    }
    try:
        # Read-only, and never waiting: a writer holding the file means work is going on.
        connection = sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True, timeout=0)
    except sqlite3.Error:
        return False
    try:
        return not any(connection.execute(probe, params).fetchone() for probe in _PROBES)
    except sqlite3.Error:  # no such table or column (an older schema), busy, corrupt
        return False
    finally:
        connection.close()
