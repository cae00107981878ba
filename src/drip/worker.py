"""`drip worker`: an APScheduler daemon that runs the send engine every `interval` seconds.

An entry point like the CLI (it reads the clock and installs a signal handler): one send at a
time (a slow run is never overlapped; missed runs are coalesced); a failing run is logged and
retried at the next tick; a fatal provider answer (bad credentials) stops the worker.
"""

from __future__ import annotations

import logging
import signal
from datetime import UTC, datetime

from sqlalchemy.orm import Session, sessionmaker

from drip.delivery import Mailer, send_due
from drip.errors import DripError

log = logging.getLogger("drip.worker")


def run_worker(sessions: sessionmaker[Session], mailer: Mailer, *, interval: int) -> str | None:
    """Send what is due now and every `interval` seconds until SIGTERM or a fatal stop.

    Returns None after SIGTERM, or the reason a run had to stop (the caller exits 1). The
    transport is opened and closed here.
    """
    from apscheduler.schedulers.blocking import BlockingScheduler
    from apscheduler.triggers.interval import IntervalTrigger

    scheduler = BlockingScheduler(timezone=UTC)
    stopped: list[str] = []

    def run_once() -> None:
        try:
            report = send_due(sessions, mailer, now=datetime.now(UTC))
        except DripError as exc:
            log.error("send failed, trying again in %s s: %s", interval, exc)
            return
        log.info(report.summary().replace("\n", "; "))
        if report.stopped:
            stopped.append(report.stopped)
            scheduler.shutdown(wait=False)

    def stop(signum: int, frame: object) -> None:
        log.info("signal %s: stopping after the current send", signum)
        scheduler.shutdown(wait=False)

    signal.signal(signal.SIGTERM, stop)
    scheduler.add_job(
        run_once,
        IntervalTrigger(seconds=interval),
        next_run_time=datetime.now(UTC),
        max_instances=1,
        coalesce=True,
    )
    with mailer.transport:
        scheduler.start()
    return stopped[0] if stopped else None
