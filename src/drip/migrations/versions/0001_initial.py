"""Initial schema: subscribers, the deliveries ledger, provider events.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Integer on SQLite so the primary key is the rowid.
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
SUBSCRIBER_STATUSES = (
    "pending",
    "active",
    "paused",
    "completed",
    "unsubscribed",
    "bounced",
    "complained",
)
DELIVERY_STATUSES = ("claimed", "sending", "sent", "retry", "failed", "in_doubt")


def _in(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(value) for value in values)})"


def upgrade() -> None:
    op.create_table(
        "subscribers",
        sa.Column("id", BIG_ID, primary_key=True),
        sa.Column("course_id", sa.String(100), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("name", sa.String(200), nullable=True),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("consent_at", sa.DateTime(), nullable=False),
        sa.Column("consent_source", sa.String(300), nullable=False),
        sa.Column("confirmed_at", sa.DateTime(), nullable=True),
        sa.Column("paused_at", sa.DateTime(), nullable=True),
        sa.Column("status_changed_at", sa.DateTime(), nullable=False),
        sa.Column("confirmation_sent_at", sa.DateTime(), nullable=True),
        sa.Column("next_lesson", sa.String(100), nullable=True),
        sa.Column("next_send_at", sa.DateTime(), nullable=True),
        sa.Column("last_sent_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_subscribers"),
        sa.UniqueConstraint("course_id", "email", name="uq_subscribers_course_id_email"),
        sa.CheckConstraint(_in("status", SUBSCRIBER_STATUSES), name=op.f("ck_subscribers_status")),
    )
    # Partial on both backends: only subscribers with a next send are candidates, so "nothing is
    # due" among a million rows is one index probe.
    op.create_index(
        "ix_subscribers_due",
        "subscribers",
        ["course_id", "next_send_at"],
        sqlite_where=sa.text("next_send_at IS NOT NULL"),
        postgresql_where=sa.text("next_send_at IS NOT NULL"),
    )
    op.create_index("ix_subscribers_email", "subscribers", ["email"])

    op.create_table(
        "deliveries",
        sa.Column("id", BIG_ID, primary_key=True),
        sa.Column("subscriber_id", BIG_ID, nullable=False),
        sa.Column("course_id", sa.String(100), nullable=False),
        sa.Column("lesson", sa.String(100), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("claimed_at", sa.DateTime(), nullable=False),
        sa.Column("lease_until", sa.DateTime(), nullable=False),
        sa.Column("sent_at", sa.DateTime(), nullable=True),
        sa.Column("provider_id", sa.String(200), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_deliveries"),
        sa.ForeignKeyConstraint(
            ["subscriber_id"],
            ["subscribers.id"],
            name="fk_deliveries_subscriber_id_subscribers",
            ondelete="CASCADE",
        ),
        # Each (subscriber, lesson) at most once, ever: the guarantee against double sends.
        sa.UniqueConstraint("subscriber_id", "lesson", name="uq_deliveries_subscriber_id_lesson"),
        sa.CheckConstraint(_in("status", DELIVERY_STATUSES), name=op.f("ck_deliveries_status")),
    )
    op.create_index("ix_deliveries_course_id_status", "deliveries", ["course_id", "status"])
    op.create_index(
        "ix_deliveries_open_run",
        "deliveries",
        ["run_id"],
        sqlite_where=sa.text("status IN ('claimed', 'sending')"),
        postgresql_where=sa.text("status IN ('claimed', 'sending')"),
    )

    op.create_table(
        "events",
        sa.Column("id", BIG_ID, primary_key=True),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("provider_event_id", sa.String(200), nullable=True),
        sa.Column("delivery_id", BIG_ID, nullable=True),
        sa.Column("subscriber_id", BIG_ID, nullable=True),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("occurred_at", sa.DateTime(), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.Column(
            "payload", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name="pk_events"),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["deliveries.id"],
            name="fk_events_delivery_id_deliveries",
            ondelete="SET NULL",
        ),
        sa.UniqueConstraint("provider", "provider_event_id", name="uq_events_provider_event"),
    )
    op.create_index("ix_events_delivery_id", "events", ["delivery_id"])


def downgrade() -> None:
    op.drop_table("events")
    op.drop_table("deliveries")
    op.drop_table("subscribers")
