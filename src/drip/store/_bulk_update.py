"""Hand-written set-based UPDATEs for recording outcomes: the hot path of `record_sent` and
friends, below SQLAlchemy's per-row parameter processing."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Table

from drip.store._sql import ACTIVE, chunks
from drip.store.capabilities import capabilities_of

SHARED_RATIO = 4
"""`update_rows` goes set-based when rows share their values at least this much on average."""


def converter(column: Any, dialect: Any) -> Callable[[Any], Any] | None:
    """The bind processing of `column`'s type, memoised per value (None: nothing to do).

    A batch shares a handful of distinct values (its `now`, a few next_send_at), so converting
    each once instead of once per row is most of the saving of `update_rows`.
    """
    # dialect_impl: the full chain (aware -> naive UTC -> the pinned SQLite text format).
    process = column.type.dialect_impl(dialect).bind_processor(dialect)
    if process is None:
        return None
    memo: dict[Any, Any] = {}

    def convert(value: Any) -> Any:
        try:
            return memo[value]
        except KeyError:
            memo[value] = converted = process(value)
            return converted

    return convert


def update_rows(
    conn: Connection,
    table: Table,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    only_active: bool = False,
) -> None:
    """UPDATE `table` SET each of `columns` WHERE id = the last value of the row, for every row
    (and, with `only_active`, only where the row's status is 'active').

    One statement per call: with array parameters (PostgreSQL) an UPDATE ... FROM unnest(<one
    array per column>), so a batch is one round trip; otherwise one executemany of plain tuples
    on the DBAPI cursor.
    Values are converted by the columns' types (aware datetimes -> the stored UTC form) but skip
    SQLAlchemy's per-row parameter processing, which cost more than the SQL itself.
    """
    if not rows:
        return
    active = f" AND t.status = '{ACTIVE}'" if only_active else ""
    groups: dict[tuple[Any, ...], list[Any]] = {}
    for row in rows:
        groups.setdefault(tuple(row[:-1]), []).append(row[-1])
    if len(groups) * SHARED_RATIO <= len(rows):
        update_groups(conn, table, columns, groups, active)
        return
    dialect = conn.dialect
    names = [*columns, "id"]
    converters = [converter(table.c[name], dialect) for name in names]
    if all(convert is None for convert in converters):
        params: list[tuple[Any, ...]] = [tuple(row) for row in rows]
    else:
        params = [
            tuple(
                value if convert is None else convert(value)
                for convert, value in zip(converters, row, strict=True)
            )
            for row in rows
        ]
    capabilities = capabilities_of(dialect)
    mark = capabilities.placeholder
    if capabilities.array_params:
        arrays = ", ".join(f"{mark}::{table.c[name].type.compile(dialect)}[]" for name in names)
        assignments = ", ".join(f"{name} = v.{name}" for name in columns)
        sql = (
            f"UPDATE {table.name} AS t SET {assignments}"
            f" FROM unnest({arrays}) AS v({', '.join(names)}) WHERE t.id = v.id{active}"
        )
        conn.exec_driver_sql(sql, tuple(list(column) for column in zip(*params, strict=True)))
        return
    assignments = ", ".join(f"{name} = {mark}" for name in columns)
    sql = f"UPDATE {table.name} AS t SET {assignments} WHERE t.id = {mark}{active}"
    conn.exec_driver_sql(sql, params)


def update_groups(
    conn: Connection,
    table: Table,
    columns: Sequence[str],
    groups: Mapping[tuple[Any, ...], Sequence[Any]],
    active: str,
) -> None:
    """One `UPDATE ... SET <shared values> WHERE id IN <ids>` per group of rows with equal
    values: a bulk request's subscribers share their outcome and next lesson, so most of a batch is
    one statement with one id list instead of per-row values (less binding and conversion).
    """
    dialect = conn.dialect
    converters = [converter(table.c[name], dialect) for name in columns]
    capabilities = capabilities_of(dialect)
    arrays = capabilities.array_params
    mark = capabilities.placeholder
    if arrays:
        # Cast like the unnest form does, so a value is read as its column's type.
        assignments = ", ".join(
            f"{name} = {mark}::{table.c[name].type.compile(dialect)}" for name in columns
        )
    else:
        assignments = ", ".join(f"{name} = {mark}" for name in columns)
    for values, ids in groups.items():
        shared = tuple(
            value if convert is None else convert(value)
            for convert, value in zip(converters, values, strict=True)
        )
        if arrays:
            sql = (
                f"UPDATE {table.name} AS t SET {assignments}"
                f" WHERE t.id = ANY({mark}::BIGINT[]){active}"
            )
            conn.exec_driver_sql(sql, (*shared, list(ids)))
            continue
        for chunk in chunks(ids):
            places = ", ".join(mark for _ in chunk)
            sql = f"UPDATE {table.name} AS t SET {assignments} WHERE t.id IN ({places}){active}"
            conn.exec_driver_sql(sql, (*shared, *chunk))
