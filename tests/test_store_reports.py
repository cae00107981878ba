"""The store's due query and counts on SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session
from tests.store_support import COURSE, T0

from drip.models import subscribers
from drip.store._sql import due_filter


def test_the_due_query_uses_the_partial_index(session: Session) -> None:
    query = select(subscribers.c.id).where(*due_filter(COURSE, T0))
    compiled = query.compile(session.get_bind(), compile_kwargs={"literal_binds": True})
    connection = session.connection()
    if connection.dialect.name == "sqlite":
        plan = " ".join(
            str(row) for row in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}")
        )
    else:
        # With a handful of rows the planner prefers a scan; forbid it to see the index is usable.
        connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
        plan = " ".join(str(row) for row in connection.exec_driver_sql(f"EXPLAIN {compiled}"))
    assert "ix_subscribers_due" in plan
