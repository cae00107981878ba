"""The `drip` command line: thin click commands that parse, call one library function, report.

Exit codes (documented in the README): 0 success (warnings allowed); 1 the job found errors or had
to stop; 2 usage or configuration error.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import ParamSpec, TypeVar

import click

from drip import __version__
from drip.build import build_course
from drip.check import check_course
from drip.config import Settings, load_settings
from drip.errors import DripError

P = ParamSpec("P")
R = TypeVar("R")


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

    return wrapper


def settings() -> Settings:
    """Settings from the process environment; a `ConfigError` is reported with exit code 2."""
    try:
        return load_settings(os.environ)
    except DripError as exc:
        fail(str(exc), exc.exit_code)
        raise AssertionError("unreachable") from exc


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="drip")
def main() -> None:
    """drip: turn an article into an email course and send it on schedule.

    Settings come from DRIP_* environment variables (see the README). Exit codes: 0 success,
    1 errors found or the run had to stop, 2 usage or configuration error.
    """


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
    report = build_course(source, settings().course_dir, force=force)
    for path in report.written:
        click.echo(f"wrote {path}")
    for path in report.unchanged:
        click.echo(f"unchanged {path}")
    if report.course_toml_written:
        click.echo(f"wrote {settings().course_dir / 'course.toml'}: edit the title and sender")


@course.command("check")
@click.argument("path", required=False, type=click.Path(file_okay=False, path_type=Path))
def check_command(path: Path | None) -> None:
    """Validate the course at PATH (default: the course directory) and the email templates.

    Prints one line per problem as FILE:LINE: error|warning: message. Exit 1 when there is any
    error, 0 when there are only warnings or nothing.
    """
    current = settings()
    problems = check_course(path or current.course_dir, current.templates_dir)
    for problem in problems:
        click.echo(str(problem))
    errors = sum(problem.error for problem in problems)
    warnings = len(problems) - errors
    click.echo(f"{errors} error(s), {warnings} warning(s)", err=True)
    sys.exit(1 if errors else 0)


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
    from datetime import UTC, datetime

    from drip.preview import write_preview

    config = settings()
    paths = write_preview(
        config.course_dir,
        config.templates_dir,
        config.base_url,
        out_dir,
        now=datetime.now(UTC),
        lesson=lesson,
    )
    for path in paths:
        click.echo(f"wrote {path}")
    click.echo(f"open {out_dir / 'index.html'} in a browser to review them")
