"""The web process's one background sender: confirmation emails and lesson 1 after a confirm,
sent off the request path.

A request only writes to the database (a queued confirmation, a confirmed reader) and calls
`wake`; this thread then sends through the same functions as `drip send`
(`delivery.send_owed_confirmations`, and `delivery.send_due(only=[reader])` for lesson 1), so the
database's claims keep every email to one send however many processes are running. Woken for
confirmations only, it first waits GATHER_SECONDS so that a burst goes out in one batch. What this
thread could not send stays queued in the database: the next wake-up (at the latest every
POLL_SECONDS), `drip send` or `drip worker` sends it.

With DRIP_WEB_SENDS=queue the thread leaves the confirmation emails to `drip worker` or
`drip send` (they are all in the database already): `wake` does nothing and no wake-up looks
for owed confirmations, so a burst of signups costs the web no CPU for email. Lesson 1 after a
confirm is still sent at once (a person is waiting for it, and the page says it is coming).

One thread per process owns the mailer's transport; requests never touch it. Built lazily, on
the first request that needs it (gunicorn forks its workers after loading the app: a thread
started before the fork would not exist in the workers).
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections.abc import Callable

from flask import Flask
from sqlalchemy.exc import InterfaceError, OperationalError

from drip.db import outage_message
from drip.delivery import send_due, send_owed_confirmations
from drip.errors import DripError
from drip.web.context import EXTENSION, WebContext

log = logging.getLogger("drip.web.outbound")

POLL_SECONDS = 60.0
"""Even without a wake-up the thread looks for owed confirmations this often."""
GATHER_SECONDS = 0.05
"""After a wake-up for confirmations the thread waits this long, so that the signups of a burst
are sent as one batch: taking and settling owed confirmations costs two transactions per
batch, about 2 ms of CPU, which one email at a time would double the web's CPU per signup."""
KEY = "drip.outbound"
"""Where an app keeps its sender (`app.extensions[KEY]`)."""
_create_lock = threading.Lock()


class Outbound:
    """The background sender of one app in one process."""

    def __init__(
        self,
        context: WebContext,
        *,
        poll: float = POLL_SECONDS,
        gather: float = GATHER_SECONDS,
        confirmations: bool = True,
    ) -> None:
        self._context = context
        self._sends_confirmations = confirmations
        self._poll = poll
        self._gather = gather
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Condition(self._lock)
        self._lessons: set[int] = set()
        self._confirmations = confirmations
        self._busy = False
        self._thread = threading.Thread(target=self._run, name="drip-outbound", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """A confirmation email was queued: send what is owed (DRIP_WEB_SENDS=queue: nothing)."""
        if not self._sends_confirmations:
            return
        with self._lock:
            self._confirmations = True
        self._wake.set()

    def send_first_lesson(self, subscriber_id: int) -> None:
        """A reader confirmed and its first lesson is due: send it through the claims."""
        with self._lock:
            self._lessons.add(subscriber_id)
        self._wake.set()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is left to do (tests and benchmarks). False on timeout."""
        with self._idle:
            return self._idle.wait_for(
                lambda: not (self._busy or self._lessons or self._confirmations), timeout
            )

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the send in progress, then end the thread (at exit)."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        self._wake.set()  # look once at start: a process that died may have left some owed
        while True:
            self._wake.wait(self._poll)
            if self._stop.is_set():
                return
            with self._lock:
                hurry = bool(self._lessons)  # a reader who just confirmed waits for lesson 1
            if not hurry and self._gather > 0 and self._stop.wait(self._gather):
                return
            self._wake.clear()
            with self._lock:
                lessons = sorted(self._lessons)
                self._lessons.clear()
                self._confirmations = False
                self._busy = True
            try:
                self._send(lessons)
            finally:
                with self._idle:
                    self._busy = False
                    self._idle.notify_all()

    def _send(self, lessons: list[int]) -> None:
        context = self._context
        # Owed confirmations are looked for at every wake-up (an index probe when none are).
        if self._sends_confirmations:
            self._guarded(
                "confirmation emails",
                lambda: send_owed_confirmations(
                    context.sessions, context.mailer, now=context.now()
                ),
            )
        if lessons:
            self._guarded(
                "first lessons",
                lambda: send_due(context.sessions, context.mailer, now=context.now(), only=lessons),
            )

    @staticmethod
    def _guarded(what: str, job: Callable[[], object]) -> None:
        # A failure leaves the work in the database for the next wake-up or `drip send`.
        try:
            job()
        except (OperationalError, InterfaceError) as exc:
            log.error("%s not sent now (kept for later): %s", what, outage_message(exc))
        except DripError as exc:
            log.error("%s not sent now (kept for later): %s", what, exc)
        except Exception:
            log.exception("%s not sent now (kept for later)", what)


def outbound(app: Flask) -> Outbound:
    """The app's background sender in this process, started on first use."""
    found = app.extensions.get(KEY)
    if isinstance(found, Outbound):
        return found
    with _create_lock:
        found = app.extensions.get(KEY)
        if not isinstance(found, Outbound):
            context = app.extensions[EXTENSION]
            assert isinstance(context, WebContext)
            found = Outbound(
                context, gather=GATHER_SECONDS, confirmations=context.settings.web_sends == "now"
            )
            app.extensions[KEY] = found
            atexit.register(found.stop)
    return found
