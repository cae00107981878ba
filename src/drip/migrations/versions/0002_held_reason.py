"""Why a subscriber is held: subscribers.held_reason.

A subscriber is held when it is 'active' with a next lesson but no next_send_at (a failed or
in-doubt delivery, a lesson removed from the course, a timezone this host cannot load ...);
held_reason says why, so `drip subscribers list --held` can show every one of them.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("subscribers") as batch:
        batch.add_column(sa.Column("held_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("subscribers") as batch:
        batch.drop_column("held_reason")
