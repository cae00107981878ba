"""Cheaper sends on PostgreSQL: the due index orders and covers the send query, and the ledger's
status index holds only the rows an operator must look at.

- ix_subscribers_due becomes (course_id, next_send_at, id) INCLUDE (next_lesson, status).
  The send query takes the due readers in (next_send_at, id) order, LIMIT a batch; readers
  who share a moment (a course sending at 09:00 in one zone: all of them) made PostgreSQL read
  every due row and sort it for each batch of 500, so a run of n readers read n^2/1000 rows
  (82 us of server CPU per email at 50,000). With id in the key the batch is the index's first
  rows. The included columns make `drip send --dry-run`'s grouped count an index-only scan.
  SQLite needs neither: its index entries end with the rowid (the id) already.
- PostgreSQL: ix_deliveries_course_id_status keeps only retry, failed and in_doubt rows (the
  rows the idle probe, the settling pass and `drip deliveries` list by status), so a claim, its
  'sending' mark and its 'sent' record no longer each write an entry to it (3 of about 22
  index entries written per email sent). Sent rows per course are read from
  ix_deliveries_outcomes, a run's open rows from ix_deliveries_open_run. SQLite keeps the
  full index: it updates an index only when one of its columns changes, and could not use the
  partial one for a status bound as a parameter.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_DUE = sa.text("next_send_at IS NOT NULL")
_ATTENTION = sa.text("status IN ('retry', 'failed', 'in_doubt')")


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index("ix_subscribers_due", table_name="subscribers")
    op.create_index(
        "ix_subscribers_due",
        "subscribers",
        ["course_id", "next_send_at", "id"],
        postgresql_include=["next_lesson", "status"],
        postgresql_where=_DUE,
    )
    op.drop_index("ix_deliveries_course_id_status", table_name="deliveries")
    op.create_index(
        "ix_deliveries_course_id_status",
        "deliveries",
        ["course_id", "status"],
        postgresql_where=_ATTENTION,
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index("ix_subscribers_due", table_name="subscribers")
    op.create_index(
        "ix_subscribers_due", "subscribers", ["course_id", "next_send_at"], postgresql_where=_DUE
    )
    op.drop_index("ix_deliveries_course_id_status", table_name="deliveries")
    op.create_index("ix_deliveries_course_id_status", "deliveries", ["course_id", "status"])
