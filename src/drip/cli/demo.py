"""`drip demo`: the whole pipeline on sample readers, in a folder of its own (`drip.demo`)."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import click

from drip.cli.common import now_option, reports_errors, settings


@click.command("demo")
@click.argument("folder", metavar="[DIR]", required=False, type=click.Path(path_type=Path))
@now_option("When the sample readers sign up; the course is replayed from then on.")
@reports_errors
def demo_command(folder: Path | None, now: datetime) -> None:
    """Show the whole pipeline in a few seconds, in DIR (default: a new temporary folder).

    Six sample readers in six timezones sign up and confirm through the web app's own pages,
    then the course is replayed to its end with `drip send` at each moment a lesson is due; one
    reader pauses for a week on the manage page, one unsubscribes with one click. Prints what
    was sent to whom and when (reader-local and UTC), and writes the `drip stats --html` page
    and an index.html gallery of every email sent. The demo has its own database, outbox and
    signing key in DIR; yours are never touched. A DIR that is not empty must be a
    previous demo's, whose files are then replaced.
    """
    from drip import demo

    started = time.monotonic()
    configured = settings()
    demo.check_inputs(configured, start=now)  # a wrong directory is said before any folder is made
    target = demo.prepare_folder(folder)
    result = demo.run_demo(configured, target, start=now)
    click.echo(demo.summary(result))
    click.echo(f"finished in {time.monotonic() - started:.1f} s")
