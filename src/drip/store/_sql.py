"""Building blocks shared by the store's modules: table aliases, chunking, dialect helpers and
the due filter."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any, TypeVar

import orjson
from sqlalchemy import Connection, Insert, Table, any_, bindparam, cast, func, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session
from sqlalchemy.types import Integer, Text, TypeDecorator, TypeEngine, UserDefinedType

from drip.models import deliveries, subscribers
from drip.statuses import SubscriberStatus
from drip.store.capabilities import capabilities_of

S = subscribers
D = deliveries
ACTIVE = SubscriberStatus.ACTIVE.value
COMPLETED = SubscriberStatus.COMPLETED.value
# Ids per IN (...) list: well below SQLite's 32766 and PostgreSQL's 65535 bound parameters.
CHUNK = 5_000

T = TypeVar("T")


MAX_TEXT = 2_000
"""Longest provider text (a reply, an id) kept in the ledger."""
# C0 controls except tab and newline (CR goes too), and DEL: PostgreSQL refuses NUL in text,
# and none of them helps an operator reading a reason.
_CONTROLS = {code: None for code in (*range(0x00, 0x09), *range(0x0B, 0x20), 0x7F)}


def clean_text(value: str | None) -> str | None:
    """Provider text made safe to store: control characters dropped, at most MAX_TEXT long.

    The last line of defence: recording an outcome must never fail after a hand-over (that
    would turn a refused message into one in doubt).
    """
    if value is None:
        return None
    return value.translate(_CONTROLS)[:MAX_TEXT]


def connection(session: Session) -> Connection:
    # Core statements on the session's connection: same transaction, and CursorResult gives
    # rowcount, which Session.execute's Result type does not expose.
    return session.connection()


def chunks(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def insert_ignoring_conflicts(conn: Connection, table: Table, keys: Sequence[str]) -> Insert:
    """INSERT ... ON CONFLICT (keys) DO NOTHING in the connection's dialect."""
    insert = capabilities_of(conn.dialect).insert_on_conflict
    return insert(table).on_conflict_do_nothing(index_elements=list(keys))


class _JsonIntegers(TypeDecorator[list[int]]):
    """A list of integers bound as one JSON array text (for SQLite's json_each)."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: list[int] | None, dialect: Any) -> str | None:
        if value is None:
            return None
        # int(): a bool or a float must not slip into an id list as something else.
        return orjson.dumps([int(item) for item in value]).decode()


def integer_array_literal(values: Iterable[int]) -> str:
    """`values` as one PostgreSQL array literal, '{1,2,3}', to bind as text and cast to an
    integer array: built by C code (str of int), where psycopg's list dumper runs Python per
    element (a quarter of the send loop's main thread on PostgreSQL).

    int() first: only digits and a sign reach the literal (a bool becomes 1, a float is
    truncated as int() does, a string that is not a number raises ValueError).
    """
    return "{" + ",".join(map(str, map(int, values))) + "}"


class _IntegerArrayLiteral(UserDefinedType[list[int]]):
    """A list of integers bound as one array literal text (`integer_array_literal`); the SQL
    casts it to an array of the column's type (no bind cast of its own: it is not text)."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "TEXT"

    def bind_processor(self, dialect: Any) -> Callable[[Iterable[int] | None], str | None]:
        def process(value: Iterable[int] | None) -> str | None:
            return None if value is None else integer_array_literal(value)

        return process


def in_list(conn: Connection, column: Any, name: str, item_type: TypeEngine[Any]) -> Any:
    """`column IN (list)` with the list bound as parameter `name`.

    With array parameters (PostgreSQL): `= ANY(:array)`, one parameter whatever the length, so
    the statement is the same text every time (thousands of placeholders cost more to send and
    plan than the query); an integer list is bound as one array literal text
    (`integer_array_literal`) and cast, the same array for the planner. SQLite, integer lists:
    `IN (SELECT value FROM json_each(:json))`, one parameter too (SQLAlchemy's expanding IN
    re-renders the statement with a placeholder per id on every execution, which cost more than
    the UPDATE it carried); other lists: an expanding IN list.
    """
    if capabilities_of(conn.dialect).array_params:
        if isinstance(item_type, Integer):
            ids = bindparam(name, type_=_IntegerArrayLiteral())
            return column == any_(cast(ids, postgresql.ARRAY(item_type)))
        return column == any_(bindparam(name, type_=postgresql.ARRAY(item_type)))
    if isinstance(item_type, Integer):
        values = func.json_each(bindparam(name, type_=_JsonIntegers())).table_valued("value")
        return column.in_(select(values.c.value))
    return column.in_(bindparam(name, expanding=True))


def due_filter(course_id: str, now: datetime) -> tuple[Any, ...]:
    """The subscribers of `course_id` due at `now`: the send query's WHERE clause."""
    # `IS NOT NULL` matches the partial index's predicate word for word.
    return (
        S.c.course_id == course_id,
        S.c.next_send_at.is_not(None),
        S.c.next_send_at <= now,
        S.c.status == ACTIVE,
    )
