"""Engines, schema revisions and migrations on SQLite and PostgreSQL."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, insert, select, text
from sqlalchemy.engine import make_url

from drip.db import (
    DatabaseUnavailableError,
    SchemaError,
    current_revision,
    head_revision,
    make_engine,
    open_database,
    safe_url,
    upgrade,
)
from drip.errors import ConfigError
from drip.models import CONFIRM_WAIT, Base, events

SENTINEL = "s3cret-sentinel-password"


def test_upgrade_on_an_empty_database_reaches_head(empty_database_url: str) -> None:
    assert upgrade(empty_database_url) == head_revision()
    assert upgrade(empty_database_url) == head_revision()  # a second run changes nothing
    engine = open_database(empty_database_url, auto_upgrade=False)
    try:
        with engine.connect() as connection:
            assert current_revision(connection) == head_revision()
            tables = set(
                connection.dialect.get_table_names(connection)  # type: ignore[attr-defined]
            )
        assert {"subscribers", "deliveries", "events", "alembic_version"} <= tables
    finally:
        engine.dispose()


# Alembic cannot compare an index on an expression (SQLite's cannot even be reflected): it is
# left out of the comparison and its definition checked below instead.
EXPRESSION_INDEXES = {"ix_subscribers_confirm_wait"}


@pytest.mark.filterwarnings("ignore:Skipped unsupported reflection of expression-based index")
@pytest.mark.filterwarnings("ignore:autogenerate skipping metadata-specified expression-based")
def test_the_migrations_build_exactly_the_models(engine: Engine) -> None:
    def compared(obj: object, name: str | None, *_: object) -> bool:
        # An index the models declare for another database only (`ddl_if`) is not compared.
        only_for = getattr(getattr(obj, "_ddl_if", None), "dialect", None)
        return name not in EXPRESSION_INDEXES and only_for in (None, engine.dialect.name)

    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "include_object": compared}
        )
        assert compare_metadata(context, Base.metadata) == []
        dialect = connection.dialect.name
        if dialect == "sqlite":
            ddl = connection.exec_driver_sql(
                "SELECT sql FROM sqlite_master WHERE name = 'ix_subscribers_confirm_wait'"
            ).scalar_one()
        else:
            ddl = connection.exec_driver_sql(
                "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_subscribers_confirm_wait'"
            ).scalar_one()
    # The queries of `drip stats` order by this expression: the index must hold it as it is.
    assert CONFIRM_WAIT[dialect] in ddl
    assert "confirmed_at > created_at" in ddl


def test_the_stats_predicates_name_the_suppressed_statuses() -> None:
    """`drip stats` counts the readers who left through a partial index whose predicate is
    written out as text: it must name exactly the statuses that are suppressions."""
    from drip.models import LEFT_PREDICATE, SUPPRESSED_STATUSES

    named = {part.strip(" '()") for part in LEFT_PREDICATE.split("IN", 1)[1].split(",")}
    assert named == {status.value for status in SUPPRESSED_STATUSES}


def test_open_database_refuses_a_database_that_was_not_upgraded(empty_database_url: str) -> None:
    with pytest.raises(SchemaError, match="drip db upgrade") as raised:
        open_database(empty_database_url, auto_upgrade=False)
    assert raised.value.exit_code == 2
    assert "has no drip schema" in str(raised.value)


def test_open_database_auto_upgrades_when_asked(empty_database_url: str) -> None:
    engine = open_database(empty_database_url, auto_upgrade=True)
    try:
        with engine.connect() as connection:
            assert current_revision(connection) == head_revision()
    finally:
        engine.dispose()


def _set_revision(url: str, revision: str) -> None:
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": revision})
    finally:
        engine.dispose()


def test_a_schema_from_a_newer_drip_is_refused(database_url: str) -> None:
    _set_revision(database_url, "ffff")
    try:
        for auto in (False, True):
            with pytest.raises(SchemaError, match="newer drip"):
                open_database(database_url, auto_upgrade=auto)
    finally:
        _set_revision(database_url, head_revision())  # the PostgreSQL database is shared


def test_an_old_schema_is_refused_and_the_password_never_shown(database_url: str) -> None:
    url = make_url(database_url)
    if url.get_backend_name() == "postgresql":
        # The server trusts local connections, so a wrong password still connects.
        url = url.set(password=SENTINEL)
    shown_url = url.render_as_string(hide_password=False)
    _set_revision(database_url, "0000")
    try:
        with pytest.raises(SchemaError, match="is at revision 0000") as raised:
            open_database(shown_url, auto_upgrade=False)
        assert SENTINEL not in str(raised.value)
    finally:
        _set_revision(database_url, head_revision())


def test_an_unreachable_server_is_reported_without_the_password() -> None:
    url = f"postgresql+psycopg://drip:{SENTINEL}@127.0.0.1:1/drip"
    with pytest.raises(DatabaseUnavailableError, match="cannot reach the database") as raised:
        open_database(url, auto_upgrade=False)
    assert raised.value.exit_code == 1
    assert SENTINEL not in str(raised.value)
    assert "postgresql+psycopg://drip:***@127.0.0.1:1/drip" in str(raised.value)
    assert SENTINEL not in safe_url(url)


def test_an_unopenable_sqlite_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(DatabaseUnavailableError):
        open_database(f"sqlite:///{tmp_path / 'missing-dir' / 'drip.db'}", auto_upgrade=True)


@pytest.mark.parametrize("url", ["not a url", "mysql://user@host/db", "postgresql://h:port/x"])
def test_unsupported_urls_are_configuration_errors(url: str) -> None:
    with pytest.raises(ConfigError) as raised:
        make_engine(url)
    assert raised.value.exit_code == 2


def test_plain_postgresql_urls_use_psycopg_3() -> None:
    engine = make_engine("postgresql://u@127.0.0.1/db")
    assert engine.dialect.driver == "psycopg"
    engine.dispose()


def test_sqlite_connection_settings(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'drip.db'}")
    try:
        with engine.connect() as connection:
            pragma = {
                name: connection.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("journal_mode", "busy_timeout", "synchronous", "foreign_keys")
            }
        assert pragma == {
            "journal_mode": "wal",
            "busy_timeout": 30_000,
            "synchronous": 1,  # NORMAL
            "foreign_keys": 1,
        }
    finally:
        engine.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'drip.db'}"
    upgrade(url)
    return url


def test_sqlite_transactions_take_the_write_lock_when_they_begin(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    path = make_url(sqlite_url).database
    assert path is not None
    try:
        with engine.connect() as connection, connection.begin():
            # Only a read so far, yet a second writer cannot start.
            connection.execute(select(events.c.id)).all()
            other = sqlite3.connect(path, timeout=0.1, isolation_level=None)
            try:
                with pytest.raises(sqlite3.OperationalError, match="locked"):
                    other.execute("BEGIN IMMEDIATE")
            finally:
                other.close()
    finally:
        engine.dispose()


def test_foreign_keys_are_enforced(engine: Engine) -> None:
    from sqlalchemy.exc import IntegrityError

    from drip.models import deliveries

    now = datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(IntegrityError), engine.begin() as connection:
        connection.execute(
            insert(deliveries).values(
                subscriber_id=424242,
                course_id="c",
                lesson="welcome",
                status="sending",
                run_id="r",
                attempts=1,
                claimed_at=now,
                lease_until=now,
                updated_at=now,
            )
        )


def test_sqlite_stores_one_fixed_datetime_format(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    whole_second = datetime(2026, 1, 1, 0, 0, 0, tzinfo=UTC)
    with engine.begin() as connection:
        connection.execute(
            insert(events).values(
                provider="p",
                provider_event_id="e",
                type="delivered",
                occurred_at=whole_second,
                received_at=whole_second,
                payload={},
            )
        )
        raw = connection.exec_driver_sql("SELECT occurred_at FROM events").scalar()
    engine.dispose()
    assert raw == "2026-01-01 00:00:00.000000"


# Each process imports everything first, then all open the database at the same instant.
UPGRADE_SCRIPT = """
import sys, time
from drip.db import open_database, current_revision
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
engine = open_database(sys.argv[1], auto_upgrade=True)
with engine.connect() as connection:
    print(current_revision(connection))
