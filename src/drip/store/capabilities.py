"""What the database behind a dialect can do, decided once per dialect (so once per engine).

The store's SQL reads these flags by name instead of asking "is this PostgreSQL?" at each
site: the reason for every dialect-specific branch is written down here, once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from weakref import WeakKeyDictionary

from sqlalchemy import Dialect, Table
from sqlalchemy.dialects import postgresql, sqlite

__all__ = ["Capabilities", "capabilities_of"]


@dataclass(frozen=True, slots=True)
class Capabilities:
    skip_locked: bool
    """SELECT ... FOR UPDATE SKIP LOCKED: concurrent runs claim disjoint sets of due rows
    without waiting for each other. Without it (SQLite) every transaction holds the database's
    write lock, which serialises the runs instead."""
    row_locks: bool
    """SELECT ... FOR UPDATE: rows about to change are locked, so a concurrent change (an
    unsubscribe) is either seen or applied after this transaction. Without it (SQLite) the
    write lock gives the same guarantee."""
    array_params: bool
    """A list binds as one array parameter (`= ANY(:ids)`, `unnest(:emails)`, UPDATE ... FROM
    unnest(<arrays>)): one statement text whatever the length, one round trip per batch.
    Without it: expanding IN lists and executemany."""
    placeholder: str
    """The driver's positional placeholder in hand-written SQL ('?' or '%s')."""
    array_placeholder: str
    """The placeholder for a list bound as an array in hand-written SQL: psycopg's '%b', binary
    format, whose array dumper costs a fraction of the text one (that one quotes each element
    in Python); `placeholder` where there are no array parameters."""
    insert_on_conflict: Callable[[Table], postgresql.Insert | sqlite.Insert]
    """The dialect's INSERT construct, the one that offers ON CONFLICT DO NOTHING."""


_BY_DIALECT: WeakKeyDictionary[Dialect, Capabilities] = WeakKeyDictionary()


def capabilities_of(dialect: Dialect) -> Capabilities:
    """The capabilities of `dialect`, computed on first use and cached with it."""
    try:
        return _BY_DIALECT[dialect]
    except KeyError:
        found = _BY_DIALECT[dialect] = _decide(dialect)
        return found


def _decide(dialect: Dialect) -> Capabilities:
    # drip runs on PostgreSQL and SQLite (3.35+, for RETURNING); anything else is taken as
    # SQLite-like, as before.
    postgres = dialect.name == "postgresql"
    placeholder = "?" if dialect.paramstyle == "qmark" else "%s"
    return Capabilities(
        skip_locked=postgres,
        row_locks=postgres,
        array_params=postgres,
        placeholder=placeholder,
        array_placeholder="%b" if postgres and dialect.driver == "psycopg" else placeholder,
        insert_on_conflict=postgresql.insert if postgres else sqlite.insert,
    )
