"""`drip send` as real processes against the fake SendGrid API: killed mid-send, and run
three at once. Each (subscriber, lesson) is accepted by the provider exactly once, apart from
the recorded in-doubt ones; nothing crashes on a locked database.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session
from tests.fakes.sendgrid_server import FakeSendGrid, Step
from tests.support import COURSE, drip_env

from drip import store
from drip.delivery import IN_DOUBT_WINDOWS

# 10:00 in Tokyo on a Monday: outside quiet hours.
NOW = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)
API_KEY = "SG.test-key"

pytestmark = pytest.mark.slow


def seed(engine: Engine, count: int) -> None:
    with Session(engine) as session, session.begin():
        for index in range(count):
            store.add_subscriber(
                session,
                course_id=COURSE.id,
                email=f"p{index}@example.com",
                name=f"名前{index}",
                timezone="Asia/Tokyo",
                now=NOW - timedelta(hours=1),
                consent_source="test",
                confirmed=True,
                first_lesson=COURSE.lessons[0].slug,
                first_send_at=NOW - timedelta(minutes=30) + timedelta(milliseconds=index),
            )


def environment(database_url: str, fake: FakeSendGrid, tmp_path: Path) -> dict[str, str]:
    return drip_env(
        DRIP_DATABASE_URL=database_url,
        DRIP_TRANSPORT="sendgrid",
        SENDGRID_API_KEY=API_KEY,
        DRIP_SENDGRID_API_URL=fake.url,
        DRIP_SECRET_KEY="process-test-key-Xq3vN8kZ1pL0sT7wR2yB5",
        # The fast client, one request per window unless a test asks for more.
        DRIP_SENDGRID_WINDOW="1",
    )


def drip(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "drip", *args],
        env=env,
        cwd=cwd,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def finish(process: subprocess.Popen[str], timeout: float = 120) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def accepted_pairs(fake: FakeSendGrid) -> Counter[tuple[str, str]]:
    """(subscriber, lesson) -> times accepted, for single and bulk requests alike."""
    pairs: Counter[tuple[str, str]] = Counter()
    for request in fake.accepted:
        payload = request.payload
        args = [payload["custom_args"]] if "custom_args" in payload else []
        args += [p["custom_args"] for p in payload["personalizations"] if "custom_args" in p]
        pairs.update((a["drip_subscriber"], a["drip_lesson"]) for a in args)
    return pairs


@pytest.mark.parametrize(
    ("settings", "readers", "accepted_first", "bound"),
    [
        ({"DRIP_SENDGRID_WINDOW": "1"}, 12, 4, IN_DOUBT_WINDOWS * 1),
        ({"DRIP_SENDGRID_WINDOW": "4"}, 40, 8, IN_DOUBT_WINDOWS * 4),
        # Bulk: 1,000 readers per request, 4 requests in flight per window.
        ({"DRIP_BULK": "auto"}, 2500, 1, IN_DOUBT_WINDOWS * 4000),
    ],
    ids=["window-1", "window-4", "bulk"],
)
def test_killed_mid_send_then_rerun_sends_each_lesson_once(
    database_url: str,
    engine: Engine,
    tmp_path: Path,
    settings: dict[str, str],
    readers: int,
    accepted_first: int,
    bound: int,
) -> None:
    seed(engine, readers)
    # The first requests are answered, every later one is held (the provider has it, the answer
    # never comes) until the run is killed with several windows in the pipeline.
    script = ["202"] * accepted_first
    with FakeSendGrid(api_key=API_KEY, script=script, default="delay:120") as fake:
        env = {**environment(database_url, fake, tmp_path), **settings}
        process = drip(["send", "--now", NOW.isoformat()], env, tmp_path)
        deadline = time.monotonic() + 60
        while len(fake.requests) <= accepted_first and time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"drip send ended early: {process.communicate()}")
            time.sleep(0.02)
        assert len(fake.requests) > accepted_first, "the provider never got a request to hold"
        time.sleep(0.3)  # let the run fill its pipeline
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=30)
        fake.default = Step.parse("202")

        # Within the dead run's lease nothing is sent again.
        code, out, err = finish(
            drip(
                ["send", "--json", "--now", (NOW + timedelta(minutes=1)).isoformat()], env, tmp_path
            )
        )
        assert code == 0, err
        assert json.loads(out)["sent"] == 0
        # After the lease: the claims never handed over are sent; those in flight are in doubt.
        code, out, err = finish(
            drip(
                ["send", "--json", "--now", (NOW + timedelta(minutes=20)).isoformat()],
                env,
                tmp_path,
            )
        )
        assert code == 0, err
        report = json.loads(out)
        assert fake.problems == []
        pairs = accepted_pairs(fake)
        readers_per_request = max(len(request.delivery_ids) for request in fake.requests)
    assert (readers_per_request > 1) == ("DRIP_BULK" in settings)
    with Session(engine) as session:
        counts = store.delivery_counts(session, COURSE.id)
        doubt = store.list_in_doubt(session, COURSE.id)
    doubt_ids = {str(view.subscriber_id) for view in doubt}
    in_doubt = len(doubt)
    # The documented bound: at most IN_DOUBT_WINDOWS windows were 'sending' when the run died.
    assert 1 <= in_doubt <= bound
    assert report["in_doubt"] == in_doubt
    assert counts["sent"] + in_doubt == readers
    # Nothing was accepted twice; everything not in doubt was accepted exactly once.
    assert set(pairs.values()) == {1}, pairs
    accepted = {subscriber for subscriber, _ in pairs}
    assert len(accepted - doubt_ids) == counts["sent"]


def test_three_processes_at_once_send_each_lesson_once(
    database_url: str, engine: Engine, tmp_path: Path
) -> None:
    seed(engine, 150)
    with FakeSendGrid(api_key=API_KEY, latency=0.005) as fake:
        env = environment(database_url, fake, tmp_path)
        runs = [drip(["send", "--json", "--now", NOW.isoformat()], env, tmp_path) for _ in range(3)]
        results = [finish(run) for run in runs]
        pairs = accepted_pairs(fake)
        assert fake.problems == []
    for code, _, err in results:
        assert code == 0, err
        assert "locked" not in err.lower(), err
    reports = [json.loads(out) for _, out, _ in results]
    assert sum(report["sent"] for report in reports) == 150
    assert len(pairs) == 150 and set(pairs.values()) == {1}


@pytest.mark.postgres
def test_the_database_going_away_mid_run_exits_1_and_loses_nothing(
    postgres_database: str, tmp_path: Path
) -> None:
    import psycopg
    from tests.conftest import _libpq, _truncate

    from drip.db import open_database

    _truncate(postgres_database)
    engine = open_database(postgres_database, auto_upgrade=False)
    seed(engine, 20)
    database = engine.url.database
    admin = _libpq(postgres_database).rsplit("/", 1)[0] + "/postgres"
    with FakeSendGrid(api_key=API_KEY, script=["202"] * 3, default="delay:2") as fake:
        env = environment(postgres_database, fake, tmp_path)
        process = drip(["send", "--now", NOW.isoformat()], env, tmp_path)
        try:
            deadline = time.monotonic() + 60
            while len(fake.requests) < 4 and time.monotonic() < deadline:
                time.sleep(0.02)
            engine.dispose()
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                    (database,),
                )
            code, _, err = finish(process)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        assert code == 1, err
        assert "the database became unavailable" in err
        assert "Traceback" not in err
        fake.default = Step.parse("202")
        # After the lease, a new run sends the rest; nothing is accepted twice.
        later = (NOW + timedelta(minutes=20)).isoformat()
        code, _, err = finish(drip(["send", "--json", "--now", later], env, tmp_path))
        assert code == 0, err
        pairs = accepted_pairs(fake)
    assert set(pairs.values()) == {1}, pairs
    with Session(engine) as session:
        counts = store.delivery_counts(session, COURSE.id)
    engine.dispose()
    assert counts["sent"] + counts["in_doubt"] == 20
    assert counts["in_doubt"] <= IN_DOUBT_WINDOWS
