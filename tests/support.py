"""Shared test helpers: the committed course and a Mailer around any transport."""

from __future__ import annotations

from pathlib import Path

from drip.course import Course, load_course
from drip.delivery import Mailer
from drip.links import LinkBuilder
from drip.render import Renderer
from drip.transports.base import Transport

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = ROOT / "templates" / "email"
COURSE = load_course(ROOT / "course")


def make_mailer(transport: Transport, course: Course = COURSE) -> Mailer:
    """The committed templates and test links (https://drip.example.jp, one fixed key)."""
    return Mailer(
        course=course,
        renderer=Renderer(course, TEMPLATES),
        links=LinkBuilder("https://drip.example.jp", ["test-key"]),
        transport=transport,
    )
