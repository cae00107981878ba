"""Migration 0006: events lose their foreign key to deliveries (and, on PostgreSQL, the payload
becomes `json`); every row survives the upgrade, the downgrade and a second upgrade."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, inspect, text
from tests.support import migrate

from drip.db import head_revision, make_engine, upgrade

AT = "2026-01-01 00:00:00"
PAYLOADS = {
    "e1": {"email": "a@example.com", "event": "delivered", "category": ["drip", "日本"]},
    "e2": {"email": "a@example.com", "event": "open", "sg_machine_open": True, "n": 1.5},
    "e3": {"email": "b@example.com", "event": "bounce", "reason": '550 "no"\nuser'},
}


def _events(conn: Connection) -> dict[str, tuple[Any, Any, dict[str, Any]]]:
    rows = conn.execute(
        text("SELECT provider_event_id, delivery_id, subscriber_id, payload FROM events")
    )
    found = {}
    for event_id, delivery_id, subscriber_id, payload in rows:
        if isinstance(payload, str):  # SQLite through a plain text() query
            payload = json.loads(payload)
        found[event_id] = (delivery_id, subscriber_id, payload)
    return found


def _payload_type(conn: Connection) -> str:
    return str(
        conn.execute(
            text(
                "SELECT data_type FROM information_schema.columns"
                " WHERE table_name = 'events' AND column_name = 'payload'"
            )
        ).scalar_one()
    )


def test_0006_drops_the_events_foreign_key_and_keeps_every_row(empty_database_url: str) -> None:
    url = empty_database_url
    engine = make_engine(url)
    try:
        migrate(engine, "0005")
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO subscribers (id, course_id, email, timezone, status, created_at,"
                    " consent_at, consent_source, status_changed_at) VALUES"
                    " (7, 'c', 'a@example.com', 'UTC', 'active', :at, :at, 'test', :at),"
                    " (8, 'c', 'b@example.com', 'UTC', 'active', :at, :at, 'test', :at)"
                ),
                {"at": AT},
            )
            conn.execute(
                text(
                    "INSERT INTO deliveries (id, subscriber_id, course_id, lesson, status, run_id,"
                    " attempts, claimed_at, lease_until, updated_at) VALUES"
                    " (90, 7, 'c', 'welcome', 'sent', 'r', 1, :at, :at, :at),"
                    " (91, 8, 'c', 'welcome', 'sent', 'r', 1, :at, :at, :at)"
                ),
                {"at": AT},
            )
            for event_id, (delivery_id, subscriber_id) in {
                "e1": (90, 7),
                "e2": (90, 7),
                "e3": (91, 8),
            }.items():
                conn.execute(
                    text(
                        "INSERT INTO events (provider, provider_event_id, delivery_id,"
                        " subscriber_id, type, occurred_at, received_at, payload) VALUES"
                        " ('sendgrid', :id, :d, :s, 'delivered', :at, :at, :payload)"
                    ),
                    {
                        "id": event_id,
                        "d": delivery_id,
                        "s": subscriber_id,
                        "at": AT,
                        "payload": json.dumps(PAYLOADS[event_id]),
                    },
                )
        expected = {"e1": (90, 7, PAYLOADS["e1"]), "e2": (90, 7, PAYLOADS["e2"])}
        expected["e3"] = (91, 8, PAYLOADS["e3"])

        assert upgrade(url) == head_revision()
        with engine.begin() as conn:
            assert inspect(conn).get_foreign_keys("events") == []
            indexes = {index["name"] for index in inspect(conn).get_indexes("events")}
            assert "ix_events_delivery_id" in indexes
            assert _events(conn) == expected
            postgres = conn.dialect.name == "postgresql"
            if postgres:
                assert _payload_type(conn) == "json"
            # Without the key a delivery can go while an event still names it (an erase racing
            # a webhook batch); the unique (provider, provider_event_id) still holds.
            conn.execute(text("DELETE FROM deliveries WHERE id = 91"))
            assert _events(conn)["e3"][0] == 91
            duplicate = conn.execute(
                text(
                    "INSERT INTO events (provider, provider_event_id, type, occurred_at,"
                    " received_at, payload) VALUES ('sendgrid', 'e1', 'open', :at, :at, '{}')"
                    " ON CONFLICT (provider, provider_event_id) DO NOTHING"
                ),
                {"at": AT},
            )
            assert duplicate.rowcount == 0

        migrate(engine, "0005", down=True)
        with engine.begin() as conn:
            (key,) = inspect(conn).get_foreign_keys("events")
            assert key["referred_table"] == "deliveries"
            assert key["options"].get("ondelete") == "SET NULL"
            if postgres:
                assert _payload_type(conn) == "jsonb"
            # The event of the deleted delivery gets the NULL ON DELETE SET NULL gave.
            assert _events(conn) == {**expected, "e3": (None, 8, PAYLOADS["e3"])}

        assert upgrade(url) == head_revision()
        with engine.begin() as conn:
            assert inspect(conn).get_foreign_keys("events") == []
            assert _events(conn) == {**expected, "e3": (None, 8, PAYLOADS["e3"])}
    finally:
        engine.dispose()


def test_an_event_for_a_deleted_delivery_is_stored_unlinked(database_url: str) -> None:
    """Without the foreign key the webhook's INSERT still stores only links to deliveries that
    exist: the join with the ledger is what links an event."""
    from sqlalchemy.orm import sessionmaker

    from drip import store
    from drip.store.events import NewEvent

    engine = make_engine(database_url)
    try:
        sessions = sessionmaker(engine)
        now = datetime(2026, 1, 1, tzinfo=UTC)
        with sessions() as session, session.begin():
            batch = [NewEvent("gone", "delivered", now, {"email": "x@example.com"}, 424242, 1)]
            assert store.add_events(session, "sendgrid", batch, received_at=now) == 1
        with engine.connect() as conn:
            assert _events(conn)["gone"][:2] == (None, None)
    finally:
        engine.dispose()
