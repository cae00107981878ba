"""Fault injection, end to end: `drip send` (the CLI, the sequential SendGrid client) against the
loopback SendGrid stand-in answering each response class, on SQLite and PostgreSQL. Each case
checks the exit code, the `--json` summary, the ledger and what the provider accepted.

The transport half (every client, every answer, SMTP too) is tests/test_transport_faults.py;
this file checks that each class of answer ends in the right state of the whole pipeline.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session
from tests.fakes.sendgrid_server import FakeSendGrid
from tests.support import COURSE, COURSE_DIR, TEMPLATES

from drip import store
from drip.cli import main

NOW = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)  # 10:00 in Tokyo, a Monday
KEY = "SG.faults-key"


@dataclass(frozen=True)
class Case:
    step: str
    exit_code: int
    summary: dict[str, int]
    ledger: dict[str, int]
    accepted: int
    stopped: bool = False
    note: bool = False


CASES = {
    "202": Case("202", 0, {"sent": 2}, {"sent": 2}, 2),
    "400": Case("400", 0, {"sent": 1, "failed": 1}, {"sent": 1, "failed": 1}, 1),
    "413": Case("413", 0, {"sent": 1, "failed": 1}, {"sent": 1, "failed": 1}, 1),
    "401": Case("401", 1, {}, {"retry": 2}, 0, stopped=True),
    "403": Case("403", 1, {}, {"retry": 2}, 0, stopped=True),
    "302": Case("redirect:302:http://127.0.0.1:9/", 1, {}, {"retry": 2}, 0, stopped=True),
    "429": Case("429:120", 0, {"retried": 1}, {"retry": 2}, 0, note=True),
    "500": Case("500", 0, {"sent": 1, "retried": 1}, {"sent": 1, "retry": 1}, 1),
    "503": Case("503", 0, {"sent": 1, "retried": 1}, {"sent": 1, "retry": 1}, 1),
}


def seed(engine: Engine) -> None:
    with Session(engine) as session, session.begin():
        for index in range(2):
            store.add_subscriber(
                session,
                course_id=COURSE.id,
                email=f"fault{index}@example.com",
                name=None,
                timezone="Asia/Tokyo",
                now=NOW - timedelta(hours=1),
                consent_source="test",
                confirmed=True,
                first_lesson=COURSE.lessons[0].slug,
                first_send_at=NOW - timedelta(minutes=10 - index),
            )


def ledger(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT status, count(*) FROM deliveries GROUP BY status"))
        return {status: int(count) for status, count in rows}


@pytest.mark.parametrize("name", list(CASES))
def test_each_answer_ends_in_the_right_state(
    name: str, database_url: str, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = CASES[name]
    seed(engine)
    monkeypatch.chdir(tmp_path)
    with FakeSendGrid(api_key=KEY, script=[case.step]) as fake:
        env = {
            "DRIP_COURSE_DIR": str(COURSE_DIR),
            "DRIP_TEMPLATES_DIR": str(TEMPLATES),
            "DRIP_DATABASE_URL": database_url,
            "DRIP_SECRET_KEY": "faults-signing-key-Xq3vN8kZ1pL0sT7wR2yB5",
            "SENDGRID_API_KEY": KEY,
            "DRIP_SENDGRID_API_URL": fake.url,
            # One request at a time, in order: the first meets the fault, the second comes after
            # it (or never, when the run stops). Pipelining is covered by the kill matrix.
            "DRIP_SENDGRID_CLIENT": "official",
        }
        result = CliRunner().invoke(main, ["send", "--json", "--now", NOW.isoformat()], env=env)
        accepted = Counter(fake.accepted_ids())
    assert result.exit_code == case.exit_code, result.output
    summary = json.loads(result.stdout)
    for key in ("sent", "retried", "failed", "in_doubt"):
        assert summary[key] == case.summary.get(key, 0), (key, summary)
    assert (summary["stopped"] is not None) == case.stopped, summary
    assert (summary["note"] is not None) == case.note, summary
    assert ledger(engine) == case.ledger
    assert sum(accepted.values()) == len(accepted) == case.accepted
