"""When may a subscriber's next lesson go out? Pure functions of course settings, a zone and times.

No clock, no environment, no database: every moment is passed in as an aware datetime (naive ones
raise `ValueError`) and every moment returned is an aware UTC datetime.

The rules (issue "Subscribers, schedule and drip send"):

1. The first lesson (delay_days 0) is due at confirmation, whatever the hour.
2. Lesson k > 1 is due at `send_time`, subscriber-local, on the local date of the *actual* send of
   lesson k-1 plus its `delay_days`, moved forward to the next allowed day (`send_days`, holidays).
   A delay of 0 means that same local day at `send_time`, or right away if that has passed.
3. Nothing goes out inside quiet hours (subscriber-local); a lesson due then waits for their end.
   Lessons after the first also never go out on a day that is not allowed.
4. On resume after a pause the next lesson is due at the next `send_time` after the resume.
5. A local time that does not exist (DST gap) means the first instant after the gap; one that
   occurs twice (DST overlap) means its first occurrence.

Every caller asks this module what comes next, through three functions: `first_send_at` (on
confirmation or a confirmed import), `after_send` (after a lesson went out, or was settled as sent)
and `after_resume` (at the end of a pause). The send run selects subscribers whose stored
`next_send_at <= now` and checks `may_send_at(settings, tz, now, first_lesson=...)` before
sending; a run that is late (cron was down) may land in quiet hours or on a day off, and then the
row is rescheduled to `earliest_send_at(settings, tz, now, first_lesson=...)` instead.

One lesson per run: after a send at `now`, `after_send` is always strictly later than `now` (the
floor in `lesson_due_at`, the only place this is enforced), so one run never sends two lessons.
"""

from __future__ import annotations

import functools
from collections.abc import Collection
from datetime import UTC, date, datetime, time, timedelta
from typing import NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from drip.course import Course, CourseSettings, Lesson
from drip.errors import ConfigError, UnknownTimezoneError
from drip.years import MAX_YEAR, MIN_YEAR

__all__ = [
    "MAX_YEAR",
    "MIN_YEAR",
    "Next",
    "after_resume",
    "after_send",
    "earliest_send_at",
    "first_send_at",
    "is_allowed_day",
    "is_quiet",
    "lesson_due_at",
    "local_send_moment",
    "may_send_at",
    "next_send_at",
    "parse_send_time",
    "quiet_send_time",
    "rescheduled_at",
    "resume_send_at",
    "zone_named",
]

_ONE_DAY = timedelta(days=1)
_ONE_SECOND = timedelta(seconds=1)
_MIDNIGHT = time(0, 0)
# Longest run of disallowed days we search through before calling the settings unusable: more
# than any real combination of send_days and holidays, small enough to fail fast on a bad one.
_MAX_SEARCH_DAYS = 400
# earliest_send_at alternates "skip to an allowed day" and "skip past quiet hours"; each step
# moves forward, and a real course settles in two or three.
_MAX_STEPS = 2 * _MAX_SEARCH_DAYS


Zone = ZoneInfo | str


def _utc(moment: datetime, name: str) -> datetime:
    """`moment` as UTC; naive datetimes are refused because their meaning is a guess."""
    tzinfo = moment.tzinfo
    if tzinfo is UTC:
        return moment
    if tzinfo is None or tzinfo.utcoffset(moment) is None:
        raise ValueError(
            f"{name}={moment.isoformat()} is a naive datetime; pass an aware one"
            " (e.g. datetime.now(UTC) or .replace(tzinfo=UTC))"
        )
    return moment.astimezone(UTC)


@functools.lru_cache(maxsize=512)
def zone_named(key: str) -> ZoneInfo:
    """The zone `key` names; `UnknownTimezoneError` (exit 2, one line) when this host cannot
    load it (a name edited in by hand, tzdata missing), never a bare ZoneInfoNotFoundError."""
    try:
        return ZoneInfo(key)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise UnknownTimezoneError(key) from exc


def _zone(tz: Zone) -> ZoneInfo:
    return tz if isinstance(tz, ZoneInfo) else zone_named(tz)


@functools.lru_cache(maxsize=256)
def _holiday_dates(country: str, year: int) -> frozenset[date]:
    """The public holidays of `country` in `year`; cached because `is_allowed_day` is hot."""
    import holidays  # here, not with the module: only a course with skip_holidays needs it

    try:
        calendar = holidays.country_holidays(country, years=year)
    except NotImplementedError as exc:
        raise ConfigError(
            f"skip_holidays={country!r} is not a country the 'holidays' library knows;"
            ' use an ISO 3166 code such as "JP", or remove the setting'
        ) from exc
    return frozenset(calendar)


