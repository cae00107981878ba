"""The kill matrix: `drip send` SIGKILLed at each step of a send, with each SendGrid client, on
SQLite and PostgreSQL, then re-run past the 15-minute lease; and `drip worker` stopped with
SIGTERM at the same steps. The promise under test (README, "Delivery guarantees"): every
(subscriber, lesson) is accepted by the provider exactly once, except the deliveries the ledger
records in doubt, which are accepted at most once and never re-sent by drip itself; a crash
leaves at most what was in flight in doubt (1 with the sequential official client; with the
pipelining fast and bulk clients `delivery.IN_DOUBT_WINDOWS` x window: the two windows with the
provider and, on PostgreSQL, one being recorded); a SIGTERM leaves nothing in doubt at all.

How a kill lands on a step. A process cannot be stopped "while rendering" from outside by timing
alone, so each step is reached in a way that can be checked:

- *claim*, *render*, *hand-over*, *record*: the `drip send` process runs through
  `tests.pause_points`, which stops it at the step (inside the claim transaction before its
  commit; just before the N-th email is rendered; just before the N-th window goes to the
  transport, the window already committed 'sending'; inside the transaction recording the N-th
  window, before its commit). The test waits until the process says it is there, then SIGKILLs
  it. Nothing else in the process is changed: threads keep running (with the pipelining clients
  the previous window is still with the provider and completes meanwhile).
- *in flight*: no hook. The fake SendGrid answers the first requests and then holds every request
  (it has the message; the answer never comes); the test waits until the requests it expects are
  all with the provider, then SIGKILLs.
- *random*: no hook. The provider answers each request after a delay (the run lasts a second or
  two); the process is SIGKILLed at a seeded random moment between 0.5 and 2.5 s after it was
  started, wherever that falls (starting up, claiming, rendering, handing over, waiting,
  recording, or after the run ended; it depends on the machine's speed). Where it fell is read
  from the ledger afterwards; only the invariants are asserted.

For every hooked or in-flight kill the number of deliveries left in doubt is known in advance
(from the window sizes and the pipeline depth) and asserted exactly: that is what proves the kill
landed where its name says. Each kill gets fresh readers (due lesson 1) plus whatever earlier
cycles left; after the kill, `drip send` is re-run within the dead run's lease (it must send
nothing) and then past it, until nothing is claimed, sending or due. The re-runs go through the
same CLI in this process (click's CliRunner) to keep the matrix fast; the killed runs are real
processes.

The worker half runs `drip worker` (real clock) through the same pause points with a release
file: SIGTERM arrives while the worker is paused at the step, then the pause ends; the worker
must exit 0 with nothing 'claimed', 'sending' or in doubt. A final `drip send` sends what the
stopped runs released; everything is accepted exactly once.

Figures (for docs/reliability.md): `KILLS_PER_CLIENT` kills per client and database,
`SIGTERMS_PER_CLIENT` worker stops; `MATRIX_SIZE` has the totals; `RESULTS` collects what each
case saw (printed at the end of each test: run pytest with -s or -rP to read it).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session
from tests.fakes.sendgrid_server import FakeSendGrid, Step
from tests.support import COURSE, ROOT, daytime_zone, drip_env
from tests.test_send_processes import accepted_pairs

from drip import store
from drip.cli import main
from drip.delivery import IN_DOUBT_WINDOWS, LEASE
from drip.models import deliveries
from drip.transports.sendgrid.bulk import DEFAULT_REQUESTS_IN_FLIGHT
from drip.transports.sendgrid.protocol import MAX_PERSONALIZATIONS

pytestmark = pytest.mark.slow

API_KEY = "SG.kill-matrix-key"
SIGNING_KEY = "kill-matrix-signing-key-Xq3vN8kZ1pL0sT7wR2yB5"
# 10:00 in Tokyo on a Monday; each cycle is 21 minutes later, all before the quiet hours.
START = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)
PAST_LEASE = LEASE + timedelta(minutes=5)
CYCLE = PAST_LEASE + timedelta(minutes=1)
RANDOM_SEED = 20260302
RANDOM_KILLS = 2
HOLD = "delay:120"
"""The provider has the message and holds its answer longer than any test waits."""


@dataclass(frozen=True)
class Client:
    """One SendGrid client as `drip send` configures it from the environment."""

    name: str
    settings: dict[str, str]
    window: int
    """Emails per window (what `send_due` hands over per call)."""
    readers: int
    """Fresh readers per cycle: enough for two windows (the pipeline's depth)."""
    answer_after: float
    """The provider's delay before each answer during a random kill (the run lasts ~1-2 s)."""

    @property
    def bound(self) -> int:
        """The documented most in doubt after one crash."""
        return self.window * (IN_DOUBT_WINDOWS if self.name != "official" else 1)


BULK_WINDOW = MAX_PERSONALIZATIONS * DEFAULT_REQUESTS_IN_FLIGHT
CLIENTS = [
    Client("official", {"DRIP_SENDGRID_CLIENT": "official"}, 1, 12, 0.1),
    Client("fast", {"DRIP_SENDGRID_WINDOW": "4"}, 4, 40, 0.1),
    Client("bulk", {"DRIP_BULK": "auto"}, BULK_WINDOW, BULK_WINDOW + 500, 0.5),
]
assert [client.bound for client in CLIENTS] == [1, 12, 12000]  # the README's figures (PostgreSQL)


@dataclass(frozen=True)
class Kill:
    """One hooked or in-flight kill: where, what reaches the provider first, and how many
    deliveries it must leave in doubt (`accepted` of them accepted by the provider)."""

    step: str
    pause_at: str | None
    """`tests.pause_points` step; None: in flight (the provider holds its answers)."""
    requests: int
    """The process is killed once this many of this cycle's requests reached the provider."""
    in_doubt: int
    accepted: int
    answered: int = 0
    """In flight: the provider answers this many requests, then holds every later one."""
    readers: int | None = None
    """Fresh readers for this cycle when the client's default does not reach the step."""


def kills_for(client: Client, database: str = "sqlite") -> list[Kill]:
    """The steps of a send for `client` on `database` (its dialect's name), each with the number
    it must leave in doubt.

    official (sequential, window 1): a window is recorded before the next one is claimed, so only
    the one email being handed over, in flight or being recorded can be in doubt.
    fast (window 4) and bulk (window 4,000 = 4 requests of 1,000 readers; 4,500 readers make a
    second window of 500): windows 1 and 2 go out together, and each later window is rendered
    and handed over while the one before it is with the provider (PIPELINE_DEPTH = 2 windows at
    once); a new batch is claimed right after a hand-over, while the two are. A bulk window is
    a whole batch: it is claimed straight as 'sending' once a window is free (no marking).
    """
    if client.name == "official":
        return [
            Kill("claim", "claim:1", 0, 0, 0),  # the first claim, not committed
            Kill("render", "render:3", 2, 0, 0),  # 2 recorded, the 3rd being rendered
            Kill("hand-over", "hand-over:3", 2, 1, 0),  # the 3rd 'sending', never sent
            Kill("in flight", None, 3, 1, 1, answered=2),  # the 3rd held by the provider
            Kill("record", "record:3", 3, 1, 1),  # the 3rd accepted, recording not committed
        ]
    if client.name == "fast":
        return [
            # 520 readers: the second claim (a batch is 500) comes right after window 125 is
            # handed over, while windows 124 and 125 are in flight (the claim overlaps them).
            Kill("claim", "claim:2", 500, 8, 8, readers=520),
            Kill("render", "render:6", 4, 4, 4),  # window 1 in flight, window 2 rendering
            Kill("hand-over", "hand-over:2", 4, 8, 4),  # window 2 'sending', never sent
            # Windows 1 and 2 go out together; the provider holds the 4 requests its 4
            # connections carry (DRIP_SENDGRID_WINDOW is also the connection pool's size), the
            # other 4 wait for a connection in the client.
            Kill("in flight", None, 4, 8, 4),
            # Window 1 being recorded. SQLite records on the main thread: window 2 in flight,
            # nothing more. PostgreSQL records on the recorder thread: the main thread hands
            # window 3 over, then waits for window 1's record before recording window 2 (three
            # windows in doubt: IN_DOUBT_WINDOWS).
            Kill("record", "record:1", *((8, 8, 8) if database == "sqlite" else (12, 12, 12))),
        ]
    whole = client.readers  # both windows: 4,000 + 500
    return [
        Kill("claim", "claim:2", 4, BULK_WINDOW, BULK_WINDOW),  # window 1 in flight
        # Window 2 is claimed straight as 'sending' (a bulk window is a whole claim): in doubt
        # with window 1, never sent.
        Kill("render", f"render:{BULK_WINDOW + 2}", 4, whole, BULK_WINDOW),
        Kill("hand-over", "hand-over:2", 4, whole, BULK_WINDOW),
        # The first request (1,000 readers) answered, the 3 others and window 2's held.
        Kill("in flight", None, 5, whole, whole, answered=1),
        Kill("record", "record:1", 5, whole, whole),
    ]


KILLS_PER_CLIENT = len(kills_for(CLIENTS[0])) + RANDOM_KILLS
SIGTERMS_PER_CLIENT = len(kills_for(CLIENTS[0]))
BACKENDS = 2
MATRIX_SIZE = {
    "kills": KILLS_PER_CLIENT * len(CLIENTS) * BACKENDS,
    "worker_sigterms": SIGTERMS_PER_CLIENT * len(CLIENTS) * BACKENDS,
}
RESULTS: list[dict[str, Any]] = []


# -- helpers shared by both halves --------------------------------------------------------------


def seed(engine: Engine, first: int, count: int, due: datetime, zone: str = "Asia/Tokyo") -> None:
    rows = [
        store.NewSubscriber(
            email=f"k{index}@example.com",
            name=f"読者{index}",
            timezone=zone,
            first_send_at=due + timedelta(milliseconds=index - first),
        )
        for index in range(first, first + count)
    ]
    with Session(engine) as session, session.begin():
        store.insert_subscribers(
            session,
            COURSE.id,
            rows,
            now=due - timedelta(hours=1),
            consent_source="kill-matrix",
            confirmed=True,
            first_lesson=COURSE.lessons[0].slug,
        )


@dataclass(frozen=True)
class Row:
    subscriber: str
    lesson: str
    status: str
    claimed_at: datetime


def ledger(engine: Engine) -> list[Row]:
    stmt = select(
        deliveries.c.subscriber_id,
        deliveries.c.lesson,
        deliveries.c.status,
        deliveries.c.claimed_at,
    )
    with engine.connect() as conn:
        return [Row(str(s), lesson, status, at) for s, lesson, status, at in conn.execute(stmt)]


def wait_for_idle_postgres(engine: Engine) -> None:
    """A killed client's PostgreSQL backend ends when it sees the socket close (mid-query: when
    the query ends); until then its row locks make SKIP LOCKED pass rows over. Wait until no
    other session of the database is busy (no-op on SQLite)."""
    if engine.dialect.name != "postgresql":
        return
    query = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND pid <> pg_backend_pid() AND state <> 'idle'"
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            if conn.execute(query).scalar_one() == 0:
                return
        time.sleep(0.02)
    pytest.fail("a killed run's PostgreSQL backend did not end")


def process(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.pause_points", *args],
        env=env,
        cwd=cwd,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def wait_until(condition: Callable[[], bool], running: subprocess.Popen[str], what: str) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        if running.poll() is not None:
            pytest.fail(f"the process ended before {what}: {running.communicate()}")
        if time.monotonic() > deadline:
            running.kill()
            pytest.fail(f"timed out waiting for {what}: {running.communicate()}")
        time.sleep(0.005)


def cli_send(env: dict[str, str], now: datetime) -> dict[str, Any]:
    """`drip send --json --now NOW` through the CLI, in this process."""
    result = CliRunner().invoke(main, ["send", "--json", "--now", now.isoformat()], env=env)
    assert result.exit_code == 0, (result.output, result.exception)
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def environment(database_url: str, fake: FakeSendGrid, client: Client) -> dict[str, str]:
    env = drip_env(
        DRIP_DATABASE_URL=database_url,
        DRIP_TRANSPORT="sendgrid",
        SENDGRID_API_KEY=API_KEY,
        DRIP_SENDGRID_API_URL=fake.url,
        DRIP_SECRET_KEY=SIGNING_KEY,
        **client.settings,
    )
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
    return env


def check_exactly_once(engine: Engine, fake: FakeSendGrid, readers: int) -> list[Row]:
    """The promise, over everything so far: every reader's lesson 1 is in the ledger once and
    settled; sent ones were accepted exactly once, in-doubt ones at most once, nothing else
    accepted. Returns the in-doubt rows."""
    rows = ledger(engine)
    assert len(rows) == readers, "a reader has no ledger row for the lesson it was due"
    statuses = Counter(row.status for row in rows)
    assert set(statuses) <= {"sent", "in_doubt"}, statuses
    pairs = accepted_pairs(fake)
    twice = {pair: n for pair, n in pairs.items() if n > 1}
    assert twice == {}, f"accepted more than once: {twice}"
    sent = {(r.subscriber, r.lesson) for r in rows if r.status == "sent"}
    doubt = [r for r in rows if r.status == "in_doubt"]
    assert sent <= set(pairs), "recorded sent but never accepted"
    assert set(pairs) <= sent | {(r.subscriber, r.lesson) for r in doubt}, "accepted, not recorded"
    assert fake.problems == []
    return doubt


def held_with_reason(engine: Engine, doubt: list[Row]) -> None:
    """Every reader with an in-doubt lesson is held with the reason; nobody else is."""
    with Session(engine) as session:
        held = {
            str(view.id): view.held_reason
            for view in store.list_subscribers(session, COURSE.id, held=True)
        }
    assert set(held) == {row.subscriber for row in doubt}
    assert all(reason and "in doubt" in reason for reason in held.values()), held


# -- SIGKILL of `drip send` ---------------------------------------------------------------------


@dataclass
class KillRun:
    """One client's matrix on one database: a cycle per kill."""

    engine: Engine
    fake: FakeSendGrid
    env: dict[str, str]
    cwd: Path
    client: Client
    now: datetime = START
    readers: int = 0
    kill_moments: list[datetime] = field(default_factory=list)
    killed_alive: int = 0
    reruns: int = 0

    def seed(self, count: int) -> None:
        seed(self.engine, self.readers, count, self.now - timedelta(minutes=1))
        self.readers += count

    def open_rows(self) -> set[tuple[str, str, str]]:
        """This cycle's claims the killed run left open (claimed or sending)."""
        return {
            (row.subscriber, row.lesson, row.status)
            for row in ledger(self.engine)
            if row.claimed_at == self.now and row.status in ("claimed", "sending")
        }

    def settle(self) -> dict[str, int]:
        """Re-run within the dead run's lease (its open claims are left alone: nothing of them
        is sent or marked), then past it until nothing is due. Returns the later runs' counts."""
        self.fake.default = Step.parse("202")
        wait_for_idle_postgres(self.engine)
        left_open = self.open_rows()
        early = cli_send(self.env, self.now + timedelta(minutes=1))
        self.reruns += 1
        assert early["in_doubt"] == 0, early
        assert self.open_rows() == left_open, "a run within the lease touched the dead run's claims"
        totals: Counter[str] = Counter()
        for _ in range(3):
            report = cli_send(self.env, self.now + PAST_LEASE)
            self.reruns += 1
            totals.update({key: report[key] for key in ("sent", "in_doubt", "retried", "failed")})
            if report["due"] == 0:
                break
        assert totals["retried"] == totals["failed"] == 0, totals
        return dict(totals)

    def landed(self) -> str:
        """Where a random kill fell, read from the ledger of this cycle's run."""
        mine = Counter(row.status for row in ledger(self.engine) if row.claimed_at == self.now)
        if not mine:
            return "random: before any claim was committed"
        if mine["sending"]:
            return f"random: {mine['sending']} with the provider or being recorded"
        if mine["claimed"]:
            return "random: claims committed, none handed over"
        return "random: after the run had recorded everything, before it ended"

    def sending(self) -> int:
        """Deliveries handed over ('sending') and not recorded yet."""
        with self.engine.connect() as conn:
            query = text("SELECT count(*) FROM deliveries WHERE status = 'sending'")
            return int(conn.execute(query).scalar_one())

    def kill(self, spec: Kill | None, delay: float = 0.0) -> bool:
        """Run `drip send` at `now` and SIGKILL it where `spec` says (None: `delay` seconds after
        it was started)."""
        env = dict(self.env)
        pause_file = self.cwd / f"paused-{len(self.kill_moments)}"
        if spec is not None and spec.pause_at:
            env.update(PAUSE_AT=spec.pause_at, PAUSE_FILE=str(pause_file))
        base = len(self.fake.requests)
        running = process(["send", "--now", self.now.isoformat()], env, self.cwd)
        try:
            if spec is None:
                time.sleep(delay)
            else:
                if spec.pause_at:
                    wait_until(pause_file.exists, running, f"the pause at {spec.pause_at}")
                wanted = base + spec.requests
                wait_until(lambda: len(self.fake.requests) >= wanted, running, "the requests")
                assert len(self.fake.requests) == wanted, "more requests than the step allows"
                if spec.pause_at is None:
                    # In flight means every window the step names was handed over: the first
                    # window's requests can reach the provider while the next window is still
                    # being claimed (then it would be released, not in doubt: right, but another
                    # step).
                    wait_until(lambda: self.sending() >= spec.in_doubt, running, "the hand-overs")
        except BaseException:
            # A paused `drip send` left behind would hold its row locks into the next tests.
            running.kill()
            running.communicate(timeout=30)
            raise
        alive = running.poll() is None
        assert alive or spec is None, running.communicate()
        running.send_signal(signal.SIGKILL)
        running.communicate(timeout=30)
        self.kill_moments.append(self.now)
        self.killed_alive += alive
        return alive

    def cycle(self, spec: Kill | None, rng: random.Random) -> dict[str, Any]:
        """Seed, kill, settle, check; then move the clock past this cycle."""
        self.seed(spec.readers if spec is not None and spec.readers else self.client.readers)
        if spec is None:
            self.fake.default = Step.parse(f"delay:{self.client.answer_after}")
            alive = self.kill(None, delay=rng.uniform(0.5, 2.5))
            where = self.landed() if alive else "random: after the run had ended"
        else:
            if spec.pause_at is None:
                self.fake.add_script(*["202"] * spec.answered)
                self.fake.default = Step.parse(HOLD)
            self.kill(spec)
            where = spec.step
        totals = self.settle()
        doubt = check_exactly_once(self.engine, self.fake, self.readers)
        mine = {(row.subscriber, row.lesson) for row in doubt if row.claimed_at == self.now}
        assert totals["in_doubt"] == len(mine) <= self.client.bound, (where, totals)
        accepted = sum(1 for pair in accepted_pairs(self.fake) if pair in mine)
        if spec is not None:
            assert (len(mine), accepted) == (spec.in_doubt, spec.accepted), where
        assert {row.claimed_at for row in doubt} <= set(self.kill_moments)
        held_with_reason(self.engine, doubt)
        self.now += CYCLE
        return {"step": where, "in_doubt": len(mine), "accepted_in_doubt": accepted}


@pytest.mark.parametrize("client", CLIENTS, ids=[client.name for client in CLIENTS])
def test_drip_send_killed_at_every_step_sends_each_lesson_once(
    database_url: str, engine: Engine, tmp_path: Path, client: Client
) -> None:
    rng = random.Random(f"{RANDOM_SEED}-{client.name}-{engine.dialect.name}")
    with FakeSendGrid(api_key=API_KEY) as fake:
        run = KillRun(engine, fake, environment(database_url, fake, client), tmp_path, client)
        cycles = [run.cycle(spec, rng) for spec in kills_for(client, engine.dialect.name)]
        cycles += [run.cycle(None, rng) for _ in range(RANDOM_KILLS)]
        doubt = check_exactly_once(engine, fake, run.readers)
    assert run.killed_alive >= KILLS_PER_CLIENT - RANDOM_KILLS  # every hooked kill hit a live run
    summary = {
        "client": client.name,
        "database": engine.dialect.name,
        "kills": run.killed_alive,
        "reruns": run.reruns,
        "readers": run.readers,
        "in_doubt": len(doubt),
        "cycles": cycles,
    }
    RESULTS.append(summary)
    print(json.dumps(summary, ensure_ascii=False))


# -- SIGTERM of `drip worker` -------------------------------------------------------------------


@dataclass
class WorkerRun:
    """One client's worker half on one database: a worker process per step."""

    engine: Engine
    fake: FakeSendGrid
    env: dict[str, str]
    cwd: Path
    zone: str
    readers: int = 0
    left_for_later: int = 0
    """Runs the SIGTERM stopped with due work not yet handed over (released, or not claimed)."""

    def stop_at(self, spec: Kill, client: Client) -> str:
        """Seed, start `drip worker`, SIGTERM it at the step, let it finish; returns its log."""
        count = spec.readers or client.readers
        seed(self.engine, self.readers, count, datetime.now(UTC) - timedelta(minutes=5), self.zone)
        self.readers += count
        env = dict(self.env)
        pause_file, release = self.cwd / f"paused-{spec.step}", self.cwd / f"go-{spec.step}"
        if spec.pause_at:
            env.update(
                PAUSE_AT=spec.pause_at, PAUSE_FILE=str(pause_file), PAUSE_RELEASE=str(release)
            )
        else:
            # In flight: the provider holds its answers for a second, then accepts.
            self.fake.add_script(*["202"] * spec.answered)
            self.fake.default = Step.parse("delay:1")
        base = len(self.fake.requests)
        worker = process(["worker", "--interval", "3600"], env, self.cwd)
        if spec.pause_at:
            wait_until(pause_file.exists, worker, f"the pause at {spec.pause_at}")
        wait_until(lambda: len(self.fake.requests) >= base + spec.requests, worker, "requests")
        worker.send_signal(signal.SIGTERM)
        time.sleep(0.2)  # the handler runs in the main thread; the send is paused in another
        release.touch()
        _out, err = worker.communicate(timeout=60)
        self.fake.default = Step.parse("202")
        assert worker.returncode == 0, err
        assert "Traceback" not in err and "SIGTERM: stopping after the current send" in err, err
        report = re.search(r"sent (\d+),.* due before the run (\d+)", err)
        assert report is not None, err
        self.left_for_later += int(report[1]) < int(report[2])
        statuses = Counter(row.status for row in ledger(self.engine))
        assert statuses["in_doubt"] == statuses["sending"] == statuses["claimed"] == 0, (
            spec.step,
            statuses,
            err,
        )
        return err


@pytest.mark.parametrize("client", CLIENTS, ids=[client.name for client in CLIENTS])
def test_drip_worker_stopped_at_every_step_leaves_nothing_in_doubt(
    database_url: str, engine: Engine, tmp_path: Path, client: Client
) -> None:
    with FakeSendGrid(api_key=API_KEY) as fake:
        run = WorkerRun(
            engine, fake, environment(database_url, fake, client), tmp_path, daytime_zone()
        )
        for spec in kills_for(client):
            run.stop_at(spec, client)
        # What the stopped runs released is sent by the next run, once.
        wait_for_idle_postgres(engine)
        cli_send(run.env, datetime.now(UTC) + timedelta(minutes=1))
        doubt = check_exactly_once(engine, fake, run.readers)
    assert doubt == []
    summary = {
        "client": client.name,
        "database": engine.dialect.name,
        "worker_sigterms": len(kills_for(client)),
        "left_work_for_the_next_run": run.left_for_later,
        "readers": run.readers,
    }
    RESULTS.append(summary)
    print(json.dumps(summary))
