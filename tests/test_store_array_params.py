"""The store's list parameters: id lists (`in_list`, bound as one array literal on PostgreSQL)
and `update_rows` (PostgreSQL: shared columns bound once, the others as binary arrays) store
exactly what they are given, on both databases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import BigInteger, select
from sqlalchemy.orm import Session
from tests.store_support import T0, add

from drip.models import subscribers
from drip.store._bulk_update import update_rows
from drip.store._sql import in_list, integer_array_literal

S = subscribers
AWKWARD = [
    'quote " and backslash \\ and {braces}, commas',
    "NULL",
    "",
    "'single' ; DROP TABLE subscribers; --",
    "日本語 – ünïcödé 🎉",
    "tab\there",
    None,
]


def _subscribers(session: Session, count: int) -> list[int]:
    ids = [add(session, f"reader{n}@example.com").subscriber_id for n in range(count)]
    session.commit()
    return ids


def _column(session: Session, name: str, ids: list[int]) -> list[Any]:
    column = S.c[name]
    rows = session.connection().execute(select(S.c.id, column).where(S.c.id.in_(ids))).all()
    by_id = dict(rows)
    return [by_id[sid] for sid in ids]


def test_the_array_literal_holds_only_integers() -> None:
    assert integer_array_literal([3, 1, -2]) == "{3,1,-2}"
    assert integer_array_literal([]) == "{}"
    assert integer_array_literal([True]) == "{1}"
    with pytest.raises(ValueError):
        integer_array_literal(["1}, {2"])  # type: ignore[list-item]


def test_an_id_list_selects_exactly_its_ids(session: Session) -> None:
    ids = _subscribers(session, 5)
    conn = session.connection()
    stmt = select(S.c.id).where(in_list(conn, S.c.id, "ids", BigInteger())).order_by(S.c.id)
    assert conn.execute(stmt, {"ids": [ids[3], ids[1], 10**12]}).scalars().all() == [
        ids[1],
        ids[3],
    ]
    assert conn.execute(stmt, {"ids": []}).scalars().all() == []
    assert conn.execute(stmt, {"ids": ids}).scalars().all() == ids
    excluded = select(S.c.id).where(~in_list(conn, S.c.id, "ids", BigInteger()))
    assert conn.execute(excluded, {"ids": ids[1:]}).scalars().all() == [ids[0]]


def test_update_rows_stores_each_rows_own_text_and_times(session: Session) -> None:
    ids = _subscribers(session, len(AWKWARD))
    zone = datetime(2026, 5, 1, 9, 30, 15, 123456, tzinfo=UTC)
    # Varying text (NULL among them), varying times (aware; one None), one shared time.
    moments = [zone + timedelta(hours=n, microseconds=n) for n in range(len(ids))]
    moments[2] = None  # type: ignore[call-overload]
    rows = [(why, at, T0, sid) for why, at, sid in zip(AWKWARD, moments, ids, strict=True)]
    update_rows(session.connection(), S, ("held_reason", "next_send_at", "last_sent_at"), rows)
    session.commit()
    assert _column(session, "held_reason", ids) == AWKWARD
    stored = _column(session, "next_send_at", ids)
    assert [None if at is None else at.replace(tzinfo=UTC) for at in stored] == moments
    assert {at.replace(tzinfo=UTC) for at in _column(session, "last_sent_at", ids)} == {T0}


def test_update_rows_with_every_value_shared(session: Session) -> None:
    ids = _subscribers(session, 4)
    update_rows(
        session.connection(),
        S,
        ("next_lesson", "next_send_at"),
        [("second", None, sid) for sid in ids[:3]],
    )
    session.commit()
    assert _column(session, "next_lesson", ids) == ["second"] * 3 + ["welcome"]
    assert _column(session, "next_send_at", ids)[:3] == [None] * 3
    assert _column(session, "next_send_at", ids)[3] is not None


def test_update_rows_only_active_leaves_the_others(session: Session) -> None:
    ids = _subscribers(session, 3)
    conn = session.connection()
    conn.execute(S.update().where(S.c.id == ids[1]).values(status="paused"))
    update_rows(
        conn,
        S,
        ("held_reason",),
        [(f"reason {n}", sid) for n, sid in enumerate(ids)],
        only_active=True,
    )
    session.commit()
    assert _column(session, "held_reason", ids) == ["reason 0", None, "reason 2"]
