"""`drip plan`: a subscriber's timeline, or the schedule a new subscriber would get, with the
reason each lesson moved away from its nominal time.

Pure: the course, the subscriber's stored values and `now` come in; rows come out. The reasons
are worked out by asking `drip.schedule` the same questions the send run asks: a lesson's
nominal moment is `send_time` on the anchor's local date plus `delay_days`; it moves to the next
allowed day (weekday not in `send_days`, a public holiday) and out of quiet hours.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from drip import schedule
from drip.course import Course, CourseSettings, Lesson
from drip.statuses import SubscriberStatus

if TYPE_CHECKING:
    from drip.store.values import SubscriberView

LATE_AFTER = timedelta(minutes=15)
"""A lesson sent more than this after the moment planned from the previous send is "late"."""
_WEEKDAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


@dataclass(frozen=True)
class Step:
    """One lesson on a timeline. `state`: sent, due, planned, paused, held, pending, stopped."""

    number: int
    lesson: str
    subject: str
    state: str
    at: datetime | None
    """UTC: when it was sent, or when it may go out; None when nothing can be said."""
    reasons: tuple[str, ...] = ()

    def as_dict(self, zone: ZoneInfo) -> dict[str, Any]:
        return {
            "number": self.number,
            "lesson": self.lesson,
            "state": self.state,
            "at_utc": self.at.isoformat() if self.at else None,
            "at_local": self.at.astimezone(zone).isoformat() if self.at else None,
            "reasons": list(self.reasons),
        }


def _days_off(settings: CourseSettings, start: date, end: date) -> list[str]:
    """Why each day from `start` up to (not including) `end` was passed over."""
    why = []
    day = start
    while day < end:
        if settings.send_days is not None and day.weekday() not in settings.send_days:
            why.append(f"{day.isoformat()} ({_WEEKDAY_NAMES[day.weekday()]}) is not a send day")
        elif settings.skip_holidays is not None:
            import holidays  # only a course with skip_holidays needs it (drip.schedule)

            name = holidays.country_holidays(settings.skip_holidays, years=day.year).get(day)
            if name:
                why.append(f"{day.isoformat()} is a holiday ({name})")
        day += timedelta(days=1)
    return why


def explain(
    course: Course,
    zone: ZoneInfo,
    lesson: Lesson,
    *,
    anchor: datetime,
    first: bool,
    at: datetime,
    send_time: time | None = None,
) -> tuple[str, ...]:
    """Why `lesson`, anchored on `anchor` (confirmation, or the previous send), goes out at `at`
    rather than at its nominal moment (`send_time`: the reader's own, else the course's)."""
    settings = course.settings
    reasons: list[str] = []
    if first and lesson.delay_days == 0:
        nominal = anchor
    else:
        day = anchor.astimezone(zone).date() + timedelta(days=lesson.delay_days)
        allowed = _next_allowed_day(settings, day)
        reasons.extend(_days_off(settings, day, allowed))
        nominal = schedule.local_send_moment(zone, allowed, send_time or settings.send_time)
        if nominal <= anchor:
            nominal = anchor + timedelta(seconds=1)
    if at > nominal and schedule.is_quiet(settings, zone, nominal):
        assert settings.quiet_hours is not None
        start, end = settings.quiet_hours
        reasons.append(f"quiet hours ({start:%H:%M}-{end:%H:%M}, reader-local)")
    if at > nominal and not reasons:
        reasons.append("moved to the next moment outside quiet hours on a send day")
    return tuple(reasons)


def _next_allowed_day(settings: CourseSettings, day: date) -> date:
    """The first day on or after `day` on which lessons may go out (as `drip.schedule` sees it;
    the settings were checked, so one comes within the year)."""
    for _ in range(366):
        if schedule.is_allowed_day(settings, day):
            return day
        day += timedelta(days=1)
    return day


def course_plan(course: Course, timezone: str, *, start: datetime) -> list[Step]:
    """The schedule of a reader in `timezone` who confirms at `start`, each lesson sent on time."""
    zone = schedule.zone_named(timezone)
    steps: list[Step] = []
    previous: datetime | None = None
    for lesson in course.lessons:
        at = schedule.next_send_at(
            course.settings, zone, lesson, previous_sent_at=previous, confirmed_at=start
        )
        anchor = previous or start
        reasons = explain(course, zone, lesson, anchor=anchor, first=previous is None, at=at)
        steps.append(Step(lesson.number, lesson.slug, lesson.subject, "planned", at, reasons))
        previous = at
    return steps


def _project(
    course: Course,
    zone: ZoneInfo,
    lessons: list[Lesson],
    start_at: datetime,
    send_time: time | None = None,
) -> list[Step]:
    """The lessons after one going out at `start_at`, each sent on time."""
    steps = []
    previous = start_at
    for lesson in lessons:
        at = schedule.next_send_at(
            course.settings,
            zone,
            lesson,
            previous_sent_at=previous,
            confirmed_at=previous,
            send_time=send_time,
        )
        reasons = explain(
            course, zone, lesson, anchor=previous, first=False, at=at, send_time=send_time
        )
        steps.append(Step(lesson.number, lesson.slug, lesson.subject, "planned", at, reasons))
        previous = at
    return steps


def subscriber_plan(
    course: Course, subscriber: SubscriberView, sent: Mapping[str, datetime], *, now: datetime
) -> list[Step]:
    """The timeline of `subscriber`: lessons sent (from the ledger, `sent`: slug -> sent at),
    the next one and when, and the rest as they would go if each is sent on time."""
    zone = schedule.zone_named(subscriber.timezone)
    own = schedule.parse_send_time(subscriber.send_time)
    steps: list[Step] = []
    previous: datetime | None = None
    waiting: list[Lesson] = []
    for lesson in course.lessons:
        if lesson.slug in sent:
            at = sent[lesson.slug]
            steps.append(
                Step(
                    lesson.number,
                    lesson.slug,
                    lesson.subject,
                    "sent",
                    at,
                    _late(course, zone, lesson, previous, subscriber.confirmed_at, at, own),
                )
            )
            previous = at
        else:
            waiting.append(lesson)
    if not waiting:
        return steps
    status = subscriber.status
    nxt, rest = waiting[0], waiting[1:]
    if status is SubscriberStatus.ACTIVE and subscriber.next_send_at is not None:
        at = subscriber.next_send_at
        reasons: tuple[str, ...] = ()
        if previous is not None:
            reasons = explain(course, zone, nxt, anchor=previous, first=False, at=at, send_time=own)
        if at <= now:
            reasons = (*reasons, "due now: the next `drip send` sends it")
        steps.append(Step(nxt.number, nxt.slug, nxt.subject, "due", at, reasons))
        steps.extend(_project(course, zone, rest, max(at, now), own))
        return steps
    if status is SubscriberStatus.PENDING:
        first = schedule.next_send_at(
            course.settings, zone, nxt, previous_sent_at=previous, confirmed_at=now, send_time=own
        )
        unconfirmed = ("waiting for the reader to confirm; shown as if confirmed now",)
        steps.append(Step(nxt.number, nxt.slug, nxt.subject, "pending", first, unconfirmed))
        steps.extend(_project(course, zone, rest, first, own))
        return steps
    state, why = _stopped(subscriber)
    steps.extend(
        Step(lesson.number, lesson.slug, lesson.subject, state, None, why) for lesson in waiting
    )
    return steps


def _stopped(subscriber: SubscriberView) -> tuple[str, tuple[str, ...]]:
    status = subscriber.status
    if status is SubscriberStatus.PAUSED:
        until = subscriber.paused_until
        paused = f"paused until {until.isoformat()}" if until else "paused until the reader resumes"
        if subscriber.is_held:  # its next lesson failed or is in doubt: a resume will not move it
            return "paused", (
                paused,
                f"held: {subscriber.held_reason or 'waiting on the operator'}"
                " (`drip deliveries retry` or `resolve` moves it on)",
            )
        return "paused", (paused,)
    if status is SubscriberStatus.ACTIVE:  # active, next lesson, no time: held
        return "held", (f"held: {subscriber.held_reason or 'waiting on the operator'}",)
    return "stopped", (f"{status.value}: no further lessons",)


def _late(
    course: Course,
    zone: ZoneInfo,
    lesson: Lesson,
    previous: datetime | None,
    confirmed_at: datetime | None,
    sent_at: datetime,
    send_time: time | None,
) -> tuple[str, ...]:
    """Why a sent lesson went out later than planned from the previous send, if it did."""
    if confirmed_at is None:
        return ()
    planned = schedule.next_send_at(
        course.settings,
        zone,
        lesson,
        previous_sent_at=previous,
        confirmed_at=confirmed_at,
        send_time=send_time,
    )
    late = sent_at - planned
    if late <= LATE_AFTER:
        return ()
    hours, rest = divmod(int(late.total_seconds()) // 60, 60)
    return (
        f"sent {hours} h {rest} min after {planned.isoformat()} (a pause, a held delivery or"
        " a late run)",
    )
