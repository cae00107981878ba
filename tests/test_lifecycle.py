"""A hypothesis state machine interleaving subscribe, confirm, pause, resume, unsubscribe, the
clock and `drip send`, with the invariants: never mail an unconfirmed, paused or suppressed
reader; never lesson n+1 before lesson n; each lesson at most once."""

from __future__ import annotations

import shutil
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy.orm import sessionmaker
from tests.support import COURSE, make_mailer

from drip import schedule, store
from drip.db import open_database
from drip.delivery import send_due
from drip.lifecycle import (
    pause_subscriber,
    resume_subscriber,
    subscribe,
    unsubscribe_subscriber,
)
from drip.transports.memory import MemoryTransport

SLUGS = [lesson.slug for lesson in COURSE.lessons]
EMAILS = [f"r{index}@example.com" for index in range(4)]
ZONES = ["Asia/Tokyo", "America/New_York", "Asia/Kathmandu"]
START = datetime(2026, 3, 6, 0, 0, tzinfo=UTC)

email_strategy = st.sampled_from(EMAILS)


class Lifecycle(RuleBasedStateMachine):
    """The model: each address's status as the reader and the operator made it."""

    template: Path  # an upgraded SQLite file, copied for each example

    @initialize()
    def setup(self) -> None:
        self.dir = Path(tempfile.mkdtemp())
        shutil.copyfile(self.template, self.dir / "drip.db")
        self.engine = open_database(f"sqlite:///{self.dir / 'drip.db'}", auto_upgrade=False)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.transport = MemoryTransport()
        self.mailer = make_mailer(self.transport)
        self.now = START
        self.status: dict[str, str] = {}
        self.received: dict[str, list[str]] = {email: [] for email in EMAILS}
        self.seen = 0

    def teardown(self) -> None:
        self.engine.dispose()
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(email=email_strategy, confirmed=st.booleans(), zone=st.sampled_from(ZONES))
    def subscribe(self, email: str, confirmed: bool, zone: str) -> None:
        try:
            result = subscribe(
                self.sessions,
                self.mailer,
                email=email,
                name=None,
                timezone=zone,
                confirmed=confirmed,
                now=self.now,
                consent_source="model",
            )
        except store.SuppressedAddressError:
            assert self.status.get(email) == "unsubscribed"
            return
        if email not in self.status or (confirmed and self.status[email] == "pending"):
            self.status[email] = "active" if confirmed else "pending"
        assert result.status in ("pending", "active", "paused", "completed")
        new = self.transport.sent[self.seen :]
        self.seen = len(self.transport.sent)
        # Only a pending reader gets an email from subscribing: the confirmation.
        assert all("drip_lesson" not in m.custom_args for m in new)
        assert len(new) <= (1 if result.status == "pending" else 0)

    @rule(email=email_strategy)
    def confirm(self, email: str) -> None:
        with self.sessions() as session, session.begin():
            view = store.get_subscriber(session, COURSE.id, email)
            if view is None or view.status != "pending":
                return
            first = COURSE.lessons[0]
            store.confirm_subscriber(
                session,
                view.id,
                now=self.now,
                first_lesson=first.slug,
                first_send_at=schedule.next_send_at(
                    COURSE.settings,
                    view.timezone,
                    first,
                    previous_sent_at=None,
                    confirmed_at=self.now,
                ),
            )
        self.status[email] = "active"

    @precondition(lambda self: any(s == "active" for s in self.status.values()))
    @rule(email=email_strategy)
    def pause(self, email: str) -> None:
        if (
            pause_subscriber(self.sessions, COURSE, email, now=self.now)
            if email in self.status
            else False
        ):
            self.status[email] = "paused"

    @rule(email=email_strategy)
    def resume(self, email: str) -> None:
        if email in self.status and resume_subscriber(self.sessions, COURSE, email, now=self.now):
            self.status[email] = "active"

    @rule(email=email_strategy)
    def unsubscribe(self, email: str) -> None:
        if email in self.status:
            unsubscribe_subscriber(self.sessions, COURSE, email, now=self.now)
            self.status[email] = "unsubscribed"

    @rule(minutes=st.integers(min_value=1, max_value=3 * 24 * 60))
    def wait(self, minutes: int) -> None:
        self.now += timedelta(minutes=minutes)

    @rule()
    def send(self) -> None:
        before = dict(self.status)
        send_due(self.sessions, self.mailer, now=self.now)
        run = self.transport.sent[self.seen :]
        self.seen = len(self.transport.sent)
        lessons = [m for m in run if "drip_lesson" in m.custom_args]
        readers = [m.to_address for m in lessons]
        assert len(readers) == len(set(readers)), "two lessons to one reader in one run"
        for message in lessons:
            assert before.get(message.to_address) == "active", (
                f"mailed {message.to_address} while {before.get(message.to_address)}"
            )
            self.received[message.to_address].append(message.custom_args["drip_lesson"])
        for message in run:
            if "drip_lesson" not in message.custom_args:
                pytest.fail("send_due sent something that is not a lesson")

    @invariant()
    def lessons_in_order_each_once(self) -> None:
        if not hasattr(self, "received"):
            return
        for got in self.received.values():
            assert got == SLUGS[: len(got)], got


def make_machine(template: Path) -> type[RuleBasedStateMachine]:
    """The state machine over a copy of `template` for each example."""
    return type("LifecycleOnTemplate", (Lifecycle,), {"template": template})


@pytest.mark.slow
def test_lifecycle_state_machine(tmp_path: Path) -> None:
    template = tmp_path / "template.db"
    open_database(f"sqlite:///{template}", auto_upgrade=True).dispose()
    run_state_machine_as_test(
        make_machine(template),
        settings=settings(
            max_examples=40,
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
