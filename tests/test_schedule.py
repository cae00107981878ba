"""The schedule: rule-by-rule examples, DST cases, and a hypothesis simulation of `drip send`."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.support import COURSE_DIR

from drip.course import Course, CourseSettings, Lesson, load_course
from drip.errors import ConfigError, DripError
from drip.schedule import (
    Next,
    after_resume,
    after_send,
    earliest_send_at,
    first_send_at,
    is_allowed_day,
    is_quiet,
    lesson_due_at,
    local_send_moment,
    may_send_at,
    next_send_at,
    resume_send_at,
)

TOKYO = ZoneInfo("Asia/Tokyo")
NEW_YORK = ZoneInfo("America/New_York")
LONDON = ZoneInfo("Europe/London")
LORD_HOWE = ZoneInfo("Australia/Lord_Howe")
KATHMANDU = ZoneInfo("Asia/Kathmandu")
ZONES = (TOKYO, NEW_YORK, LONDON, LORD_HOWE, KATHMANDU)
WEEKDAYS = frozenset(range(5))

BASE = CourseSettings(
    id="test",
    title="テスト講座",
    sender_name="テスト",
    sender_email="course@example.com",
    timezone="Asia/Tokyo",
    send_time=time(7, 30),
    quiet_hours=(time(21, 0), time(7, 0)),
)
PLAIN = replace(BASE, quiet_hours=None)


def lesson(number: int, delay_days: int) -> Lesson:
    return Lesson(
        slug=f"lesson-{number}",
        number=number,
        subject=f"第{number}回",
        preheader="",
        delay_days=delay_days,
        body="本文。",
        path=Path(f"lessons/{number:02d}-lesson-{number}.md"),
    )


def local(
    zone: ZoneInfo,
    year: int,
    month: int,
    day: int,
    hour: int = 0,
    minute: int = 0,
    *,
    fold: int = 0,
) -> datetime:
    """An aware datetime on the wall clock of `zone`."""
    return datetime(year, month, day, hour, minute, tzinfo=zone, fold=fold)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def wall(moment: datetime, zone: ZoneInfo) -> datetime:
    return moment.astimezone(zone).replace(tzinfo=None)


# --- rule 1: the first lesson is due at confirmation ------------------------------------------


@pytest.mark.parametrize("hour", [0, 3, 12, 20])
def test_first_lesson_is_due_at_confirmation_whatever_the_hour(hour: int) -> None:
    confirmed = local(TOKYO, 2026, 3, 7, hour, 17)  # a Saturday
    weekdays_only = replace(BASE, send_days=WEEKDAYS, skip_holidays="JP")
    due = lesson_due_at(
        weekdays_only, TOKYO, lesson(1, 0), previous_sent_at=None, confirmed_at=confirmed
    )
    assert due == confirmed.astimezone(UTC)
    assert due.tzinfo is UTC


def test_first_lesson_goes_out_at_once_outside_quiet_hours_even_on_a_day_off() -> None:
    confirmed = local(TOKYO, 2026, 1, 1, 10, 0)  # New Year's Day, a Thursday
    course = replace(BASE, send_days=WEEKDAYS, skip_holidays="JP")
    sent = next_send_at(course, TOKYO, lesson(1, 0), previous_sent_at=None, confirmed_at=confirmed)
    assert sent == confirmed


def test_first_lesson_confirmed_in_quiet_hours_waits_for_their_end() -> None:
    confirmed = local(TOKYO, 2026, 3, 6, 23, 30)  # Friday night
    course = replace(BASE, send_days=WEEKDAYS)
    sent = next_send_at(course, TOKYO, lesson(1, 0), previous_sent_at=None, confirmed_at=confirmed)
    # Saturday 07:00: the end of quiet hours, not Monday, because lesson 1 ignores send_days.
    assert sent == local(TOKYO, 2026, 3, 7, 7, 0)


def test_first_lesson_with_a_delay_starts_at_send_time() -> None:
    confirmed = local(TOKYO, 2026, 3, 6, 10, 0)
    due = lesson_due_at(BASE, TOKYO, lesson(1, 2), previous_sent_at=None, confirmed_at=confirmed)
    assert due == local(TOKYO, 2026, 3, 8, 7, 30)


# --- rule 2: later lessons hang off the actual previous send ------------------------------------


def test_next_lesson_is_due_at_send_time_after_delay_days() -> None:
    sent = local(TOKYO, 2026, 3, 2, 8, 0)
    due = lesson_due_at(
        BASE, TOKYO, lesson(2, 1), previous_sent_at=sent, confirmed_at=sent - timedelta(hours=1)
    )
    assert due == local(TOKYO, 2026, 3, 3, 7, 30)
    assert due.tzinfo is UTC


def test_a_late_send_shifts_the_rest_of_the_course() -> None:
    confirmed = local(TOKYO, 2026, 3, 1, 9, 0)
    on_time = lesson_due_at(
        BASE,
        TOKYO,
        lesson(3, 2),
        previous_sent_at=local(TOKYO, 2026, 3, 2, 7, 30),
        confirmed_at=confirmed,
    )
    late = lesson_due_at(
        BASE,
        TOKYO,
        lesson(3, 2),
        previous_sent_at=local(TOKYO, 2026, 3, 4, 18, 0),
        confirmed_at=confirmed,
    )
    assert on_time == local(TOKYO, 2026, 3, 4, 7, 30)
    assert late == local(TOKYO, 2026, 3, 6, 7, 30)


def test_the_local_date_of_the_previous_send_counts_not_the_utc_date() -> None:
    # 2026-03-02 23:00 UTC is already 03-03 08:00 in Tokyo.
    sent = utc(2026, 3, 2, 23, 0)
    due = lesson_due_at(BASE, TOKYO, lesson(2, 1), previous_sent_at=sent, confirmed_at=sent)
    assert due == local(TOKYO, 2026, 3, 4, 7, 30)


def test_delay_zero_is_same_day_send_time_when_still_ahead() -> None:
    sent = local(TOKYO, 2026, 3, 2, 5, 0)
    due = lesson_due_at(PLAIN, TOKYO, lesson(2, 0), previous_sent_at=sent, confirmed_at=sent)
    assert due == local(TOKYO, 2026, 3, 2, 7, 30)


def test_delay_zero_is_right_away_but_strictly_after_the_previous_send() -> None:
    sent = local(TOKYO, 2026, 3, 2, 9, 0)
    due = lesson_due_at(PLAIN, TOKYO, lesson(2, 0), previous_sent_at=sent, confirmed_at=sent)
    assert sent < due <= sent + timedelta(seconds=1)
    # So a run at `sent` never finds it due; the next run does.
    assert next_send_at(PLAIN, TOKYO, lesson(2, 0), previous_sent_at=sent, confirmed_at=sent) > sent


def test_send_days_skip_the_weekend() -> None:
    course = replace(BASE, send_days=WEEKDAYS)
    friday = local(TOKYO, 2026, 3, 6, 7, 30)
    due = lesson_due_at(course, TOKYO, lesson(2, 1), previous_sent_at=friday, confirmed_at=friday)
    assert due == local(TOKYO, 2026, 3, 9, 7, 30)  # Monday
    assert due.astimezone(TOKYO).weekday() == 0


def test_japanese_new_year_holiday_is_skipped() -> None:
    course = replace(BASE, skip_holidays="JP")
    sent = local(TOKYO, 2025, 12, 31, 7, 30)
    due = lesson_due_at(course, TOKYO, lesson(2, 1), previous_sent_at=sent, confirmed_at=sent)
    assert due == local(TOKYO, 2026, 1, 2, 7, 30)
    assert not is_allowed_day(course, date(2026, 1, 1))
    assert is_allowed_day(course, date(2026, 1, 2))


def test_golden_week_is_skipped_with_its_substitute_holiday() -> None:
    # 2026: May 3 (Sun), 4, 5 are holidays and May 6 substitutes for the Sunday.
    course = replace(BASE, skip_holidays="JP")
    sent = local(TOKYO, 2026, 5, 1, 7, 30)
    due = lesson_due_at(course, TOKYO, lesson(3, 2), previous_sent_at=sent, confirmed_at=sent)
    assert due == local(TOKYO, 2026, 5, 7, 7, 30)
    weekdays = replace(course, send_days=WEEKDAYS)
    allowed = [d.day for d in _days(date(2026, 4, 27), 12) if is_allowed_day(weekdays, d)]
    assert allowed == [27, 28, 30, 1, 7, 8]


def _days(start: date, count: int) -> list[date]:
    return [start + timedelta(days=n) for n in range(count)]


def test_an_unknown_holiday_country_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="skip_holidays='ZZ'"):
        is_allowed_day(replace(BASE, skip_holidays="ZZ"), date(2026, 1, 1))


def test_settings_that_allow_no_day_fail_loudly() -> None:
    course = replace(BASE, send_days=frozenset())
    sent = local(TOKYO, 2026, 3, 2, 8, 0)
    with pytest.raises(ConfigError) as raised:
        lesson_due_at(course, TOKYO, lesson(2, 1), previous_sent_at=sent, confirmed_at=sent)
    assert re.fullmatch(
        r"no day on which lessons may be sent within \d+ days of \d{4}-\d\d-\d\d;"
        r" check send_days and skip_holidays in course\.toml",
        str(raised.value),
    )


# --- rule 3: quiet hours -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hour", "minute", "quiet"),
    [
        (20, 59, False),
        (21, 0, True),
        (23, 59, True),
        (0, 0, True),
        (6, 59, True),
        (7, 0, False),
        (12, 0, False),
    ],
)
def test_quiet_hours_wrapping_midnight(hour: int, minute: int, quiet: bool) -> None:
    moment = local(TOKYO, 2026, 3, 2, hour, minute)
    assert is_quiet(BASE, TOKYO, moment) is quiet
    pushed = earliest_send_at(BASE, TOKYO, moment)
    if quiet:
        day = 3 if hour >= 21 else 2
        assert pushed == local(TOKYO, 2026, 3, day, 7, 0)
    else:
        assert pushed == moment


@pytest.mark.parametrize(
    ("hour", "minute", "expected"),
    [(11, 59, (11, 59)), (12, 0, (13, 0)), (12, 45, (13, 0)), (13, 0, (13, 0)), (22, 0, (22, 0))],
)
def test_quiet_hours_not_wrapping(hour: int, minute: int, expected: tuple[int, int]) -> None:
    lunch = replace(BASE, quiet_hours=(time(12, 0), time(13, 0)))
    moment = local(KATHMANDU, 2026, 3, 2, hour, minute)
    assert is_quiet(lunch, KATHMANDU, moment) is (expected != (hour, minute))
    assert earliest_send_at(lunch, KATHMANDU, moment) == local(KATHMANDU, 2026, 3, 2, *expected)


def test_quiet_hours_are_subscriber_local() -> None:
    moment = utc(2026, 3, 2, 13, 0)  # 22:00 in Tokyo, 13:00 in London
    assert is_quiet(BASE, TOKYO, moment)
    assert not is_quiet(BASE, LONDON, moment)


def test_a_send_time_inside_quiet_hours_waits_for_their_end() -> None:
    early = replace(BASE, send_time=time(6, 0))
    sent = local(TOKYO, 2026, 3, 2, 7, 0)
    assert next_send_at(
        early, TOKYO, lesson(2, 1), previous_sent_at=sent, confirmed_at=sent
    ) == local(TOKYO, 2026, 3, 3, 7, 0)


def test_quiet_hours_ending_on_a_day_off_wait_for_the_next_allowed_day() -> None:
    late = replace(BASE, send_time=time(22, 0), send_days=WEEKDAYS)
    sent = local(TOKYO, 2026, 3, 5, 22, 0)  # Thursday
    due = lesson_due_at(late, TOKYO, lesson(2, 1), previous_sent_at=sent, confirmed_at=sent)
    assert due == local(TOKYO, 2026, 3, 6, 22, 0)  # Friday, but quiet
    assert earliest_send_at(late, TOKYO, due) == local(TOKYO, 2026, 3, 9, 7, 0)  # Monday
    assert earliest_send_at(late, TOKYO, due, first_lesson=True) == local(TOKYO, 2026, 3, 7, 7, 0)


def test_may_send_at_refuses_quiet_hours_and_days_off_for_late_runs() -> None:
    course = replace(BASE, send_days=WEEKDAYS)
    saturday_noon = local(TOKYO, 2026, 3, 7, 12, 0)
    assert not may_send_at(course, TOKYO, saturday_noon)
    assert may_send_at(course, TOKYO, saturday_noon, first_lesson=True)
    assert not may_send_at(course, TOKYO, local(TOKYO, 2026, 3, 9, 6, 0))
    assert may_send_at(course, TOKYO, local(TOKYO, 2026, 3, 9, 7, 0))


# --- rule 4: resume after a pause --------------------------------------------------------------


@pytest.mark.parametrize(
    ("resumed", "expected"),
    [
        ((2026, 3, 2, 6, 0), (2026, 3, 2, 7, 30)),
        ((2026, 3, 2, 7, 30), (2026, 3, 3, 7, 30)),  # strictly after
        ((2026, 3, 2, 23, 0), (2026, 3, 3, 7, 30)),
        ((2026, 3, 6, 10, 0), (2026, 3, 9, 7, 30)),  # Friday -> Monday
        ((2026, 5, 1, 10, 0), (2026, 5, 7, 7, 30)),  # Golden Week
    ],
)
def test_resume_is_the_next_send_time_on_an_allowed_day(
    resumed: tuple[int, ...], expected: tuple[int, ...]
) -> None:
    course = replace(BASE, send_days=WEEKDAYS, skip_holidays="JP")
    assert resume_send_at(course, TOKYO, resumed_at=local(TOKYO, *resumed)) == local(
        TOKYO, *expected
    )


def test_resume_with_send_time_in_quiet_hours_is_pushed_out() -> None:
    course = replace(BASE, send_time=time(6, 30))
    got = resume_send_at(course, "Asia/Tokyo", resumed_at=local(TOKYO, 2026, 3, 2, 12, 0))
    assert got == local(TOKYO, 2026, 3, 3, 7, 0)


def test_resume_starts_from_the_readers_local_date_not_the_utc_one() -> None:
    # 20:00 in New York is already tomorrow in UTC; today's 22:00 send is still ahead.
    course = replace(PLAIN, send_time=time(22, 0))
    resumed = local(NEW_YORK, 2026, 3, 2, 20, 0)
    assert resume_send_at(course, NEW_YORK, resumed_at=resumed) == local(NEW_YORK, 2026, 3, 2, 22)


def test_after_resume_counts_from_the_last_send_and_a_first_lesson_from_confirmation() -> None:
    confirmed = local(TOKYO, 2026, 2, 23, 12, 0)
    sent = local(TOKYO, 2026, 3, 2, 7, 30)  # lesson 3 is due 2 days after lesson 2: Wednesday
    assert after_resume(
        THREE,
        TOKYO,
        "lesson-3",
        resumed_at=local(TOKYO, 2026, 3, 2, 12, 0),
        last_sent_at=sent,
        confirmed_at=confirmed,
    ) == local(TOKYO, 2026, 3, 4, 7, 30)
    # Paused before the first lesson (3 days after confirming): still due Thursday, not Friday.
    slow_start = replace(THREE, lessons=(lesson(1, 3), lesson(2, 1)))
    assert after_resume(
        slow_start,
        TOKYO,
        "lesson-1",
        resumed_at=local(TOKYO, 2026, 3, 3, 12, 0),
        last_sent_at=None,
        confirmed_at=local(TOKYO, 2026, 3, 2, 12, 0),
    ) == local(TOKYO, 2026, 3, 5, 7, 30)


# --- rule 5: DST --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("zone", "day", "at", "expected"),
    [
        # New York springs forward 02:00 EST -> 03:00 EDT: 02:30 does not exist.
        (NEW_YORK, date(2026, 3, 8), time(2, 30), utc(2026, 3, 8, 7, 0)),
        (NEW_YORK, date(2026, 3, 8), time(3, 0), utc(2026, 3, 8, 7, 0)),
        (NEW_YORK, date(2026, 3, 8), time(1, 59), utc(2026, 3, 8, 6, 59)),
        # and falls back 02:00 EDT -> 01:00 EST: 01:30 happens twice, the EDT one is taken.
        (NEW_YORK, date(2026, 11, 1), time(1, 30), utc(2026, 11, 1, 5, 30)),
        # London: 01:00 GMT -> 02:00 BST, then 02:00 BST -> 01:00 GMT.
        (LONDON, date(2026, 3, 29), time(1, 30), utc(2026, 3, 29, 1, 0)),
        (LONDON, date(2026, 10, 25), time(1, 30), utc(2026, 10, 25, 0, 30)),
        # Lord Howe shifts by 30 minutes: 02:00 -> 02:30 in October, 02:00 -> 01:30 in April.
        (LORD_HOWE, date(2026, 10, 4), time(2, 15), utc(2026, 10, 3, 15, 30)),
        (LORD_HOWE, date(2026, 10, 4), time(2, 30), utc(2026, 10, 3, 15, 30)),
        (LORD_HOWE, date(2026, 4, 5), time(1, 45), utc(2026, 4, 4, 14, 45)),
        (LORD_HOWE, date(2026, 4, 5), time(2, 0), utc(2026, 4, 4, 15, 30)),
        # Kathmandu has no DST but a +05:45 offset.
        (KATHMANDU, date(2026, 3, 8), time(7, 30), utc(2026, 3, 8, 1, 45)),
        (TOKYO, date(2026, 3, 8), time(7, 30), utc(2026, 3, 7, 22, 30)),
    ],
)
def test_local_send_moment_resolves_gaps_and_overlaps(
    zone: ZoneInfo, day: date, at: time, expected: datetime
) -> None:
    got = local_send_moment(zone, day, at)
    assert got == expected
    assert got.tzinfo is UTC


def test_local_send_moment_takes_a_zone_name() -> None:
    assert local_send_moment("Australia/Lord_Howe", date(2026, 10, 4), time(2, 15)) == utc(
        2026, 10, 3, 15, 30
    )


def test_send_time_in_a_spring_forward_gap_goes_out_when_the_clock_jumps() -> None:
    course = replace(PLAIN, send_time=time(2, 30))
    sent = local(NEW_YORK, 2026, 3, 7, 2, 30)
    due = lesson_due_at(course, NEW_YORK, lesson(2, 1), previous_sent_at=sent, confirmed_at=sent)
    assert due == local(NEW_YORK, 2026, 3, 8, 3, 0)
    assert wall(due, NEW_YORK) == datetime(2026, 3, 8, 3, 0)


def test_send_time_in_a_fall_back_overlap_is_sent_once_at_the_first() -> None:
    course = replace(PLAIN, send_time=time(1, 30))
    sent = local(LONDON, 2026, 10, 24, 1, 30)
    due = lesson_due_at(course, LONDON, lesson(2, 1), previous_sent_at=sent, confirmed_at=sent)
    assert due == utc(2026, 10, 25, 0, 30)  # 01:30 BST, not 01:30 GMT an hour later
    # Resuming between the two 01:30s: that day's send time has passed; the next is tomorrow.
    resumed = local(LONDON, 2026, 10, 25, 1, 0, fold=1)
    assert resume_send_at(course, LONDON, resumed_at=resumed) == utc(2026, 10, 26, 1, 30)


def test_quiet_hours_ending_in_the_repeated_hour_end_at_its_second_pass() -> None:
    course = replace(BASE, quiet_hours=(time(0, 0), time(1, 30)))
    # 01:10 GMT. (Compared in UTC: PEP 495 makes fold=1 times unequal to any other zone's.)
    second_pass = local(LONDON, 2026, 10, 25, 1, 10, fold=1).astimezone(UTC)
    assert second_pass == utc(2026, 10, 25, 1, 10)
    assert is_quiet(course, LONDON, second_pass)
    assert earliest_send_at(course, LONDON, second_pass) == utc(2026, 10, 25, 1, 30)
    first_pass = local(LONDON, 2026, 10, 25, 0, 50)
    assert earliest_send_at(course, LONDON, first_pass) == utc(2026, 10, 25, 0, 30)


def test_quiet_hours_ending_in_new_yorks_repeated_hour_end_at_its_second_pass() -> None:
    # New York's second 01:xx (EST) is not UTC: the zone must be the reader's, not the host's.
    course = replace(BASE, quiet_hours=(time(0, 0), time(1, 30)))
    second_pass = local(NEW_YORK, 2026, 11, 1, 1, 10, fold=1).astimezone(UTC)
    assert second_pass == utc(2026, 11, 1, 6, 10)
    assert earliest_send_at(course, NEW_YORK, second_pass) == utc(2026, 11, 1, 6, 30)


def test_an_empty_quiet_window_is_never_quiet() -> None:
    course = replace(BASE, quiet_hours=(time(7, 0), time(7, 0)))
    for hour in (0, 6, 7, 8, 23):
        assert not is_quiet(course, TOKYO, local(TOKYO, 2026, 3, 2, hour, 0))


def test_a_later_lesson_due_on_a_day_off_moves_forward_to_the_next_send_day() -> None:
    course = replace(BASE, send_days=WEEKDAYS)
    saturday_noon = local(TOKYO, 2026, 3, 7, 12, 0)
    # Monday 00:00 is in quiet hours: their end, 07:00.
    assert earliest_send_at(course, TOKYO, saturday_noon) == local(TOKYO, 2026, 3, 9, 7, 0)
    assert earliest_send_at(course, TOKYO, saturday_noon, first_lesson=True) == saturday_noon


def test_quiet_hours_ending_in_a_gap_end_when_the_clock_jumps() -> None:
    course = replace(BASE, quiet_hours=(time(22, 0), time(2, 30)))
    moment = local(NEW_YORK, 2026, 3, 8, 1, 0)
    assert earliest_send_at(course, NEW_YORK, moment) == utc(2026, 3, 8, 7, 0)


# --- what comes next: the functions every caller uses -----------------------------------------

THREE = Course(
    settings=replace(BASE, send_days=WEEKDAYS),
    lessons=(lesson(1, 0), lesson(2, 1), lesson(3, 2)),
    directory=Path("course"),
)


def test_first_send_at_is_confirmation_pushed_out_of_quiet_hours() -> None:
    # 23:30 on a Saturday in Tokyo: the welcome waits for the end of quiet hours, on any day.
    confirmed = local(TOKYO, 2026, 3, 7, 23, 30)
    assert first_send_at(THREE, TOKYO, confirmed_at=confirmed) == local(TOKYO, 2026, 3, 8, 7, 0)
    daytime = local(TOKYO, 2026, 3, 7, 12, 0)
    assert first_send_at(THREE, TOKYO, confirmed_at=daytime) == daytime


def test_after_send_names_the_next_lesson_and_its_send_time() -> None:
    friday = local(TOKYO, 2026, 3, 6, 7, 30)
    # Lesson 2 is one day later, but Saturday is not a send day: Monday 07:30.
    assert after_send(THREE, TOKYO, "lesson-1", sent_at=friday) == Next(
        "lesson-2", local(TOKYO, 2026, 3, 9, 7, 30)
    )
    assert after_send(THREE, TOKYO, "lesson-3", sent_at=friday) == Next(None, None)
    with pytest.raises(KeyError):
        after_send(THREE, TOKYO, "gone", sent_at=friday)


def test_after_send_passes_over_every_lesson_already_sent() -> None:
    course = replace(THREE, lessons=(*THREE.lessons, lesson(4, 1)))
    friday = local(TOKYO, 2026, 3, 6, 7, 30)
    assert after_send(course, TOKYO, "lesson-1", sent_at=friday, skip={"lesson-2"}) == Next(
        "lesson-3", local(TOKYO, 2026, 3, 9, 7, 30)
    )
    assert after_send(
        course, TOKYO, "lesson-1", sent_at=friday, skip={"lesson-2", "lesson-3"}
    ) == Next("lesson-4", local(TOKYO, 2026, 3, 9, 7, 30))
    assert after_send(
        course, TOKYO, "lesson-1", sent_at=friday, skip={"lesson-2", "lesson-3", "lesson-4"}
    ) == Next(None, None)


def test_after_send_is_always_strictly_later_than_the_send() -> None:
    course = replace(THREE, lessons=(lesson(1, 0), lesson(2, 0)), settings=PLAIN)
    sent = local(TOKYO, 2026, 3, 2, 12, 0)  # after 07:30: lesson 2 (delay 0) is due at once...
    following = after_send(course, TOKYO, "lesson-1", sent_at=sent)
    assert following.lesson == "lesson-2"
    assert following.send_at is not None and following.send_at > sent  # ...but never this run


def test_after_resume_waits_for_the_next_send_time_but_never_speeds_up() -> None:
    sent = local(TOKYO, 2026, 3, 2, 7, 30)  # Monday; lesson 3 is due 2 days later, Wednesday
    early = after_resume(
        THREE,
        TOKYO,
        "lesson-3",
        resumed_at=local(TOKYO, 2026, 3, 2, 12, 0),
        last_sent_at=sent,
        confirmed_at=sent,
    )
    assert early == local(TOKYO, 2026, 3, 4, 7, 30)
    late = after_resume(
        THREE,
        TOKYO,
        "lesson-3",
        resumed_at=local(TOKYO, 2026, 3, 10, 12, 0),
        last_sent_at=sent,
        confirmed_at=sent,
    )
    assert late == local(TOKYO, 2026, 3, 11, 7, 30)
    # A lesson no longer in the course: only the next send time applies.
    assert after_resume(
        THREE,
        TOKYO,
        "gone",
        resumed_at=local(TOKYO, 2026, 3, 2, 12, 0),
        last_sent_at=sent,
        confirmed_at=sent,
    ) == local(TOKYO, 2026, 3, 3, 7, 30)


# --- input checking ----------------------------------------------------------------------------


def test_naive_datetimes_are_refused() -> None:
    naive = datetime(2026, 3, 2, 8, 0)
    with pytest.raises(ValueError) as raised:
        is_quiet(BASE, TOKYO, naive)
    assert str(raised.value) == (
        "moment=2026-03-02T08:00:00 is a naive datetime; pass an aware one"
        " (e.g. datetime.now(UTC) or .replace(tzinfo=UTC))"
    )
    with pytest.raises(ValueError) as aware:
        local_send_moment(TOKYO, date(2026, 3, 2), time(7, 30, tzinfo=UTC))
    assert str(aware.value) == "at=07:30:00+00:00 carries a tzinfo; pass a wall-clock time"
    with pytest.raises(ValueError, match=r"^confirmed_at="):
        lesson_due_at(BASE, TOKYO, lesson(1, 0), previous_sent_at=None, confirmed_at=naive)
    with pytest.raises(ValueError, match=r"^previous_sent_at="):
        next_send_at(
            BASE,
            TOKYO,
            lesson(2, 1),
            previous_sent_at=naive,
            confirmed_at=naive.replace(tzinfo=UTC),
        )
    with pytest.raises(ValueError, match=r"^resumed_at="):
        resume_send_at(BASE, TOKYO, resumed_at=naive)
    with pytest.raises(ValueError, match=r"^moment=.*naive"):
        may_send_at(BASE, TOKYO, naive)
    with pytest.raises(ValueError, match=r"^due_at="):
        earliest_send_at(BASE, TOKYO, naive)


def test_an_unknown_zone_name_is_a_drip_error() -> None:
    with pytest.raises(DripError, match="Mars/Olympus"):
        is_quiet(BASE, "Mars/Olympus", utc(2026, 3, 2, 0, 0))


def test_the_committed_course_spreads_over_about_two_weeks() -> None:
    course = load_course(COURSE_DIR)
    confirmed = local(TOKYO, 2026, 3, 2, 12, 0)
    sent: datetime | None = None
    dates = []
    for item in course.lessons:
        sent = next_send_at(
            course.settings,
            course.settings.timezone,
            item,
            previous_sent_at=sent,
            confirmed_at=confirmed,
        )
        dates.append(sent.astimezone(TOKYO))
    assert dates[0] == confirmed
    assert all(moment.time() == time(7, 30) for moment in dates[1:])
    assert [moment.day for moment in dates] == [2, 3, 5, 7, 9, 11, 13, 15]


# --- hypothesis: a subscriber through an 8-lesson course, `drip send` at arbitrary moments ------

# DST change instants of 2026 in the zones under test: confirmations start around them.
DST_CHANGES = (
    utc(2026, 3, 8, 7, 0),  # New York spring
    utc(2026, 11, 1, 6, 0),  # New York autumn
    utc(2026, 3, 29, 1, 0),  # London spring
    utc(2026, 10, 25, 1, 0),  # London autumn
    utc(2026, 10, 3, 15, 30),  # Lord Howe October
    utc(2026, 4, 4, 15, 0),  # Lord Howe April
    utc(2026, 4, 28, 15, 0),  # Golden Week in Japan
)


@dataclass(frozen=True)
class Send:
    lesson: Lesson
    at: datetime
    due: datetime


course_settings = st.builds(
    lambda quiet, send_time, send_days, holidays_code: replace(
        BASE,
        quiet_hours=quiet,
        send_time=send_time,
        send_days=send_days,
        skip_holidays=holidays_code,
    ),
    quiet=st.sampled_from(
        [
            None,
            (time(21), time(7)),
            (time(12), time(13)),
            (time(22), time(2, 30)),
            (time(1, 0), time(1, 45)),
        ]
    ),
    send_time=st.sampled_from([time(7, 30), time(2, 30), time(1, 45), time(2, 15), time(22, 0)]),
    send_days=st.sampled_from([None, WEEKDAYS, frozenset({0, 2, 4}), frozenset({6})]),
    holidays_code=st.sampled_from([None, "JP"]),
)
delays = st.lists(st.integers(min_value=0, max_value=3), min_size=7, max_size=7)
# Gaps between runs, in minutes: mostly cron-like, sometimes hours or days of downtime.
run_gaps = st.lists(
    st.one_of(st.integers(1, 20), st.integers(20, 600), st.integers(600, 5000)), max_size=60
)


def simulate(
    course: CourseSettings,
    zone: ZoneInfo,
    lessons: list[Lesson],
    confirmed: datetime,
    runs: list[datetime],
) -> list[Send]:
    """What `drip send` does per subscriber: at each run, send every lesson the schedule says is
    due (the properties check that this is never more than one per run).

    After the given `runs`, cron keeps running every 15 minutes until the course is done; runs in
    which nothing is due are skipped over, since they change nothing.
    """
    sends: list[Send] = []
    previous: datetime | None = None
    waiting = next_send_at(course, zone, lessons[0], previous_sent_at=None, confirmed_at=confirmed)
    cron = timedelta(minutes=15)

    def cron_runs() -> Iterator[datetime]:
        now = runs[-1]
        while len(sends) < len(lessons):
            # The first 15-minute tick at or after both the next tick and `waiting`.
            ticks = max(1, -((now - waiting) // cron))
            now += ticks * cron
            yield now

    for now in itertools.chain(runs, cron_runs()):
        sent_in_run = 0
        while len(sends) < len(lessons) and waiting <= now:
            item = lessons[len(sends)]
            first = previous is None
            if not may_send_at(course, zone, now, first_lesson=first):
                # A late run in quiet hours or on a day off: reschedule, do not send.
                waiting = earliest_send_at(course, zone, now, first_lesson=first)
                assert waiting > now
                continue
            due = lesson_due_at(
                course, zone, item, previous_sent_at=previous, confirmed_at=confirmed
            )
            sends.append(Send(item, now, due))
            sent_in_run += 1
            previous = now
            if len(sends) < len(lessons):
                waiting = next_send_at(
                    course,
                    zone,
                    lessons[len(sends)],
                    previous_sent_at=previous,
                    confirmed_at=confirmed,
                )
        assert sent_in_run <= 1, f"two lessons in the run at {now}"
    return sends


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    course=course_settings,
    zone=st.sampled_from(ZONES),
    delay_days=delays,
    change=st.sampled_from(DST_CHANGES),
    offset_minutes=st.integers(-3 * 24 * 60, 2 * 24 * 60),
    gaps=run_gaps,
)
def test_simulated_course_respects_every_rule(
    course: CourseSettings,
    zone: ZoneInfo,
    delay_days: list[int],
    change: datetime,
    offset_minutes: int,
    gaps: list[int],
) -> None:
    lessons = [lesson(1, 0)] + [lesson(n, d) for n, d in enumerate(delay_days, start=2)]
    confirmed = change + timedelta(minutes=offset_minutes)
    runs = [confirmed]
    for gap in gaps:
        runs.append(runs[-1] + timedelta(minutes=gap))

    sends = simulate(course, zone, lessons, confirmed, runs)

    assert [send.lesson.number for send in sends] == list(range(1, 9)), "not all, or out of order"
    for index, send in enumerate(sends):
        assert send.at >= send.due, "sent before it was due"
        assert not is_quiet(course, zone, send.at), "sent in quiet hours"
        if index == 0:
            assert send.due == confirmed
            continue
        previous = sends[index - 1]
        assert send.at > previous.at
        day = send.at.astimezone(zone).date()
        assert day >= previous.at.astimezone(zone).date() + timedelta(
            days=send.lesson.delay_days
        ), "lesson sent before its delay had passed"
        assert is_allowed_day(course, day), "sent on a day that is not allowed"


@settings(max_examples=200, deadline=None)
@given(
    zone=st.sampled_from(ZONES),
    change=st.sampled_from(DST_CHANGES),
    seconds=st.integers(-4 * 3600, 4 * 3600),
)
def test_local_send_moment_is_the_first_instant_showing_that_time(
    zone: ZoneInfo, change: datetime, seconds: int
) -> None:
    # Wall times within four hours of a change: its gap or repeated hour where the zone has one.
    target = wall(change, zone) + timedelta(seconds=seconds)
    day, at = target.date(), target.time()
    got = local_send_moment(zone, day, at)
    assert got.tzinfo is UTC
    assert wall(got, zone) >= target
    # Nothing earlier shows `target` or later: it is the first instant at or after it...
    assert wall(got - timedelta(microseconds=1), zone) < target
    # ...and where the time exists it is shown exactly, at its first occurrence.
    first = target.replace(tzinfo=zone, fold=0)
    if first.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == target:
        assert wall(got, zone) == target
        assert got == first.astimezone(UTC)  # fold=0: the earlier of two occurrences