def is_allowed_day(settings: CourseSettings, day: date) -> bool:
    """True when lessons after the first may go out on the local date `day`.

    A day is allowed when its weekday is in `send_days` (any day when None) and, with
    `skip_holidays` set, it is not a public holiday of that country. Raises `ConfigError` for a
    country code the `holidays` library does not know.
    """
    send_days = settings.send_days
    if send_days is not None and day.weekday() not in send_days:
        return False
    country = settings.skip_holidays
    return country is None or day not in _holiday_dates(country, day.year)


def _next_allowed_day(settings: CourseSettings, day: date) -> date:
    """The first allowed day on or after `day`; `ConfigError` if the settings allow none."""
    if settings.send_days is None and settings.skip_holidays is None:
        return day
    for _ in range(_MAX_SEARCH_DAYS):
        if is_allowed_day(settings, day):
            return day
        day += _ONE_DAY
    raise ConfigError(
        f"no day on which lessons may be sent within {_MAX_SEARCH_DAYS} days of {day};"
        " check send_days and skip_holidays in course.toml"
    )


def _gap_end(zone: ZoneInfo, wall: datetime) -> datetime:
    """The UTC instant at which the clock jumps over the non-existent local time `wall`.

    PEP 495: in a gap fold=1 maps with the offset after the jump, which lands before it, and
    fold=0 with the offset before, which lands after it. The jump lies between the two; tz
    transitions fall on whole seconds, so a binary search over seconds finds it exactly.
    """
    before = int(wall.replace(tzinfo=zone, fold=1).timestamp())  # wall time here < `wall`
    after = int(wall.replace(tzinfo=zone, fold=0).timestamp()) + 1  # wall time here > `wall`
    while after - before > 1:
        middle = (before + after) // 2
        if datetime.fromtimestamp(middle, zone).replace(tzinfo=None) > wall:
            after = middle
        else:
            before = middle
    return datetime.fromtimestamp(after, UTC)


def _resolve(zone: ZoneInfo, day: date, at: time, fold: int) -> datetime:
    """UTC instant of local `day` `at` in `zone`: `fold` picks the occurrence of a repeated time;
    a time that does not exist resolves to the end of the gap."""
    wall = datetime.combine(day, at)
    moment = wall.replace(tzinfo=zone, fold=fold).astimezone(UTC)
    # A gap is detected by the round trip: the instant found shows a different wall time.
    if moment.astimezone(zone).replace(tzinfo=None) == wall:
        return moment
    return _gap_end(zone, wall)


@functools.lru_cache(maxsize=8192)
def _local_send_moment(zone: ZoneInfo, day: date, at: time) -> datetime:
    # Cached: many subscribers of one zone share the same few send days and times.
    return _resolve(zone, day, at, 0)


def local_send_moment(tz: Zone, day: date, at: time) -> datetime:
    """The UTC instant when the wall clock in `tz` shows `at` on `day` (rule 5).

    A time that occurs twice gives its first occurrence; a time skipped by a DST jump gives the
    first instant after the jump (02:30 on a spring-forward day in New York -> 03:00 EDT).
    `at` is a wall-clock time: one carrying a tzinfo raises `ValueError`.
    """
    if at.tzinfo is not None:
        raise ValueError(f"at={at.isoformat()} carries a tzinfo; pass a wall-clock time")
    return _local_send_moment(_zone(tz), day, at)


def _quiet_end(settings: CourseSettings, local: datetime) -> date | None:
    """The local date on which the quiet hours holding `local` end, or None if not quiet.

    The window is [start, end) on the wall clock and wraps midnight when start > end; start ==
    end is an empty window.
    """
    window = settings.quiet_hours
    if window is None:
        return None
    start, end = window
    clock = local.time()
    if start < end:
        return local.date() if start <= clock < end else None
    if start > end:
        if clock >= start:
            return local.date() + _ONE_DAY
        if clock < end:
            return local.date()
    return None


@functools.lru_cache(maxsize=1440)
def parse_send_time(text: str | None) -> time | None:
    """A reader's stored send time ("HH:MM", 00:00-23:59) as a wall-clock time; None for None
    (the course's send time applies). Raises `ValueError` for anything else."""
    if text is None:
        return None
    hours, sep, minutes = text.partition(":")
    digits = hours + minutes
    if not (sep and len(hours) == len(minutes) == 2 and digits.isascii() and digits.isdigit()):
        raise ValueError(f"send time {text!r} is not HH:MM")
    return time(int(hours), int(minutes))  # ValueError past 23:59


def quiet_send_time(settings: CourseSettings, at: time) -> bool:
    """True when the wall-clock time `at` falls inside the course's quiet hours: such a send
    time is refused (a lesson due then would always wait for the quiet hours to end)."""
    return _quiet_end(settings, datetime.combine(date(2000, 1, 3), at)) is not None


