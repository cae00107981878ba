"""The 30-day purge of signups never confirmed (`store.subscribers.purge_unconfirmed`, run by
every `drip send` / `drip worker` run), on a real SQLite file and a real PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session, sessionmaker
from tests.store_support import COURSE, T0, add, claim
from tests.support import COURSE as REAL_COURSE
from tests.support import COURSE_DIR, TEMPLATES

from drip import store
from drip.cli import main
from drip.lifecycle import request_signup
from drip.models import events, subscribers
from drip.store import optin
from drip.store.subscribers import UNCONFIRMED_TTL, purge_unconfirmed

DAY = timedelta(days=1)
NOW = T0 + 40 * DAY


def emails(session: Session) -> set[str]:
    return set(session.connection().execute(select(subscribers.c.email)).scalars())


def test_only_quiet_never_confirmed_signups_older_than_30_days_go(session: Session) -> None:
    old = NOW - UNCONFIRMED_TTL - DAY
    add(session, "old@example.com", confirmed=False, now=old)
    add(session, "young@example.com", confirmed=False, now=NOW - UNCONFIRMED_TTL + DAY)
    add(session, "active@example.com", confirmed=True, now=old)
    add(session, "other-course@example.com", confirmed=False, now=old, course="course-b")
    # Asked again for a link 10 days ago: the clock starts again.
    asked = add(session, "asked@example.com", confirmed=False, now=old).subscriber_id
    optin.queue_confirmation(session, asked, now=NOW - 10 * DAY, interval=DAY)
    optin.confirmations_sent(session, [asked], NOW - 10 * DAY)
    # A confirmation still owed (the transport was down): kept until it is quiet too.
    owed = add(session, "owed@example.com", confirmed=False, now=old).subscriber_id
    optin.queue_confirmation(session, owed, now=NOW - 2 * DAY, interval=DAY)
    session.commit()

    assert purge_unconfirmed(session, COURSE, NOW) == 1
    session.commit()
    assert emails(session) == {
        "young@example.com",
        "active@example.com",
        "other-course@example.com",
        "asked@example.com",
        "owed@example.com",
    }
    assert purge_unconfirmed(session, COURSE, NOW) == 0  # idempotent


def test_a_reader_with_a_history_is_never_purged(session: Session) -> None:
    old = NOW - UNCONFIRMED_TTL - 10 * DAY
    # Unsubscribed, then asked to come back on the form long ago and never confirmed: it stays
    # 'unsubscribed' with its history (the re-opt-in flow does not make it pending).
    back = add(session, "back@example.com", confirmed=True, now=old - 30 * DAY).subscriber_id
    claim(session, old - 30 * DAY)
    store.unsubscribe(session, back, old - 20 * DAY)
    again = optin.request_optin(
        session,
        optin.Signup(COURSE, "back@example.com", None, "Asia/Tokyo", "web form"),
        now=old,
        interval=DAY,
    )
    assert again.subscriber_id == back and again.queued
    # A pending row that somehow has a ledger row or a confirmation (edited by hand): kept.
    odd = add(session, "odd@example.com", confirmed=True, now=old).subscriber_id
    claim(session, old)
    session.connection().execute(
        update(subscribers)
        .where(subscribers.c.id == odd)
        .values(status="pending", confirmed_at=None, last_sent_at=None, next_send_at=None)
    )
    session.commit()

    assert purge_unconfirmed(session, COURSE, NOW) == 0
    session.commit()
    assert emails(session) == {"back@example.com", "odd@example.com"}
    view = store.get_subscriber_by_id(session, back)
    assert view is not None and view.status is store.SubscriberStatus.UNSUBSCRIBED


def test_the_events_naming_a_purged_signup_go_with_it(session: Session) -> None:
    old = NOW - UNCONFIRMED_TTL - DAY
    gone = add(session, "old@example.com", confirmed=False, now=old).subscriber_id
    kept = add(session, "young@example.com", confirmed=False, now=NOW).subscriber_id
    for sid in (gone, kept):
        store.add_event(
            session,
            provider="sendgrid",
            provider_event_id=f"ev-{sid}",
            type="delivered",
            occurred_at=old,
            received_at=old,
            payload={"event": "delivered"},
            subscriber_id=sid,
        )
    session.commit()
    assert purge_unconfirmed(session, COURSE, NOW) == 1
    session.commit()
    left = session.connection().execute(select(events.c.subscriber_id)).scalars().all()
    assert left == [kept]


def test_drip_send_purges_and_a_dry_run_does_not(
    database_url: str, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    sessions = sessionmaker(engine)
    signed_up = T0 - 31 * DAY
    request_signup(
        sessions,
        REAL_COURSE,
        email="never@example.com",
        name=None,
        timezone=None,
        now=signed_up,
        consent_source="web form",
    )
    request_signup(
        sessions,
        REAL_COURSE,
        email="recent@example.com",
        name=None,
        timezone=None,
        now=T0 - 29 * DAY,
        consent_source="web form",
    )
    with sessions() as session, session.begin():  # the queued confirmations went out then
        session.connection().execute(
            update(subscribers).values(
                confirmation_wanted_at=None, confirmation_sent_at=subscribers.c.created_at
            )
        )
    env = {
        "DRIP_COURSE_DIR": str(COURSE_DIR),
        "DRIP_TEMPLATES_DIR": str(TEMPLATES),
        "DRIP_DATABASE_URL": database_url,
        "DRIP_SECRET_KEY": "purge-test-key-Xq3vN8kZ1pL0sT7wR2yB5mC9",
    }
    now = T0.isoformat()

    def count() -> int:
        with sessions() as session:
            return int(
                session.connection()
                .execute(select(func.count()).select_from(subscribers))
                .scalar_one()
            )

    dry = CliRunner().invoke(main, ["send", "--dry-run", "--now", now], env=env)
    assert dry.exit_code == 0, dry.output
    assert count() == 2
    sent = CliRunner().invoke(main, ["send", "--now", now], env=env)
    assert sent.exit_code == 0, sent.output
    with sessions() as session:
        assert emails(session) == {"recent@example.com"}
