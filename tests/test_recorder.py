"""PostgreSQL: a pipelining run writes each window's outcomes on its recorder thread (its own
connection), one window at a time and in order, while the run's thread claims and composes the
next; a write that fails there is written once more before the run gives up, never released."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import sessionmaker
from tests.fakes.sendgrid_server import FakeSendGrid
from tests.support import POSTGRESQL_ONLY, make_mailer

from drip import store
from drip.delivery import Mailer, send_due
from drip.lifecycle import subscribe
from drip.models import deliveries
from drip.transports.sendgrid.fast import FastSendGridTransport

T0 = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)  # a Monday, 10:00 in Tokyo
KEY = "SG.recorder-test-key"
READERS = 7


@pytest.fixture
def fake() -> Iterator[FakeSendGrid]:
    with FakeSendGrid(api_key=KEY, latency=0.01) as server:
        yield server


def readers(engine: Engine, fake: FakeSendGrid) -> tuple[sessionmaker[Any], Mailer]:
    """READERS confirmed readers due at T0, and a mailer posting to `fake` one email per window."""
    sessions = sessionmaker(engine)
    mailer = fast_mailer(fake)
    for n in range(READERS):
        subscribe(
            sessions,
            mailer,
            email=f"rec{n}@example.com",
            name=None,
            timezone="Asia/Tokyo",
            confirmed=True,
            now=T0 - timedelta(minutes=n),
            consent_source="test",
        )
    return sessions, mailer


def fast_mailer(fake: FakeSendGrid) -> Mailer:
    return make_mailer(FastSendGridTransport(KEY, base_url=fake.url, window=1, timeout=5))


def statuses(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(select(deliveries.c.status).order_by(deliveries.c.id)).scalars())


@POSTGRESQL_ONLY
def test_outcomes_are_written_on_the_recorder_thread_one_window_at_a_time_in_order(
    engine: Engine, fake: FakeSendGrid, monkeypatch: pytest.MonkeyPatch
) -> None:
    sessions, mailer = readers(engine, fake)
    writes: list[tuple[str, list[int]]] = []
    busy = threading.Lock()
    overlapped: list[bool] = []
    record_sent = store.record_sent

    def logged(session: Any, items: Any, run_id: str) -> int:
        overlapped.append(not busy.acquire(blocking=False))
        try:
            writes.append((threading.current_thread().name, [item.delivery_id for item in items]))
            return record_sent(session, items, run_id)
        finally:
            busy.release()

    monkeypatch.setattr(store, "record_sent", logged)
    handed: list[int] = []
    submit = mailer.transport.submit

    def logged_submit(emails: Any) -> Any:
        handed.extend(int(email.delivery_id) for email in emails)
        return submit(emails)

    monkeypatch.setattr(mailer.transport, "submit", logged_submit)
    with mailer.transport:
        report = send_due(sessions, mailer, now=T0, batch_size=2)
    assert report.sent == READERS
    assert fake.problems == [] and set(fake.accepted_ids().values()) == {1}
    assert statuses(engine) == ["sent"] * READERS
    assert {name.split("_")[0] for name, _ in writes} == {"drip-record"}
    written = [delivery for _, ids in writes for delivery in ids]
    assert written == handed and len(written) == READERS  # in order, each once
    assert not any(overlapped)


@POSTGRESQL_ONLY
def test_a_write_that_fails_on_the_recorder_is_written_again_before_the_run_gives_up(
    engine: Engine, fake: FakeSendGrid, monkeypatch: pytest.MonkeyPatch
) -> None:
    sessions, mailer = readers(engine, fake)
    record_sent = store.record_sent
    failed: list[int] = []

    def failing_once(session: Any, items: Any, run_id: str) -> int:
        if not failed and threading.current_thread().name.startswith("drip-record"):
            failed.append(items[0].delivery_id)
            raise OperationalError("UPDATE deliveries", {}, Exception("server closed"))
        return record_sent(session, items, run_id)

    monkeypatch.setattr(store, "record_sent", failing_once)
    with mailer.transport, pytest.raises(OperationalError):
        send_due(sessions, mailer, now=T0, batch_size=2)
    accepted = fake.accepted_ids()
    assert failed and set(accepted.values()) == {1}
    found = statuses(engine)
    # Whatever the provider took is recorded sent (the failed window on the second try); the
    # claims never handed over are released for the next run; nothing is left open.
    assert found.count("sent") == len(accepted) >= 1
    assert set(found) <= {"sent", "retry"}
    again = fast_mailer(fake)
    with again.transport:
        assert send_due(sessions, again, now=T0 + timedelta(minutes=1)).sent == READERS - len(
            accepted
        )
    assert statuses(engine) == ["sent"] * READERS
    assert set(fake.accepted_ids().values()) == {1}
