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
- SQLite only: subscribers and deliveries become AUTOINCREMENT tables. Rows are deleted from now
  on (GDPR erase, purged signups), and plain SQLite hands the highest deleted rowid to the next
  insert: a new reader would inherit the id an erased reader's links were signed with (their old
  unsubscribe and manage links would act on the newcomer), and a late provider event for a
  deleted delivery would land on a new one. PostgreSQL sequences never reuse ids.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

import re
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

    if op.get_bind().dialect.name == "sqlite":
        for table in ("subscribers", "deliveries"):
            _sqlite_rebuild(table, autoincrement=True)


def _sqlite_rebuild(table: str, *, autoincrement: bool) -> None:
    """SQLite's 12-step table change: the same table with or without AUTOINCREMENT.

    `drip.db` runs upgrades with foreign keys off (SQLite's own recipe), so dropping the old
    table cascades nothing; it checks the foreign keys before committing.
    """
    bind = op.get_bind()
    if bind.exec_driver_sql("PRAGMA foreign_keys").scalar():
        raise RuntimeError(
            f"rebuilding {table} with foreign keys on would cascade-delete rows; run the"
            " migration through drip.db (drip db upgrade), which turns them off first"
        )
    ddl = bind.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
    ).scalar_one()
    indexes = (
        bind.exec_driver_sql(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ?"
            " AND sql IS NOT NULL",
            (table,),
        )
        .scalars()
        .all()
    )
    pk = f"pk_{table}"
    # The table constraint sits among the others (as 0001 made it) or last (after a downgrade).
    table_pk = re.compile(
        rf"\s*CONSTRAINT {pk} PRIMARY KEY \(id\),|,\s*CONSTRAINT {pk} PRIMARY KEY \(id\)(?=\s*\)$)"
    )
    column_pk = f"id INTEGER NOT NULL CONSTRAINT {pk} PRIMARY KEY AUTOINCREMENT,"
    if autoincrement:
        new, found = table_pk.subn("", ddl.strip(), count=1)
        assert found == 1, ddl
        new = new.replace("id INTEGER NOT NULL,", column_pk, 1)
    else:
        new = ddl.replace(column_pk, "id INTEGER NOT NULL,", 1)
        new = new.replace("\n)", f", \n\tCONSTRAINT {pk} PRIMARY KEY (id)\n)", 1)
    # A renamed table's DDL names it in quotes: CREATE TABLE "subscribers" (...
    new, renamed = re.subn(rf'^CREATE TABLE "?{table}"? \(', f"CREATE TABLE _new_{table} (", new)
    assert renamed == 1, new
    bind.exec_driver_sql(new)
    bind.exec_driver_sql(f"INSERT INTO _new_{table} SELECT * FROM {table}")
    bind.exec_driver_sql(f"DROP TABLE {table}")
    bind.exec_driver_sql(f"ALTER TABLE _new_{table} RENAME TO {table}")
    for index in indexes:
        bind.exec_driver_sql(index)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for table in ("deliveries", "subscribers"):
            _sqlite_rebuild(table, autoincrement=False)
    op.drop_table("suppressions")
    op.drop_index("ix_subscribers_pause_ends", table_name="subscribers")
    op.drop_index("ix_subscribers_confirmation_owed", table_name="subscribers")
    with op.batch_alter_table("subscribers") as batch:
        batch.drop_column("confirmation_wanted_at")
        batch.drop_column("send_time")
        batch.drop_column("paused_until")
