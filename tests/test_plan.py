"""`drip plan`: timelines that agree with the schedule, and the reasons each lesson moved."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner, Result
from tests.support import COURSE, COURSE_DIR, TEMPLATES

from drip import plan, schedule
from drip.cli import main
from drip.statuses import SubscriberStatus
from drip.store.values import SubscriberView

TOKYO = ZoneInfo("Asia/Tokyo")
WEEKDAYS_JP = dataclasses.replace(
    COURSE, settings=dataclasses.replace(COURSE.settings, send_days=frozenset(range(5)))
)
WITH_HOLIDAYS = dataclasses.replace(
    WEEKDAYS_JP, settings=dataclasses.replace(WEEKDAYS_JP.settings, skip_holidays="JP")
)


def test_the_course_plan_is_the_schedule_each_lesson_sent_on_time() -> None:
    start = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)  # Tue 12:00 in Tokyo
    steps = plan.course_plan(WEEKDAYS_JP, "Asia/Tokyo", start=start)
    assert [step.lesson for step in steps] == [lesson.slug for lesson in COURSE.lessons]
    previous = None
    for step, lesson in zip(steps, COURSE.lessons, strict=True):
        expected = schedule.next_send_at(
            WEEKDAYS_JP.settings,
            "Asia/Tokyo",
            lesson,
            previous_sent_at=previous,
            confirmed_at=start,
        )
        assert step.at == expected
        previous = expected
    assert steps[0].at == start and steps[0].reasons == ()


def test_reasons_name_quiet_hours_days_off_and_holidays() -> None:
    # Confirmed on New Year's Eve at 22:00 in Tokyo: lesson 1 waits for the quiet hours to end
    # (the first lesson goes out on any day, a holiday too); lesson 2 (one day later) would fall
    # on Saturday 2 January and moves past the weekend to Monday.
    start = datetime(2026, 12, 31, 22, 0, tzinfo=TOKYO)
    first, second, third, *_ = plan.course_plan(WITH_HOLIDAYS, "Asia/Tokyo", start=start)
    assert first.at == datetime(2027, 1, 1, 7, 0, tzinfo=TOKYO)
    assert first.reasons == ("quiet hours (21:00-07:00, reader-local)",)
    assert second.at == datetime(2027, 1, 4, 7, 30, tzinfo=TOKYO)
    assert second.reasons == (
        "2027-01-02 (Sat) is not a send day",
        "2027-01-03 (Sun) is not a send day",
    )
    # Lesson 3 (two days after Monday) is on Wednesday 6 January: nothing moves it.
    assert third.at == datetime(2027, 1, 6, 7, 30, tzinfo=TOKYO) and third.reasons == ()


def test_a_holiday_is_named() -> None:
    # 2027-01-11 is 成人の日 (Coming of Age Day), a Monday.
    start = datetime(2027, 1, 9, 8, 0, tzinfo=TOKYO)  # Saturday
    steps = plan.course_plan(WITH_HOLIDAYS, "Asia/Tokyo", start=start)
    second = steps[1]
    assert second.at == datetime(2027, 1, 12, 7, 30, tzinfo=TOKYO)
    assert "2027-01-10 (Sun) is not a send day" in second.reasons
    assert any(r.startswith("2027-01-11 is a holiday (") for r in second.reasons)


def _view(**values: object) -> SubscriberView:
    base: dict[str, object] = {
        "id": 1,
        "course_id": COURSE.id,
        "email": "r@example.com",
        "name": None,
        "timezone": "Asia/Tokyo",
        "status": SubscriberStatus.ACTIVE,
        "created_at": datetime(2026, 12, 1, tzinfo=UTC),
        "consent_at": datetime(2026, 12, 1, tzinfo=UTC),
        "consent_source": "test",
        "confirmed_at": datetime(2026, 12, 1, 3, 0, tzinfo=UTC),
        "paused_at": None,
        "status_changed_at": datetime(2026, 12, 1, tzinfo=UTC),
        "confirmation_sent_at": None,
        "next_lesson": "rethink",
        "next_send_at": None,
        "last_sent_at": None,
    }
    base.update(values)
    return SubscriberView(**base)  # type: ignore[arg-type]


def test_a_subscriber_timeline_sent_late_due_and_planned() -> None:
    confirmed = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)
    welcome_at = confirmed + timedelta(hours=5)  # cron was down: five hours late
    due = schedule.after_send(COURSE, "Asia/Tokyo", "welcome", sent_at=welcome_at).send_at
    view = _view(next_send_at=due, last_sent_at=welcome_at)
    steps = plan.subscriber_plan(COURSE, view, {"welcome": welcome_at}, now=welcome_at)
    assert [s.state for s in steps] == ["sent"] + ["due"] + ["planned"] * 6
    assert steps[0].at == welcome_at
    assert steps[0].reasons[0].startswith("sent 5 h 0 min after")
    assert steps[1].at == due and steps[1].reasons == ()
    later = plan.subscriber_plan(COURSE, view, {"welcome": welcome_at}, now=due + timedelta(1))
    assert later[1].reasons[-1].startswith("due now")


@pytest.mark.parametrize(
    ("values", "state", "says"),
    [
        ({"status": SubscriberStatus.PAUSED}, "paused", "paused until the reader resumes"),
        (
            {
                "status": SubscriberStatus.PAUSED,
                "paused_until": datetime(2026, 12, 15, tzinfo=UTC),
            },
            "paused",
            "paused until 2026-12-15",
        ),
        ({"held_reason": "failed delivery"}, "held", "held: failed delivery"),
        ({"status": SubscriberStatus.UNSUBSCRIBED}, "stopped", "unsubscribed"),
    ],
)
def test_why_the_rest_waits(values: dict[str, object], state: str, says: str) -> None:
    sent = {"welcome": datetime(2026, 12, 1, 3, 0, tzinfo=UTC)}
    steps = plan.subscriber_plan(COURSE, _view(**values), sent, now=datetime.now(UTC))
    assert steps[0].state == "sent"
    assert {s.state for s in steps[1:]} == {state}
    assert says in steps[1].reasons[0]


def test_a_paused_reader_held_by_its_next_lesson_says_both() -> None:
    held = _view(
        status=SubscriberStatus.PAUSED,
        held_by_delivery=True,
        held_reason="in doubt: rethink",
    )
    sent = {"welcome": datetime(2026, 12, 1, 3, 0, tzinfo=UTC)}
    steps = plan.subscriber_plan(COURSE, held, sent, now=datetime.now(UTC))
    assert {s.state for s in steps[1:]} == {"paused"}
    assert steps[1].reasons[0] == "paused until the reader resumes"
    assert steps[1].reasons[1].startswith("held: in doubt: rethink")
    # A reason the reader was not held by is not shown: only `is_held` counts.
    plain = _view(status=SubscriberStatus.PAUSED, held_reason="stale reason")
    assert plan.subscriber_plan(COURSE, plain, sent, now=datetime.now(UTC))[1].reasons == (
        "paused until the reader resumes",
    )


def drip(*args: str) -> Result:
    env = {"DRIP_COURSE_DIR": str(COURSE_DIR), "DRIP_TEMPLATES_DIR": str(TEMPLATES)}
    return CliRunner().invoke(main, list(args), env=env)


def test_drip_plan_for_a_subscriber_and_for_the_course(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    morning = "2026-12-01T12:00+09:00"
    assert drip("subscribe", "r@example.com", "--confirmed", "--now", morning).exit_code == 0
    assert "sent 1," in drip("send", "--now", morning).output
    shown = drip("plan", "R@example.com", "--now", morning)
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert lines[0] == "r@example.com (active, Asia/Tokyo)"
    assert (
        " 1 welcome " in lines[1]
        and "sent" in lines[1]
        and "2026-12-01 Tue 12:00 local" in lines[1]
    )
    assert (
        " 2 rethink " in lines[2] and "due" in lines[2] and "2026-12-02 Wed 07:30 local" in lines[2]
    )
    as_json = [
        json.loads(line) for line in drip("plan", "r@example.com", "--json").output.splitlines()
    ]
    assert [row["state"] for row in as_json[:2]] == ["sent", "due"]
    assert as_json[1]["at_local"] == "2026-12-02T07:30:00+09:00"
    course = drip(
        "plan", "--course", "--start", "2026-12-01T12:00+09:00", "--timezone", "Europe/London"
    )
    assert course.exit_code == 0, course.output
    assert course.output.splitlines()[0].startswith("a reader in Europe/London confirming at")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ([], "give either EMAIL or --course"),
        (["a@example.com", "--course"], "give either EMAIL or --course"),
        (["a@example.com", "--timezone", "Asia/Tokyo"], "go with --course"),
        (["--course", "--timezone", "Mars/Base"], "is not a timezone"),
        (["nobody@example.com"], "is not subscribed"),
    ],
)
def test_drip_plan_usage_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], says: str
) -> None:
    monkeypatch.chdir(tmp_path)
    result = drip("plan", *args)
    assert result.exit_code == 2, result.output
    assert says in result.output


def test_a_readers_own_send_time_is_planned_and_explained() -> None:
    confirmed = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)
    own = schedule.parse_send_time("19:00")
    due = schedule.after_send(
        COURSE, "Asia/Tokyo", "welcome", sent_at=confirmed, send_time=own
    ).send_at
    assert due is not None
    view = _view(next_send_at=due, last_sent_at=confirmed, send_time="19:00")
    steps = plan.subscriber_plan(COURSE, view, {"welcome": confirmed}, now=confirmed)
    assert [s.at.astimezone(TOKYO).strftime("%H:%M") for s in steps[1:] if s.at] == ["19:00"] * 7
    assert steps[1].reasons == ()  # 19:00 is its nominal moment, nothing moved it


def test_a_timezone_this_host_cannot_load_is_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A zone name edited into the database by hand (or tzdata missing) gave a traceback."""
    monkeypatch.chdir(tmp_path)
    morning = "2026-12-01T12:00+09:00"
    assert drip("subscribe", "r@example.com", "--confirmed", "--now", morning).exit_code == 0
    database = sqlite3.connect(tmp_path / "drip.db")
    database.execute("UPDATE subscribers SET timezone = 'Mars/Olympus'")
    database.commit()
    database.close()
    shown = drip("plan", "r@example.com", "--now", morning)
    assert shown.exit_code == 2
    assert "'Mars/Olympus' is not an IANA zone name" in shown.output
    assert shown.exception is None or isinstance(shown.exception, SystemExit)
