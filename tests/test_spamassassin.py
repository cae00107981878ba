"""Deliverability: every lesson and the confirmation email, as the outbox transport writes them,
scores at most 0.5 with SpamAssassin's local rules (`spamassassin -L -t`, Debian's package).

The emails are the committed course and templates, composed as `drip send` composes them
(`delivery.compose`, `delivery.send_confirmation`) and written by the real outbox transport; one
spamassassin process scores them all (it takes a few seconds to start). Bayes is off and HOME is
a temporary directory, so the score does not depend on what the machine has learnt, and nothing
is learnt from these messages.

Skipped with the reason when spamassassin is missing, unless DRIP_TEST_REQUIRE contains
"spamassassin" (CI), in which case it fails. Run by hand: docs/deliverability.md.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from tests.support import COURSE, make_mailer

from drip.delivery import compose, send_confirmation
from drip.mime import DELIVERY_ID_HEADER
from drip.store import Claim
from drip.transports.base import Outcome
from drip.transports.outbox import OutboxTransport

pytestmark = pytest.mark.spamassassin

MAX_SCORE = 0.5
NOW = datetime(2026, 4, 1, 0, 0, tzinfo=UTC)
STATUS_RE = re.compile(
    r"^X-Spam-Status: (?:Yes|No), score=(-?[0-9.]+) required=\S+\s+tests=([A-Z0-9_,\s]*)",
    re.M,
)
DELIVERY_ID_RE = re.compile(rf"^{DELIVERY_ID_HEADER}: (\S+)$", re.M)


def spamassassin() -> str:
    found = shutil.which("spamassassin")
    if found:
        return found
    required = {item.strip() for item in os.environ.get("DRIP_TEST_REQUIRE", "").split(",") if item}
    reason = "spamassassin is missing (apt-get install spamassassin)"
    if "spamassassin" in required:
        pytest.fail(f"{reason}, and DRIP_TEST_REQUIRE asks for the spamassassin test")
    pytest.skip(reason)


@dataclass(frozen=True)
class Verdict:
    """SpamAssassin's verdict on one email: its score, the rules hit, and the report."""

    score: float
    rules: str
    report: str


def write_every_email(directory: Path) -> dict[str, Path]:
    """Every lesson (to a reader with a name) and the confirmation email, written by the outbox
    transport as `drip send` and `drip subscribe` hand them over: {what: .eml file}."""
    transport = OutboxTransport(directory)
    mailer = make_mailer(transport)
    written = {}
    for number, lesson in enumerate(COURSE.lessons, start=1):
        claim = Claim(
            delivery_id=number,
            subscriber_id=1,
            email="yamada@example.com",
            name="山田 太郎",
            timezone="Asia/Tokyo",
            lesson=lesson.slug,
            attempts=0,
        )
        [result] = transport.send([compose(mailer, claim, now=NOW)])
        assert result.outcome is Outcome.SENT, result
        written[lesson.slug] = transport.path_for(str(number))
    assert send_confirmation(mailer, 2, "sato@example.com", "佐藤", now=NOW)
    [confirmation] = directory.glob("confirm-2-*.eml")
    written["confirmation"] = confirmation
    return written


def score(program: str, files: list[Path], home: Path) -> dict[str, Verdict]:
    """One `spamassassin -L -t` run over `files`: each one's verdict, by delivery id."""
    result = subprocess.run(
        [
            program,
            "-L",  # local rules only: no DNS, no network tests
            "-t",
            "--cf=use_bayes 0",
            "--cf=bayes_auto_learn 0",
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HOME": str(home)},
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    verdicts = {}
    for output in re.split(r"(?m)^(?=X-Spam-Checker-Version: )", result.stdout):
        status, delivery_id = STATUS_RE.search(output), DELIVERY_ID_RE.search(output)
        if status is None or delivery_id is None:
            continue
        report = output[output.find("Content analysis details:") :].strip()
        rules = re.sub(r"\s+", "", status.group(2))  # the header is folded
        verdicts[delivery_id.group(1)] = Verdict(float(status.group(1)), rules, report)
    return verdicts


def test_every_email_scores_at_most_half_a_point(tmp_path: Path) -> None:
    program = spamassassin()
    emails = write_every_email(tmp_path / "outbox")
    home = tmp_path / "home"
    home.mkdir()
    verdicts = score(program, list(emails.values()), home)
    assert len(verdicts) == len(emails) == len(COURSE.lessons) + 1, sorted(verdicts)
    by_email = {what: verdicts[path.stem] for what, path in emails.items()}
    too_high = {
        what: f"{verdict.score} ({verdict.rules})\n{verdict.report}"
        for what, verdict in by_email.items()
        if verdict.score > MAX_SCORE
    }
    assert not too_high, "\n\n".join(f"{what}: {found}" for what, found in too_high.items())
