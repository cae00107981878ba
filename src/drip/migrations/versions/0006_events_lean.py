"""A cheaper INSERT for the webhook: events lose their foreign key to deliveries, and on
PostgreSQL the payload becomes `json` (text) instead of `jsonb`.

- fk_events_delivery_id_deliveries is dropped. Its check cost each stored event a row lock on
  its delivery (a WAL record and a trigger call per row: 8-12 ms of a 1,000-event batch on
  PostgreSQL) and added nothing: the webhook's INSERT takes `delivery_id` from a join with the
  ledger, so it names a delivery that exists. Its ON DELETE SET NULL is not needed either:
  deliveries are deleted only by the GDPR erase (`store.privacy.erase_subscriber`), which
  deletes the events about them in the same transaction. Ids are never reused (PostgreSQL
  sequences, SQLite AUTOINCREMENT since 0003), so an event that names a delivery erased while
  its batch was being stored names nothing and can never land on another reader.
- PostgreSQL: events.payload is `json`. The webhook only writes it and the GDPR export,
  erase and `drip subscribers show` read it back whole or by one key (`->>`); `jsonb` parsed
  and re-encoded every payload on the way in for nothing. SQLite stores JSON as text already.
  This rewrites the events table once.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from alembic import op
from alembic.operations import BatchOperations

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FOREIGN_KEY = "fk_events_delivery_id_deliveries"


@contextmanager
def _sqlite_rebuild() -> Iterator[BatchOperations]:
    """SQLite changes a constraint by rebuilding the table (alembic's batch mode). Reflecting
    events reflects the tables it refers to, and SQLAlchemy warns that it cannot reflect 0004's
    expression index on subscribers: that table is only read, not rebuilt."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Skipped unsupported reflection of expression-based")
        with op.batch_alter_table("events") as batch:
            yield batch


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint(FOREIGN_KEY, "events", type_="foreignkey")
        op.execute("ALTER TABLE events ALTER COLUMN payload TYPE json USING payload::json")
        return
    with _sqlite_rebuild() as batch:
        batch.drop_constraint(FOREIGN_KEY, type_="foreignkey")


def downgrade() -> None:
    # Events stored for a delivery erased meanwhile (see above) would fail the constraint:
    # they get the NULL that ON DELETE SET NULL would have given them.
    op.execute(
        "UPDATE events SET delivery_id = NULL WHERE delivery_id IS NOT NULL"
        " AND NOT EXISTS (SELECT 1 FROM deliveries WHERE deliveries.id = events.delivery_id)"
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE events ALTER COLUMN payload TYPE jsonb USING payload::jsonb")
        op.create_foreign_key(
            FOREIGN_KEY, "events", "deliveries", ["delivery_id"], ["id"], ondelete="SET NULL"
        )
        return
    with _sqlite_rebuild() as batch:
        batch.create_foreign_key(
            FOREIGN_KEY, "deliveries", ["delivery_id"], ["id"], ondelete="SET NULL"
        )
