"""What the provider reported of each delivery, for `drip stats`: deliveries.event_flags.

- deliveries.event_flags: `drip.models.DeliveryOutcome` bits (1 delivered, 2 opened by a
  person, 4 opened by a machine, 8 clicked, 16 bounced or dropped, 32 complained), set by the
  webhook as events arrive, so the funnel is one GROUP BY over the ledger instead of a join of
  every event. Backfilled here from the stored events by the same rule the webhook applies
  (`drip.provider_events.outcome_of`): an open is a machine open when its payload's
  `sg_machine_open` is JSON true.
- ix_deliveries_outcomes: (course_id, lesson, event_flags, sent_at) over sent rows only, so the
  funnel is a GROUP BY in index order and claims and hand-overs (rows not sent) never touch it.
- subscribers: ix_subscribers_signups (signups per day), ix_subscribers_left (the readers who
  left, a partial index), ix_subscribers_confirm_wait (the median time to confirm, read in
  order: an index on the expression, each database's own; see `drip.models.CONFIRM_WAIT`).

The events table is unchanged.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Never NULL (an open without the field is a person's): NOT NULL would match nothing.
_MACHINE_OPEN = {
    "sqlite": "coalesce(json_type(payload, '$.sg_machine_open') = 'true', 0)",
    "postgresql": "coalesce(payload -> 'sg_machine_open' = 'true'::jsonb, false)",
}


def _bits(machine_open: str) -> str:
    """The OR of the outcome bits of a group of events (a sum of per-bit maxima: SQLite has no
    bit_or)."""
    rules = (
        (1, "type = 'delivered'"),
        (2, f"type = 'open' AND NOT ({machine_open})"),
        (4, f"type = 'open' AND {machine_open}"),
        (8, "type = 'click'"),
        (16, "type IN ('bounce', 'dropped')"),
        (32, "type = 'spamreport'"),
    )
    return " + ".join(f"max(CASE WHEN {rule} THEN {bit} ELSE 0 END)" for bit, rule in rules)


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("event_flags", sa.Integer(), server_default="0", nullable=False))
    dialect = op.get_bind().dialect.name
    bits = _bits(_MACHINE_OPEN[dialect])
    if dialect == "postgresql":
        op.execute(
            f"UPDATE deliveries SET event_flags = f.bits FROM (SELECT delivery_id, {bits} AS bits"
            " FROM events WHERE delivery_id IS NOT NULL GROUP BY delivery_id) AS f"
            " WHERE deliveries.id = f.delivery_id AND f.bits <> 0"
        )
    else:
        # A correlated sub-select (UPDATE ... FROM needs SQLite 3.33), by ix_events_delivery_id.
        op.execute(
            f"UPDATE deliveries SET event_flags = (SELECT {bits} FROM events"
            " WHERE events.delivery_id = deliveries.id)"
            " WHERE id IN (SELECT delivery_id FROM events WHERE delivery_id IS NOT NULL)"
        )
    op.create_index(
        "ix_deliveries_outcomes",
        "deliveries",
        ["course_id", "lesson", "event_flags", "sent_at"],
        sqlite_where=sa.text("status = 'sent'"),
        postgresql_where=sa.text("status = 'sent'"),
    )
    op.create_index(
        "ix_subscribers_signups", "subscribers", ["course_id", "created_at", "confirmed_at"]
    )
    left = sa.text("status IN ('unsubscribed', 'bounced', 'complained')")
    op.create_index(
        "ix_subscribers_left",
        "subscribers",
        ["course_id", "next_lesson", "status", "status_changed_at"],
        sqlite_where=left,
        postgresql_where=left,
    )
    # The expressions are `drip.models.CONFIRM_WAIT`, word for word (the queries must match).
    if dialect == "postgresql":
        op.execute(
            "CREATE INDEX ix_subscribers_confirm_wait ON subscribers"
            " (course_id, (confirmed_at - created_at)) INCLUDE (created_at, confirmed_at)"
            " WHERE confirmed_at > created_at"
        )
    else:
        op.execute(
            "CREATE INDEX ix_subscribers_confirm_wait ON subscribers"
            " (course_id, julianday(confirmed_at) - julianday(created_at), created_at)"
            " WHERE confirmed_at > created_at"
        )


def downgrade() -> None:
    for index in ("ix_subscribers_confirm_wait", "ix_subscribers_left", "ix_subscribers_signups"):
        op.drop_index(index, table_name="subscribers")
    op.drop_index("ix_deliveries_outcomes", table_name="deliveries")
    if op.get_bind().dialect.name == "sqlite" and sqlite3.sqlite_version_info >= (3, 35):
        # Native DROP COLUMN keeps the table as it is (a batch rebuild would have to carry
        # 0003's AUTOINCREMENT over by hand).
        op.execute("ALTER TABLE deliveries DROP COLUMN event_flags")
        return
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("event_flags")
