"""Reads do not hold SQLite's write lock: `db.reading` sessions begin deferred, so a long read
(an export streaming a million rows, the stats, a manage page) never makes `drip send` or the
signup form wait. Real SQLite file in WAL mode."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from tests.support import COURSE, make_mailer

from drip.db import open_database, reading
from drip.lifecycle import list_subscribers, subscribe
from drip.models import subscribers
from drip.transports.memory import MemoryTransport

T0 = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)
Ledger = tuple[Path, sessionmaker[Session]]


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    path = tmp_path / "drip.db"
    engine = open_database(f"sqlite:///{path}", auto_upgrade=True)
    sessions = sessionmaker(engine)
    mailer = make_mailer(MemoryTransport())
    for n in range(3):
        subscribe(
            sessions,
            mailer,
            email=f"reader{n}@example.com",
            name=None,
            timezone="Asia/Tokyo",
            confirmed=True,
            now=T0,
            consent_source="test",
        )
    yield path, sessions
    engine.dispose()


def can_write(path: Path) -> bool:
    """Whether another process could take the write lock now (waiting half a second at most)."""
    other = sqlite3.connect(path, timeout=0.5, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("UPDATE subscribers SET name = 'x' WHERE id = 1")
        other.execute("COMMIT")
        return True
    except sqlite3.OperationalError as exc:
        assert "locked" in str(exc)
        return False
    finally:
        other.close()


def test_a_reading_session_leaves_the_write_lock_free(ledger: Ledger) -> None:
    path, sessions = ledger
    with reading(sessions) as session:
        assert session.execute(select(subscribers.c.email)).first() is not None
        assert can_write(path)
    with sessions() as session:  # any other session takes the write lock at its first statement
        session.execute(select(subscribers.c.email)).first()
        assert not can_write(path)


def test_a_streaming_list_does_not_block_writers(ledger: Ledger) -> None:
    path, sessions = ledger
    listed = list_subscribers(sessions, COURSE)
    assert next(listed).email == "reader0@example.com"  # the read transaction is open
    assert can_write(path)
    assert [view.email for view in listed] == ["reader1@example.com", "reader2@example.com"]
