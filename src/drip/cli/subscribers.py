"""`drip subscribe` and `drip subscribers ...`: add, import, list and change readers."""

from __future__ import annotations

import csv
import io
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from drip.cli.common import (
    interrupted,
    listed,
    now_option,
    open_ledger,
    open_mailer,
    progress_bar,
    reports_errors,
    settings,
)
from drip.statuses import SubscriberStatus

if TYPE_CHECKING:
    from zoneinfo import ZoneInfo

    from drip.importer import ImportReport
    from drip.plan import Step
    from drip.store.admin import ReaderEvent
    from drip.store.values import SubscriberView


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
    handled = 0
    with progress_bar(f"importing {file.name}") as bar:

        def advance(count: int) -> None:
            nonlocal handled
            handled += count
            if bar is not None:
                bar(count)

        try:
            report = import_subscribers(
                sessions,
                loaded,
                file,
                now=now,
                confirmed=confirmed,
                dry_run=dry_run,
                progress=advance,
            )
        except KeyboardInterrupt:
            # Each batch is its own transaction: the ones done stay, the one under way does not.
            done = (
                "nothing was written" if dry_run else f"the first {handled:,} row(s) stay imported"
            )
            interrupted(
                f"interrupted: {done}; run the same import again to finish (rows already there"
                " are left alone)"
            )
            raise AssertionError("unreachable") from None

    if report.ignored_columns:
        ignored = ", ".join(repr(name) for name in report.ignored_columns)
        click.echo(
            f"warning: ignored column(s) {ignored}: only email, name, timezone and status are"
            " imported",
            err=True,
        )
    if _stdout_is_terminal():
        _print_import_table(report, file=file, confirmed=confirmed, dry_run=dry_run)
    else:
        _print_import_lines(report, confirmed=confirmed, dry_run=dry_run)
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


def _stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


def _print_import_lines(report: ImportReport, *, confirmed: bool, dry_run: bool) -> None:
    """The import's summary as plain lines (not a terminal: scripts parse these)."""
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
    for status, count in sorted(report.kept.items()):
        click.echo(f"kept as {status}: {count} (the file's status column)")
    click.echo(f"invalid: {len(report.invalid)}")


def import_table_rows(
    report: ImportReport, *, confirmed: bool, dry_run: bool
) -> list[tuple[str, int, str]]:
    """The import's summary as (what, how many, detail) rows, for the terminal's table."""
    would = "would be " if dry_run else ""
    merged = [f"line {line} = line {first_line}" for line, first_line in report.merged]
    suppressed = [str(line) for line in report.suppressed]
    rows = [
        ("rows read", report.rows, "dry run: nothing written" if dry_run else ""),
        (
            "imported",
            report.imported,
            would + ("active, first lesson scheduled" if confirmed else "pending"),
        ),
    ]
    if confirmed:
        rows.append(("confirmed", report.confirmed, f"pending readers {would}confirmed"))
    rows += [
        ("merged duplicates", len(merged), listed(merged)),
        ("already present", report.present, "left as they are"),
        (
            "suppressed",
            len(suppressed),
            "not re-activated" + (f": line(s) {listed(suppressed)}" if suppressed else ""),
        ),
    ]
    rows += [
        (f"kept as {status}", count, "the file's status column")
        for status, count in sorted(report.kept.items())
    ]
    rows.append(("invalid", len(report.invalid), "listed below" if report.invalid else ""))
    return rows


def _print_import_table(
    report: ImportReport, *, file: Path, confirmed: bool, dry_run: bool
) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"import of {file.name}", title_justify="left")
    table.add_column("")
    table.add_column("readers", justify="right")
    table.add_column("")
    for what, count, detail in import_table_rows(report, confirmed=confirmed, dry_run=dry_run):
        table.add_row(what, f"{count:,}", detail)
    Console().print(table)


