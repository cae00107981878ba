"""`drip send --dry-run`: answered by `drip.idle.due_by_lesson` (one grouped query through
sqlite3 or psycopg, no SQLAlchemy, no course rendering). It must report what the full path's
`send_due(..., dry_run=True)` reports (the store's count_due and due_by_lesson), on SQLite and
PostgreSQL, and claim, send and change nothing. Real SQLite file and real PostgreSQL."""

from __future__ import annotations

import json
import random
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, insert, select, text
from sqlalchemy.orm import Session, sessionmaker
from tests.support import COURSE, COURSE_DIR, drip_env, make_mailer

from drip import store
from drip.db import make_engine, open_database
from drip.delivery import send_due
from drip.idle import _DUE_BY_LESSON, _placed, due_by_lesson
from drip.lifecycle import subscribe
from drip.models import deliveries, subscribers
from drip.statuses import SubscriberStatus
from drip.transports.memory import MemoryTransport

# 2026-03-02 is a Monday; 01:00 UTC is 10:00 in Tokyo, outside quiet hours.
T0 = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)
SLUGS = [lesson.slug for lesson in COURSE.lessons]


@pytest.fixture
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(database_url)
    yield sessionmaker(engine, expire_on_commit=False)
    engine.dispose()


def store_report(sessions: sessionmaker[Session], now: datetime) -> dict[str, object]:
    """What the full path's dry run reports (send_due with dry_run=True), as --json prints it."""
    report = send_due(sessions, make_mailer(MemoryTransport()), now=now, dry_run=True)
    return report.as_dict()


def fast_counts(database_url: str, now: datetime) -> dict[str | None, int]:
    counts = due_by_lesson(database_url, COURSE_DIR, now)
    assert counts is not None, "the driver-level path could not answer"
    return counts


def dump(engine: Engine) -> list[tuple[object, ...]]:
    with engine.connect() as connection:
        return [
            tuple(row)
            for table in (subscribers, deliveries)
            for row in connection.execute(select(table).order_by(table.c.id))
        ]


def reader(sessions: sessionmaker[Session], email: str, now: datetime = T0) -> int:
    return subscribe(
        sessions,
        make_mailer(MemoryTransport()),
        email=email,
        name=None,
        timezone="Asia/Tokyo",
        confirmed=True,
        now=now,
        consent_source="test",
    ).subscriber_id


def every_kind_of_reader(sessions: sessionmaker[Session]) -> None:
    """Readers due (lesson 1, and lesson 2 once lesson 1 went out), not due yet, paused, held
    (a delivery in doubt), claimed by a run whose lease has not ended, and another course's."""
    for number in range(3):
        reader(sessions, f"due{number}@example.com")
    reader(sessions, "later@example.com", now=T0 + timedelta(days=3))
    sent = reader(sessions, "sent@example.com", now=T0 - timedelta(days=30))
    paused = reader(sessions, "paused@example.com")
    doubt = reader(sessions, "doubt@example.com")
    claimed = reader(sessions, "claimed@example.com")
    other = reader(sessions, "other@example.com")
    with sessions() as session, session.begin():
        moved = text("UPDATE subscribers SET course_id = 'another-course' WHERE id = :id")
        session.execute(moved, {"id": other})
        store.pause(session, paused, T0)
    # The reader who signed up 30 days ago gets lesson 1; the next one is due by T0.
    send_due(sessions, make_mailer(MemoryTransport()), now=T0 - timedelta(days=30), only=[sent])
    for subscriber, run_id in ((doubt, "run-doubt"), (claimed, "run-live")):
        with sessions() as session, session.begin():
            batch = store.claim_due(
                session,
                course_id=COURSE.id,
                now=T0,
                limit=10,
                run_id=run_id,
                lease=timedelta(minutes=30),
                only=[subscriber],
            )
            [claim] = batch.claims
            if subscriber == doubt:
                store.record_in_doubt(session, [(claim.delivery_id, "connection reset")], now=T0)