def is_quiet(settings: CourseSettings, tz: Zone, moment: datetime) -> bool:
    """True when `moment` falls inside the course's quiet hours on the wall clock of `tz`."""
    local = _utc(moment, "moment").astimezone(_zone(tz))
    return _quiet_end(settings, local) is not None


def earliest_send_at(
    settings: CourseSettings, tz: Zone, due_at: datetime, *, first_lesson: bool = False
) -> datetime:
    """The first instant at or after `due_at` at which a lesson may go out (rule 3), in UTC.

    That is outside quiet hours and, unless `first_lesson` (the subscriber's first lesson, which
    goes out on any day), on an allowed day. Raises `ConfigError` when the settings allow no day.
    """
    zone = _zone(tz)
    moment = _utc(due_at, "due_at")
    for _ in range(_MAX_STEPS):
        local = moment.astimezone(zone)
        day = local.date()
        if not first_lesson and not is_allowed_day(settings, day):
            moment = _local_send_moment(
                zone, _next_allowed_day(settings, day + _ONE_DAY), _MIDNIGHT
            )
            continue
        end_day = _quiet_end(settings, local)
        if end_day is None:
            return moment
        assert settings.quiet_hours is not None  # _quiet_end returned a day
        end = settings.quiet_hours[1]
        candidate = _local_send_moment(zone, end_day, end)
        if candidate <= moment:
            # `moment` is in the second pass of a repeated hour (DST fall-back) and the quiet
            # hours end within it: they end at the second occurrence of `end`.
            candidate = _resolve(zone, end_day, end, 1)
        moment = candidate if candidate > moment else moment + _ONE_SECOND
    raise ConfigError(
        "course settings leave no moment to send (quiet_hours, send_days and skip_holidays"
        " together exclude everything); check course.toml"
    )


def may_send_at(
    settings: CourseSettings, tz: Zone, moment: datetime, *, first_lesson: bool = False
) -> bool:
    """True when a due lesson may go out at `moment`: outside quiet hours and, unless
    `first_lesson`, on an allowed day. `drip send` checks this for `now` before sending."""
    moment = _utc(moment, "moment")
    return earliest_send_at(settings, tz, moment, first_lesson=first_lesson) == moment


def lesson_due_at(
    settings: CourseSettings,
    tz: Zone,
    lesson: Lesson,
    *,
    previous_sent_at: datetime | None,
    confirmed_at: datetime,
    send_time: time | None = None,
) -> datetime:
    """When `lesson` becomes due for a subscriber in `tz` (rules 1, 2 and 5), in UTC.

    `previous_sent_at` is when the previous lesson actually went out, None when `lesson` is the
    subscriber's first. A first lesson with delay 0 is due at `confirmed_at`; otherwise the lesson
    is due at `send_time` on the anchor's local date (previous send, else confirmation) plus
    `delay_days`, moved to the next allowed day. A lesson after another is always due strictly
    after it (at least one second later), so one run never finds two lessons due. `send_time` is
    the reader's own time of day (None: the course's).
    """
    zone = _zone(tz)
    confirmed = _utc(confirmed_at, "confirmed_at")
    if previous_sent_at is None:
        if lesson.delay_days == 0:
            return confirmed
        anchor = floor = confirmed
    else:
        anchor = _utc(previous_sent_at, "previous_sent_at")
        floor = anchor + _ONE_SECOND
    day = anchor.astimezone(zone).date() + timedelta(days=lesson.delay_days)
    at = settings.send_time if send_time is None else send_time
    due = _local_send_moment(zone, _next_allowed_day(settings, day), at)
    return due if due > floor else floor


def next_send_at(
    settings: CourseSettings,
    tz: Zone,
    lesson: Lesson,
    *,
    previous_sent_at: datetime | None,
    confirmed_at: datetime,
    send_time: time | None = None,
) -> datetime:
    """The earliest instant `lesson` may go out: its due time pushed out of quiet hours (and days
    off, for lessons after the first). This is the value the store keeps as `next_send_at`."""
    due = lesson_due_at(
        settings,
        tz,
        lesson,
        previous_sent_at=previous_sent_at,
        confirmed_at=confirmed_at,
        send_time=send_time,
    )
    return earliest_send_at(settings, tz, due, first_lesson=previous_sent_at is None)


