"""`drip worker`: the APScheduler daemon sends on its own and stops cleanly on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import Engine, make_url, text
from sqlalchemy.orm import Session
from tests.conftest import PostgresServer
from tests.fakes.sendgrid_server import FakeSendGrid
from tests.support import COURSE, drip_env

from drip import store
from drip.db import upgrade

# Offsets -10, -5, 0, +5:30 and +9: at any moment one of them is between 08:00 and 20:00,
# outside the course's quiet hours, so the first lesson goes out at once.
ZONES = ["Pacific/Honolulu", "America/New_York", "Europe/London", "Asia/Kolkata", "Asia/Tokyo"]


def daytime_zone() -> str:
    now = datetime.now(UTC)
    return next(z for z in ZONES if 8 <= now.astimezone(ZoneInfo(z)).hour < 20)


@pytest.mark.slow
def test_the_worker_sends_what_is_due_and_stops_on_sigterm(tmp_path: Path) -> None:
    env = drip_env()
    drip = [sys.executable, "-m", "drip"]
    subscribe = subprocess.run(
        [*drip, "subscribe", "w@example.com", "--confirmed", "--timezone", daytime_zone()],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert subscribe.returncode == 0, subscribe.stderr
    worker = subprocess.Popen(
        [*drip, "worker", "--interval", "1"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not list((tmp_path / "outbox").glob("*.eml")) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.5)  # at least one more run, which must find nothing to send
        assert len(list((tmp_path / "outbox").glob("*.eml"))) == 1
    finally:
        worker.send_signal(signal.SIGTERM)
        _out, err = worker.communicate(timeout=30)
    assert worker.returncode == 0, err
    assert "sent 1," in err and "sent 0," in err


def _seed_due_now(engine: Engine, count: int, zone: str) -> None:
    now = datetime.now(UTC)
    with Session(engine) as session, session.begin():
        for index in range(count):
            store.add_subscriber(
                session,
                course_id=COURSE.id,
                email=f"w{index}@example.com",
                name=None,
                timezone=zone,
                now=now - timedelta(hours=1),
                consent_source="test",
                confirmed=True,
                first_lesson=COURSE.lessons[0].slug,
                first_send_at=now - timedelta(minutes=5),
            )


def _ledger(engine: Engine) -> Counter[str]:
    with engine.connect() as conn:
        return Counter(status for (status,) in conn.execute(text("SELECT status FROM deliveries")))


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_during_a_send_finishes_what_is_in_flight_and_releases_the_rest(
    database_url: str, engine: Engine, tmp_path: Path, signum: int
) -> None:
    """A deploy or Ctrl-C in the middle of a long send: the windows with the provider are
    recorded, the claims not yet handed over are released, nothing is in doubt, exit 0."""
    _seed_due_now(engine, 600, daytime_zone())
    with FakeSendGrid(api_key="SG.worker-key", latency=0.05) as fake:
        env = drip_env(
            DRIP_DATABASE_URL=database_url,
            DRIP_TRANSPORT="sendgrid",
            SENDGRID_API_KEY="SG.worker-key",
            DRIP_SENDGRID_API_URL=fake.url,
            DRIP_SECRET_KEY="worker-test-key-0123456789abcdef",
            DRIP_SENDGRID_WINDOW="8",
        )
        worker = subprocess.Popen(
            [sys.executable, "-m", "drip", "worker", "--interval", "3600"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 60
        while len(fake.accepted) < 40 and time.monotonic() < deadline:
            assert worker.poll() is None, worker.communicate()
            time.sleep(0.02)
        worker.send_signal(signum)
        _out, err = worker.communicate(timeout=60)
        accepted = fake.accepted_ids()
    assert worker.returncode == 0, err
    assert "Traceback" not in err and "Aborted" not in err, err
    ledger = _ledger(engine)
    assert ledger["in_doubt"] == 0, (ledger, err)
    assert ledger["sending"] == 0 and ledger["claimed"] == 0, ledger
    assert 0 < ledger["sent"] < 600, ledger
    # What the provider accepted is exactly what the ledger says was sent, once each.
    assert sum(accepted.values()) == len(accepted) == ledger["sent"]


class StderrLines:
    """A process's stderr lines as they come, read on a thread, so that a test can wait for a
    line instead of sleeping for a time a loaded machine may not keep."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        assert process.stderr is not None
        self.lines: list[str] = []
        self._stream = process.stderr
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        with self._stream:
            for line in self._stream:
                self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, *, after: int = 0, timeout: float = 60) -> int:
        """Wait until a line from index `after` on contains `text`; the number of lines read
        by then. Fails the test with what was read after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen = list(self.lines)
            if any(text in line for line in seen[after:]):
                return len(seen)
            time.sleep(0.05)
        pytest.fail(f"no {text!r} within {timeout} s; stderr:\n" + "\n".join(self.lines))

    def text(self) -> str:
        self._reader.join(timeout=30)
        return "\n".join(self.lines)


@pytest.mark.slow
@pytest.mark.postgres
def test_a_database_outage_is_one_log_line_per_tick_and_the_worker_carries_on(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    url = postgres_server.create("drip_worker_outage")
    name = make_url(url).database
    try:
        upgrade(url)
        env = drip_env(DRIP_DATABASE_URL=url, DRIP_SECRET_KEY="worker-test-key-0123456789abcdef")
        worker = subprocess.Popen(
            [sys.executable, "-m", "drip", "worker", "--interval", "1"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        stderr = StderrLines(worker)
        try:
            # Each step waits for the worker's own log line (a loaded machine once took longer
            # than the fixed sleeps this test had, and it failed for it).
            stderr.wait_for("sent 0,")
            with psycopg.connect(
                make_url(postgres_server.admin_url)
                .render_as_string(hide_password=False)
                .replace("postgresql+psycopg", "postgresql"),
                autocommit=True,
            ) as admin:
                admin.execute(
                    sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(
                        sql.Identifier(name)
                    )
                )
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                    (name,),
                )
                # Ticks every second: a few ticks of outage, each one line.
                down = stderr.wait_for("database became unavailable")
                time.sleep(3)
                admin.execute(
                    sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(name))
                )
            stderr.wait_for("sent 0,", after=down)  # it sent again once the database was back
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=30)
        err = stderr.text()
    finally:
        postgres_server.drop(url)
    assert worker.returncode == 0, err
    assert "Traceback" not in err, err
    outages = [line for line in err.splitlines() if "database became unavailable" in line]
    assert 2 <= len(outages) <= 8, err
    # One line per tick, not a traceback per tick: the outage lines and a few around them.
    assert len(err.splitlines()) < len(outages) + 12, err
