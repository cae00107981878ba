"""Assembling drip from `Settings`: the course, the database and the mailer, for the entry points
(the CLI, the worker, the web app) so that each builds them the same way."""

from __future__ import annotations

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from drip.config import Settings, signing_keys
from drip.course import Course, load_course
from drip.db import open_database
from drip.delivery import Mailer, check_sendable
from drip.links import LinkBuilder
from drip.render import Renderer
from drip.transports import make_transport


def open_ledger(settings: Settings) -> tuple[Engine, sessionmaker[Session], Course]:
    """The course and a session factory on its database (the embedded default auto-upgrades).

    The course is loaded first: run from the wrong directory, the error names that before any
    database file is created. The caller disposes of the engine.
    """
    course = load_course(settings.course_dir)
    engine = open_database(settings.database_url, auto_upgrade=settings.uses_embedded_database)
    return engine, sessionmaker(engine, expire_on_commit=False), course


def make_mailer(settings: Settings, course: Course) -> Mailer:
    """The mailer of `course` with the configured transport (not opened yet).

    Raises `ConfigError` for missing keys or transport settings and `CourseNotSendableError` for
    a course the pre-send check rejects, so both surface before any claim is made.
    """
    keys = signing_keys(settings)
    mailer = Mailer(
        course=course,
        renderer=Renderer(course, settings.templates_dir),
        links=LinkBuilder(settings.base_url, keys),
        transport=make_transport(settings),
        from_override=settings.from_address,
    )
    check_sendable(mailer)
    return mailer