engine.dispose()
"""


@pytest.mark.slow
def test_three_processes_auto_upgrade_a_fresh_database_at_once(empty_database_url: str) -> None:
    start_at = str(time.time() + 2.0)
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", UPGRADE_SCRIPT, empty_database_url, start_at],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [process.communicate(timeout=120) for process in processes]
    for process, (out, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err
        assert out.strip() == head_revision()
    engine = make_engine(empty_database_url)
    try:
        with engine.connect() as connection:
            versions = connection.execute(text("SELECT version_num FROM alembic_version")).all()
        assert [row[0] for row in versions] == [head_revision()]
    finally:
        engine.dispose()


def test_the_head_revision_constant_matches_the_migration_scripts() -> None:
    from alembic.script import ScriptDirectory

    from drip.db import HEAD_REVISION, alembic_config, known_revisions

    assert ScriptDirectory.from_config(alembic_config()).get_current_head() == HEAD_REVISION
    assert HEAD_REVISION in known_revisions()


def test_a_deleted_readers_id_is_never_given_to_the_next_one(engine: Engine) -> None:
    """Ids are in signed links and provider events: after the newest subscriber and delivery
    are deleted (GDPR erase), the next ones get new ids (plain SQLite would reuse them)."""
    from drip.models import deliveries, subscribers

    now = datetime(2026, 1, 1, tzinfo=UTC)

    def reader(email: str) -> dict[str, object]:
        return {
            "course_id": "c",
            "email": email,
            "timezone": "UTC",
            "status": "active",
            "created_at": now,
            "consent_at": now,
            "consent_source": "t",
            "status_changed_at": now,
        }

    def delivery(subscriber_id: int) -> dict[str, object]:
        return {
            "subscriber_id": subscriber_id,
            "course_id": "c",
            "lesson": "welcome",
            "status": "sent",
            "run_id": "r",
            "attempts": 1,
            "claimed_at": now,
            "lease_until": now,
            "updated_at": now,
        }

    with engine.begin() as conn:
        first = conn.execute(
            insert(subscribers).values(reader("a@example.com"))
        ).inserted_primary_key[0]
        erased = conn.execute(
            insert(subscribers).values(reader("b@example.com"))
        ).inserted_primary_key[0]
        old_delivery = conn.execute(
            insert(deliveries).values(delivery(erased))
        ).inserted_primary_key[0]
        conn.execute(subscribers.delete().where(subscribers.c.id == erased))  # cascades
    with engine.begin() as conn:
        newcomer = conn.execute(
            insert(subscribers).values(reader("c@example.com"))
        ).inserted_primary_key[0]
        new_delivery = conn.execute(
            insert(deliveries).values(delivery(newcomer))
        ).inserted_primary_key[0]
    assert first < erased < newcomer
    assert new_delivery > old_delivery


def test_upgrading_sqlite_from_0002_keeps_every_row_and_foreign_key(tmp_path: Path) -> None:
    """0003 rebuilds two SQLite tables; with foreign keys on, dropping the old subscribers table
    would cascade-delete the ledger. The rows, the indexes and the cascade all survive, and the
    downgrade and a second upgrade do too."""
    from alembic import command

    from drip.db import alembic_config

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "0002")  # 0001 and 0002 rebuild nothing
            conn.exec_driver_sql(
                "INSERT INTO subscribers (id, course_id, email, timezone, status, created_at,"
                " consent_at, consent_source, status_changed_at) VALUES (7, 'c', 'a@example.com',"
                " 'UTC', 'active', '2026-01-01 00:00:00.000000', '2026-01-01 00:00:00.000000',"
                " 't', '2026-01-01 00:00:00.000000')"
            )
            conn.exec_driver_sql(
                "INSERT INTO deliveries (id, subscriber_id, course_id, lesson, status, run_id,"
                " attempts, claimed_at, lease_until, updated_at) VALUES (9, 7, 'c', 'welcome',"
                " 'sent', 'r', 1, '2026-01-01 00:00:00.000000', '2026-01-01 00:00:00.000000',"
                " '2026-01-01 00:00:00.000000')"
            )
    finally:
        engine.dispose()
    assert upgrade(url) == head_revision()
    raw = sqlite3.connect(tmp_path / "old.db")
    try:
        assert raw.execute(
            "SELECT count(*) FROM deliveries WHERE subscriber_id = 7"
        ).fetchone() == (1,)
        ddl = raw.execute("SELECT sql FROM sqlite_master WHERE name = 'subscribers'").fetchone()[0]
        assert "AUTOINCREMENT" in ddl
        indexes = {
            row[0] for row in raw.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
        }
        assert {
            "ix_subscribers_due",
            "ix_deliveries_open_run",
            "ix_subscribers_pause_ends",
        } <= indexes
        raw.execute("PRAGMA foreign_keys = ON")
        raw.execute("DELETE FROM subscribers WHERE id = 7")
        assert raw.execute("SELECT count(*) FROM deliveries").fetchone() == (0,)  # still cascades
        raw.rollback()
    finally:
        raw.close()
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(
                "SELECT 1"
            )  # connected: turn foreign keys off, outside a transaction
            conn.rollback()
            conn.connection.driver_connection.execute("PRAGMA foreign_keys = OFF")  # type: ignore[union-attr]
            with conn.begin():
                command.downgrade(alembic_config(conn), "0002")
        with engine.connect() as conn:
            ddl = conn.exec_driver_sql(
                "SELECT sql FROM sqlite_master WHERE name = 'subscribers'"
            ).scalar_one()
            assert "AUTOINCREMENT" not in ddl
            assert conn.exec_driver_sql("SELECT count(*) FROM deliveries").scalar_one() == 1
    finally:
        engine.dispose()
    assert upgrade(url) == head_revision()
