"""ix_subscribers_pending: the signups never confirmed, for the 30-day purge.

Every `drip send` deletes the pending signups that have been quiet for 30 days
(`store.subscribers.purge_unconfirmed`), and `drip.idle` asks the same question before a run
loads anything. Without this index both read every row of the course (0.5-0.9 s per run at a
million readers on SQLite); with it, only the pending ones (a few, usually none).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_subscribers_pending",
        "subscribers",
        ["course_id", "created_at"],
        sqlite_where=sa.text("status = 'pending'"),
        postgresql_where=sa.text("status = 'pending'"),
    )


def downgrade() -> None:
    op.drop_index("ix_subscribers_pending", table_name="subscribers")