def test_the_dry_run_counts_every_kind_of_reader_as_the_store_does(
    database_url: str, sessions: sessionmaker[Session]
) -> None:
    every_kind_of_reader(sessions)
    counts = fast_counts(database_url, T0)
    assert counts == {SLUGS[0]: 3, SLUGS[1]: 1}  # due0-2, and sent's second lesson
    report = store_report(sessions, T0)
    assert report["per_lesson"] == {slug: {"due": n} for slug, n in counts.items()}
    assert report["due"] == sum(counts.values())
    # Once the live claim's lease (30 minutes) has ended, its reader is due again.
    after_lease = T0 + timedelta(minutes=31)
    assert fast_counts(database_url, after_lease)[SLUGS[0]] == 4
    assert store_report(sessions, after_lease)["per_lesson"] == {
        slug: {"due": n} for slug, n in fast_counts(database_url, after_lease).items()
    }


def test_the_counts_agree_with_the_store_on_random_rows(
    database_url: str, sessions: sessionmaker[Session]
) -> None:
    """Rows no flow would write (any status with any next_send_at, no next lesson, another
    course) at moments on both sides of each next_send_at: the raw SQL must not drift from
    store._sql.due_filter."""
    chance = random.Random(11)
    moments = [T0 + timedelta(minutes=m) for m in (-90, -1, 0, 1, 90)]
    moments.append(T0 + timedelta(microseconds=1))
    rows = []
    for number in range(300):
        rows.append(
            {
                "course_id": chance.choice([COURSE.id, COURSE.id, "another-course"]),
                "email": f"r{number}@example.com",
                "timezone": "Asia/Tokyo",
                "status": chance.choice([status.value for status in SubscriberStatus]),
                "created_at": T0,
                "consent_at": T0,
                "consent_source": "test",
                "status_changed_at": T0,
                "next_lesson": chance.choice([*SLUGS[:3], None]),
                "next_send_at": chance.choice([None, *moments]),
            }
        )
    with sessions() as session, session.begin():
        session.execute(insert(subscribers), rows)
    for now in [*moments, T0 + timedelta(days=1)]:
        counts = fast_counts(database_url, now)
        with sessions() as session:
            due = store.count_due(session, COURSE.id, now)
            per_lesson = store.due_by_lesson(session, COURSE.id, now)
        assert sum(counts.values()) == due, now
        assert {slug: n for slug, n in counts.items() if slug is not None} == per_lesson, now
    assert 0 < sum(fast_counts(database_url, T0).values()) < len(rows)


