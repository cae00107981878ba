"""The fast client's HTTP step in a second process (DRIP_SENDGRID_PROCESS): faults and choice.

That its outcomes equal the in-thread loop's is tested by running test_transport_sendgrid_fast.py
and the transport contract over both. Here: signals, a child or a parent that dies, close,
the restart a worker relies on, `auto`, bulk mode over the child, and Ctrl-C on a real
`drip send` whose process group (the child with it) gets the signal, as from a terminal.
"""

from __future__ import annotations

import marshal
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session
from tests.fakes.sendgrid_server import FakeSendGrid
from tests.support import COURSE, ROOT, drip_env
from tests.transport_support import API_KEY, bulk_email, make_email

import drip.transports.sendgrid.process
from drip import store
from drip.config import load_settings
from drip.db import open_database
from drip.errors import ConfigError
from drip.transports import FatalTransportError, Outcome, make_transport
from drip.transports.sendgrid.bulk import BulkSendGridTransport
from drip.transports.sendgrid.fast import FastSendGridTransport, _email_body
from drip.transports.sendgrid.process import CHUNK, HEADER


@pytest.fixture
def fake() -> Iterator[FakeSendGrid]:
    with FakeSendGrid(api_key=API_KEY) as server:
        yield server


def in_child(fake: FakeSendGrid, window: int = 4) -> FastSendGridTransport:
    return FastSendGridTransport(
        API_KEY, base_url=fake.url, timeout=10, window=window, process="on"
    )


def child_of(transport: FastSendGridTransport) -> subprocess.Popen[bytes]:
    assert transport._child is not None
    return transport._child._process


