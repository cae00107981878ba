"""PostgreSQL plans of the recording statements: a window's rows are found by the primary key,
never by reading the whole table, even when the table's statistics are stale (a run fills the
ledger faster than autovacuum analyzes it)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, event, text
from tests.conftest import _truncate

from drip.db import make_engine
from drip.models import subscribers
from drip.store._bulk_update import update_rows
from drip.store.ledger import _settling

READERS = 100_000
WINDOW = 4_000


@pytest.fixture
def big_table(postgres_database: str) -> Iterator[Engine]:
    """100,000 active subscribers, analyzed."""
    _truncate(postgres_database)
    engine = make_engine(postgres_database)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            f"""INSERT INTO subscribers (course_id, email, timezone, status, created_at,
                    consent_at, consent_source, confirmed_at, status_changed_at, next_lesson,
                    next_send_at)
                SELECT 'c', 'reader' || i || '@example.com', 'Asia/Tokyo', 'active', now(),
                    now(), 'test', now(), now(), 'one', now()
                FROM generate_series(1, {READERS}) AS i"""
        )
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE subscribers")
    try:
        yield engine
    finally:
        engine.dispose()
        _truncate(postgres_database)


def _explained(engine: Engine, verb: str, call: Callable[[Connection], object]) -> list[str]:
    """EXPLAIN of each statement starting with `verb` that `call(conn)` sends, with its own
    parameters (rolled back after). The ids' literals are shortened: a failing assertion
    shows the plan, not thousands of numbers."""
    seen: list[tuple[str, Any]] = []

    def keep(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        if statement.startswith(verb):
            seen.append((statement, parameters))

    with engine.connect() as conn:
        event.listen(conn, "before_cursor_execute", keep)
        call(conn)
        event.remove(conn, "before_cursor_execute", keep)
        plans = [
            "\n".join(conn.exec_driver_sql(f"EXPLAIN {statement}", parameters).scalars().all())
            for statement, parameters in seen
        ]
        conn.rollback()
    return [re.sub(r"'\{[0-9,]+\}'", "'{...}'", plan) for plan in plans]


@pytest.mark.parametrize("only_active", [False, True])
def test_update_rows_finds_a_windows_rows_by_the_primary_key(
    big_table: Engine, only_active: bool
) -> None:
    with big_table.connect() as conn:
        ids = conn.execute(text("SELECT id FROM subscribers ORDER BY id")).scalars().all()
    # Varying values per row: the column goes in as an array, joined to the table by id.
    rows = [(f"lesson-{n % 7}", None, sid) for n, sid in enumerate(ids[-WINDOW:])]
    columns = ("next_lesson", "next_send_at")
    (plan,) = _explained(
        big_table,
        "UPDATE",
        lambda conn: update_rows(conn, subscribers, columns, rows, only_active=only_active),
    )
    assert "Seq Scan on subscribers" not in plan, plan
    assert "pk_subscribers" in plan, plan


def test_settling_a_late_window_reads_only_its_own_readers(big_table: Engine) -> None:
    # A run well on: 60,000 deliveries written since the ledger was last analyzed (empty).
    with big_table.begin() as conn:
        conn.exec_driver_sql("ANALYZE deliveries")
        conn.exec_driver_sql(
            """INSERT INTO deliveries (subscriber_id, course_id, lesson, status, run_id,
                    attempts, claimed_at, lease_until, updated_at)
                SELECT id, 'c', 'one', 'sending', 'run', 1, now(), now(), now()
                FROM subscribers WHERE id <= 60000"""
        )
        ids = (
            conn.exec_driver_sql(f"SELECT id FROM deliveries ORDER BY id DESC LIMIT {WINDOW}")
            .scalars()
            .all()
        )
    plans = _explained(big_table, "SELECT", lambda conn: _settling(conn, sorted(ids)))
    assert len(plans) == 2  # the deliveries, then their subscribers
    for plan in plans:
        assert "Seq Scan on subscribers" not in plan, plan
        assert "Merge Join" not in plan, plan
