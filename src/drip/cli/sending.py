"""`drip send`, `drip worker`, `drip serve`, `drip db` and `drip deliveries ...`."""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING

import click

from drip.cli.common import (
    ctrl_c_asks_to_stop,
    fail,
    interrupted,
    now_option,
    open_ledger,
    open_mailer,
    progress_bar,
    reports_errors,
    settings,
)

if TYPE_CHECKING:
    from drip.config import Settings
    from drip.send_report import SendReport
    from drip.store import DeliveryView


@click.command("send")
@now_option("Send what is due at this moment.")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Count what is due, per lesson; claim and send nothing. Reads the database only:"
    " 'drip course check' checks the course.",
)
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
    provider credentials, database unavailable), 2 for usage or configuration errors, 130 when
    interrupted (Ctrl-C; what went out is recorded, the rest released).
    """
    current = settings()
    # Cron's usual minute, and the dry run: answered from the database alone, without loading
    # SQLAlchemy, the course, the templates or the transport (drip.idle). When the probes
    # cannot tell (no database yet, an older schema, a URL they do not read), the full path
    # below answers, and reports any error.
    from drip.idle import due_by_lesson, nothing_to_do
    from drip.send_report import SendReport

    if dry_run:
        counts = due_by_lesson(current.database_url, current.course_dir, now)
        if counts is not None:
            _print_report(_dry_run_report(now, counts), current, as_json)
            return
    elif nothing_to_do(current.database_url, current.course_dir, now):
        _print_report(SendReport(now=now), current, as_json)
        return
    from dataclasses import replace

    from drip.delivery import send_due

    if bulk is not None:
        current = replace(current, bulk="auto" if bulk else "off")
    sessions, mailer = open_mailer(current)
    with ctrl_c_asks_to_stop() as asked, mailer.transport, progress_bar() as advance:
        report = send_due(
            sessions,
            mailer,
            now=now,
            limit=limit,
            dry_run=dry_run,
            progress=advance,
            stop_requested=asked.is_set,
        )
    _print_report(report, current, as_json)
    if asked.is_set():
        interrupted()


def _dry_run_report(now: datetime, counts: dict[str | None, int]) -> SendReport:
    """The report `send_due(..., dry_run=True)` makes, from the due counts per lesson: every
    due reader in `due`, and per lesson those whose next lesson is known."""
    from collections import Counter

    from drip.send_report import SendReport

    report = SendReport(now=now, dry_run=True, due=sum(counts.values()))
    for slug, count in counts.items():
        if slug is not None:
            report.per_lesson[slug] = Counter({"due": count})
    return report


def _print_report(report: SendReport, current: Settings, as_json: bool) -> None:
    """The run's report on stdout (words or one JSON object), its warning on stderr, and exit
    1 when it had to stop."""
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


@click.command("worker")
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


@click.command("serve")
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
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Threads per worker process: 1 runs gunicorn's sync workers (one request at a time,"
    " no keep-alive; behind a buffering proxy such as nginx), more runs gthread workers.",
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


@click.group()
def db() -> None:
    """Manage the database schema."""


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


@click.group("deliveries")
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
