"""PostgreSQL connections checked out of drip's pool: replaced when found dead, not pinged when
just used (drip.db's checkout check instead of `pool_pre_ping`)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import Engine, text

import drip.db
from drip.db import make_engine

pytestmark = pytest.mark.postgres


@pytest.fixture
def engine(postgres_database: str) -> Iterator[Engine]:
    made = make_engine(postgres_database)
    try:
        yield made
    finally:
        made.dispose()


@pytest.fixture
def pings(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every ping the checkout check makes on `engine`."""
    made: list[object] = []
    ping = engine.dialect.do_ping

    def counted(dbapi_connection: object) -> bool:
        made.append(dbapi_connection)
        return ping(dbapi_connection)

    monkeypatch.setattr(engine.dialect, "do_ping", counted)
    return made


def _backend_pid(engine: Engine) -> int:
    with engine.connect() as conn:
        pid: int = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        return pid


def _terminate(postgres_database: str, pid: int) -> None:
    admin = drip.db.make_url(postgres_database).set(drivername="postgresql", database="postgres")
    with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True) as conn:
        assert conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)


def test_a_connection_used_again_at_once_is_not_pinged(engine: Engine, pings: list[object]) -> None:
    first = _backend_pid(engine)
    for _ in range(5):
        assert _backend_pid(engine) == first
    assert pings == []


def test_a_connection_idle_longer_than_the_bound_is_pinged(
    engine: Engine, pings: list[object], monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _backend_pid(engine)
    monkeypatch.setattr(drip.db, "PING_AFTER_IDLE_S", 0.0)
    assert _backend_pid(engine) == first
    assert len(pings) == 1


def test_a_connection_whose_backend_was_ended_is_replaced_without_an_error(
    engine: Engine, pings: list[object], postgres_database: str
) -> None:
    """A server restart or a terminated backend: the server's FATAL message is waiting on the
    socket, so the next checkout pings, finds it dead and connects again; the caller sees
    nothing."""
    with engine.connect() as conn:
        first = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        pooled = conn.connection.dbapi_connection
    _terminate(postgres_database, first)
    deadline = time.monotonic() + 5
    # The FATAL message and the close reach the pooled connection's socket asynchronously.
    while not drip.db._unread_input(pooled) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _backend_pid(engine) != first
    assert len(pings) == 1
