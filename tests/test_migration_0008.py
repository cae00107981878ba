"""Migration 0008: the events stored about an erased address after its erase (before the webhook
refused them) are deleted; every other event stays, and a database where nothing was erased is
left as it is."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from sqlalchemy import Connection, Engine, text
from tests.support import migrate

from drip.db import make_engine
from drip.store.privacy import email_hash

AT = "2026-01-01 00:00:00"
KEPT_DELIVERY = 90


def _add_event(conn: Connection, event_id: str, delivery_id: int | None, payload: object) -> None:
    conn.execute(
        text(
            "INSERT INTO events (provider, provider_event_id, delivery_id, subscriber_id, type,"
            " occurred_at, received_at, payload) VALUES ('sendgrid', :id, :d, NULL, 'open', :at,"
            " :at, :payload)"
        ),
        {"id": event_id, "d": delivery_id, "at": AT, "payload": json.dumps(payload)},
    )


def _fill(conn: Connection) -> None:
    conn.execute(
        text(
            "INSERT INTO subscribers (id, course_id, email, timezone, status, created_at,"
            " consent_at, consent_source, status_changed_at) VALUES (7, 'c', 'kept@example.com',"
            " 'UTC', 'active', :at, :at, 't', :at)"
        ),
        {"at": AT},
    )
    conn.execute(
        text(
            "INSERT INTO deliveries (id, subscriber_id, course_id, lesson, status, run_id,"
            " attempts, claimed_at, lease_until, updated_at) VALUES"
            " (:d, 7, 'c', 'one', 'sent', 'r', 1, :at, :at, :at)"
        ),
        {"d": KEPT_DELIVERY, "at": AT},
    )
    gone = {"email": "gone@example.com", "event": "open"}
    _add_event(conn, "no-delivery", None, gone)
    _add_event(conn, "erased-delivery", 999, {"email": " GONE@Example.com", "event": "click"})
    _add_event(conn, "someone-else", None, {"email": "other@example.com", "event": "open"})
    _add_event(conn, "held-delivery", KEPT_DELIVERY, {"email": "kept@example.com"})
    _add_event(conn, "no-address", None, {"event": "processed"})
    _add_event(conn, "odd-address", None, {"email": 12345})


def _event_ids(conn: Connection) -> list[str]:
    found = conn.execute(text("SELECT provider_event_id FROM events ORDER BY provider_event_id"))
    return list(found.scalars())


@pytest.fixture
def at_0007(empty_database_url: str) -> Iterator[Engine]:
    """A database at 0007 with a reader, a delivery and the events of `_fill`."""
    engine = make_engine(empty_database_url)
    try:
        migrate(engine, "0007")
        with engine.begin() as conn:
            _fill(conn)
        yield engine
    finally:
        engine.dispose()


def test_0008_deletes_only_the_events_about_erased_addresses(at_0007: Engine) -> None:
    with at_0007.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO suppressions (email_hash, reason, created_at) VALUES"
                " (:h, 'erased', :at)"
            ),
            {"h": email_hash("gone@example.com"), "at": AT},
        )
    migrate(at_0007, "0008")
    with at_0007.begin() as conn:
        assert _event_ids(conn) == [
            "held-delivery",
            "no-address",
            "odd-address",
            "someone-else",
        ]
    migrate(at_0007, "0007", down=True)  # nothing to undo, and it does not fail
    migrate(at_0007, "0008")
    with at_0007.begin() as conn:
        assert len(_event_ids(conn)) == 4


def test_0008_leaves_a_database_where_nothing_was_erased_as_it_is(at_0007: Engine) -> None:
    with at_0007.begin() as conn:
        before = _event_ids(conn)
    migrate(at_0007, "0008")
    with at_0007.begin() as conn:
        assert _event_ids(conn) == before and len(before) == 6
