"""End to end: `drip serve` (gunicorn, a real process on a free port) and `drip send` at the
same time on the same embedded SQLite file. Signups posted during a 20,000-email send succeed
with bounded latency (no "database is locked"); a reader who confirms gets lesson 1 once; an
unsubscribe that answered 200 means no lesson handed over after that answer."""

from __future__ import annotations

import csv
import email
import email.policy
import signal
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select
from tests.serve_support import Browser, Serve, env_for, free_port
from tests.support import daytime_zone

from drip.links import LinkBuilder
from drip.models import Delivery, Subscriber

READERS = 20_000
SIGNUPS = 150
UNSUBSCRIBES = 30


def _drip(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "drip", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _seed(tmp_path: Path, env: dict[str, str], zone: str) -> None:
    path = tmp_path / "readers.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["email", "timezone"])
        writer.writerows([f"r{n:05d}@example.com", zone] for n in range(READERS))
    past = (datetime.now(UTC) - timedelta(minutes=30)).isoformat(timespec="seconds")
    result = _drip(tmp_path, env, "subscribers", "import", str(path), "--confirmed", "--now", past)
    assert result.returncode == 0, result.stderr


def _emails_to(outbox: Path, address: str) -> list[email.message.EmailMessage]:
    found = []
    for path in outbox.glob("*.eml"):
        data = path.read_bytes()
        if address.encode() not in data:
            continue
        message = email.message_from_bytes(data, policy=email.policy.default)
        if str(message["To"]) == address:
            assert isinstance(message, email.message.EmailMessage)
            found.append(message)
    return found


def _wait_for(check: object, timeout: float = 60) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = check()  # type: ignore[operator]
        if value:
            return value
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


@pytest.mark.slow
def test_signups_confirms_and_unsubscribes_during_a_20000_email_send(tmp_path: Path) -> None:
    zone = daytime_zone()
    env = env_for(tmp_path)
    _seed(tmp_path, env, zone)
    outbox = tmp_path / "outbox"
    with Serve(tmp_path, env, workers=1, threads=8) as server:
        sender = subprocess.Popen(
            [sys.executable, "-m", "drip", "send", "--json"],
            cwd=tmp_path,
            env={**env, "DRIP_BASE_URL": server.base},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            _wait_for(lambda: sum(1 for _ in outbox.glob("*.eml")) >= 500)
            browser = Browser(server.base)
            token = browser.form_token()
            links = LinkBuilder(server.base, [env["DRIP_SECRET_KEY"]])
            latencies: list[float] = []
            unsubscribed: dict[int, int] = {}  # subscriber id -> when its 200 arrived (ns)
            for n in range(SIGNUPS):
                started = time.perf_counter()
                status, page, _ = browser.request(
                    "/subscribe",
                    {"email": f"new{n}@example.com", "timezone": zone, "form_token": token},
                    {"Origin": "null", "X-Forwarded-For": f"10.9.{n // 200}.{n % 200}"},
                )
                latencies.append(time.perf_counter() - started)
                assert status == 200, page[:300]
                if n % (SIGNUPS // UNSUBSCRIBES) == 0:
                    # Readers near the end of the queue: claimed or not yet, while it runs.
                    reader = READERS - 1 - len(unsubscribed) * 97
                    url = links.unsubscribe_url(reader)
                    status, _, headers = Browser(server.base).request(
                        url, {"List-Unsubscribe": "One-Click"}
                    )
                    assert status == 200 and "Location" not in headers
                    unsubscribed[reader] = time.time_ns()
            running_during_signups = sender.poll() is None
            # A reader signs up, confirms through the page's button, and gets lesson 1 once.
            status, _, _ = browser.request(
                "/subscribe",
                {"email": "confirmer@example.com", "timezone": zone, "form_token": token},
                {"Origin": "null", "X-Forwarded-For": "10.8.0.1"},
            )
            assert status == 200
            [confirmation] = _wait_for(lambda: _emails_to(outbox, "confirmer@example.com"))  # type: ignore[misc]
            text = confirmation.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
            path = "/c/" + text.split(f"{server.base}/c/", 1)[1].split()[0]
            status, page, _ = browser.press(path)
            assert status == 200 and "登録が完了しました" in page
            _output, errors = sender.communicate(timeout=900)
        finally:
            if sender.poll() is None:
                sender.kill()
        assert sender.returncode == 0, errors
        _wait_for(lambda: len(_emails_to(outbox, "confirmer@example.com")) == 2)
        # The server's background sender sent every confirmation email, during the run.
        _wait_for(
            lambda: all(_emails_to(outbox, f"new{n}@example.com") for n in range(0, SIGNUPS, 15))
        )
    log = server.log.read_text()
    assert "database is locked" not in log and "Traceback" not in log, log[-3000:]
    assert running_during_signups, "drip send ended before the signups did; use more readers"
    subjects = [str(m["Subject"]) for m in _emails_to(outbox, "confirmer@example.com")]
    assert len(subjects) == 2 and len(set(subjects)) == 2  # the confirmation, lesson 1 once

    engine = create_engine(f"sqlite:///{tmp_path / 'drip.db'}")
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(Delivery.subscriber_id, Delivery.status, Delivery.id).where(
                    Delivery.subscriber_id.in_(list(unsubscribed))
                )
            ).all()
            statuses = dict(
                conn.execute(
                    select(Subscriber.id, Subscriber.status).where(
                        Subscriber.id.in_(list(unsubscribed))
                    )
                ).all()
            )
    finally:
        engine.dispose()
    assert set(statuses.values()) == {"unsubscribed"}
    late = []
    sent_to = {subscriber_id for subscriber_id, status, _ in rows if status == "sent"}
    spared = len(set(unsubscribed) - sent_to)
    for subscriber_id, status, delivery_id in rows:
        if status != "sent":
            continue
        written = (outbox / f"{delivery_id}.eml").stat().st_mtime_ns
        if written > unsubscribed[subscriber_id]:
            late.append(subscriber_id)
    assert late == [], "lessons handed over after the unsubscribe answered 200"
    p50, p99 = statistics.median(latencies), _percentile(latencies, 0.99)
    print(
        f"\nsignups during a {READERS}-email send: {len(latencies)}, median {p50 * 1000:.1f} ms,"
        f" p99 {p99 * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms;"
        f" unsubscribes {len(unsubscribed)} ({spared} of those readers got no lesson, the others"
        " had theirs handed over before the answer)"
    )
    assert max(latencies) < 5.0


def _healthy(base: str) -> bool:
    try:
        return Browser(base).request("/healthz", timeout=2)[0] == 200
    except OSError:
        return False


def test_drip_serve_runs_two_sync_workers_by_default(tmp_path: Path) -> None:
    """No --workers nor --threads: 2 of gunicorn's sync workers (docs/performance.md says why),
    and signups work through them."""
    env = env_for(tmp_path)
    assert _drip(tmp_path, env, "db", "upgrade").returncode == 0
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "drip", "serve", "--port", str(port)],
            cwd=tmp_path,
            env={**env, "DRIP_BASE_URL": base},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_for(lambda: process.poll() is not None or _healthy(base))
            assert process.poll() is None, log.read_text()
            browser = Browser(base)
            token = browser.form_token()
            answers = [
                browser.request(
                    "/subscribe",
                    {"email": f"default{n}@example.com", "form_token": token},
                    {"Origin": "null", "X-Forwarded-For": f"10.8.0.{n}"},
                )[0]
                for n in range(4)
            ]
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(30)
    text = log.read_text()
    assert answers == [200] * 4
    assert "Using worker: sync" in text, text
    assert text.count("Booting worker") == 2, text
