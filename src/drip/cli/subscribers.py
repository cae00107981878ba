"""`drip subscribe` and `drip subscribers ...`: add, import, list and change readers."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path

import click

from drip.cli.common import (
    listed,
    now_option,
    open_ledger,
    open_mailer,
    reports_errors,
    settings,
)
from drip.statuses import SubscriberStatus


@click.command("subscribe")
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


@click.group("subscribers")
def subscribers_group() -> None:
    """Import and manage subscribers."""


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
    click.echo(f"merged duplicates: {len(merged)}" + (f" ({listed(merged)})" if merged else ""))
    click.echo(f"already present: {report.present} (left as they are)")
    suppressed = [str(line) for line in report.suppressed]
    click.echo(
        f"suppressed: {len(suppressed)} (unsubscribed, bounced or complained; not re-activated)"
        + (f" on line(s) {listed(suppressed)}" if suppressed else "")
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
    change: str,
    doc: str,
    done: str,
    unchanged: str,
) -> None:
    """`drip subscribers NAME EMAIL`: one status change by address, through `change`."""

    @click.argument("email")
    @now_option()
    @reports_errors
    def command(email: str, now: datetime) -> None:
        from drip import lifecycle

        sessions, loaded = open_ledger()
        changed = getattr(lifecycle, change)(sessions, loaded, email, now=now)
        click.echo(f"{email}: {done if changed else unchanged}")

    command.__doc__ = doc + "\n\n    Exit 2 if the address is not subscribed."
    subscribers_group.command(name)(command)


def _register_status_commands() -> None:
    _status_command(
        "pause",
        "pause_subscriber",
        "Pause the reader EMAIL: nothing is sent until resumed.",
        "paused",
        "not active, nothing changed",
    )
    _status_command(
        "resume",
        "resume_subscriber",
        "Resume the paused reader EMAIL: the next lesson comes at the next send time.",
        "resumed",
        "not paused, nothing changed",
    )
    _status_command(
        "unsubscribe",
        "unsubscribe_subscriber",
        "Unsubscribe the reader EMAIL at once; it is never re-activated.",
        "unsubscribed",
        "already unsubscribed, bounced or complained",
    )


_register_status_commands()
