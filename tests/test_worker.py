"""`drip worker`: the APScheduler daemon sends on its own and stops cleanly on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from tests.support import drip_env

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
