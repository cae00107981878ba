"""What the signup, confirm and unsubscribe pages share: the course in words, moments in the
reader's own time, the page for a link that is not valid, and the CSRF check of a view that is
exempt from the global one for some requests only."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from flask import render_template, request
from flask_wtf.csrf import CSRFError, validate_csrf
from wtforms import ValidationError  # type: ignore[import-untyped]

from drip.course import Course
from drip.schedule import zone_named

WEEKDAYS = "月火水木金土日"


@dataclass(frozen=True)
class CourseSummary:
    """What a reader gets, derived from the course (never written by hand)."""

    lessons: int
    send_time: str
    """The course's send time, "7:30"."""
    cadence: str
    """How often lessons after the first come: "毎日", "2日ごと", "1〜2日ごと"."""
    days: int
    """Days from the first lesson to the last."""
    quiet: str | None
    """"21:00〜7:00" when the course has quiet hours."""
    weekdays: str | None
    """"月・火・水・木・金" when the course sends only on some days."""


def _clock(hour: int, minute: int) -> str:
    return f"{hour}:{minute:02d}"


def course_summary(course: Course) -> CourseSummary:
    settings = course.settings
    delays = [lesson.delay_days for lesson in course.lessons[1:]]
    if not delays:
        cadence = ""
    elif min(delays) == max(delays):
        cadence = "毎日" if delays[0] <= 1 else f"{delays[0]}日ごと"
    else:
        cadence = f"{max(min(delays), 1)}〜{max(delays)}日ごと"
    quiet = None
    if settings.quiet_hours is not None:
        start, end = settings.quiet_hours
        quiet = f"{_clock(start.hour, start.minute)}〜{_clock(end.hour, end.minute)}"
    weekdays = None
    if settings.send_days is not None and len(settings.send_days) < 7:
        weekdays = "・".join(WEEKDAYS[day] for day in sorted(settings.send_days))
    return CourseSummary(
        lessons=len(course.lessons),
        send_time=_clock(settings.send_time.hour, settings.send_time.minute),
        cadence=cadence,
        days=sum(delays),
        quiet=quiet,
        weekdays=weekdays,
    )


def local_moment(at: datetime, timezone: str) -> str:
    """`at` in the reader's zone, as a Japanese reader reads it: "12月2日(水) 7:30". Raises
    `UnknownTimezoneError` when this host cannot load the zone (the page says which zone it is
    in, so it cannot fall back to another)."""
    local = at.astimezone(zone_named(timezone))
    return (
        f"{local.month}月{local.day}日({WEEKDAYS[local.weekday()]})"
        f" {_clock(local.hour, local.minute)}"
    )


def invalid_link() -> tuple[str, int]:
    """A tampered, truncated, wrong-purpose or unknown link: a friendly page, no detail."""
    return render_template("link_invalid.html"), 404


def check_csrf() -> None:
    """The global CSRF check, for a view exempt from it because some of its requests carry no
    cookie by design (RFC 8058 one-click). Raises `CSRFError` (the 400 page)."""
    try:
        validate_csrf(request.form.get("csrf_token"))
    except ValidationError as exc:
        raise CSRFError(str(exc)) from exc
