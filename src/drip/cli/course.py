"""`drip course ...`: build, check, preview and test-send the course; apply a change of it to the
readers."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from drip.cli.common import (
    INTERRUPTED,
    clock,
    fail,
    now_option,
    open_ledger,
    reports_errors,
    settings,
)

if TYPE_CHECKING:
    from datetime import datetime


@click.group()
def course() -> None:
    """Build, check and preview the course in course/."""


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
@now_option("Tell who a change affects as if it were this moment.")
@reports_errors
def check_command(path: Path | None, now: datetime) -> None:
    """Validate the course at PATH (default: the course directory) and the email templates.

    Prints one line per problem as FILE:LINE: error|warning: message. With a database that has
    readers, then says who a change of the course affects and what 'drip course apply' would do
    (that section never changes the exit code). Exit 1 when there is any error, 0 when there are
    only warnings or nothing.
    """
    from drip.check import check_course

    current = settings()
    problems = check_course(path or current.course_dir, current.templates_dir)
    for problem in problems:
        click.echo(str(problem))
    _check_readers(path or current.course_dir, now)
    errors = sum(problem.error for problem in problems)
    warnings = len(problems) - errors
    click.echo(f"{errors} error(s), {warnings} warning(s)", err=True)
    sys.exit(1 if errors else 0)


def _check_readers(course_dir: Path, now: datetime) -> None:
    """The readers section of `drip course check`: who a change of the course at `course_dir`
    affects (`drip.reschedule`). Nothing is printed without a database or readers; a course
    that does not load, or a database that cannot be read, is one note on stderr, and neither
    changes the exit code (the problems above decide it)."""
    from sqlalchemy.exc import InterfaceError, OperationalError
    from sqlalchemy.orm import sessionmaker

    from drip import reschedule
    from drip.course import load_course
    from drip.db import open_database, outage_message
    from drip.errors import DripError

    current = settings()
    if current.uses_embedded_database and not Path("drip.db").exists():
        return  # no database yet: nobody to affect (and check must not create one)
    try:
        loaded = load_course(course_dir)
        engine = open_database(current.database_url, auto_upgrade=False)
    except DripError as exc:
        click.echo(f"readers not checked: {exc}", err=True)
        return
    except (OperationalError, InterfaceError) as exc:
        click.echo(f"readers not checked: {outage_message(exc)}", err=True)
        return
    try:
        report = reschedule.survey(sessionmaker(engine), loaded, now=now)
    except (OperationalError, InterfaceError) as exc:
        click.echo(f"readers not checked: {outage_message(exc)}", err=True)
        return
    finally:
        engine.dispose()
    if report.readers or report.unknown_sent:
        click.echo("")
        for line in reschedule.report_lines(report, reschedule.Mode.CHECK):
            click.echo(line)


@course.command("apply")
@click.option("--dry-run", is_flag=True, help="Print what would change; write nothing.")
@now_option("Reschedule as if it were this moment.")
@reports_errors
def apply_command(dry_run: bool, now: datetime) -> None:
    """Move the readers to the course on disk after it changed under them.

    Readers waiting for a removed lesson move to the next lesson after their last one (or
    complete), readers whose next lesson they already had move on, and every waiting reader's
    due time becomes the schedule's moment under the current settings. Claims of a running
    'drip send' are not touched; a lesson is never sent twice. Safe to run again. A course
    'drip course check' finds errors in is refused (exit 2, nothing changed).
    """
    from drip.reschedule import Mode, apply_course, report_lines

    sessions, loaded = open_ledger()
    report = apply_course(sessions, loaded, settings().templates_dir, now=now, dry_run=dry_run)
    for line in report_lines(report, Mode.DRY_RUN if dry_run else Mode.APPLY):
        click.echo(line)
    if report.interrupted:  # the report's last line said so
        sys.exit(INTERRUPTED)


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
        now=clock(),
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
    subject, result = send_test(mailer, lesson, to=to, name=name, now=clock())
    if result.outcome is not Outcome.SENT:
        fail(f"the test email was not sent ({result.outcome.value}): {result.detail}", 1)
    where = f" (provider id {result.provider_id})" if result.provider_id else ""
    click.echo(f"sent {subject!r} to {to} through {current.transport}{where}")
