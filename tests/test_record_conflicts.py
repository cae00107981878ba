"""Recording a window while another transaction holds rows it needs (PostgreSQL, real row locks
between two connections): a deadlock is recorded again, not lost; a failure that is not a lock
conflict leaves the window's deliveries to be awaited and recorded again, never released.

The other transaction stands in for the webhook, which locks deliveries (outcome flags) and then
subscribers (suppressions) while `drip send` locks both in delivery order. It takes its lock on
the later delivery's subscriber row at hand-over (after the claim, which skips locked rows).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime

import pytest
from sqlalchemy import Connection, Engine, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import sessionmaker
from tests.support import POSTGRESQL_ONLY, make_mailer

from drip.delivery import send_due
from drip.lifecycle import subscribe
from drip.message import OutgoingEmail
from drip.models import deliveries
from drip.send_report import SendReport
from drip.transports.base import SendResult
from drip.transports.memory import MemoryTransport

T0 = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)  # a Monday, 10:00 in Tokyo


class LockingTransport(MemoryTransport):
    """Accepts every email, then runs `lock` (once)."""

    def __init__(self, lock: Callable[[], None]) -> None:
        super().__init__()
        self.lock = lock

    def send(self, emails: Sequence[OutgoingEmail]) -> list[SendResult]:
        results = super().send(emails)
        self.lock()
        return results


class Scene:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sessions = sessionmaker(engine)
        self.other: Connection = engine.connect()
        # The other transaction never gives up first: `drip send` is the one PostgreSQL rolls back.
        self.other.exec_driver_sql("SET deadlock_timeout = '60s'")
        self.other.commit()
        self.locked = False
        self.transport = LockingTransport(self._lock_second)
        self.mailer = make_mailer(self.transport)
        self.readers = [
            subscribe(
                self.sessions,
                self.mailer,
                email=f"r{n}@example.com",
                name=None,
                timezone="Asia/Tokyo",
                confirmed=True,
                now=T0,
                consent_source="test",
            ).subscriber_id
            for n in range(2)
        ]
        self.outcome: SendReport | BaseException | None = None
        self.thread = threading.Thread(target=self._send)

    def _lock_second(self) -> None:
        if self.locked:
            return
        self.locked = True
        # The reader of the later delivery: the send locks the earlier one's rows first.
        self.other.exec_driver_sql(
            "SELECT 1 FROM subscribers WHERE id ="
            " (SELECT subscriber_id FROM deliveries ORDER BY id DESC LIMIT 1) FOR UPDATE"
        )

    def _send(self) -> None:
        try:
            self.outcome = send_due(self.sessions, self.mailer, now=T0, window=10)  # one window
        except BaseException as exc:
            self.outcome = exc

    def waiting_backends(self) -> list[int]:
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    text(
                        "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                        " AND datname = current_database() AND pid <> pg_backend_pid()"
                    )
                ).scalars()
            )

    def wait_for_a_waiter(self) -> list[int] | None:
        """The backends waiting on a row lock once the send waits on one; None if it ended."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            waiting = self.waiting_backends()
            if waiting:
                return waiting
            if not self.thread.is_alive():
                return None
            time.sleep(0.02)
        raise AssertionError("the send never waited on the locked row")

    def statuses(self) -> dict[int, str]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(deliveries.c.subscriber_id, deliveries.c.status)).all()
        return {row.subscriber_id: row.status for row in rows}

    def first_delivery(self) -> int:
        with self.engine.connect() as conn:
            found: int = conn.execute(select(deliveries.c.id).order_by(deliveries.c.id)).first()[0]
        return found


@pytest.fixture
def scene(engine: Engine) -> Iterator[Scene]:
    made = Scene(engine)
    try:
        yield made
    finally:
        made.other.rollback()
        made.other.close()
        made.thread.join(timeout=30)


@POSTGRESQL_ONLY
def test_a_deadlock_with_the_webhook_while_recording_is_recorded_again(
    scene: Scene, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="drip.delivery")
    scene.thread.start()
    assert scene.wait_for_a_waiter() is not None
    # The webhook's order: the earlier delivery (locked by the send) while holding the later
    # one's reader (which the send waits for): a deadlock, and the send is rolled back.
    scene.other.exec_driver_sql(
        "UPDATE deliveries SET event_flags = event_flags | 1 WHERE id = %s",
        (scene.first_delivery(),),
    )
    scene.other.commit()
    scene.thread.join(timeout=30)
    assert isinstance(scene.outcome, SendReport), scene.outcome
    assert scene.outcome.sent == 2
    assert set(scene.statuses().values()) == {"sent"}
    assert "met a lock conflict" in caplog.text  # the deadlock happened and was survived


@POSTGRESQL_ONLY
def test_a_window_whose_recording_failed_is_recorded_again_never_released(scene: Scene) -> None:
    scene.thread.start()
    waiting = scene.wait_for_a_waiter()
    assert waiting is not None
    with scene.engine.connect() as conn:  # the connection dies: not a lock conflict
        conn.execute(
            text("SELECT pg_terminate_backend(pid) FROM unnest(:pids) AS pid"), {"pids": waiting}
        )
    # The run gives up, but first waits for the window it handed over and records it again:
    # its emails went out, so releasing them would send them twice.
    again = scene.wait_for_a_waiter()
    scene.other.rollback()
    scene.thread.join(timeout=30)
    assert isinstance(scene.outcome, OperationalError), scene.outcome
    assert again is not None, "the window was not recorded again"
    assert set(scene.statuses().values()) == {"sent"}
    assert send_due(scene.sessions, scene.mailer, now=T0).sent == 0
    assert len(scene.transport.sent) == 2
