"""Ctrl-C (SIGINT) while a `drip` command starts: one line on stderr, exit 130, no traceback,
nothing claimed or sent. A real `python -m drip` process gets a real SIGINT.

To land the signal at a known moment, the child process imports `sitecustomize` from a folder
put first on its PYTHONPATH: when it is about to import the module named by INTERRUPT_AT, it
writes that name to INTERRUPT_FILE and sleeps; the test sends SIGINT once the file appears, so
the KeyboardInterrupt comes out of that import statement, as a Ctrl-C at that moment would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from tests.fakes.sendgrid_server import FakeSendGrid
from tests.support import ROOT, drip_env

HOOK = """
import importlib.abc, os, sys, time

class _Stall(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == os.environ.get("INTERRUPT_AT"):
            with open(os.environ["INTERRUPT_FILE"], "w") as marker:
                marker.write(name)
            time.sleep(60)  # the SIGINT ends this with a KeyboardInterrupt
        return None

sys.meta_path.insert(0, _Stall())
"""
KEY = "interrupt-test-key-Xq3vN8kZ1pL0sT7wR2yB5mC9"
MORNING = "2026-04-01T09:00+09:00"  # outside the course's quiet hours: lesson 1 is due at once


def _start(tmp_path: Path, args: list[str], stall_at: str) -> tuple[subprocess.Popen[str], Path]:
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(HOOK, encoding="utf-8")
    marker = tmp_path / f"reached-{stall_at}"
    env = drip_env(
        DRIP_DATABASE_URL=f"sqlite:///{tmp_path / 'drip.db'}",
        DRIP_SECRET_KEY=KEY,
        INTERRUPT_AT=stall_at,
        INTERRUPT_FILE=str(marker),
        PYTHONPATH=os.pathsep.join([str(hook), str(ROOT / "src")]),
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "drip", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return process, marker


def _ctrl_c_once(
    module_args: list[str],
    tmp_path: Path,
    env: dict[str, str],
    *,
    ready: Callable[[], bool],
    what: str,
    then: Callable[[], object] | None = None,
) -> str:
    """Run `python -m MODULE_ARGS`, send it SIGINT once `ready()` (then call `then`), check it
    exits 130; its stderr."""
    process = subprocess.Popen(
        [sys.executable, "-m", *module_args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not ready():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, what
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    if then is not None:
        then()
    _out, err = process.communicate(timeout=60)
    assert process.returncode == 130, (process.returncode, err)
    return err


def _deliveries(tmp_path: Path) -> list[tuple[int, str]]:
    """(id, status) of every delivery in the SQLite ledger of `tmp_path`."""
    engine = create_engine(f"sqlite:///{tmp_path / 'drip.db'}")
    try:
        with engine.connect() as conn:
            found = conn.execute(text("SELECT id, status FROM deliveries ORDER BY id")).all()
            return [(row.id, row.status) for row in found]
    finally:
        engine.dispose()


def _run(tmp_path: Path, *args: str) -> str:
    env = drip_env(DRIP_DATABASE_URL=f"sqlite:///{tmp_path / 'drip.db'}", DRIP_SECRET_KEY=KEY)
    done = subprocess.run(
        [sys.executable, "-m", "drip", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize(
    ("args", "stall_at"),
    [
        # Loading the command line itself, before click runs (drip.cli imports its groups).
        (["send", "--now", MORNING], "drip.cli.sending"),
        # Inside the command: parsing --now (it loads the schedule's year bounds).
        (["send", "--now", MORNING], "drip.schedule"),
        # Inside the command: loading the send machinery, nothing claimed yet.
        (["send", "--now", MORNING], "drip.delivery"),
        # The worker before its own SIGINT handler (stop after the current send) is installed.
        (["worker", "--interval", "3600"], "drip.worker"),
    ],
    ids=["loading-the-cli", "parsing-now", "loading-the-send", "worker-start-up"],
)
def test_ctrl_c_while_a_command_starts_says_one_line_and_exits_130(
    tmp_path: Path, args: list[str], stall_at: str
) -> None:
    _run(tmp_path, "db", "upgrade")
    _run(tmp_path, "subscribe", "due@example.com", "--confirmed", "--now", MORNING)
    process, marker = _start(tmp_path, args, stall_at)
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{stall_at} was never imported"
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, (process.returncode, err)
    assert err.splitlines() == ["error: interrupted (Ctrl-C)"], err
    assert out == ""
    assert _deliveries(tmp_path) == []
    assert not (tmp_path / "outbox").exists() or not any((tmp_path / "outbox").iterdir())
    if args[0] == "send":  # the lesson was due, and the interrupted run left it due
        assert _run(tmp_path, *args).startswith("sent 1,")


def test_ctrl_c_during_a_send_releases_what_was_not_handed_over_and_exits_130(
    tmp_path: Path,
) -> None:
    """Ctrl-C asks the send to stop: the window being composed (the outbox's windows are one
    email) is finished and recorded, the claims never handed over go back ('retry'), nothing is
    left claimed or in doubt, one line on stderr ends it, and the next run sends the rest."""
    _run(tmp_path, "db", "upgrade")
    for n in range(3):
        _run(tmp_path, "subscribe", f"r{n}@example.com", "--confirmed", "--now", MORNING)
    marker = tmp_path / "paused-at"
    release = tmp_path / "release"
    env = drip_env(
        DRIP_DATABASE_URL=f"sqlite:///{tmp_path / 'drip.db'}",
        DRIP_SECRET_KEY=KEY,
        PAUSE_AT="render:2",  # the first email is composed, the second not yet
        PAUSE_FILE=str(marker),
        PAUSE_RELEASE=str(release),
        PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "src")]),
    )
    err = _ctrl_c_once(
        ["tests.pause_points", "send", "--now", MORNING],
        tmp_path,
        env,
        ready=marker.exists,
        what="the send never reached its second email",
        then=release.touch,
    )
    assert "Traceback" not in err and err.splitlines()[-1] == "error: interrupted (Ctrl-C)", err
    statuses = [status for _id, status in _deliveries(tmp_path)]
    assert sorted(statuses) == ["retry", "sent", "sent"], statuses
    assert _run(tmp_path, "send", "--now", MORNING).startswith("sent 1,")


def test_ctrl_c_while_windows_are_with_sendgrid_sends_nothing_twice(tmp_path: Path) -> None:
    """Ctrl-C while the fast client has windows in flight: the windows already handed over are
    awaited and recorded before the run exits 130 (none of them is released, which would send
    it again), the claims never handed over go back, and the next run sends exactly those.
    Failed before: the window being awaited when the KeyboardInterrupt struck was released."""
    _run(tmp_path, "db", "upgrade")
    readers = 120
    (tmp_path / "readers.csv").write_text(
        "email\n" + "".join(f"r{n}@example.com\n" for n in range(readers)), encoding="utf-8"
    )
    _run(tmp_path, "subscribers", "import", "readers.csv", "--confirmed", "--now", MORNING)
    with FakeSendGrid(api_key="SG.interrupt", latency=1.0) as fake:
        env = drip_env(
            DRIP_DATABASE_URL=f"sqlite:///{tmp_path / 'drip.db'}",
            DRIP_SECRET_KEY=KEY,
            SENDGRID_API_KEY="SG.interrupt",
            DRIP_SENDGRID_API_URL=fake.url,
            DRIP_SENDGRID_WINDOW="20",  # six windows of one second each, two in flight at once
        )
        _ctrl_c_once(
            ["drip", "send", "--now", MORNING],
            tmp_path,
            env,
            # The first window answered, the next ones in flight.
            ready=lambda: fake.stats()["requests"] >= 20,
            what="the send never got its first window answered",
        )
        rows = _deliveries(tmp_path)
        accepted = fake.accepted_ids()
        sent = {str(delivery) for delivery, status in rows if status == "sent"}
        assert set(accepted) == sent, "every email the provider accepted is recorded sent"
        assert {status for _id, status in rows} <= {"sent", "retry"}, rows
        fake.latency = 0
        released = len(rows) - len(sent)
        assert released > 0, "the Ctrl-C came before the last window was handed over"
        done = subprocess.run(
            [sys.executable, "-m", "drip", "send", "--now", MORNING],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        assert done.stdout.startswith(f"sent {released},"), done.stdout
        accepted = fake.accepted_ids()
    assert len(accepted) == readers and max(accepted.values()) == 1, accepted.most_common(3)