def wait_until(condition: Callable[[], bool], what: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def running(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie (an orphan may never be reaped here)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_the_child_ignores_sigint_and_sigterm(fake: FakeSendGrid) -> None:
    with in_child(fake) as transport:
        transport.send([make_email(1)])
        child = child_of(transport)
        child.send_signal(signal.SIGINT)
        child.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert child.poll() is None
        [result] = transport.send([make_email(2)])
        assert result.outcome is Outcome.SENT
        assert child_of(transport) is child


def test_the_child_gets_no_secret_in_its_arguments_or_environment(
    fake: FakeSendGrid, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SENDGRID_API_KEY", API_KEY)
    monkeypatch.setenv("DRIP_DATABASE_URL", "postgresql://drip:hunter2@db/drip")
    with in_child(fake) as transport:
        transport.send([make_email(1)])
        pid = child_of(transport).pid
        seen = Path(f"/proc/{pid}/environ").read_bytes() + Path(f"/proc/{pid}/cmdline").read_bytes()
    assert API_KEY.encode() not in seen and b"hunter2" not in seen


def test_a_child_killed_in_flight_gives_in_doubt_and_the_next_call_starts_a_new_one(
    fake: FakeSendGrid,
) -> None:
    with in_child(fake) as transport:
        transport.send([make_email(9)])  # started
        first = child_of(transport)
        fake.latency = 3.0
        future = transport.submit([make_email(n) for n in range(1, 5)])
        time.sleep(0.5)  # the four requests are in flight
        first.kill()
        with pytest.raises(FatalTransportError) as info:
            future.result(timeout=20)
        # Handed over, no answer: each may have been posted, so none is released.
        assert [r.delivery_id for r in info.value.results] == ["d1", "d2", "d3", "d4"]
        assert {r.outcome for r in info.value.results} == {Outcome.IN_DOUBT}
        assert "sending process ended unexpectedly (killed by signal 9)" in str(info.value)
        fake.latency = 0.0
        [again] = transport.send([make_email(5)])
        assert again.outcome is Outcome.SENT
        assert child_of(transport).pid != first.pid


def test_a_child_that_died_between_calls_is_started_again(fake: FakeSendGrid) -> None:
    # `drip worker` keeps one transport across ticks.
    with in_child(fake) as transport:
        transport.send([make_email(1)])
        first = child_of(transport)
        first.kill()
        wait_until(lambda: transport._child is not None and transport._child.dead, "EOF")
        [result] = transport.send([make_email(2)])
        assert result.outcome is Outcome.SENT
        assert child_of(transport).pid != first.pid
    assert fake.accepted_ids() == {"d1": 1, "d2": 1}


def test_close_lets_the_calls_in_flight_finish_then_ends_the_child(fake: FakeSendGrid) -> None:
    transport = in_child(fake)
    transport.send([make_email(9)])
    fake.latency = 0.5
    future = transport.submit([make_email(n) for n in range(1, 5)])
    time.sleep(0.1)
    transport.close()
    assert [r.outcome for r in future.result(timeout=0)] == [Outcome.SENT] * 4
    assert child_of(transport).poll() == 0


def test_the_child_posts_a_call_s_first_bodies_while_the_rest_are_built(
    fake: FakeSendGrid,
) -> None:
    first_posted = threading.Event()
    waited: list[bool] = []

    def body(n: int) -> Callable[[], bytes]:
        def build() -> bytes:
            if n == CHUNK + 1:  # the first body of the second chunk waits for a request
                waited.append(first_posted.wait(timeout=10))
            return _email_body(make_email(n))

        return build

    with in_child(fake, window=64) as transport:
        transport.send([make_email(99)])  # started
        jobs = [(f"d{n}", body(n)) for n in range(1, 2 * CHUNK + 1)]
        future = transport.run_soon(transport.post_all_async(jobs))
        wait_until(lambda: len(fake.requests) > 1, "a request of the call")
        first_posted.set()
        results, fatal, _ = future.result(timeout=20)
    assert waited == [True]  # not 10 s: the child did not wait for the whole call
    assert fatal is None
    assert [r.outcome if r else None for r in results] == [Outcome.SENT] * 2 * CHUNK


def test_bulk_mode_over_the_child(fake: FakeSendGrid) -> None:
    with BulkSendGridTransport(in_child(fake), per_request=3) as transport:
        results = transport.send([bulk_email(n) for n in range(1, 8)])
    assert [r.outcome for r in results] == [Outcome.SENT] * 7
    assert len(fake.requests) == 3  # 3 + 3 + 1 recipients
    assert fake.accepted_ids() == {f"d{n}": 1 for n in range(1, 8)}


def test_auto_starts_the_child_at_the_first_call_that_fills_the_window(fake: FakeSendGrid) -> None:
    transport = FastSendGridTransport(API_KEY, base_url=fake.url, window=4, process="auto")
    in_thread = []
    post_all = transport.http.post_all

    async def counted(jobs: Sequence[tuple[str, Callable[[], bytes]]]) -> Any:
        in_thread.append(len(jobs))
        return await post_all(jobs)

    transport.http.post_all = counted  # type: ignore[method-assign]
    with transport:
        transport.send([make_email(1)])  # a confirmation email, say: no process for it
        assert transport._child is None
        transport.send([make_email(n) for n in range(2, 6)])  # sent here while it starts
        child = transport._child
        assert child is not None and in_thread == [1, 4]
        wait_until(lambda: child.started, "the child to be ready")
        transport.send([make_email(6)])  # from now on every call goes through it
        assert in_thread == [1, 4] and transport._child is child
    assert fake.accepted_ids() == {f"d{n}": 1 for n in range(1, 7)}


def test_a_child_that_cannot_start_posts_nothing_and_stops_the_run(
    fake: FakeSendGrid, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(drip.transports.sendgrid.process, "CHILD_CODE", "raise SystemExit(3)")
    with in_child(fake) as transport, pytest.raises(FatalTransportError) as info:
        transport.send([make_email(1), make_email(2)])
    # Nothing was handed over: no result, so the run releases both.
    assert list(info.value.results) == []
    assert "could not start (exit status 3)" in str(info.value)
    assert fake.requests == []


def test_the_setting() -> None:
    env = {"DRIP_TRANSPORT": "sendgrid", "SENDGRID_API_KEY": API_KEY}
    assert load_settings(env).sendgrid_process == "auto"
    chosen = make_transport(load_settings({**env, "DRIP_SENDGRID_PROCESS": " ON "}))
    assert isinstance(chosen, FastSendGridTransport) and chosen.process == "on"
    with pytest.raises(ConfigError, match="DRIP_SENDGRID_PROCESS"):
        load_settings({**env, "DRIP_SENDGRID_PROCESS": "fork"})


PARENT = """
import sys, time
from tests.transport_support import API_KEY, make_email
from drip.transports.sendgrid.fast import FastSendGridTransport, _email_body
from drip.transports.sendgrid.process import CHUNK

transport = FastSendGridTransport(API_KEY, base_url=sys.argv[1], window=1, process="on")
future = transport.submit([make_email(n) for n in range(1, 21)])
while transport._child is None:
    time.sleep(0.01)
print(transport._child._process.pid, flush=True)
future.result()
"""


def test_a_parent_killed_leaves_no_child_and_no_new_request(fake: FakeSendGrid) -> None:
    fake.add_script("202", "202", "delay:30")  # the third answer is held
    parent = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(PARENT), fake.url],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")])},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    wait_until(lambda: len(fake.requests) == 3, "the third request")
    parent.kill()
    parent.wait()
    parent.stdout.close()
    # At once, not after the held answer: an orphan waiting for it would hold the parent's
    # stderr (a harness reading it waits too) and its connections.
    wait_until(lambda: not running(child), "the child to exit", seconds=5)
    time.sleep(0.5)
    assert len(fake.requests) == 3  # no new request after the parent died


def test_a_parent_gone_before_a_call_s_last_bodies_leaves_no_child(fake: FakeSendGrid) -> None:
    """The parent dies after shipping the first chunk of a call's bodies: the child, whose call
    waited for the rest, reads end of file and exits (it used to wait for them for ever)."""
    child = subprocess.Popen(
        [sys.executable, "-c", drip.transports.sendgrid.process.CHILD_CODE],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert child.stdin is not None and child.stdout is not None
    try:

        def frame(value: Any) -> None:
            payload = marshal.dumps(value)
            assert child.stdin is not None
            child.stdin.write(HEADER.pack(len(payload)) + payload)
            child.stdin.flush()

        frame({"api_key": API_KEY, "base_url": fake.url, "timeout": 10.0, "window": 4})
        (size,) = HEADER.unpack(child.stdout.read(HEADER.size))
        assert marshal.loads(child.stdout.read(size)) is None  # ready
        body = _email_body(make_email(1))
        frame((0, 0, 2 * CHUNK, [(f"d{n}", body) for n in range(CHUNK)]))  # half of a call
        wait_until(lambda: len(fake.requests) == CHUNK, "the first chunk's requests")
        child.stdin.close()
        wait_until(lambda: child.poll() is not None, "the child to exit", seconds=5)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
        child.stdout.close()
    assert len(fake.requests) == CHUNK


MORNING = datetime(2026, 3, 2, 0, 30, tzinfo=UTC)  # 09:30 in Tokyo


def _interrupted_send(
    tmp_path: Path, fake: FakeSendGrid, process: str
) -> tuple[list[str], Counter[str]]:
    """A `drip send` of 12 readers, windows of 2, each answered after 0.5 s, its process group
    (the child with it) sent SIGINT once two answers came: the deliveries' statuses and what
    the provider accepted. Checks the exit (130) and that no process of the group is left."""
    url = f"sqlite:///{tmp_path / 'drip.db'}"
    engine = open_database(url, auto_upgrade=True)
    rows = [
        store.NewSubscriber(
            email=f"c{n}@example.com",
            name=f"読者{n}",
            timezone="Asia/Tokyo",
            first_send_at=MORNING - timedelta(minutes=1),
        )
        for n in range(12)
    ]
    with Session(engine) as session, session.begin():
        store.insert_subscribers(
            session,
            COURSE.id,
            rows,
            now=MORNING - timedelta(hours=1),
            consent_source="test",
            confirmed=True,
            first_lesson=COURSE.lessons[0].slug,
        )
    fake.latency = 0.5
    env = drip_env(
        DRIP_DATABASE_URL=url,
        DRIP_TRANSPORT="sendgrid",
        SENDGRID_API_KEY=API_KEY,
        DRIP_SENDGRID_API_URL=fake.url,
        DRIP_SECRET_KEY="process-test-key-0123456789abcdef",
        DRIP_SENDGRID_PROCESS=process,
        DRIP_SENDGRID_WINDOW="2",
    )
    send = subprocess.Popen(
        [sys.executable, "-m", "drip", "send", "--now", MORNING.isoformat()],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's job
    )
    wait_until(lambda: len(fake.requests) >= 2 or send.poll() is not None, "answers", seconds=60)
    assert send.poll() is None, send.communicate()
    os.killpg(send.pid, signal.SIGINT)  # the child gets it too
    _out, err = send.communicate(timeout=60)
    assert send.returncode == 130, err
    with engine.connect() as conn:
        statuses = list(conn.execute(text("SELECT status FROM deliveries")).scalars())
    engine.dispose()
    group = [
        pid
        for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
        if running(pid) and _group_of(pid) == send.pid
    ]
    assert group == []  # the child ended with its parent
    return statuses, fake.accepted_ids()


def test_ctrl_c_to_the_process_group_leaves_nothing_in_doubt_and_no_child(
    tmp_path: Path, fake: FakeSendGrid
) -> None:
    statuses, accepted = _interrupted_send(tmp_path, fake, "on")
    # The child ignored the signal: the window in flight got its answers, nothing is in doubt.
    assert set(statuses) <= {"sent", "retry"}, statuses
    assert set(accepted.values()) == {1}
    assert statuses.count("retry") >= 2, statuses  # the rest were released


# The signal nearly always lands while the run waits for a window's answers: that window is
# awaited again and recorded by the run's clean-up (it used to be released, and sent again).
@pytest.mark.parametrize("process", ["off", "on"])
def test_ctrl_c_records_every_email_the_provider_accepted(
    tmp_path: Path, fake: FakeSendGrid, process: str
) -> None:
    statuses, accepted = _interrupted_send(tmp_path, fake, process)
    assert statuses.count("sent") == len(accepted), (statuses, accepted)


def _group_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[2])
    except (OSError, IndexError, ValueError):
        return None
