"""Engines and the schema: connect to SQLite or PostgreSQL, check and upgrade the revision.

Called by the entry points (CLI, web) with the URL from `Settings.database_url`. The migrations
ship inside the package (`drip:migrations`), so an installed drip can upgrade any database; no
alembic.ini is needed.
"""

from __future__ import annotations

import hashlib
import select
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, InvalidatePoolError, OperationalError
from sqlalchemy.pool import ConnectionPoolEntry

from drip.errors import ConfigError, DatabaseUnavailableError, SchemaError
from drip.models import SQLITE_SHA256_HEX

if TYPE_CHECKING:  # Alembic is imported only when a schema is created or upgraded
    from alembic.config import Config
    from sqlalchemy.orm import Session, sessionmaker

SCRIPT_LOCATION = "drip:migrations"
HEAD_REVISION = "0008"
"""The newest migration shipped; a test checks it against Alembic's view of the scripts. Kept
as a constant so that every command does not load Alembic and the migration scripts just to
compare one string."""
# Any fixed 64-bit number: PostgreSQL advisory lock held while the schema is being upgraded, so
# several processes starting at once upgrade it exactly once.
UPGRADE_LOCK_KEY = 0x6472_6970  # "drip" in ASCII
SQLITE_BUSY_TIMEOUT_MS = 30_000
PING_AFTER_IDLE_S = 1.0
"""A pooled PostgreSQL connection idle in the pool longer than this is pinged before use (see
`_check_on_checkout`)."""
_IDLE_SINCE = "drip_idle_since"


def outage_message(exc: DBAPIError) -> str:
    """One line for an operator when the database went away (server stopped, connection
    refused, SQLite file unreadable) in the middle of a command."""
    reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else "?"
    return (
        f"the database became unavailable: {reason}; nothing is lost, run the command again"
        " when it is back"
    )


def safe_url(url: str | URL) -> str:
    """The URL as it may be shown to people: the password replaced by '***'."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "<unparsable database URL>"


def _parse(url: str) -> URL:
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:  # ValueError: e.g. a port that is not a number
        raise ConfigError(
            "the database URL is not a URL; use sqlite:///path/to/drip.db or"
            " postgresql+psycopg://user:password@host:5432/dbname"
        ) from exc
    backend = parsed.get_backend_name()
    if backend in ("postgresql", "postgres"):
        # psycopg 3 is the driver drip depends on; plain postgresql:// would mean psycopg2.
        if parsed.drivername in ("postgresql", "postgres"):
            parsed = parsed.set(drivername="postgresql+psycopg")
        return parsed
    if backend == "sqlite":
        return parsed
    raise ConfigError(
        f"the database URL {safe_url(parsed)} is not SQLite or PostgreSQL; use"
        " sqlite:///path/to/drip.db or postgresql+psycopg://user:password@host:5432/dbname"
    )


def _sha256_hex(value: str | None) -> str | None:
    """`SQLITE_SHA256_HEX`, registered on every SQLite connection."""
    return None if value is None else hashlib.sha256(str(value).encode("utf-8")).hexdigest()


def _switch_to_wal(cursor: Any, locked: type[Exception]) -> None:
    """PRAGMA journal_mode = WAL, tried again for up to the busy timeout while the database is
    locked. On a file not in WAL mode yet (a fresh install), processes connecting at once can
    get "database is locked" at once: SQLite answers busy without waiting where waiting could
    deadlock, so busy_timeout does not cover it. Once the file is in WAL mode this is one
    statement that changes nothing."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except locked as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _sqlite_on_connect(dbapi_connection: Any, connection_record: Any) -> None:
    # Take transaction control away from the sqlite3 module (it would issue a deferred BEGIN
    # only before DML); the "begin" listener below issues BEGIN IMMEDIATE instead.
    dbapi_connection.isolation_level = None
    dbapi_connection.create_function(SQLITE_SHA256_HEX, 1, _sha256_hex, deterministic=True)
    cursor = dbapi_connection.cursor()
    try:
        # busy_timeout first: switching to WAL needs a lock that a concurrent process may hold.
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        _switch_to_wal(cursor, dbapi_connection.OperationalError)
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


READ_ONLY = "drip_read_only"
"""Execution option for a connection whose transactions only read (see `reading`)."""


