"""Migration 0007: on PostgreSQL the due index orders and covers the send query and the ledger's
status index holds only the deliveries that need attention; SQLite is unchanged. Every row
survives up, down and up again, and the queries that rely on the indexes still use them."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, event, text
from tests.support import COURSE, migrate

from drip.db import head_revision, make_engine
from drip.idle import _DUE_BY_LESSON, _placed
from drip.store.events import _any_in_doubt
from drip.store.ledger import _pick_due

AT = "2026-01-01 00:00:00"
NOW = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)


def _index_sql(conn: Connection) -> dict[str, str]:
    if conn.dialect.name == "sqlite":
        sql = "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
    else:
        sql = "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"
    return {str(name): str(ddl) for name, ddl in conn.exec_driver_sql(sql)}


def _rows(conn: Connection) -> list[tuple[object, ...]]:
    return [
        tuple(row)
        for row in conn.execute(
            text(
                "SELECT s.id, s.next_send_at, d.id, d.status FROM subscribers s"
                " LEFT JOIN deliveries d ON d.subscriber_id = s.id ORDER BY s.id, d.id"
            )
        )
    ]


def test_0007_up_down_up_keeps_every_row(empty_database_url: str) -> None:
    engine = make_engine(empty_database_url)
    try:
        migrate(engine, "0006")
        with engine.begin() as conn:
            before_indexes = _index_sql(conn)
            conn.execute(
                text(
                    "INSERT INTO subscribers (id, course_id, email, timezone, status, created_at,"
                    " consent_at, consent_source, status_changed_at, next_lesson, next_send_at)"
                    " VALUES (7, 'c', 'a@example.com', 'UTC', 'active', :at, :at, 't', :at,"
                    " 'two', :at), (8, 'c', 'b@example.com', 'UTC', 'active', :at, :at, 't', :at,"
                    " NULL, NULL)"
                ),
                {"at": AT},
            )
            conn.execute(
                text(
                    "INSERT INTO deliveries (id, subscriber_id, course_id, lesson, status, run_id,"
                    " attempts, claimed_at, lease_until, updated_at) VALUES"
                    " (90, 7, 'c', 'one', 'sent', 'r', 1, :at, :at, :at),"
                    " (91, 8, 'c', 'one', 'in_doubt', 'r', 1, :at, :at, :at)"
                ),
                {"at": AT},
            )
            rows = _rows(conn)
        migrate(engine, "0007")
        with engine.begin() as conn:
            after = _index_sql(conn)
            assert _rows(conn) == rows
        if engine.dialect.name == "sqlite":
            assert after == before_indexes  # SQLite's schema is unchanged
        else:
            due = after["ix_subscribers_due"]
            assert "(course_id, next_send_at, id) INCLUDE (next_lesson, status)" in due, due
            assert "WHERE (next_send_at IS NOT NULL)" in due, due
            status = after["ix_deliveries_course_id_status"]
            assert "WHERE" in status and "in_doubt" in status and "'sent'" not in status, status
        migrate(engine, "0006", down=True)
        with engine.begin() as conn:
            assert _index_sql(conn) == before_indexes
            assert _rows(conn) == rows
        migrate(engine, head_revision())
        with engine.begin() as conn:
            assert _index_sql(conn) == after
            assert _rows(conn) == rows
    finally:
        engine.dispose()


def _fill_due_at_one_moment(conn: Connection, due: int, total: int) -> None:
    """`total` readers, the first `due` of them due at the same moment (a course sending at
    09:00 in one zone), analysed as autovacuum would."""
    at = (NOW - timedelta(hours=1)).replace(tzinfo=None)
    conn.execute(
        text(
            "INSERT INTO subscribers (course_id, email, timezone, status, created_at,"
            " consent_at, consent_source, status_changed_at, next_lesson, next_send_at)"
            " SELECT :course, 'r' || i || '@example.com', 'Asia/Tokyo', 'active', :at, :at,"
            " 'test', :at, 'one', CASE WHEN i <= :due THEN :at ELSE :later END"
            " FROM generate_series(1, :total) AS i"
        ),
        {
            "course": COURSE.id,
            "at": at,
            "later": at + timedelta(days=7),
            "due": due,
            "total": total,
        },
    )
    # The readers not due got their first lesson; one of them is in doubt.
    conn.execute(
        text(
            "INSERT INTO deliveries (subscriber_id, course_id, lesson, status, run_id, attempts,"
            " claimed_at, lease_until, updated_at, sent_at)"
            " SELECT id, course_id, 'zero', CASE WHEN id = :total THEN 'in_doubt' ELSE 'sent' END,"
            " 'r', 1, :at, :at, :at, :at FROM subscribers WHERE id > :due"
        ),
        {"at": at, "due": due, "total": total},
    )


def _plan_of(conn: Connection, run: Callable[[], object]) -> tuple[object, str]:
    """What `run` returns, and PostgreSQL's plan of the last statement it sent, with its values."""
    sent: list[tuple[str, Any]] = []

    def capture(_c: object, _cur: object, statement: str, parameters: Any, *_: object) -> None:
        sent.append((statement, parameters))

    event.listen(conn, "before_cursor_execute", capture)
    try:
        result = run()
    finally:
        event.remove(conn, "before_cursor_execute", capture)
    statement, parameters = sent[-1]
    explained = conn.exec_driver_sql("EXPLAIN " + statement, parameters)
    return result, " ".join(str(row[0]) for row in explained)


def test_postgresql_takes_a_batch_from_the_due_index_without_sorting_the_due(
    postgres_database: str,
) -> None:
    """Readers due at one moment: the batch is the due index's first rows (the plan has no
    Sort, which read and sorted every due row for each batch before 0007), the dry run's count
    per lesson reads the index alone, and the webhook's in-doubt probe still searches the
    (now partial) status index."""
    from tests.conftest import _truncate

    _truncate(postgres_database)  # the session's database: an earlier test may have left rows
    engine = make_engine(postgres_database)
    try:
        migrate(engine, head_revision())
        with engine.begin() as conn:
            _fill_due_at_one_moment(conn, due=20_000, total=40_000)
        with engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("VACUUM ANALYZE")
        with engine.begin() as conn:
            picked, plan = _plan_of(conn, lambda: _pick_due(conn, COURSE.id, NOW, 500))
            assert [row.id for row in picked] == list(range(1, 501))  # type: ignore[attr-defined]
            assert "ix_subscribers_due" in plan and "Sort" not in plan, plan
            due = conn.exec_driver_sql(
                "EXPLAIN " + _placed(_DUE_BY_LESSON, "%%(%s)s"),
                {"course": COURSE.id, "active": "active", "now": NOW.replace(tzinfo=None)},
            )
            plan = " ".join(str(row[0]) for row in due)
            assert "Index Only Scan using ix_subscribers_due" in plan, plan
            found, plan = _plan_of(conn, lambda: _any_in_doubt(conn, COURSE.id))
            assert found is True
            assert "ix_deliveries_course_id_status" in plan and "Seq Scan" not in plan, plan
    finally:
        engine.dispose()
