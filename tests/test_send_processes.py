"""`drip send` as real processes against the fake SendGrid API: killed mid-send, and run
three at once. Each (subscriber, lesson) is accepted by the provider exactly once, apart from
the recorded in-doubt ones; nothing crashes on a locked database.
"""

from __future__ import annotations

import json
import os
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
from tests.fakes.sendgrid_server import FakeSendGrid

from drip import store
from drip.course import load_course

ROOT = Path(__file__).resolve().parents[1]
COURSE = load_course(ROOT / "course")
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
                first_send_at=NOW - timedelta(minutes=30) + timedelta(seconds=index),
            )


def environment(database_url: str, fake: FakeSendGrid, tmp_path: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("DRIP_")}
    env.update(
        DRIP_DATABASE_URL=database_url,
        DRIP_COURSE_DIR=str(ROOT / "course"),
        DRIP_TEMPLATES_DIR=str(ROOT / "templates" / "email"),
        DRIP_TRANSPORT="sendgrid",
        SENDGRID_API_KEY=API_KEY,
        DRIP_SENDGRID_API_URL=fake.url,
        DRIP_SECRET_KEY="process-test-key",
        # The fast client, one request in flight: the scripts above are consumed in order.
        # Windows > 1 are killed and re-run in test_sendgrid_fast.py.
        DRIP_SENDGRID_WINDOW="1",
        PYTHONPATH=str(ROOT / "src"),
    )
    return env


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
    return Counter(
        (r.payload["custom_args"]["drip_subscriber"], r.payload["custom_args"]["drip_lesson"])
        for r in fake.accepted
    )


def test_killed_mid_send_then_rerun_sends_each_lesson_once(
    database_url: str, engine: Engine, tmp_path: Path
) -> None:
    seed(engine, 12)
    held = 5
    script = ["202"] * (held - 1) + ["delay:120"]
    with FakeSendGrid(api_key=API_KEY, script=script) as fake:
        env = environment(database_url, fake, tmp_path)
        process = drip(["send", "--now", NOW.isoformat()], env, tmp_path)
        deadline = time.monotonic() + 60
        while len(fake.requests) < held and time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"drip send ended early: {process.communicate()}")
            time.sleep(0.02)
        assert len(fake.requests) == held, "the provider never got the request to hold"
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=30)

        # Within the dead run's lease nothing is sent again.
        code, out, err = finish(
            drip(
                ["send", "--json", "--now", (NOW + timedelta(minutes=1)).isoformat()], env, tmp_path
            )
        )
        assert code == 0, err
        assert json.loads(out)["sent"] == 0
        # After the lease: the claims never handed over are sent; the one in flight is in doubt.
        code, out, err = finish(
            drip(
                ["send", "--json", "--now", (NOW + timedelta(minutes=20)).isoformat()],
                env,
                tmp_path,
            )
        )
        assert code == 0, err
        report = json.loads(out)
        assert (report["sent"], report["in_doubt"]) == (12 - held, 1)
        assert fake.problems == []
        pairs = accepted_pairs(fake)
    assert set(pairs.values()) == {1}, pairs
    assert len(pairs) == 12
    with Session(engine) as session:
        counts = store.delivery_counts(session, COURSE.id)
        [doubt] = store.list_in_doubt(session, COURSE.id)
    assert (counts["sent"], counts["in_doubt"]) == (held - 1 + 12 - held, 1)
    assert doubt.email == "p4@example.com"


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