def _sqlite_begin(conn: Connection) -> None:
    if conn.get_execution_options().get(READ_ONLY):
        # A reader in WAL mode sees a snapshot and never blocks the writer (nor waits for it).
        conn.exec_driver_sql("BEGIN")
        return
    # Take the write lock when the transaction starts, not at its first write: a transaction that
    # read under a shared lock and then tries to write can fail with SQLITE_BUSY at once (no
    # busy wait is possible), while BEGIN IMMEDIATE waits up to busy_timeout and then succeeds.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


@contextmanager
def reading(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """A session for reads only. On SQLite its transaction begins DEFERRED instead of IMMEDIATE,
    so a long read (`drip subscribers export` of a million rows, the stats, a manage page) does
    not hold the write lock that `drip send` and the signup form wait for. Writing through it
    is a bug: the write could fail with "database is locked" at once instead of waiting."""
    with sessions() as session:
        session.connection(execution_options={READ_ONLY: True})
        yield session


def make_engine(url: str) -> Engine:
    """An Engine for `url` with drip's connection settings.

    SQLite: WAL, busy_timeout 30 s, synchronous=NORMAL, foreign keys on, and every transaction
    begins with BEGIN IMMEDIATE (one writer at a time, waiting rather than failing), but those
    of a `reading` session, which begin deferred.
    PostgreSQL: the psycopg 3 driver, and a connection found dead at checkout (the server
    restarted, an idle link died) is replaced before use (`_check_on_checkout`).
    Connects lazily; raises `ConfigError` for a URL that is neither.
    """
    parsed = _parse(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    engine = create_engine(parsed)
    event.listen(engine.pool, "checkin", _note_idle)
    event.listen(engine.pool, "checkout", _check_on_checkout(engine.dialect))
    return engine


def _note_idle(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
    record.info[_IDLE_SINCE] = time.monotonic()


def _check_on_checkout(
    dialect: Any,
) -> Callable[[Any, ConnectionPoolEntry, Any], None]:
    """The pool's checkout check: a connection that may be dead is pinged (SELECT 1); one found
    dead is replaced, and every connection pooled before it dropped (as `pool_pre_ping` does).

    `pool_pre_ping` pinged at every checkout: a round trip per session, and `drip send` opens
    three or four sessions per window. A connection may be dead when it has unread input (a
    server that ends a session sends its FATAL error and closes the socket: a restart, a
    terminated backend, a crash all show here, for one poll(2) call and no round trip), or
    when it sat in the pool longer than PING_AFTER_IDLE_S (a link cut silently shows nothing,
    but takes minutes to be cut). A fresh connection is used as it is.
    """

    def check(dbapi_connection: Any, record: ConnectionPoolEntry, proxy: Any) -> None:
        idle_since = record.info.get(_IDLE_SINCE)
        if idle_since is None:  # never checked in: fresh from connect
            return
        if time.monotonic() - idle_since < PING_AFTER_IDLE_S and not _unread_input(
            dbapi_connection
        ):
            return
        try:
            dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as exc:
            if dialect.is_disconnect(exc, dbapi_connection, None):
                raise InvalidatePoolError("the connection was found dead at checkout") from exc
            raise

    return check


def _unread_input(dbapi_connection: Any) -> bool:
    """True when an idle connection's socket has something to read (or is closed, broken)."""
    if dbapi_connection.closed or dbapi_connection.broken:
        return True
    try:
        fd = dbapi_connection.fileno()
    except Exception:  # any failure to get the socket: let the ping decide
        return True
    if not hasattr(select, "poll"):  # Windows, where select() takes sockets
        return bool(select.select([fd], [], [], 0)[0])
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


@contextmanager
def connect(engine: Engine) -> Iterator[Connection]:
    """A connection from `engine`; a failure to connect raises `DatabaseUnavailableError`."""
    try:
        connection = engine.connect()
    except (OperationalError, DBAPIError) as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
        raise DatabaseUnavailableError(
            f"cannot reach the database at {safe_url(engine.url)}: {reason}; check"
            " DRIP_DATABASE_URL and that the database server is running"
        ) from exc
    with connection:
        yield connection


def alembic_config(connection: Connection | None = None) -> Config:
    """The Alembic configuration, built in code; env.py uses `connection` when given."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest migration revision shipped with this drip."""
    return HEAD_REVISION


def known_revisions() -> set[str]:
    """Every revision of the shipped migration scripts (loads Alembic)."""
    from alembic.script import ScriptDirectory

    return {
        script.revision for script in ScriptDirectory.from_config(alembic_config()).walk_revisions()
    }


def current_revision(connection: Connection) -> str | None:
    """The database's revision, or None for a database drip has never touched."""
    if not inspect(connection).has_table("alembic_version"):
        return None
    return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


def _upgrade_connection(connection: Connection) -> str:
    """Upgrade to head inside one transaction that holds the write lock for its whole length.

    SQLite: BEGIN IMMEDIATE (see `_sqlite_begin`) is the lock; DDL is transactional once the
    sqlite3 module no longer manages transactions. PostgreSQL: a transaction-scoped advisory lock.
    Whoever gets the lock second finds the schema at head and does nothing.
    """
    head = head_revision()
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        # SQLite's recipe for rebuilding a table: foreign keys off (a dropped table would
        # cascade its deletes), checked before the commit, on again after. The pragma is a no-op
        # inside a transaction, so it goes straight to the driver, outside one.
        _sqlite_pragma(connection, "PRAGMA foreign_keys = OFF")
    try:
        with connection.begin():
            if connection.dialect.name == "postgresql":
                lock = text("SELECT pg_advisory_xact_lock(:key)")
                connection.execute(lock, {"key": UPGRADE_LOCK_KEY})
            if current_revision(connection) != head:
                from alembic import command

                command.upgrade(alembic_config(connection), "head")
                if sqlite and connection.exec_driver_sql("PRAGMA foreign_key_check").first():
                    raise SchemaError(
                        "the upgrade would leave rows whose foreign keys point nowhere; it was"
                        " rolled back: nothing changed"
                    )
    finally:
        if sqlite:
            _sqlite_pragma(connection, "PRAGMA foreign_keys = ON")
    return head


def _sqlite_pragma(connection: Connection, pragma: str) -> None:
    """Run `pragma` on the driver connection, outside any transaction (autocommit)."""
    cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(pragma)
    finally:
        cursor.close()


def upgrade(url: str) -> str:
    """Create or upgrade the schema at `url` to the newest revision; returns that revision.

    Safe to run from several processes at once. Raises `DatabaseUnavailableError` when the
    database cannot be reached.
    """
    engine = make_engine(url)
    try:
        with connect(engine) as connection:
            return _upgrade_connection(connection)
    finally:
        engine.dispose()


def _refuse_missing_sqlite_file(url: str) -> None:
    """A SQLite URL naming a file that does not exist: say so before connecting, which would
    leave an empty file behind."""
    parsed = _parse(url)
    path = parsed.database
    if parsed.get_backend_name() != "sqlite" or not path or path == ":memory:":
        return
    if path.startswith("file:") or Path(path).exists():
        return
    raise SchemaError(
        f"the database at {safe_url(url)} has no drip schema: there is no file at"
        f" {Path(path).resolve()}; check DRIP_DATABASE_URL, or run 'drip db upgrade' to create it"
    )


def open_database(url: str, *, auto_upgrade: bool) -> Engine:
    """An Engine for a database whose schema is at the current revision.

    With `auto_upgrade` (the CLI passes True only for the embedded default `sqlite:///drip.db`)
    a missing or old schema is created or upgraded here, safely when several processes start at
    once. Otherwise raises `SchemaError` telling to run `drip db upgrade`; a schema newer than
    this drip also raises `SchemaError`. Raises `DatabaseUnavailableError` when unreachable.
    """
    if not auto_upgrade:
        _refuse_missing_sqlite_file(url)
    engine = make_engine(url)
    try:
        head = head_revision()
        with connect(engine) as connection:
            with connection.begin():
                current = current_revision(connection)
            if current == head:
                return engine
            if current is not None and current not in known_revisions():
                raise SchemaError(
                    f"the database at {safe_url(url)} is at revision {current}, which this"
                    " version of drip does not know (it was upgraded by a newer drip);"
                    " install that newer drip"
                )
            if not auto_upgrade:
                state = "has no drip schema" if current is None else f"is at revision {current}"
                raise SchemaError(
                    f"the database at {safe_url(url)} {state}, not at the current revision"
                    f" {head}; run 'drip db upgrade' (with DRIP_DATABASE_URL set) first"
                )
            _upgrade_connection(connection)
        return engine
    except BaseException:
        engine.dispose()
        raise
