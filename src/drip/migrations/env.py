"""Alembic environment for drip's migrations (script_location "drip:migrations").

`drip.db` builds the Alembic Config in code and passes an open connection in
`config.attributes["connection"]`, already inside the transaction that holds the upgrade lock;
migrations then run in that transaction. Without one (plain `alembic` use with a
`sqlalchemy.url` option) a connection is made with drip's engine settings.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from drip.models import Base


def run_on(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # SQLite cannot ALTER most things in place; batch mode copies the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        run_on(connection)
        return
    from drip.db import make_engine

    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no connection given and no sqlalchemy.url option set")
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            run_on(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise RuntimeError("drip's migrations run online only; use 'drip db upgrade'")
run()
