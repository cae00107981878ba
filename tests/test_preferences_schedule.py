"""The schedule with a reader's own send time, and the rescheduling of a timezone or send-time
change (pure: `drip.schedule`, no database)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.support import COURSE

from drip.course import CourseSettings, Lesson
from drip.schedule import (
    after_resume,
    after_send,
    lesson_due_at,
    parse_send_time,
    quiet_send_time,
    rescheduled_at,
    resume_send_at,
)

TOKYO = ZoneInfo("Asia/Tokyo")
NEW_YORK = ZoneInfo("America/New_York")
SETTINGS = CourseSettings(
    id="t",
    title="t",
    sender_name="t",
    sender_email="t@example.com",
    send_time=time(7, 30),
    quiet_hours=(time(21, 0), time(7, 0)),
)
SECOND = Lesson(
    slug="second",
    number=2,
    subject="第2回",
    preheader="",
    delay_days=2,
    body="本文。",
    path=Path("lessons/02-second.md"),
)


def tokyo(day: int, hour: int, minute: int = 0, month: int = 3) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=TOKYO)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("00:00", time(0, 0)), ("07:30", time(7, 30)), ("23:59", time(23, 59)), (None, None)],
)
def test_parse_send_time_reads_hh_mm(text: str | None, expected: time | None) -> None:
    assert parse_send_time(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "7:30", "07:3", "0730", "24:00", "12:60", "１２:００", "12:00:00", " 12:00", "ab:cd"],
)
def test_parse_send_time_refuses_anything_else(text: str) -> None:
    with pytest.raises(ValueError, match=r"HH:MM|hour|minute"):
        parse_send_time(text)


@pytest.mark.parametrize(
    ("at", "quiet"),
    [
        (time(20, 59), False),
        (time(21, 0), True),
        (time(3, 0), True),
        (time(6, 59), True),
        (time(7, 0), False),
        (time(12, 0), False),
    ],
)
def test_quiet_send_time_follows_the_wrapping_window(at: time, quiet: bool) -> None:
    assert quiet_send_time(SETTINGS, at) is quiet
    assert quiet_send_time(replace(SETTINGS, quiet_hours=None), at) is False


def test_a_readers_send_time_replaces_the_courses() -> None:
    due = lesson_due_at(
        SETTINGS,
        TOKYO,
        SECOND,
        previous_sent_at=tokyo(2, 10),
        confirmed_at=tokyo(2, 10),
        send_time=time(19, 15),
    )
    assert due == tokyo(4, 19, 15)
    default = lesson_due_at(
        SETTINGS, TOKYO, SECOND, previous_sent_at=tokyo(2, 10), confirmed_at=tokyo(2, 10)
    )
    assert default == tokyo(4, 7, 30)


def test_after_send_and_resume_use_the_readers_send_time() -> None:
    following = after_send(COURSE, TOKYO, "welcome", sent_at=tokyo(2, 10), send_time=time(12, 0))
    assert following.send_at is not None
    assert following.send_at.astimezone(TOKYO).time() == time(12, 0)
    assert resume_send_at(SETTINGS, TOKYO, resumed_at=tokyo(2, 10), send_time=time(12, 0)) == (
        tokyo(2, 12)
    )
    resumed = after_resume(
        COURSE,
        TOKYO,
        "rethink",
        resumed_at=tokyo(20, 13),
        last_sent_at=tokyo(2, 10),
        confirmed_at=tokyo(2, 10),
        send_time=time(12, 0),
    )
    assert resumed == tokyo(21, 12)


def test_rescheduled_keeps_the_normal_due_day_in_the_new_setting() -> None:
    # rethink (delay 1) after welcome sent 03-02 10:00 Tokyo; changed at 11:00 the same day.
    at = rescheduled_at(
        COURSE,
        TOKYO,
        "rethink",
        now=tokyo(2, 11),
        waiting_until=tokyo(3, 7, 30),
        last_sent_at=tokyo(2, 10),
        confirmed_at=tokyo(2, 10),
        send_time=time(18, 0),
    )
    assert at == tokyo(3, 18)
    # Moving to New York: sent 03-01 21:00 there; due 03-02 07:30 New York time.
    moved = rescheduled_at(
        COURSE,
        NEW_YORK,
        "rethink",
        now=tokyo(2, 11),
        waiting_until=tokyo(3, 7, 30),
        last_sent_at=tokyo(2, 10),
        confirmed_at=tokyo(2, 10),
    )
    assert moved == datetime(2026, 3, 2, 7, 30, tzinfo=NEW_YORK)


def test_rescheduled_never_jumps_a_future_lesson_into_the_past() -> None:
    # Due 03-03 07:30; on 03-03 06:00 the reader picks 05:00... not allowed (quiet); picks
    # 07:00 at 07:10: the normal moment (07:00) has passed, so the next 07:00 (03-04).
    at = rescheduled_at(
        COURSE,
        TOKYO,
        "rethink",
        now=tokyo(3, 7, 10),
        waiting_until=tokyo(3, 7, 30),
        last_sent_at=tokyo(2, 10),
        confirmed_at=tokyo(2, 10),
        send_time=time(7, 0),
    )
    assert at == tokyo(4, 7, 0)


def test_rescheduled_leaves_a_first_lesson_at_confirmation() -> None:
    at = rescheduled_at(
        COURSE,
        NEW_YORK,
        "welcome",
        now=tokyo(2, 23),
        waiting_until=tokyo(3, 7),
        last_sent_at=None,
        confirmed_at=tokyo(2, 23),
        send_time=time(12, 0),
    )
    # Confirmed 03-02 09:00 New York: outside quiet hours there, so at once.
    assert at == tokyo(2, 23)


@given(
    minutes=st.integers(0, 24 * 60 - 1),
    now_offset=st.integers(0, 72 * 60 - 1),
    zone=st.sampled_from(["Asia/Tokyo", "America/New_York", "Australia/Lord_Howe"]),
)
def test_rescheduled_is_never_before_now_for_a_lesson_still_to_come(
    minutes: int, now_offset: int, zone: str
) -> None:
    sent = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)
    waiting = sent + timedelta(days=3)
    now = sent + timedelta(minutes=now_offset)
    at = time(minutes // 60, minutes % 60)
    result = rescheduled_at(
        COURSE,
        zone,
        "rethink",
        now=now,
        waiting_until=waiting,
        last_sent_at=sent,
        confirmed_at=sent,
        send_time=at,
    )
    assert result > now
    assert result > sent
