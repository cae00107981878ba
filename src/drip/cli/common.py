"""What every `drip` command shares: settings, error reporting, --now, opening the ledger."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import wraps
from typing import TYPE_CHECKING, Any, ParamSpec, TypeGuard, TypeVar

import click

from drip.config import Settings, load_settings
from drip.errors import DripError

if TYPE_CHECKING:  # each command imports what it uses, so start-up stays short
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.orm import Session, sessionmaker

    from drip.course import Course
    from drip.delivery import Mailer

P = ParamSpec("P")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


INTERRUPTED = 130
"""The exit code of a command stopped by Ctrl-C (SIGINT): 128 + 2, as a shell reports it."""


def interrupted(message: str = "interrupted (Ctrl-C)") -> None:
    """Say `message` in one line on stderr and exit `INTERRUPTED`. On a terminal the line
    starts after the ^C the terminal echoed."""
    if sys.stderr.isatty():
        click.echo(err=True)
    fail(message, INTERRUPTED)


@contextmanager
def ctrl_c_asks_to_stop() -> Iterator[threading.Event]:
    """Within: the first Ctrl-C (SIGINT) sets the event it yields instead of raising
    KeyboardInterrupt wherever the main thread is (possibly inside a database transaction,
    whose connection could then keep SQLite's write lock): `drip send` passes `is_set` as
    `stop_requested`, hands nothing more over, records what the transport has and releases the
    rest. A second Ctrl-C interrupts at once, as without this. Main thread only."""
    asked = threading.Event()
    previous = signal.getsignal(signal.SIGINT)

    def first(signum: int, frame: object) -> None:
        asked.set()
        signal.signal(signal.SIGINT, previous)
        if sys.stderr.isatty():
            click.echo(err=True)
        click.echo(
            "stopping: recording what was handed over, releasing the rest (Ctrl-C again to"
            " stop at once)",
            err=True,
        )

    signal.signal(signal.SIGINT, first)
    try:
        yield asked
    finally:
        signal.signal(signal.SIGINT, previous)


class DripGroup(click.Group):
    """The `drip` group: a Ctrl-C anywhere in a command (parsing its options, importing what it
    uses, running) ends it with `interrupted()`, not click's "Aborted!" and exit 1. A command
    that handles SIGINT itself (`drip worker`: stop after the current send, exit 0; `drip send`:
    `ctrl_c_asks_to_stop`) never sees a KeyboardInterrupt once its handler is installed."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except KeyboardInterrupt:
            interrupted()
            raise AssertionError("unreachable") from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            interrupted()
            raise AssertionError("unreachable") from None


def reports_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn a `DripError` raised by the library into its message on stderr and its exit code."""

    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except DripError as exc:
            fail(str(exc), exc.exit_code)
            raise AssertionError("unreachable") from exc
        except Exception as exc:
            if not _is_database_outage(exc):
                raise
            # Claims already made are safe: see the README.
            from drip.db import outage_message

            fail(outage_message(exc), 1)
            raise AssertionError("unreachable") from exc

    return wrapper


def _is_database_outage(exc: Exception) -> TypeGuard[DBAPIError]:
    """Whether `exc` is SQLAlchemy's "the database is unreachable or failed" error. SQLAlchemy
    is not imported for it: a command that never imported SQLAlchemy cannot have raised one."""
    errors = sys.modules.get("sqlalchemy.exc")
    return errors is not None and isinstance(exc, (errors.OperationalError, errors.InterfaceError))


def settings() -> Settings:
    """Settings from the process environment, loaded once per command into the click context.

    A `ConfigError` is reported with exit code 2 (by `reports_errors`).
    """
    root = click.get_current_context().find_root()
    if not isinstance(root.obj, Settings):
        root.obj = load_settings(os.environ)
    return root.obj


class NowType(click.ParamType[datetime]):
    """`--now`: an ISO 8601 date-time with a UTC offset, as an aware UTC datetime."""

    name = "ISO"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            self.fail(
                f"{value!r} is not an ISO-8601 date-time, e.g. 2026-04-01T07:30:00+09:00",
                param,
                ctx,
            )
        if moment.tzinfo is None:
            # A date alone needs a time before the offset: "2026-04-01+09:00" reads as 09:00.
            fixed = value if "T" in value or " " in value.strip() else f"{value}T07:30"
            self.fail(
                f"{value!r} has no UTC offset; add one, e.g. {fixed}+09:00 or {fixed}Z", param, ctx
            )
        from drip.years import MAX_YEAR, MIN_YEAR  # not drip.schedule: it loads `holidays`

        if not MIN_YEAR <= moment.year <= MAX_YEAR:
            self.fail(
                f"{value!r} is outside the years {MIN_YEAR}-{MAX_YEAR} drip can schedule",
                param,
                ctx,
            )
        return moment.astimezone(UTC)


def clock() -> datetime:
    return datetime.now(UTC)


def now_option(help: str = "Act as if it were this moment.") -> Callable[[F], F]:
    """The `--now ISO` option every command that reads the clock takes (default: the clock)."""
    return click.option("--now", type=NowType(), default=clock, metavar="ISO", help=help)


def open_ledger(current: Settings | None = None) -> tuple[sessionmaker[Session], Course]:
    """The course and a session factory on its database (the embedded default auto-upgrades)."""
    from drip import wiring

    engine, sessions, loaded = wiring.open_ledger(current or settings())
    # Pooled connections are closed when the command ends, whichever way it ends.
    click.get_current_context().call_on_close(engine.dispose)
    return sessions, loaded


def open_mailer(current: Settings) -> tuple[sessionmaker[Session], Mailer]:
    """Everything a sending command needs, from settings; config errors surface before any
    claim, and so does a course that cannot be sent (`delivery.check_sendable`)."""
    from drip.wiring import make_mailer

    sessions, loaded = open_ledger(current)
    return sessions, make_mailer(current, loaded)


@contextmanager
def progress_bar(description: str = "sending") -> Iterator[Callable[[int], None] | None]:
    """A rich progress bar on stderr when it is a terminal; nothing otherwise (cron, pipes)."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(transient=True, console=Console(stderr=True)) as bar:
        task = bar.add_task(description, total=None)
        yield lambda count: bar.advance(task, count)


class SinceType(click.ParamType[datetime]):
    """`--since`: a date (UTC midnight) or an ISO 8601 date-time with a UTC offset."""

    name = "DATE"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> datetime:
        if isinstance(value, datetime):
            return value
        text = str(value).strip()
        if len(text) == 10:
            try:
                return datetime.fromisoformat(text).replace(tzinfo=UTC)
            except ValueError:
                pass
        return NowType().convert(text, param, ctx)


def listed(items: list[str], limit: int = 20) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")
