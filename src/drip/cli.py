"""The `drip` command line: thin click commands that parse, call one library function, report.

Exit codes (documented in the README): 0 success (warnings allowed); 1 the job found errors or had
to stop; 2 usage or configuration error.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import click
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from drip import __version__
from drip.config import Settings, load_settings
from drip.errors import DripError
from drip.statuses import SubscriberStatus

if TYPE_CHECKING:  # each command imports what it uses, so start-up stays short
    from drip.course import Course
    from drip.delivery import Mailer
    from drip.store import DeliveryView

P = ParamSpec("P")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def reports_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn a `DripError` raised by the library into its message on stderr and its exit code."""

    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except DripError as exc:
            fail(str(exc), exc.exit_code)
            raise AssertionError("unreachable") from exc
        except (OperationalError, InterfaceError) as exc:
            # Claims already made are safe: see the README.
            from drip.db import outage_message

            fail(outage_message(exc), 1)
            raise AssertionError("unreachable") from exc

    return wrapper


def settings() -> Settings:
    """Settings from the process environment, loaded once per command into the click context.

    A `ConfigError` is reported with exit code 2 (by `reports_errors`).
    """
    root = click.get_current_context().find_root()
    if not isinstance(root.obj, Settings):
        root.obj = load_settings(os.environ)
    return root.obj


MIN_NOW_YEAR, MAX_NOW_YEAR = 1971, 9998
"""--now must leave room for the lease, back-off and schedule arithmetic on either side."""


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
        if not MIN_NOW_YEAR <= moment.year <= MAX_NOW_YEAR:
            self.fail(
                f"{value!r} is outside the years {MIN_NOW_YEAR}-{MAX_NOW_YEAR} drip can schedule",
                param,
                ctx,
            )
        return moment.astimezone(UTC)


def _clock() -> datetime:
    return datetime.now(UTC)


def now_option(help: str = "Act as if it were this moment.") -> Callable[[F], F]:
    """The `--now ISO` option every command that reads the clock takes (default: the clock)."""
    return click.option("--now", type=NowType(), default=_clock, metavar="ISO", help=help)


