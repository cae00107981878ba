"""What the web app needs: timed pauses, a per-reader send time, the confirmation queue, and the
hashed suppression list that outlives an erased subscriber.

- subscribers.paused_until: a pause with an end ("pause for 2 weeks"); `drip send` resumes the
  reader when it has passed. NULL for a pause "until resumed".
- subscribers.send_time: the reader's own "HH:MM" for lessons after the first; NULL follows the
  course's send_time.
- subscribers.confirmation_wanted_at: a double opt-in email is owed since then (the web form
  queues it; the request never waits on the transport). NULL once it was sent. Partial index:
  only rows that owe one are candidates, as with next_send_at.
- suppressions: SHA-256 of an erased address (GDPR erase keeps nothing else), so an import or a
  signup of the same address is refused.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("subscribers") as batch:
        batch.add_column(sa.Column("paused_until", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("send_time", sa.String(5), nullable=True))
        batch.add_column(sa.Column("confirmation_wanted_at", sa.DateTime(), nullable=True))
    op.create_index(
        "ix_subscribers_confirmation_owed",
        "subscribers",
        ["course_id", "confirmation_wanted_at"],
        sqlite_where=sa.text("confirmation_wanted_at IS NOT NULL"),
        postgresql_where=sa.text("confirmation_wanted_at IS NOT NULL"),
    )
    op.create_index(
        "ix_subscribers_pause_ends",
        "subscribers",
        ["course_id", "paused_until"],
        sqlite_where=sa.text("paused_until IS NOT NULL"),
        postgresql_where=sa.text("paused_until IS NOT NULL"),
    )
    op.create_table(
        "suppressions",
        sa.Column("id", BIG_ID, primary_key=True),
        sa.Column("email_hash", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_suppressions"),
        sa.UniqueConstraint("email_hash", name="uq_suppressions_email_hash"),
    )


def downgrade() -> None:
    op.drop_table("suppressions")
    op.drop_index("ix_subscribers_pause_ends", table_name="subscribers")
    op.drop_index("ix_subscribers_confirmation_owed", table_name="subscribers")
    with op.batch_alter_table("subscribers") as batch:
        batch.drop_column("confirmation_wanted_at")
        batch.drop_column("send_time")
        batch.drop_column("paused_until")
