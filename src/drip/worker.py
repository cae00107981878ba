"""`drip worker`: an APScheduler daemon that runs the send engine every `interval` seconds.

An entry point like the CLI (it reads the clock and installs signal handlers): one send at a
time (a slow run is never overlapped; missed runs are coalesced); a failing run is logged in one
line and retried at the next tick; a fatal provider answer (bad credentials) stops the worker.
SIGTERM or SIGINT stops it cleanly: the running send hands nothing more over, records what is with
the provider and releases the rest, and only then is the transport closed.
"""

from __future__ import annotations

import logging
import signal
import threading
from datetime import UTC, datetime

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from drip.db import outage_message
from drip.delivery import Mailer, send_due
from drip.errors import DripError

log = logging.getLogger("drip.worker")


def run_worker(sessions: sessionmaker[Session], mailer: Mailer, *, interval: int) -> str | None:
    """Send what is due now and every `interval` seconds until SIGTERM/SIGINT or a fatal stop.

    Returns None after a signal, or the reason a run had to stop (the caller exits 1). The
    transport is opened here and closed only after the last send has finished.
    """
    from apscheduler.schedulers.blocking import BlockingScheduler
    from apscheduler.triggers.interval import IntervalTrigger

    scheduler = BlockingScheduler(timezone=UTC)
    stopping = threading.Event()
    sending = threading.Lock()  # held by a running send; the transport closes after it
    stopped: list[str] = []

    def run_once() -> None:
        with sending:
            if stopping.is_set():
                return
            try:
                report = send_due(
                    sessions, mailer, now=datetime.now(UTC), stop_requested=stopping.is_set
                )
            except DripError as exc:
                log.error("send failed, trying again in %s s: %s", interval, exc)
                return
            except (OperationalError, InterfaceError) as exc:
                log.error("send failed, trying again in %s s: %s", interval, outage_message(exc))
                return
        log.info(report.summary().replace("\n", "; "))
        if report.stopped:
            stopped.append(report.stopped)
            scheduler.shutdown(wait=False)

    def stop(signum: int, frame: object) -> None:
        log.info("%s: stopping after the current send", signal.Signals(signum).name)
        stopping.set()
        scheduler.shutdown(wait=False)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    scheduler.add_job(
        run_once,
        IntervalTrigger(seconds=interval),
        next_run_time=datetime.now(UTC),
        max_instances=1,
        coalesce=True,
    )
    with mailer.transport:
        scheduler.start()
        with sending:  # the send running when the signal came has finished
            pass
    return stopped[0] if stopped else None