def open_ledger(current: Settings | None = None) -> tuple[sessionmaker[Session], Course]:
    """The course and a session factory on its database (the embedded default auto-upgrades)."""
    from drip import wiring

    engine, sessions, loaded = wiring.open_ledger(current or settings())
    # Pooled connections are closed when the command ends, whichever way it ends.
    click.get_current_context().call_on_close(engine.dispose)
    return sessions, loaded


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="drip")
def main() -> None:
    """drip: turn an article into an email course and send it on schedule.

    Settings come from DRIP_* environment variables (see the README). Exit codes: 0 success,
    1 errors found or the run had to stop, 2 usage or configuration error.
    """
    # Logs go to stderr; stdout carries the commands' results (and --json).
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("apscheduler", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@main.group()
def course() -> None:
    """Build, check and preview the course in course/."""


@main.group()
def db() -> None:
    """Manage the database schema."""


@course.command("build")
@click.argument("source", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite lesson bodies the author edited.")
@reports_errors
def build_command(source: Path, force: bool) -> None:
    """Split the Markdown article SOURCE into lessons under the course directory.

    The text before the first '##' becomes the welcome lesson, then one lesson per '##' section.
    Existing lessons keep their front matter; course.toml is written only if missing.
    """
    from drip.build import build_course

    report = build_course(source, settings().course_dir, force=force)
    for path in report.written:
        click.echo(f"wrote {path}")
    for path in report.unchanged:
        click.echo(f"unchanged {path}")
    if report.course_toml_written:
        click.echo(f"wrote {settings().course_dir / 'course.toml'}: edit the title and sender")


@course.command("check")
@click.argument("path", required=False, type=click.Path(file_okay=False, path_type=Path))
@reports_errors
def check_command(path: Path | None) -> None:
    """Validate the course at PATH (default: the course directory) and the email templates.

    Prints one line per problem as FILE:LINE: error|warning: message. Exit 1 when there is any
    error, 0 when there are only warnings or nothing.
    """
    from drip.check import check_course

    current = settings()
    problems = check_course(path or current.course_dir, current.templates_dir)
    for problem in problems:
        click.echo(str(problem))
    errors = sum(problem.error for problem in problems)
    warnings = len(problems) - errors
    click.echo(f"{errors} error(s), {warnings} warning(s)", err=True)
    sys.exit(1 if errors else 0)


def open_mailer(current: Settings) -> tuple[sessionmaker[Session], Mailer]:
    """Everything a sending command needs, from settings; config errors surface before any
    claim, and so does a course that cannot be sent (`delivery.check_sendable`)."""
    from drip.wiring import make_mailer

    sessions, loaded = open_ledger(current)
    return sessions, make_mailer(current, loaded)


@main.command("subscribe")
@click.argument("email")
@click.option("--name", help="The subscriber's name, used in the greeting.")
@click.option("--timezone", "timezone", help="IANA timezone, e.g. Asia/Tokyo (default: course's).")
@click.option(
    "--confirmed",
    is_flag=True,
    help="Consent was obtained elsewhere: skip the confirmation email, start the course.",
)
@now_option()
@reports_errors
def subscribe_command(
    email: str, name: str | None, timezone: str | None, confirmed: bool, now: datetime
) -> None:
    """Add a subscriber. Without --confirmed a confirmation (double opt-in) email is sent.

    Exit 2 for an invalid email or timezone, or an address that unsubscribed, bounced or
    complained (it is never re-activated silently).
    """
    from drip.lifecycle import subscribe

    sessions, mailer = open_mailer(settings())
    with mailer.transport:
        result = subscribe(
            sessions,
            mailer,
            email=email,
            name=name,
            timezone=timezone,
            confirmed=confirmed,
            now=now,
            consent_source="cli",
        )
    verb = "added" if result.created else "found"
    click.echo(f"{verb} subscriber {result.subscriber_id}: {result.status}")
    if result.confirmation_sent:
        click.echo(f"confirmation email sent ({mailer.transport.name})")
    if result.note:
        click.echo(result.note)


@main.command("send")
@now_option("Send what is due at this moment.")
@click.option("--dry-run", is_flag=True, help="Count what is due; claim and send nothing.")
@click.option("--limit", type=click.IntRange(min=1), help="Send at most N emails this run.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@click.option(
    "--bulk/--no-bulk",
    default=None,
    help="SendGrid bulk mode for this run (default: DRIP_BULK): up to 1,000 readers per request"
    " for lessons that vary per reader only by name and links; others go one by one.",
)
@reports_errors
def send_command(
    now: datetime, dry_run: bool, limit: int | None, as_json: bool, bulk: bool | None
) -> None:
    """Send every lesson that is due, once. Safe from cron at any frequency, and concurrently.

    Exit 0 when the run completed (even with per-message failures), 1 when it had to stop (bad
    provider credentials, database unavailable), 2 for usage or configuration errors.
    """
    from dataclasses import replace

    from drip.delivery import send_due

    current = settings()
    if bulk is not None:
        current = replace(current, bulk="auto" if bulk else "off")
    sessions, mailer = open_mailer(current)
    with mailer.transport, progress_bar() as advance:
        report = send_due(sessions, mailer, now=now, limit=limit, dry_run=dry_run, progress=advance)
    if as_json:
        click.echo(json.dumps(report.as_dict(), ensure_ascii=False))
    else:
        click.echo(report.summary())
        if current.transport == "outbox" and report.sent:
            click.echo(f"the emails are .eml files in {current.outbox_dir.resolve()}")
    if report.warning:
        click.echo(f"warning: {report.warning}", err=True)
    if report.stopped:
        fail(f"the run stopped: {report.stopped}", 1)


@contextmanager
def progress_bar() -> Iterator[Callable[[int], None] | None]:
    """A rich progress bar on stderr when it is a terminal; nothing otherwise (cron, pipes)."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(transient=True, console=Console(stderr=True)) as bar:
        task = bar.add_task("sending", total=None)
        yield lambda count: bar.advance(task, count)


@course.command("preview")
@click.argument("lesson", required=False)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("preview"),
    show_default=True,
    help="Directory to write the preview files into.",
)
@reports_errors
def preview_command(lesson: str | None, out_dir: Path) -> None:
    """Write each lesson (or only LESSON, a slug or number) as .html, .txt and .eml.

    The emails are rendered for a sample subscriber (山田 太郎 <yamada@example.com>) with
    placeholder links, together with the confirmation email and an index.html linking them.
    """
    from drip.preview import write_preview

    config = settings()
    paths = write_preview(
        config.course_dir,
        config.templates_dir,
        config.base_url,
        out_dir,
        now=_clock(),
        lesson=lesson,
    )
    for path in paths:
        click.echo(f"wrote {path}")
    click.echo(f"open {out_dir / 'index.html'} in a browser to review them")


@course.command("send-test")
@click.argument("lesson", metavar="LESSON|confirmation")
@click.option("--to", "to", required=True, help="Where to send it (your own inbox).")
@click.option("--name", help="The name to greet (default: a sample name).")
@reports_errors
def send_test_command(lesson: str, to: str, name: str | None) -> None:
    """Send one lesson (slug or number) or the confirmation email to --to, as a test.

    Goes through the configured transport with sample data and a subject marked as a test;
    nothing is recorded (no subscriber, no delivery). Exit 1 if the transport refused it.
    """
    from drip.course import load_course
    from drip.transports.base import Outcome
    from drip.trial import send_test
    from drip.wiring import make_mailer

    current = settings()
    mailer = make_mailer(current, load_course(current.course_dir))
    subject, result = send_test(mailer, lesson, to=to, name=name, now=_clock())
    if result.outcome is not Outcome.SENT:
        fail(f"the test email was not sent ({result.outcome.value}): {result.detail}", 1)
    where = f" (provider id {result.provider_id})" if result.provider_id else ""
    click.echo(f"sent {subject!r} to {to} through {current.transport}{where}")


@main.command("plan")
@click.argument("email", required=False)
@click.option("--course", "whole_course", is_flag=True, help="The schedule of a new subscriber.")
@click.option(
    "--start",
    type=NowType(),
    help="With --course: when the new subscriber confirms (default: now).",
)
@click.option("--timezone", "timezone", help="With --course: the reader's IANA timezone.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per lesson.")
@now_option("Show the timeline as of this moment.")
@reports_errors
def plan_command(
    email: str | None,
    whole_course: bool,
    start: datetime | None,
    timezone: str | None,
    as_json: bool,
    now: datetime,
) -> None:
    """A subscriber's timeline: each lesson sent at, or due at, and why it moved.

    With --course instead of EMAIL: the schedule a reader confirming at --start in --timezone
    would get. Times are shown reader-local and UTC; the reasons name quiet hours, days that are
    not send days, holidays, pauses, holds and late runs.
    """
    from zoneinfo import ZoneInfo

    from drip import plan
    from drip.addresses import check_timezone
    from drip.errors import UsageError

    if whole_course == (email is not None):
        raise UsageError("give either EMAIL or --course (the schedule of a new subscriber)")
    if email is not None and (start is not None or timezone is not None):
        raise UsageError("--start and --timezone go with --course; a subscriber has their own")
    if email is None:
        from drip.course import load_course

        loaded = load_course(settings().course_dir)
        zone_name = check_timezone(timezone or loaded.settings.timezone)
        steps = plan.course_plan(loaded, zone_name, start=start or now)
        confirmed = (start or now).astimezone(ZoneInfo(zone_name))
        header = f"a reader in {zone_name} confirming at {confirmed:%Y-%m-%d %a %H:%M} local"
    else:
        from drip.insight import subscriber_timeline

        sessions, loaded = open_ledger()
        view, steps = subscriber_timeline(sessions, loaded, email, now=now)
        zone_name = view.timezone
        header = f"{view.email} ({view.status.value}, {zone_name})"
    zone = ZoneInfo(zone_name)
    if as_json:
        for step in steps:
            click.echo(json.dumps(step.as_dict(zone), ensure_ascii=False))
        return
    click.echo(header)
    for step in steps:
        when = "-"
        if step.at is not None:
            local = step.at.astimezone(zone)
            when = f"{local:%Y-%m-%d %a %H:%M} local  {step.at:%Y-%m-%d %H:%M} UTC"
        click.echo(f"{step.number:>2} {step.lesson:<20} {step.state:<8} {when}")
        for reason in step.reasons:
            click.echo(f"     - {reason}")


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


@main.command("stats")
@click.option("--since", type=SinceType(), help="Count only what happened from then on.")
@click.option(
    "--format",
    "output",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
    help="How to print the figures.",
)
@click.option(
    "--html",
    "html_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write one self-contained HTML page with the charts.",
)
@reports_errors
def stats_command(since: datetime | None, output: str, html_file: Path | None) -> None:
    """Per lesson: sent, delivered, opened (machine opens apart), clicked, bounced, complained,
    unsubscribed after it, and the share of starters who got it; then signups per day, the
    confirmation rate and the median time to confirm. Provider events come from the SendGrid
    event webhook (`drip serve`)."""
    from drip import stats
    from drip.insight import course_stats

    sessions, loaded = open_ledger()
    report = course_stats(sessions, loaded, since=since)
    render = {"table": stats.as_table, "csv": stats.as_csv, "json": stats.as_json}[output]
    click.echo(render(report))
    if html_file is not None:
        try:
            html_file.write_text(stats.as_html(report), encoding="utf-8")
        except OSError as exc:
            fail(f"cannot write {html_file}: {exc.strerror}; choose another path", 2)
        click.echo(f"wrote {html_file}", err=True)


@db.command("upgrade")
@reports_errors
def db_upgrade_command() -> None:
    """Create or upgrade the schema of the database at DRIP_DATABASE_URL to this drip's revision.

    Safe to run again and from several hosts at once. Exit 1 if the database cannot be reached.
    """
    from drip.db import safe_url, upgrade

    url = settings().database_url
    revision = upgrade(url)
    click.echo(f"database {safe_url(url)} is at revision {revision}")


@main.group("subscribers")
def subscribers_group() -> None:
    """Import and manage subscribers."""


def _listed(items: list[str], limit: int = 20) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


@subscribers_group.command("import")
@click.argument("file", type=click.Path(path_type=Path))
@click.option(
    "--confirmed",
    is_flag=True,
    help="Consent was obtained elsewhere: start the course at once (no confirmation email).",
)
@now_option("Act as if it were this moment, e.g. 2026-04-01T07:30:00+09:00.")
@click.option("--dry-run", is_flag=True, help="Validate and count; write nothing.")
@reports_errors
def subscribers_import_command(file: Path, confirmed: bool, now: datetime, dry_run: bool) -> None:
    """Import subscribers from the CSV file FILE into the course.

    The header row names 'email' and optionally 'name' and 'timezone' (an IANA name; the
    course's timezone when empty); other columns are ignored with a warning. UTF-8, with or
    without BOM ("CSV UTF-8" in Excel; a Shift_JIS file is refused and nothing imported).
    Invalid rows are reported with their line and skipped; repeated addresses are merged (the
    first wins); existing subscribers are left as they are (pending ones are confirmed with
    --confirmed); unsubscribed, bounced and complained addresses are never re-activated.

    Exit 0 when every row was valid, 1 when some rows were invalid (the valid ones are
    imported), 2 when nothing was imported: a missing or unreadable file, one that is not UTF-8
    or not valid CSV (an unterminated quote), a bad header or a bad option.
    """
    from drip.errors import UsageError
    from drip.lifecycle import import_subscribers

    if file.is_dir():
        raise UsageError(f"{file}: is a directory; give the CSV file")
    if not file.is_file():
        raise UsageError(f"{file}: no such file")
    sessions, loaded = open_ledger()
    report = import_subscribers(
        sessions, loaded, file, now=now, confirmed=confirmed, dry_run=dry_run
    )

    if report.ignored_columns:
        ignored = ", ".join(repr(name) for name in report.ignored_columns)
        click.echo(
            f"warning: ignored column(s) {ignored}: only email, name and timezone are imported",
            err=True,
        )
    would = "would be " if dry_run else ""
    state = "active, first lesson scheduled" if confirmed else "pending"
    click.echo(f"{'dry run, nothing written: ' if dry_run else ''}{report.rows} row(s) read")
    click.echo(f"imported: {report.imported} ({would}{state})")
    if confirmed:
        click.echo(f"confirmed: {report.confirmed} pending subscriber(s) {would}confirmed")
    merged = [f"line {line} = line {first_line}" for line, first_line in report.merged]
    click.echo(f"merged duplicates: {len(merged)}" + (f" ({_listed(merged)})" if merged else ""))
    click.echo(f"already present: {report.present} (left as they are)")
    suppressed = [str(line) for line in report.suppressed]
    click.echo(
        f"suppressed: {len(suppressed)} (unsubscribed, bounced or complained; not re-activated)"
        + (f" on line(s) {_listed(suppressed)}" if suppressed else "")
    )
    click.echo(f"invalid: {len(report.invalid)}")
    for line, reason in report.invalid:
        click.echo(f"{file}:{line}: {reason}", err=True)
    if report.imported and not confirmed:
        click.echo(
            "warning: imported subscribers are pending and get no confirmation email from an"
            " import; use 'drip subscribe' for double opt-in, or --confirmed"
            " if they already consented",
            err=True,
        )
    if report.invalid:
        sys.exit(1)


@main.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="TCP port."
)
@click.option(
    "--workers",
    default=2,
    show_default=True,
    type=click.IntRange(1, 64),
    help="gunicorn worker processes.",
)
@click.option(
    "--threads",
    default=4,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Threads per worker process.",
)
@reports_errors
def serve_command(host: str, port: int, workers: int, threads: int) -> None:
    """Serve the signup form, confirm, unsubscribe and manage pages and the SendGrid webhook.

    Runs under gunicorn until SIGTERM or Ctrl-C; open DRIP_BASE_URL (by default
    http://127.0.0.1:8000/) in a browser. Put a reverse proxy with TLS in front of it in
    production (README, "Production").
    """
    from drip.web.server import serve
    from drip.web.webhooks import startup_warning

    current = settings()
    warning = startup_warning(current)
    if warning is not None:
        click.echo(f"warning: {warning}", err=True)
    serve(current, host=host, port=port, workers=workers, threads=threads)


@main.command("worker")
@click.option(
    "--interval",
    default=300,
    show_default=True,
    type=click.IntRange(min=1),
    help="Seconds between two sends.",
)
@reports_errors
def worker_command(interval: int) -> None:
    """Run `drip send` now and then every INTERVAL seconds, until SIGTERM or Ctrl-C.

    An APScheduler daemon for hosts without cron: one send at a time (a slow run is never
    overlapped; missed runs are coalesced). A failing run is logged and the next one tries
    again; bad provider credentials stop the worker with exit 1.
    """
    from drip.worker import run_worker

    sessions, mailer = open_mailer(settings())
    stopped = run_worker(sessions, mailer, interval=interval)
    if stopped is not None:
        fail(f"the worker stopped: {stopped}", 1)


@subscribers_group.command("list")
@click.option(
    "--status",
    type=click.Choice([status.value for status in SubscriberStatus]),
    help="Only subscribers in this state.",
)
@click.option(
    "--held",
    is_flag=True,
    help="Only the held ones: active, but waiting on the operator (the reason is shown).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@reports_errors
def subscribers_list_command(status: str | None, held: bool, as_json: bool) -> None:
    """List the course's subscribers: address, state, next lesson and when (UTC), and for a
    held subscriber why it waits. Streamed, so it works at any size."""
    from drip.lifecycle import list_subscribers

    sessions, loaded = open_ledger()
    chosen = SubscriberStatus(status) if status else None
    shown = 0
    for view in list_subscribers(sessions, loaded, status=chosen, held=held):
        shown += 1
        if as_json:
            click.echo(json.dumps(view.as_dict(), ensure_ascii=False))
            continue
        when = view.next_send_at.isoformat() if view.next_send_at else "-"
        line = f"{view.email}\t{view.status.value}\t{view.next_lesson or '-'}\t{when}"
        click.echo(
            line + (f"\theld: {view.held_reason or 'no reason recorded'}" if view.is_held else "")
        )
    if not shown and not as_json:
        click.echo("none: no subscriber is held" if held else "none")


def _status_command(
    name: str,
    change: Callable[..., bool],
    doc: str,
    done: str,
    unchanged: str,
) -> None:
    """`drip subscribers NAME EMAIL`: one status change by address, through `change`."""

    @click.argument("email")
    @now_option()
    @reports_errors
    def command(email: str, now: datetime) -> None:
        sessions, loaded = open_ledger()
        changed = change(sessions, loaded, email, now=now)
        click.echo(f"{email}: {done if changed else unchanged}")

    command.__doc__ = doc + "\n\n    Exit 2 if the address is not subscribed."
    subscribers_group.command(name)(command)


def _register_status_commands() -> None:
    from drip import lifecycle

    _status_command(
        "pause",
        lifecycle.pause_subscriber,
        "Pause the reader EMAIL: nothing is sent until resumed.",
        "paused",
        "not active, nothing changed",
    )
    _status_command(
        "resume",
        lifecycle.resume_subscriber,
        "Resume the paused reader EMAIL: the next lesson comes at the next send time.",
        "resumed",
        "not paused, nothing changed",
    )
    _status_command(
        "unsubscribe",
        lifecycle.unsubscribe_subscriber,
        "Unsubscribe the reader EMAIL at once; it is never re-activated.",
        "unsubscribed",
        "already unsubscribed, bounced or complained",
    )


_register_status_commands()


@main.group("deliveries")
def deliveries_group() -> None:
    """Inspect and settle the delivery ledger."""


@deliveries_group.command("in-doubt")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@reports_errors
def in_doubt_command(as_json: bool) -> None:
    """List the deliveries that may or may not have reached the reader.

    Look each one up at the provider (SendGrid: custom arg drip_delivery_id; SMTP: header
    Drip-Delivery-Id), then settle it with `drip deliveries resolve`.
    """
    from drip.lifecycle import in_doubt

    sessions, loaded = open_ledger()
    _echo_deliveries(in_doubt(sessions, loaded), as_json, "none: no delivery is in doubt")


@deliveries_group.command("failed")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@reports_errors
def failed_command(as_json: bool) -> None:
    """List the failed deliveries (refused for good, or given up on), with the reason.

    Their readers are held. Fix the cause, then re-arm them with `drip deliveries retry`.
    """
    from drip.lifecycle import failed

    sessions, loaded = open_ledger()
    _echo_deliveries(failed(sessions, loaded), as_json, "none: no delivery has failed")


def _echo_deliveries(rows: list[DeliveryView], as_json: bool, none: str) -> None:
    """One line (or JSON object) per delivery; `none` when there are none (not with --json)."""
    if not rows and not as_json:
        click.echo(none)
    for row in rows:
        click.echo(json.dumps(row.as_dict(), ensure_ascii=False) if as_json else row.as_row())


@deliveries_group.command("retry")
@click.argument("delivery_ids", nargs=-1, type=int)
@click.option("--all", "every", is_flag=True, help="Every failed delivery of the course.")
@now_option()
@reports_errors
def retry_command(delivery_ids: tuple[int, ...], every: bool, now: datetime) -> None:
    """Re-arm failed deliveries (DELIVERY_ID ... or --all) once the cause is fixed: the next
    `drip send` tries each again. Exit 2 for an id that is not a failed delivery."""
    from drip.errors import UsageError
    from drip.lifecycle import retry_failed

    if bool(delivery_ids) == every:
        raise UsageError("name the deliveries to retry (DELIVERY_ID ...) or pass --all, not both")
    sessions, loaded = open_ledger()
    armed = retry_failed(sessions, loaded, None if every else list(delivery_ids), now=now)
    click.echo(f"re-armed {len(armed)} deliver{'y' if len(armed) == 1 else 'ies'}")


@deliveries_group.command("resolve")
@click.argument("delivery_id", type=int)
@click.option(
    "--sent/--not-sent",
    required=True,
    help="Whether the provider has the message (--sent) or not (--not-sent: send again).",
)
@now_option()
@reports_errors
def resolve_command(delivery_id: int, sent: bool, now: datetime) -> None:
    """Settle the in-doubt delivery DELIVERY_ID. Exit 2 if it is unknown or not in doubt."""
    from drip.lifecycle import resolve

    sessions, loaded = open_ledger()
    click.echo(resolve(sessions, loaded, delivery_id, sent=sent, now=now))