@subscribers_group.command("list")
@click.option(
    "--status",
    type=click.Choice([status.value for status in SubscriberStatus]),
    help="Only subscribers in this state.",
)
@click.option(
    "--held",
    is_flag=True,
    help="Only the held ones, waiting on the operator (the reason is shown): active with no"
    " moment to send, or paused with the next lesson failed or in doubt.",
)
@click.option(
    "--lesson", metavar="SLUG", help="Only subscribers whose next lesson is this (slug or number)."
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@reports_errors
def subscribers_list_command(
    status: str | None, held: bool, lesson: str | None, as_json: bool
) -> None:
    """List the course's subscribers: address, state, next lesson and when (UTC), and for a
    held subscriber why it waits (a failed or in-doubt delivery, a lesson removed from the
    course, a timezone this host cannot load). Streamed, so it works at any size."""
    from drip.lifecycle import list_subscribers

    sessions, loaded = open_ledger()
    chosen = SubscriberStatus(status) if status else None
    shown = 0
    for view in list_subscribers(sessions, loaded, status=chosen, held=held, lesson=lesson):
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
    """`drip subscribers NAME EMAIL`: one status change by address, through the `drip.lifecycle`
    function named `change` (imported when the command runs: start-up stays short)."""

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


@subscribers_group.command("pause")
@click.argument("email")
@click.option(
    "--until",
    metavar="DATE",
    help="End the pause then: a date (the start of that day in the reader's timezone) or an"
    " ISO date-time with a UTC offset. Default: until resumed.",
)
@now_option()
@reports_errors
def subscribers_pause_command(email: str, until: str | None, now: datetime) -> None:
    """Pause the reader EMAIL: nothing is sent until resumed, or until --until (then the next
    `drip send` resumes it and the next lesson comes at the reader's next send time).

    Exit 2 if the address is not subscribed or --until is not a future date.
    """
    from drip.lifecycle import find_subscriber, pause_subscriber

    sessions, loaded = open_ledger()
    if not pause_subscriber(sessions, loaded, email, now=now, until=until):
        click.echo(f"{email}: not active, nothing changed")
        return
    view = find_subscriber(sessions, loaded, email)
    end = view.paused_until
    click.echo(f"{email}: paused" + (f" until {_both(end, _zone(view.timezone))}" if end else ""))


@subscribers_group.command("confirm")
@click.argument("email")
@now_option()
@reports_errors
def subscribers_confirm_command(email: str, now: datetime) -> None:
    """Confirm the pending reader EMAIL on your word: you obtained their consent elsewhere (in
    person, on paper, another system), not through the confirmation link. The consent is
    recorded as given now with source 'cli' (as `drip subscribe --confirmed`), no confirmation
    email is sent and the course starts.

    Exit 2 for an unknown address, or one that unsubscribed, bounced or complained.
    """
    from drip.lifecycle import CLI_CONSENT_SOURCE, OperatorConfirmed, confirm_subscriber

    sessions, loaded = open_ledger()
    outcome, first_at = confirm_subscriber(sessions, loaded, email, now=now)
    if outcome is OperatorConfirmed.ALREADY:
        click.echo(f"{email}: already confirmed, nothing changed")
        return
    click.echo(
        f"{email}: confirmed on your word: consent obtained elsewhere is recorded (source"
        f" {CLI_CONSENT_SOURCE!r}, {now.isoformat()}); no confirmation email is sent"
    )
    if first_at is not None:
        click.echo(f"lesson 1 goes out at {first_at.isoformat()} (UTC) or the first run after")


@subscribers_group.command("resend-confirmation")
@click.argument("email")
@now_option()
@reports_errors
def subscribers_resend_confirmation_command(email: str, now: datetime) -> None:
    """Send the pending reader EMAIL a new confirmation (double opt-in) email, through the same
    queue and sender as the signup form (other confirmations the queue owes go out with it);
    at most one a day per address.

    Exit 2 for an unknown address, a reader who is not pending, or one who got a confirmation
    email less than 24 hours ago; 1 when the transport cannot send (bad credentials).
    """
    from drip.lifecycle import resend_confirmation

    sessions, mailer = open_mailer(settings())
    with mailer.transport:
        sent = resend_confirmation(sessions, mailer, email, now=now)
    if sent:
        click.echo(f"{email}: confirmation email sent ({mailer.transport.name})")
    else:
        click.echo(
            f"{email}: confirmation email queued, not sent now; the next 'drip send' or"
            " 'drip worker' run sends it"
        )


@subscribers_group.command("forget")
@click.argument("email")
@click.option("--yes", is_flag=True, help="Do not ask first (needed when not on a terminal).")
@now_option()
@reports_errors
def subscribers_forget_command(email: str, yes: bool, now: datetime) -> None:
    """Erase EMAIL at the person's request (GDPR Art. 17), as the manage page's "erase me":
    every enrolment of the address (all courses), its deliveries and provider events are
    deleted; only the SHA-256 of the address is kept, so a signup, `drip subscribe` or an
    import of it is refused from then on. Cannot be undone. Asks first unless --yes.

    Exit 2 for an address that is not subscribed (and was not erased before).
    """
    from drip.errors import UsageError
    from drip.lifecycle import forget

    if not yes:
        if not sys.stdin.isatty():
            raise UsageError("forget deletes for good: add --yes when not run from a terminal")
        click.confirm(
            f"Erase {email} and everything stored about it (all courses)? This cannot be undone",
            abort=True,
        )
    sessions, loaded = open_ledger()
    if forget(sessions, loaded, email, now=now):
        click.echo(f"{email}: erased; only its hash is kept, so it is never mailed or imported")
    else:
        click.echo(f"{email}: already erased, nothing to do")


@subscribers_group.command("export")
@click.option(
    "--status",
    type=click.Choice([status.value for status in SubscriberStatus]),
    help="Only subscribers in this state.",
)
@reports_errors
def subscribers_export_command(status: str | None) -> None:
    """Write the course's subscribers to stdout as CSV (UTF-8 with BOM, as Excel's "CSV UTF-8"):
    email, name, timezone, status, created_at, confirmed_at, consent_at, consent_source.
    `drip subscribers import` reads it back without warnings. Streamed, so it works at any size.
    """

    from drip.importer import EXPORT_COLUMNS, export_row
    from drip.lifecycle import list_subscribers

    sessions, loaded = open_ledger()
    chosen = SubscriberStatus(status) if status else None
    # UTF-8 whatever the locale says; newline="" as the csv module wants (rows end in CRLF).
    out = io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", newline="")
    writer = csv.writer(out)
    try:
        out.write("\ufeff")
        writer.writerow(EXPORT_COLUMNS)
        for view in list_subscribers(sessions, loaded, status=chosen):
            writer.writerow(export_row(view))
        out.flush()
        out.detach()  # leave stdout open for click
    except BrokenPipeError:
        # `export | head`: the reader went away; say nothing more on a closed pipe.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


@subscribers_group.command("show")
@click.argument("email")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@now_option("Show the reader as of this moment.")
@reports_errors
def subscribers_show_command(email: str, as_json: bool, now: datetime) -> None:
    """Everything about the reader EMAIL: state, consent, timezone and send time, each lesson
    with when it was sent (or will be) and the provider events about it, and the next lesson
    and when, reader-local and UTC.

    Exit 2 for an unknown address.
    """
    from drip.insight import subscriber_timeline
    from drip.lifecycle import find_subscriber, reader_events

    sessions, loaded = open_ledger()
    view = find_subscriber(sessions, loaded, email)
    zone = _zone(view.timezone)
    # `drip plan`'s timeline; none for a zone this host cannot load (the reader is held).
    steps = [] if zone is None else subscriber_timeline(sessions, loaded, email, now=now)[1]
    events = reader_events(sessions, view.id)
    course_time = f"{loaded.settings.send_time:%H:%M}"
    if as_json:
        click.echo(
            json.dumps(_show_document(view, steps, events, zone, course_time), ensure_ascii=False)
        )
        return
    click.echo(f"{view.email}" + (f" ({view.name})" if view.name else ""))
    state = view.status.value + (" (held)" if view.is_held else "")
    click.echo(f"state:     {state} since {_utc(view.status_changed_at)}")
    if view.is_held:
        click.echo(f"held:      {view.held_reason or 'no reason recorded'}")
    if view.paused_until is not None:
        click.echo(f"paused:    until {_both(view.paused_until, zone)}")
    confirmed = _utc(view.confirmed_at) if view.confirmed_at else "not yet"
    click.echo(f"signed up: {_utc(view.created_at)}; confirmed: {confirmed}")
    click.echo(f"consent:   {view.consent_source}, {_utc(view.consent_at)}")
    send_time = (
        f"{view.send_time} (the reader's)" if view.send_time else f"{course_time} (the course's)"
    )
    click.echo(f"timezone:  {view.timezone}; lessons after the first at {send_time}")
    upcoming = next((step for step in steps if step.state in ("due", "pending")), None)
    if upcoming is not None and upcoming.at is not None:
        click.echo(f"next:      {upcoming.number} {upcoming.lesson}, {_both(upcoming.at, zone)}")
    else:
        click.echo("next:      none")
    by_lesson: dict[str | None, list[str]] = {}
    for event in events:
        by_lesson.setdefault(event.lesson, []).append(f"{event.type} {_utc(event.occurred_at)}")
    if zone is None:
        click.echo(f"lessons:   not planned: timezone {view.timezone!r} cannot be loaded here")
    else:
        click.echo("lessons:")
    for step in steps:
        when = "-"
        if step.at is not None:
            when = f"{step.at.astimezone(zone):%Y-%m-%d %a %H:%M} local  {_utc(step.at)}"
        click.echo(f"{step.number:>3} {step.lesson:<20} {step.state:<8} {when}")
        for reason in step.reasons:
            click.echo(f"      - {reason}")
        if by_lesson.get(step.lesson):
            click.echo(f"      events: {', '.join(by_lesson.pop(step.lesson))}")
    for lesson, found in by_lesson.items():  # mail that is not a lesson of the timeline
        click.echo(f"{'other mail' if lesson is None else lesson}: {', '.join(found)}")


def _show_document(
    view: SubscriberView,
    steps: list[Step],
    events: list[ReaderEvent],
    zone: ZoneInfo | None,
    course_time: str,
) -> dict[str, object]:
    """`drip subscribers show --json`: the reader, its lessons with their events, other mail."""

    def about(lesson: str | None) -> list[dict[str, str]]:
        return [
            {"type": e.type, "at_utc": e.occurred_at.isoformat()}
            for e in events
            if e.lesson == lesson
        ]

    lessons = (
        []
        if zone is None
        else [{**step.as_dict(zone), "events": about(step.lesson)} for step in steps]
    )
    return {
        **view.as_dict(),
        "created_at": view.created_at.isoformat(),
        "confirmed_at": view.confirmed_at.isoformat() if view.confirmed_at else None,
        "consent_at": view.consent_at.isoformat(),
        "consent_source": view.consent_source,
        "send_time": view.send_time or course_time,
        "paused_until": view.paused_until.isoformat() if view.paused_until else None,
        "lessons": lessons,
        "other_events": about(None),
    }


def _utc(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M} UTC"


def _zone(name: str) -> ZoneInfo | None:
    """The reader's zone; None when this host cannot load it."""
    from zoneinfo import ZoneInfo

    try:
        return ZoneInfo(name)
    except (KeyError, ValueError):  # ZoneInfoNotFoundError is a KeyError
        return None


def _both(moment: datetime, zone: ZoneInfo | None) -> str:
    """A moment reader-local and UTC (UTC alone when the reader's zone cannot be loaded)."""
    if zone is None:
        return _utc(moment)
    return f"{moment.astimezone(zone):%Y-%m-%d %a %H:%M} {zone.key} ({_utc(moment)})"
