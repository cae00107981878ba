"""The claim policy without a database: every branch of `decide_claim`, table-driven."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from drip.claim_policy import ClaimAction, ClaimDecision, decide_claim
from drip.errors import UnknownTimezoneError

NOW = datetime(2026, 4, 1, 9, 0, tzinfo=UTC)
LATER = NOW + timedelta(hours=8)
TICK = timedelta(microseconds=1)

CLAIM_NEW = ClaimDecision(ClaimAction.CLAIM_NEW)
CLAIM_AGAIN = ClaimDecision(ClaimAction.CLAIM_AGAIN)
MARK_IN_DOUBT = ClaimDecision(ClaimAction.MARK_IN_DOUBT)
HOLD_NO_LESSON = ClaimDecision(ClaimAction.HOLD_NO_LESSON)
HOLD_SETTLED = ClaimDecision(ClaimAction.HOLD_SETTLED)
PAST_SENT = ClaimDecision(ClaimAction.PAST_SENT)


@dataclass(frozen=True)
class Row:
    delivery_status: str | None
    lease_until: datetime | None = None
    next_lesson: str | None = "second"
    timezone: str = "Asia/Tokyo"


# (case, row, what `defer` answers, the decision, whether `defer` is asked)
CASES = [
    ("no ledger row", Row(None), None, CLAIM_NEW, True),
    ("no ledger row, deferred", Row(None), LATER, ClaimDecision(ClaimAction.DEFER, LATER), True),
    ("retry", Row("retry", NOW - TICK), None, CLAIM_AGAIN, True),
    ("retry inside its old lease", Row("retry", NOW + TICK), None, CLAIM_AGAIN, True),
    ("failed (re-armed)", Row("failed", NOW - TICK), None, CLAIM_AGAIN, True),
    ("retry, deferred", Row("retry", NOW), LATER, ClaimDecision(ClaimAction.DEFER, LATER), True),
    ("claimed, lease ends now", Row("claimed", NOW), None, CLAIM_AGAIN, True),
    ("claimed, lease ended", Row("claimed", NOW - TICK), None, CLAIM_AGAIN, True),
    (
        "claimed, lease ended, deferred",
        Row("claimed", NOW - TICK),
        LATER,
        ClaimDecision(ClaimAction.DEFER, LATER),
        True,
    ),
    (
        "claimed within another run's lease",
        Row("claimed", NOW + TICK),
        LATER,
        ClaimDecision(ClaimAction.WAIT, NOW + TICK),
        False,
    ),
    ("sending, lease ends now", Row("sending", NOW), LATER, MARK_IN_DOUBT, False),
    ("sending, lease ended", Row("sending", NOW - TICK), None, MARK_IN_DOUBT, False),
    (
        "sending within its lease",
        Row("sending", NOW + TICK),
        None,
        ClaimDecision(ClaimAction.WAIT, NOW + TICK),
        False,
    ),
    ("sent (a reordered course)", Row("sent", NOW - TICK), LATER, PAST_SENT, False),
    ("in doubt", Row("in_doubt", NOW - TICK), None, HOLD_SETTLED, False),
    ("in doubt within its lease", Row("in_doubt", NOW + TICK), None, HOLD_SETTLED, False),
    ("no next lesson", Row(None, next_lesson=None), LATER, HOLD_NO_LESSON, False),
    ("no next lesson, retry row", Row("retry", NOW, next_lesson=None), None, HOLD_NO_LESSON, False),
    (
        "a timezone this host cannot load",
        Row(None),
        UnknownTimezoneError("Mars/Base"),
        ClaimDecision(ClaimAction.HOLD_UNKNOWN_ZONE),
        True,
    ),
]


@pytest.mark.parametrize(
    ("row", "answer", "expected", "asked"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_decide_claim(
    row: Row, answer: datetime | Exception | None, expected: ClaimDecision, asked: bool
) -> None:
    questions: list[tuple[str, str]] = []

    def defer(timezone: str, lesson: str) -> datetime | None:
        questions.append((timezone, lesson))
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert decide_claim(row, NOW, defer) == expected
    assert questions == ([("Asia/Tokyo", "second")] if asked else [])
    if expected.action is ClaimAction.HOLD_UNKNOWN_ZONE:
        assert decide_claim(row, NOW).action is ClaimAction.CLAIM_NEW  # only `defer` loads zones
    elif expected.action is not ClaimAction.DEFER:
        # Without `defer` the decision is the same, except that nothing is deferred.
        assert decide_claim(row, NOW) == expected
    else:
        assert decide_claim(row, NOW).action in (ClaimAction.CLAIM_NEW, ClaimAction.CLAIM_AGAIN)


def test_every_action_is_covered() -> None:
    assert {case[3].action for case in CASES} == set(ClaimAction)


def test_the_policy_imports_no_database_code() -> None:
    # Database and network clients, and the modules of drip that use them.
    forbidden = ("sqlalchemy", "psycopg", "sqlite3", "http.client", "smtplib", "aiohttp", "drip.db")
    forbidden += ("drip.store", "drip.models", "drip.transports")
    code = (
        "import sys, drip.claim_policy\n"
        f"for name in {forbidden!r}:\n"
        "    assert not [m for m in sys.modules if m == name or m.startswith(name + '.')], name\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
