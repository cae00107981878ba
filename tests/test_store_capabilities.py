"""The store's dialect capabilities: decided once per dialect, true where the SQL relies on them."""

from __future__ import annotations

from sqlalchemy import Engine

from drip.store.capabilities import capabilities_of


def test_capabilities_are_decided_once_per_dialect(engine: Engine) -> None:
    found = capabilities_of(engine.dialect)
    assert capabilities_of(engine.dialect) is found
    postgres = engine.dialect.name == "postgresql"
    assert (found.skip_locked, found.row_locks, found.array_params) == (postgres,) * 3
    assert found.placeholder == ("%s" if postgres else "?")
