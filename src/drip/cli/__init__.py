"""The `drip` command line: thin click commands that parse, call one library function, report.

One module per command group (course, subscribers, sending, reports); `common` holds what they
share. Exit codes (documented in the README): 0 success (warnings allowed); 1 the job found
errors or had to stop; 2 usage or configuration error; 130 interrupted by Ctrl-C (SIGINT).
"""

from __future__ import annotations

import sys

try:
    import logging

    import click

    from drip import __version__
    from drip.cli import course, demo, reports, sending, subscribers
    from drip.cli.common import DripGroup
except KeyboardInterrupt:
    # Ctrl-C while the command line itself loads (click has not started yet): the same one line
    # and exit code as a Ctrl-C in a command (`common.interrupted`), not a traceback.
    sys.stderr.write(("\n" if sys.stderr.isatty() else "") + "error: interrupted (Ctrl-C)\n")
    raise SystemExit(130) from None  # common.INTERRUPTED, which may not be loaded yet


@click.group(cls=DripGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="drip")
def main() -> None:
    """drip: turn an article into an email course and send it on schedule.

    Settings come from DRIP_* environment variables (see the README). Exit codes: 0 success,
    1 errors found or the run had to stop, 2 usage or configuration error, 130 interrupted
    (Ctrl-C).
    """
    # Logs go to stderr; stdout carries the commands' results (and --json).
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("apscheduler", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


for command in (
    course.course,
    sending.db,
    subscribers.subscribe_command,
    subscribers.subscribers_group,
    sending.send_command,
    sending.worker_command,
    sending.serve_command,
    sending.deliveries_group,
    reports.plan_command,
    reports.stats_command,
    demo.demo_command,
):
    main.add_command(command)