def resume_send_at(
    settings: CourseSettings, tz: Zone, *, resumed_at: datetime, send_time: time | None = None
) -> datetime:
    """When the next lesson may go out after a pause ends at `resumed_at` (rule 4), in UTC.

    The next `send_time` (the reader's, else the course's) strictly after `resumed_at` on an
    allowed day, subscriber-local, then pushed out of quiet hours like any due time.
    """
    zone = _zone(tz)
    resumed = _utc(resumed_at, "resumed_at")
    at = settings.send_time if send_time is None else send_time
    day = resumed.astimezone(zone).date()
    for _ in range(_MAX_SEARCH_DAYS):
        day = _next_allowed_day(settings, day)
        due = _local_send_moment(zone, day, at)
        if due > resumed:
            return earliest_send_at(settings, zone, due)
        day += _ONE_DAY
    raise ConfigError(f"no send day found after {resumed.isoformat()}; check course.toml")


class Next(NamedTuple):
    """What a subscriber gets next: the lesson's slug and the moment it may go out, both None
    when the course is done."""

    lesson: str | None
    send_at: datetime | None


def first_send_at(course: Course, tz: Zone, *, confirmed_at: datetime) -> datetime:
    """When the first lesson may go out for a subscriber confirmed at `confirmed_at`.

    Callers: subscribing with consent, confirming a pending subscriber, a confirmed import.
    """
    return next_send_at(
        course.settings, tz, course.lessons[0], previous_sent_at=None, confirmed_at=confirmed_at
    )


def after_send(
    course: Course,
    tz: Zone,
    sent_lesson: str,
    *,
    sent_at: datetime,
    skip: Collection[str] = (),
    send_time: time | None = None,
) -> Next:
    """The lesson after `sent_lesson` (sent at `sent_at`) and when it may go out.

    Lessons in `skip` (already sent: the course was reordered) are passed over. `send_time` is the
    reader's own time of day (None: the course's). Always strictly later than `sent_at`.
    `Next(None, None)` after the last lesson. Raises `KeyError` when `sent_lesson` is not in the
    course (callers hold such subscribers).
    Callers: recording a send, settling an in-doubt delivery as sent, a claim that finds the
    next lesson already sent.
    """
    following = course.next_lesson(sent_lesson)
    while following is not None and following.slug in skip:
        following = course.next_lesson(following.slug)
    if following is None:
        return Next(None, None)
    # With a previous send the due time anchors on it alone: confirmation plays no part.
    at = next_send_at(
        course.settings,
        tz,
        following,
        previous_sent_at=sent_at,
        confirmed_at=sent_at,
        send_time=send_time,
    )
    return Next(following.slug, at)


def after_resume(
    course: Course,
    tz: Zone,
    next_lesson: str | None,
    *,
    resumed_at: datetime,
    last_sent_at: datetime | None,
    confirmed_at: datetime | None,
    send_time: time | None = None,
) -> datetime:
    """When `next_lesson` may go out after a pause that ends at `resumed_at` (rule 4).

    The next `send_time` (the reader's, else the course's) after the resume, but never earlier
    than the lesson's normal due time: a short pause must not speed the course up. Without a
    known next lesson (removed from the course, or none), only the first part applies.
    """
    settings = course.settings
    at = resume_send_at(settings, tz, resumed_at=resumed_at, send_time=send_time)
    if next_lesson is None or not course.has_lesson(next_lesson):
        return at
    normal = next_send_at(
        settings,
        tz,
        course.lesson(next_lesson),
        previous_sent_at=last_sent_at,
        confirmed_at=confirmed_at or resumed_at,
        send_time=send_time,
    )
    return max(at, normal)


def rescheduled_at(
    course: Course,
    tz: Zone,
    next_lesson: str,
    *,
    now: datetime,
    waiting_until: datetime,
    last_sent_at: datetime | None,
    confirmed_at: datetime | None,
    send_time: time | None = None,
) -> datetime:
    """When a reader's waiting `next_lesson` goes out after the reader changed timezone or send
    time at `now` (`tz` and `send_time` are the new values; `waiting_until` the stored moment).

    The same rules in the new setting: the lesson's normal due time there; but a lesson after the
    first that was still to come (`waiting_until` after `now`) never jumps to a moment already
    past: it goes at the next send time after `now`, as after a pause, and never earlier than
    its normal due time. Raises `KeyError` for a lesson not in the course.
    """
    lesson = course.lesson(next_lesson)
    settings = course.settings
    if last_sent_at is not None and _utc(waiting_until, "waiting_until") > _utc(now, "now"):
        return after_resume(
            course,
            tz,
            next_lesson,
            resumed_at=now,
            last_sent_at=last_sent_at,
            confirmed_at=confirmed_at,
            send_time=send_time,
        )
    return next_send_at(
        settings,
        tz,
        lesson,
        previous_sent_at=last_sent_at,
        confirmed_at=confirmed_at or now,
        send_time=send_time,
    )
