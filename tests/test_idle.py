"""`drip.idle`: the quick "anything to do?" probe `drip send` asks the database (through sqlite3
or psycopg, no SQLAlchemy) before loading the course. It must never say "nothing" when a run
would act (a lesson due, a pause ended, a confirmation owed, a delivery in doubt), and must say
so when nothing is. Real SQLite file and real PostgreSQL."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine, insert, select, text
from sqlalchemy.orm import Session, sessionmaker
from tests.support import COURSE, COURSE_DIR, ROOT, drip_env, make_mailer

from drip import preferences
from drip.db import make_engine, open_database
from drip.delivery import Mailer, send_due
from drip.idle import _PARAMETERS, _statements, nothing_to_do, sqlite_timestamp
from drip.lifecycle import subscribe
from drip.models import deliveries, subscribers
from drip.statuses import UNCONFIRMED_TTL
from drip.store import optin
from drip.transports.memory import MemoryTransport

# 2026-03-02 is a Monday; 01:00 UTC is 10:00 in Tokyo, outside quiet hours.
T0 = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)
SUBSCRIBER = {
    "course_id": COURSE.id,
    "email": "a@example.com",
    "timezone": "Asia/Tokyo",
    "status": "active",
    "created_at": T0,
    "consent_at": T0,
    "consent_source": "test",
    "status_changed_at": T0,
    "next_lesson": COURSE.lessons[0].slug,
}


@dataclass
class Ledger:
    url: str
    engine: Engine
    sessions: sessionmaker[Session]
    mailer: Mailer
    transport: MemoryTransport

    def idle(self, now: datetime) -> bool:
        return nothing_to_do(self.url, COURSE_DIR, now)

    def subscribe(self, email: str, *, confirmed: bool = True, now: datetime = T0) -> int:
        return subscribe(
            self.sessions,
            self.mailer,
            email=email,
            name=None,
            timezone="Asia/Tokyo",
            confirmed=confirmed,
            now=now,
            consent_source="test",
        ).subscriber_id

    def execute(self, sql: str, **params: object) -> None:
        with self.sessions() as session, session.begin():
            session.execute(text(sql), params)

    def dump(self) -> list[tuple[object, ...]]:
        """Every row of the tables a run may change, to tell that a run changed nothing."""
        with self.engine.connect() as connection:
            return [
                tuple(row)
                for table in (subscribers, deliveries)
                for row in connection.execute(select(table).order_by(table.c.id))
            ]


@pytest.fixture
def ledger(database_url: str) -> Iterator[Ledger]:
    engine = make_engine(database_url)
    transport = MemoryTransport()
    sessions = sessionmaker(engine, expire_on_commit=False)
    yield Ledger(database_url, engine, sessions, make_mailer(transport), transport)
    engine.dispose()


def assert_run_does_nothing(ledger: Ledger, now: datetime) -> None:
    before = ledger.dump()
    report = send_due(ledger.sessions, ledger.mailer, now=now)
    assert (report.due, report.sent, report.retried, report.failed, report.in_doubt) == (
        0,
        0,
        0,
        0,
        0,
    )
    assert (report.confirmations, report.rescheduled) == (0, 0)
    assert ledger.dump() == before


def test_sqlite_timestamps_compare_as_the_store_writes_them(tmp_path: Path) -> None:
    path = tmp_path / "drip.db"
    engine = open_database(f"sqlite:///{path}", auto_upgrade=True)
    moment = datetime(2026, 3, 2, 22, 30, 0, 5, tzinfo=UTC)
    with sessionmaker(engine)() as session, session.begin():  # through the column's type
        session.execute(insert(subscribers).values(**SUBSCRIBER, next_send_at=moment))
    engine.dispose()
    connection = sqlite3.connect(path)
    [stored] = connection.execute("SELECT next_send_at FROM subscribers").fetchone()
    connection.close()
    assert stored == sqlite_timestamp(moment)
    assert sqlite_timestamp(moment.astimezone(ZoneInfo("Asia/Tokyo"))) == stored


def test_an_empty_ledger_has_nothing_to_do(ledger: Ledger) -> None:
    assert ledger.idle(T0)
    assert_run_does_nothing(ledger, T0)


def test_a_due_lesson_is_work_until_it_is_sent(ledger: Ledger) -> None:
    ledger.subscribe("a@example.com")
    assert not ledger.idle(T0)
    assert send_due(ledger.sessions, ledger.mailer, now=T0).sent == 1
    assert ledger.idle(T0 + timedelta(minutes=1))
    assert_run_does_nothing(ledger, T0 + timedelta(minutes=1))


def test_the_next_lesson_becomes_work_at_its_due_time(ledger: Ledger) -> None:
    ledger.subscribe("a@example.com")
    send_due(ledger.sessions, ledger.mailer, now=T0)
    with ledger.sessions() as session:
        next_at = session.execute(select(subscribers.c.next_send_at)).scalar_one()
    assert ledger.idle(next_at - timedelta(microseconds=1))
    assert not ledger.idle(next_at)


def test_an_ended_pause_is_work(ledger: Ledger) -> None:
    subscriber = ledger.subscribe("a@example.com")
    send_due(ledger.sessions, ledger.mailer, now=T0)
    assert preferences.pause(ledger.sessions, subscriber, weeks=1, now=T0)
    ends = T0 + timedelta(weeks=1)
    assert ledger.idle(ends - timedelta(seconds=1))
    assert_run_does_nothing(ledger, ends - timedelta(seconds=1))
    assert not ledger.idle(ends)
    send_due(ledger.sessions, ledger.mailer, now=ends)  # resumes the reader
    with ledger.sessions() as session:
        assert session.execute(text("SELECT status FROM subscribers")).scalar_one() == "active"


def test_an_owed_confirmation_is_work(ledger: Ledger) -> None:
    with ledger.sessions() as session, session.begin():
        optin.request_optin(
            session,
            optin.Signup(COURSE.id, "new@example.com", None, "Asia/Tokyo", "web"),
            now=T0,
            interval=timedelta(hours=24),
        )
    assert not ledger.idle(T0)
    assert send_due(ledger.sessions, ledger.mailer, now=T0).confirmations == 1
    assert ledger.idle(T0 + timedelta(minutes=1))


def test_a_delivery_in_doubt_is_work(ledger: Ledger) -> None:
    ledger.subscribe("a@example.com")
    send_due(ledger.sessions, ledger.mailer, now=T0)
    later = T0 + timedelta(minutes=5)
    assert ledger.idle(later)
    ledger.execute("UPDATE deliveries SET status = 'in_doubt'")
    assert not ledger.idle(later)


def test_another_course_s_work_is_not_this_course_s(ledger: Ledger) -> None:
    ledger.subscribe("a@example.com")
    ledger.execute("UPDATE subscribers SET course_id = 'another-course'")
    assert ledger.idle(T0)


def test_when_unsure_it_says_there_is_work(ledger: Ledger, tmp_path: Path) -> None:
    assert ledger.idle(T0)
    assert not nothing_to_do(ledger.url, tmp_path / "no-course", T0)
    broken = tmp_path / "broken-course"
    broken.mkdir()
    (broken / "course.toml").write_text("id = [unterminated", encoding="utf-8")
    assert not nothing_to_do(ledger.url, broken, T0)
    (broken / "course.toml").write_text("title = 'no id'", encoding="utf-8")
    assert not nothing_to_do(ledger.url, broken, T0)


def test_a_database_it_cannot_read_is_work(tmp_path: Path, empty_database_url: str) -> None:
    """No file, no tables, an older schema, not a database, a server that does not answer,
    a URL it does not parse: each takes the full path, which says what is wrong."""
    assert not nothing_to_do(empty_database_url, COURSE_DIR, T0)
    assert not nothing_to_do(f"sqlite:///{tmp_path / 'missing.db'}", COURSE_DIR, T0)
    older = tmp_path / "older.db"
    connection = sqlite3.connect(older)
    connection.execute("CREATE TABLE subscribers (id INTEGER PRIMARY KEY, course_id TEXT)")
    connection.close()
    assert not nothing_to_do(f"sqlite:///{older}", COURSE_DIR, T0)
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database" * 100)
    assert not nothing_to_do(f"sqlite:///{garbage}", COURSE_DIR, T0)
    assert not nothing_to_do("sqlite://", COURSE_DIR, T0)
    assert not nothing_to_do(f"sqlite:///{older}?mode=ro", COURSE_DIR, T0)
    assert not nothing_to_do("postgresql+psycopg://nobody@127.0.0.1:9/none", COURSE_DIR, T0)
    assert not nothing_to_do("mysql://root@127.0.0.1/test", COURSE_DIR, T0)


def test_a_replayed_course_never_hides_work(ledger: Ledger) -> None:
    """Hour by hour over the course's length, readers in several zones: whenever the probe
    says nothing, a real run does nothing; and it does say nothing most hours."""
    for number, zone in enumerate(("Asia/Tokyo", "America/New_York", "Europe/London")):
        subscribe(
            ledger.sessions,
            ledger.mailer,
            email=f"reader{number}@example.com",
            name=None,
            timezone=zone,
            confirmed=True,
            now=T0 + timedelta(hours=5 * number),
            consent_source="test",
        )
    idle_hours = 0
    for hour in range(24 * 21):
        now = T0 + timedelta(hours=hour, minutes=7)
        if ledger.idle(now):
            idle_hours += 1
            assert_run_does_nothing(ledger, now)
        else:
            send_due(ledger.sessions, ledger.mailer, now=now)
    lessons = len(COURSE.lessons)
    assert len(ledger.transport.attempts) == 3 * lessons
    assert idle_hours > 24 * 21 - 3 * lessons * 2


def test_drip_send_with_nothing_due_does_not_load_the_send_engine(tmp_path: Path) -> None:
    """The whole command on the embedded default: same output as a full run, and neither
    SQLAlchemy, the course's renderer nor the scheduler (its holiday calendars) imported, with
    `--now` too."""
    shutil.copytree(ROOT / "course", tmp_path / "course")
    env = drip_env(DRIP_COURSE_DIR=str(tmp_path / "course"))
    now = "2026-03-02T10:00+09:00"

    def drip(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "drip", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )

    def loaded(heavy: tuple[str, ...], *args: str) -> tuple[list[str], str]:
        """Which of `heavy` a `drip` command (in this process's way: main()) has imported,
        and its stdout."""
        probe = (
            "import json, sys; from drip.cli import main\n"
            "try: main(sys.argv[1:], prog_name='drip')\n"
            "except SystemExit: pass\n"
            f"print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)), file=sys.stderr)"
        )
        run = subprocess.run(
            [sys.executable, "-c", probe, *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        return json.loads(run.stderr.strip().splitlines()[-1]), run.stdout

    drip("subscribe", "a@example.com", "--confirmed", "--now", now)
    # Sending loads the engine, but not the webhook's signature checks (cryptography), nor the
    # holiday calendars of a course without skip_holidays.
    sending, out = loaded(("sqlalchemy", "cryptography", "holidays"), "send", "--now", now)
    assert "sent 1," in out
    assert sending == ["sqlalchemy"]
    dry = drip("send", "--now", now, "--dry-run")  # the driver too (tests/test_dry_run.py)
    assert "0 due" in dry.stdout
    heavy = ("sqlalchemy", "drip.delivery", "drip.render", "drip.schedule", "holidays")
    idle, out = loaded(heavy, "send", "--now", now, "--json")
    assert idle == []
    report = json.loads(out)
    assert (report["due"], report["sent"], report["stopped"]) == (0, 0, None)
    assert drip("send", "--now", now).stdout == (
        "sent 0, retried 0, failed 0, in doubt 0, skipped 0, due before the run 0\n"
    )


def test_a_signup_never_confirmed_is_work_once_it_may_be_purged(ledger: Ledger) -> None:
    with ledger.sessions() as session, session.begin():
        optin.request_optin(
            session,
            optin.Signup(COURSE.id, "never@example.com", None, "Asia/Tokyo", "web"),
            now=T0,
            interval=timedelta(hours=24),
        )
    send_due(ledger.sessions, ledger.mailer, now=T0)  # its confirmation email
    purge_at = T0 + UNCONFIRMED_TTL
    assert ledger.idle(purge_at)  # quiet for exactly UNCONFIRMED_TTL: not yet
    assert_run_does_nothing(ledger, purge_at)
    later = purge_at + timedelta(minutes=5)
    assert not ledger.idle(later)
    send_due(ledger.sessions, ledger.mailer, now=later)
    with ledger.sessions() as session:
        assert session.execute(select(subscribers.c.id)).first() is None
    assert ledger.idle(later)


def test_every_probe_is_an_index_search(tmp_path: Path) -> None:
    """At ten million readers a scan would cost seconds: each probe must search an index
    (SQLite's query plan says so), the purge's included (ix_subscribers_pending)."""
    path = tmp_path / "drip.db"
    open_database(f"sqlite:///{path}", auto_upgrade=True).dispose()
    connection = sqlite3.connect(path)
    # SQLite plans with the bound values: a partial index on status = 'pending' needs 'pending'.
    params = {
        **dict.fromkeys(_PARAMETERS, "2026-03-02 01:00:00.000000"),
        "course": COURSE.id,
        "active": "active",
        "pending": "pending",
        "in_doubt": "in_doubt",
    }
    indexes = [
        "ix_subscribers_due",
        "ix_subscribers_pause_ends",
        "ix_subscribers_confirmation_owed",
        "ix_deliveries_course_id_status",
        "ix_subscribers_pending",  # only the pending rows, not every reader older than 30 days
    ]
    for probe, index in zip(_statements(":%s"), indexes, strict=True):
        plan = [row[3] for row in connection.execute(f"EXPLAIN QUERY PLAN {probe}", params)]
        assert plan[0].startswith("SEARCH") and f"INDEX {index} " in plan[0], (probe, plan)
        assert not any(step.startswith("SCAN") for step in plan), (probe, plan)
    connection.close()
