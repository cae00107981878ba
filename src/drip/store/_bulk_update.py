"""Hand-written set-based UPDATEs for recording outcomes: the hot path of `record_sent` and
friends, below SQLAlchemy's per-row parameter processing."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Table

from drip.store._sql import ACTIVE, chunks, integer_array_literal
from drip.store.capabilities import capabilities_of

SHARED_RATIO = 4
"""`update_rows` (SQLite) goes set-based when rows share their values at least this much on
average."""


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

    With array parameters (PostgreSQL): one statement per call, `_update_from_arrays`.
    Otherwise: one `update_groups` statement per group of rows sharing their values when they
    share them enough, else one executemany of plain tuples on the DBAPI cursor.
    Values are converted by the columns' types (aware datetimes -> the stored UTC form) but skip
    SQLAlchemy's per-row parameter processing, which cost more than the SQL itself.
    """
    if not rows:
        return
    active = f" AND t.status = '{ACTIVE}'" if only_active else ""
    capabilities = capabilities_of(conn.dialect)
    if capabilities.array_params:
        _update_from_arrays(conn, table, columns, rows, active)
        return
    groups: dict[tuple[Any, ...], list[Any]] = {}
    for row in rows:
        groups.setdefault(tuple(row[:-1]), []).append(row[-1])
    if len(groups) * SHARED_RATIO <= len(rows):
        update_groups(conn, table, columns, groups, active)
        return
    dialect = conn.dialect
    converters = [converter(table.c[name], dialect) for name in (*columns, "id")]
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
    mark = capabilities.placeholder
    assignments = ", ".join(f"{name} = {mark}" for name in columns)
    sql = f"UPDATE {table.name} AS t SET {assignments} WHERE t.id = {mark}{active}"
    conn.exec_driver_sql(sql, params)


def _update_from_arrays(
    conn: Connection,
    table: Table,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    active: str,
) -> None:
    """`update_rows` in one `UPDATE ... FROM unnest(<one array per column>)`, PostgreSQL.

    Works a column at a time (the rows transposed), never a Python step per row and column: a
    column with one value in every row (a window's `now`, 'sent') is bound once as a scalar;
    the others as arrays in the driver's binary format (`Capabilities.array_placeholder`), the
    ids as one array literal (`integer_array_literal`). psycopg's text array dumper, used
    before, ran Python per element to quote it: 4 ms of CPU per 256-row window of five
    columns, 0.4-0.7 ms now.
    """
    dialect = conn.dialect
    capabilities = capabilities_of(dialect)
    mark = capabilities.placeholder
    assignments: list[str] = []
    scalars: list[Any] = []
    arrays: list[str] = []
    array_names: list[str] = []
    array_values: list[Any] = []
    for name, values in zip((*columns, "id"), zip(*rows, strict=True), strict=True):
        sql_type = table.c[name].type.compile(dialect)
        if name == "id":
            ids = integer_array_literal(values)
            arrays.append(f"{mark}::{sql_type}[]")
            array_values.append(ids)
            array_names.append(name)
            continue
        convert = converter(table.c[name], dialect)
        first = values[0]
        if values.count(first) == len(values):
            assignments.append(f"{name} = {mark}::{sql_type}")
            scalars.append(first if convert is None else convert(first))
            continue
        assignments.append(f"{name} = v.{name}")
        arrays.append(f"{capabilities.array_placeholder}::{sql_type}[]")
        array_values.append(list(values) if convert is None else list(map(convert, values)))
        array_names.append(name)
    # The ids again, as `t.id = ANY(...)`: the planner then finds the rows by the primary key.
    # With `t.id = v.id` alone it estimates the join from the table's statistics, stale while
    # a run fills the ledger, and hashed every row of the table for each window (a sequential
    # scan of 100,000 subscribers to update 4,000, 40 % of the statement's time).
    sql = (
        f"UPDATE {table.name} AS t SET {', '.join(assignments)}"
        f" FROM unnest({', '.join(arrays)}) AS v({', '.join(array_names)})"
        f" WHERE t.id = v.id AND t.id = ANY({mark}::bigint[]){active}"
    )
    conn.exec_driver_sql(sql, (*scalars, *array_values, ids))


def update_groups(
    conn: Connection,
    table: Table,
    columns: Sequence[str],
    groups: Mapping[tuple[Any, ...], Sequence[Any]],
    active: str,
) -> None:
    """One `UPDATE ... SET <shared values> WHERE id IN <ids>` per group of rows with equal
    values (SQLite): a bulk request's subscribers share their outcome and next lesson, so most
    of a batch is one statement with one id list instead of per-row values (less binding and
    conversion).
    """
    dialect = conn.dialect
    converters = [converter(table.c[name], dialect) for name in columns]
    mark = capabilities_of(dialect).placeholder
    assignments = ", ".join(f"{name} = {mark}" for name in columns)
    for values, ids in groups.items():
        shared = tuple(
            value if convert is None else convert(value)
            for convert, value in zip(converters, values, strict=True)
        )
        for chunk in chunks(ids):
            places = ", ".join(mark for _ in chunk)
            sql = f"UPDATE {table.name} AS t SET {assignments} WHERE t.id IN ({places}){active}"
            conn.exec_driver_sql(sql, (*shared, *chunk))