def test_drip_send_dry_run_reports_as_the_full_path_and_changes_nothing(
    database_url: str, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    """The whole command, words and --json: the same report as send_due(dry_run=True), no row
    changed (nothing claimed, nothing sent), and neither SQLAlchemy nor the renderer loaded."""
    every_kind_of_reader(sessions)
    engine = sessions.kw["bind"]
    before = dump(engine)
    env = drip_env(
        DRIP_DATABASE_URL=database_url,
        DRIP_TRANSPORT="outbox",
        DRIP_OUTBOX_DIR=str(tmp_path / "outbox"),
    )
    probe = (
        "import json, sys; from drip.cli import main\n"
        "try: main(sys.argv[1:], prog_name='drip')\n"
        "finally: print(json.dumps(sorted(m for m in ('sqlalchemy', 'drip.delivery',"
        " 'drip.render') if m in sys.modules)), file=sys.stderr)"
    )
    args = ["send", "--dry-run", "--now", T0.isoformat()]
    as_json = subprocess.run(
        [sys.executable, "-c", probe, *args, "--json"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(as_json.stderr.strip().splitlines()[-1]) == []
    assert json.loads(as_json.stdout) == store_report(sessions, T0)
    words = subprocess.run(
        [sys.executable, "-m", "drip", *args], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert (words.returncode, words.stderr) == (0, "")
    lines = [f"  {SLUGS[0]}: 3", f"  {SLUGS[1]}: 1"]
    assert words.stdout.splitlines() == [f"dry run at {T0.isoformat()}: 4 due", *sorted(lines)]
    assert dump(engine) == before
    assert not (tmp_path / "outbox").exists()


def test_a_dry_run_the_probe_cannot_answer_takes_the_full_path(tmp_path: Path) -> None:
    """No database file yet (the embedded default): the full path creates it and says 0 due;
    a course.toml without an id: the full path's error, exit 2."""
    env = drip_env()

    def drip(*args: str, course: Path = COURSE_DIR) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "drip", "send", "--dry-run", "--now", T0.isoformat(), *args],
            env={**env, "DRIP_COURSE_DIR": str(course)},
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )

    first = drip("--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["due"] == 0
    assert (tmp_path / "drip.db").is_file()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "course.toml").write_text("title = 'no id'\n", encoding="utf-8")
    refused = drip(course=broken)
    assert refused.returncode == 2, refused
    assert "error" in refused.stderr.lower()


def test_the_count_is_one_search_of_the_due_index(
    database_url: str, sessions: sessionmaker[Session]
) -> None:
    """At ten million readers a scan costs seconds: the grouped count must search
    ix_subscribers_due on SQLite (EXPLAIN QUERY PLAN) and on PostgreSQL (EXPLAIN, on a course's
    worth of analysed rows: on an empty table the costs tie between indexes)."""
    params = {"course": COURSE.id, "active": "active"}
    with sessions() as session, session.begin():
        connection = session.connection()
        if connection.dialect.name == "sqlite":
            statement = _placed(_DUE_BY_LESSON, ":%s")
            sql = f"EXPLAIN QUERY PLAN {statement}"
            found = connection.exec_driver_sql(sql, {**params, "now": "2026-03-02 01:00:00.000000"})
            plan = [str(row[3]) for row in found]
            assert plan[0].startswith("SEARCH") and "INDEX ix_subscribers_due " in plan[0], plan
            assert not any(step.startswith("SCAN") for step in plan), plan
            return
        session.execute(
            text(
                "INSERT INTO subscribers (course_id, email, timezone, status, created_at,"
                " consent_at, consent_source, status_changed_at, next_lesson, next_send_at)"
                " SELECT :course, 'r' || i || '@example.com', 'Asia/Tokyo', 'active', :t, :t,"
                " 'test', :t, :lesson, CASE WHEN i < 50 THEN :t ELSE :later END"
                " FROM generate_series(1, 20000) AS i"
            ),
            {
                "course": COURSE.id,
                "t": T0.replace(tzinfo=None),
                "later": (T0 + timedelta(days=30)).replace(tzinfo=None),
                "lesson": SLUGS[0],
            },
        )
        connection.exec_driver_sql("ANALYZE subscribers")
        statement = _placed(_DUE_BY_LESSON, "%%(%s)s")
        found = connection.exec_driver_sql(
            f"EXPLAIN {statement}", {**params, "now": T0.replace(tzinfo=None)}
        )
        plan = " ".join(str(row[0]) for row in found)
        assert "ix_subscribers_due" in plan and "Seq Scan" not in plan, plan


def test_an_older_schema_is_left_to_the_full_path(tmp_path: Path) -> None:
    older = tmp_path / "older.db"
    connection = sqlite3.connect(older)
    connection.execute("CREATE TABLE subscribers (id INTEGER PRIMARY KEY, course_id TEXT)")
    connection.close()
    assert due_by_lesson(f"sqlite:///{older}", COURSE_DIR, T0) is None
    current = tmp_path / "current.db"
    open_database(f"sqlite:///{current}", auto_upgrade=True).dispose()
    assert due_by_lesson(f"sqlite:///{current}", COURSE_DIR, T0) == {}
    assert due_by_lesson("postgresql+psycopg://nobody@127.0.0.1:9/none", COURSE_DIR, T0) is None
