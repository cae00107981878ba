"""`drip plan` and `drip stats`: what happened and what will."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from drip.cli.common import (
    NowType,
    SinceType,
    fail,
    now_option,
    open_ledger,
    reports_errors,
    settings,
)

if TYPE_CHECKING:
    pass


@click.command("plan")
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
    from drip import plan
    from drip.addresses import check_timezone
    from drip.errors import UsageError
    from drip.schedule import zone_named

    if whole_course == (email is not None):
        raise UsageError("give either EMAIL or --course (the schedule of a new subscriber)")
    if email is not None and (start is not None or timezone is not None):
        raise UsageError("--start and --timezone go with --course; a subscriber has their own")
    if email is None:
        from drip.course import load_course

        loaded = load_course(settings().course_dir)
        zone_name = check_timezone(timezone or loaded.settings.timezone)
        steps = plan.course_plan(loaded, zone_name, start=start or now)
        confirmed = (start or now).astimezone(zone_named(zone_name))
        header = f"a reader in {zone_name} confirming at {confirmed:%Y-%m-%d %a %H:%M} local"
    else:
        from drip.insight import subscriber_timeline

        sessions, loaded = open_ledger()
        view, steps = subscriber_timeline(sessions, loaded, email, now=now)
        zone_name = view.timezone
        header = f"{view.email} ({view.status.value}, {zone_name})"
    zone = zone_named(zone_name)
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


@click.command("stats")
@click.option(
    "--since",
    type=SinceType(),
    help="Count the lessons sent from then on (and all that was reported of them), and the"
    " signups and the readers who left from then on.",
)
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
