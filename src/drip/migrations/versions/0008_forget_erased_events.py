"""Forget the provider events stored about erased addresses after their erase.

Before this release the webhook stored every event it received, including opens, clicks and
bounces about an address erased at the person's request that arrived after the erase (days of
them: the events name a delivery the erase deleted, or none, and their payload holds the
address). The webhook no longer stores such events (`drip.store.events.add_events`); this
migration deletes the ones stored before: events whose delivery the ledger does not hold and
whose payload's address, trimmed and lower-cased, hashes to an 'erased' suppression. Nothing
else changes, and nothing comes back on downgrade.

The address is hashed by the database: PostgreSQL's sha256(); on SQLite a function registered
here on the migration's own connection (a migration does not rely on drip's engine setup). The
statement runs only when something was erased, and then reads only the events the ledger does
not hold, through the table's primary key and the suppressions' unique hash index.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SQLITE_SHA256 = "drip_0008_sha256_hex"


def _sha256_hex(value: object) -> str | None:
    return None if value is None else hashlib.sha256(str(value).encode("utf-8")).hexdigest()


def upgrade() -> None:
    bind = op.get_bind()
    erased = bind.exec_driver_sql("SELECT 1 FROM suppressions WHERE reason = 'erased' LIMIT 1")
    if erased.first() is None:
        return
    if bind.dialect.name == "postgresql":
        address = "e.payload ->> 'email'"
        digest = "encode(sha256(convert_to(lower(trim({})), 'UTF8')), 'hex')"
    else:
        driver = bind.connection.driver_connection
        driver.create_function(_SQLITE_SHA256, 1, _sha256_hex, deterministic=True)  # type: ignore[union-attr]
        address = "json_extract(e.payload, '$.email')"
        digest = _SQLITE_SHA256 + "(lower(trim({})))"
    bind.exec_driver_sql(
        "DELETE FROM events WHERE id IN (SELECT e.id FROM events AS e"
        " LEFT JOIN deliveries AS d ON d.id = e.delivery_id WHERE d.id IS NULL"
        " AND EXISTS (SELECT 1 FROM suppressions AS s WHERE s.reason = 'erased'"
        f" AND s.email_hash = {digest.format(address)}))"
    )


def downgrade() -> None:
    """Nothing to undo: the deleted events are gone, and 0007's schema is this one."""
