"""The store's provider events on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import text
from sqlalchemy.orm import Session
from tests.store_support import T0

from drip import store


def test_add_event_is_idempotent_per_provider_event(session: Session) -> None:
    args = {
        "provider": "sendgrid",
        "type": "delivered",
        "occurred_at": T0,
        "received_at": T0 + timedelta(seconds=3),
        "payload": {"event": "delivered", "メモ": "日本語"},
    }
    first = store.add_event(session, provider_event_id="ev-1", **args)  # type: ignore[arg-type]
    again = store.add_event(session, provider_event_id="ev-1", **args)  # type: ignore[arg-type]
    other_provider = store.add_event(
        session,
        **{**args, "provider": "smtp"},
        provider_event_id="ev-1",  # type: ignore[arg-type]
    )
    anonymous = [
        store.add_event(session, provider_event_id=None, **args)  # type: ignore[arg-type]
        for _ in range(2)
    ]
    session.commit()
    assert first is not None and again is None and other_provider is not None
    assert None not in anonymous and len(set(anonymous)) == 2
    payload = (
        session.connection()
        .execute(text("SELECT COUNT(*) FROM events WHERE provider_event_id = 'ev-1'"))
        .scalar_one()
    )
    assert payload == 2
