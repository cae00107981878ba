"""Provider events (deliveries, bounces, complaints as reported by the provider), stored once."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from drip.models import events
from drip.store._sql import connection, insert_ignoring_conflicts


def add_event(
    session: Session,
    *,
    provider: str,
    provider_event_id: str | None,
    type: str,
    occurred_at: datetime,
    received_at: datetime,
    payload: Mapping[str, Any],
    delivery_id: int | None = None,
    subscriber_id: int | None = None,
) -> int | None:
    """Store a provider event once. Returns its new id, or None when (provider,
    provider_event_id) was stored before (webhooks are redelivered). Events without a provider
    id are always stored.
    """
    conn = connection(session)
    stmt = (
        insert_ignoring_conflicts(conn, events, ("provider", "provider_event_id"))
        .values(
            provider=provider,
            provider_event_id=provider_event_id,
            delivery_id=delivery_id,
            subscriber_id=subscriber_id,
            type=type,
            occurred_at=occurred_at,
            received_at=received_at,
            payload=dict(payload),
        )
        .returning(events.c.id)
    )
    return conn.execute(stmt).scalar_one_or_none()
