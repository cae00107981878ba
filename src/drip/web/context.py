"""What every request handler needs, built once per app by `create_app` and reached through
`current()`: the settings, the course, a session factory, the mailer, and the clock."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from flask import current_app
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from drip.config import Settings
from drip.course import Course
from drip.delivery import Mailer

EXTENSION = "drip"


@dataclass(frozen=True)
class WebContext:
    settings: Settings
    course: Course
    engine: Engine
    """Disposed of by whoever disposes of the app (`close(app)`)."""
    sessions: sessionmaker[Session]
    mailer: Mailer
    clock: Callable[[], datetime]
    """Returns the current moment as an aware UTC datetime (tests pass a controlled clock)."""

    def now(self) -> datetime:
        return self.clock()


def current() -> WebContext:
    """The context of the app handling the current request."""
    context = current_app.extensions[EXTENSION]
    assert isinstance(context, WebContext)
    return context
