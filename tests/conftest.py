"""Shared database fixtures: every database test runs on a real SQLite file and a real PostgreSQL.

- `database_url`: an upgraded, empty database; parametrised over "sqlite" (a file under
  tmp_path) and "postgresql" (one database created per test session, emptied between tests).
- `empty_database_url`: a database with no schema at all, for migration tests.
- `engine` / `session`: an Engine (drip's settings) and a Session on `database_url`;
  `sessions`: a sessionmaker on it.
- `drip`: runs the command line through click on `database_url` and the committed course, in a
  fresh working directory (tmp_path).

PostgreSQL comes from DRIP_TEST_POSTGRES_URL (default: the local server, trust auth). When it is
unreachable its tests are skipped with the reason, unless DRIP_TEST_REQUIRE contains "postgres"
(CI), in which case they fail.

The transport tests share the loopback fakes (tests/fakes): `sendgrid` (FakeSendGrid accepting
transport_support.API_KEY), `smtp` (FakeSmtp), and `server_tls` / `client_tls`, an SSL context
pair trusting one test CA.
"""

from __future__ import annotations

import os
import shutil
import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import trustme
from click.testing import CliRunner, Result
from psycopg import sql
from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from tests.fakes.sendgrid_server import FakeSendGrid
from tests.fakes.smtp_server import FakeSmtp
from tests.support import CLI_KEY, COURSE_DIR, TEMPLATES, Drip
from tests.transport_support import API_KEY
from tests.web_support import AppFactory

from drip import schedule
from drip.cli import main
from drip.db import make_engine, upgrade

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
TABLES = ("events", "deliveries", "subscribers", "suppressions")

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def postgres_admin_url() -> str:
    return os.environ.get("DRIP_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)


def postgres_required() -> bool:
    required = os.environ.get("DRIP_TEST_REQUIRE", "")
    return "postgres" in {part.strip() for part in required.split(",")}


def _libpq(url: str) -> str:
    """The SQLAlchemy URL as a libpq connection string for psycopg."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class PostgresServer:
    """Creates and drops throw-away databases on the test server."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url

    def _admin(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(_libpq(self.admin_url), autocommit=True, connect_timeout=5)

    def create(self, prefix: str) -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with self._admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return make_url(self.admin_url).set(database=name).render_as_string(hide_password=False)

    def drop(self, url: str) -> None:
        name = make_url(url).database
        assert name is not None
        with self._admin() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture(scope="session")
def postgres_server() -> PostgresServer:
    """The PostgreSQL test server, or a skip (a failure when required) if it is unreachable."""
    admin_url = postgres_admin_url()
    try:
        with psycopg.connect(_libpq(admin_url), connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError as exc:
        shown = make_url(admin_url).render_as_string(hide_password=True)
        reason = f"PostgreSQL unreachable at {shown}: {str(exc).strip().splitlines()[0]}"
        if postgres_required():
            pytest.fail(f"{reason} (DRIP_TEST_REQUIRE asks for postgres)", pytrace=False)
        pytest.skip(reason)
    return PostgresServer(admin_url)


@pytest.fixture(scope="session")
def postgres_database(postgres_server: PostgresServer) -> Iterator[str]:
    """One upgraded database for the whole session; dropped at the end."""
    url = postgres_server.create("drip_test")
    try:
        upgrade(url)
        yield url
    finally:
        postgres_server.drop(url)


def _truncate(url: str) -> None:
    with psycopg.connect(_libpq(url), autocommit=True) as conn:
        # A leaked transaction from an earlier test would make TRUNCATE wait forever.
        conn.execute("SET lock_timeout = '10s'")
        conn.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An upgraded SQLite file, copied for each test (faster than migrating every time)."""
    path = tmp_path_factory.mktemp("sqlite-template") / "drip.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an upgraded database with no rows, on each backend."""
    if request.param == "sqlite":
        path = tmp_path / "drip.db"
        # The template was checkpointed and closed by upgrade(): the main file is complete.
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("postgres_database")
    _truncate(url)
    return url


@pytest.fixture(params=BACKENDS)
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a database with no tables, on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    url = server.create("drip_test_empty")
    try:
        yield url
    finally:
        server.drop(url)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    with Session(engine, expire_on_commit=False) as session:
        yield session


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine)


@pytest.fixture
def drip(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Drip:
    monkeypatch.chdir(tmp_path)
    env = {
        "DRIP_COURSE_DIR": str(COURSE_DIR),
        "DRIP_TEMPLATES_DIR": str(TEMPLATES),
        "DRIP_DATABASE_URL": database_url,
        "DRIP_SECRET_KEY": CLI_KEY,
    }

    def run(*args: str, input: str | None = None) -> Result:
        return CliRunner().invoke(main, list(args), env=env, input=input)

    return run


# -- loopback fakes for the transport tests ----------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    return ctx


@pytest.fixture(scope="module")
def client_tls(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


@pytest.fixture
def sendgrid() -> Iterator[FakeSendGrid]:
    with FakeSendGrid(api_key=API_KEY) as fake:
        yield fake


@pytest.fixture
def smtp() -> Iterator[FakeSmtp]:
    with FakeSmtp() as fake:
        yield fake


@pytest.fixture(autouse=True)
def fresh_send_moments() -> None:
    """Each test computes its own send moments: a moment cached by an earlier test would skip
    schedule's DST code (`_resolve`, `_gap_end`) and hide a change to it from this test (mutation
    testing runs only the few tests that cover the changed function)."""
    schedule._local_send_moment.cache_clear()


@pytest.fixture
def make_app() -> Iterator[AppFactory]:
    """`make_app(database_url, tmp_path, clock=None, **settings)`: a web app on a test database,
    closed at the end of the test (tests/web_support.py)."""
    factory = AppFactory()
    yield factory
    factory.close()
