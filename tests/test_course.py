"""Loading a course: settings validation, front matter, lesson order."""

from __future__ import annotations

from datetime import time
from pathlib import Path
from typing import Any

import pytest
from tests.support import ROOT

from drip.course import (
    FrontMatterIssue,
    LessonFile,
    front_matter_issues,
    lesson_from_file,
    load_course,
    parse_course_settings,
    read_lesson_files,
    split_front_matter,
)
from drip.errors import CourseError

BASE: dict[str, Any] = {
    "id": "c",
    "title": "t",
    "sender_name": "s",
    "sender_email": "s@example.com",
}


def test_the_committed_course_loads_with_its_settings() -> None:
    course = load_course(ROOT / "course")
    settings = course.settings
    assert settings.timezone == "Asia/Tokyo"
    assert settings.send_time == time(7, 30)
    assert settings.quiet_hours == (time(21, 0), time(7, 0))
    assert [lesson.number for lesson in course.lessons] == list(range(1, 9))
    assert course.next_lesson(None) is course.lessons[0]
    assert course.next_lesson("pitfalls") is None
    assert course.next_lesson("welcome") is course.lesson("rethink")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"timezone": "Asia/Tokio"}, "is not an IANA zone"),
        # Host-specific keys: each host reads them differently.
        ({"timezone": "localtime"}, "is not an IANA zone"),
        ({"timezone": "Factory"}, "is not an IANA zone"),
        ({"timezone": "posix/Asia/Tokyo"}, "is not an IANA zone"),
        ({"send_time": "7.30"}, "is not a time of day"),
        ({"send_time": "25:00"}, "is not a time of day"),
        ({"quiet_hours": ["21:00"]}, "quiet_hours must be"),
        ({"send_days": ["mon", "funday"]}, "send_days must list weekdays"),
        ({"skip_holidays": "XX"}, "not a country code"),
        ({"id": "Has Spaces"}, "must be lowercase"),
        ({"title": ""}, "'title' must be a non-empty string"),
        ({"lessons": "welcome"}, "'lessons' must be a list"),
    ],
)
def test_bad_settings_name_the_key(change: dict[str, Any], message: str) -> None:
    with pytest.raises(CourseError, match=message):
        parse_course_settings({**BASE, **change}, Path("course.toml"))


def test_send_days_and_holidays_are_parsed() -> None:
    settings = parse_course_settings(
        {**BASE, "send_days": ["Mon", "friday"], "skip_holidays": "jp"}, Path("course.toml")
    )
    assert settings.send_days == frozenset({0, 4})
    assert settings.skip_holidays == "JP"


def test_front_matter_errors_point_at_the_line() -> None:
    with pytest.raises(CourseError, match=r"x\.md:3: front matter is not valid YAML"):
        split_front_matter("---\nsubject: a\npreheader: [unclosed\n---\n\nbody\n", Path("x.md"))
    with pytest.raises(CourseError, match="never closed"):
        split_front_matter("---\nsubject: a\n", Path("x.md"))
    front, body, line = split_front_matter("---\nsubject: a\n---\n\nbody\n", Path("x.md"))
    assert front == {"subject": "a"} and body == "body\n" and line == 5


def test_a_listed_lesson_without_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "lessons").mkdir()
    (tmp_path / "course.toml").write_text(
        'id = "c"\ntitle = "t"\nsender_name = "s"\nsender_email = "s@example.com"\n'
        'lessons = ["welcome"]\n',
        encoding="utf-8",
    )
    with pytest.raises(CourseError, match=r"no lessons/NN-welcome\.md"):
        load_course(tmp_path)


def test_front_matter_rules_are_shared_by_loading_and_checking() -> None:
    front = {"subject": "件名", "preheader": "", "delay_days": True, "extra": 1}
    issues = front_matter_issues(front, 2)
    assert [(issue.key, issue.error) for issue in issues] == [
        ("extra", True),
        ("preheader", False),
        ("delay_days", True),
    ]
    assert issues[2].message == "delay_days must be a whole number of days, 0 or more, not True"
    file = LessonFile(Path("02-x.md"), 2, "x", front, "本文です。\n", 6)
    with pytest.raises(CourseError, match="'delay_days' must be a whole number of days"):
        lesson_from_file(file, 2)
    assert front_matter_issues({}, 1)[0] == FrontMatterIssue(
        None, "no front matter; start the file with '---'"
    )


def test_the_sender_must_be_sendable_and_is_kept_in_ascii() -> None:
    """The rule drip.mime applies to every From (#3): checked when the course is loaded."""
    with pytest.raises(CourseError, match=r"sender_email.*only ASCII"):
        parse_course_settings({**BASE, "sender_email": "講座@example.jp"}, Path("course.toml"))
    with pytest.raises(CourseError, match="sender_email"):
        parse_course_settings({**BASE, "sender_email": "course@example"}, Path("course.toml"))
    idn = parse_course_settings({**BASE, "sender_email": "course@人脈.jp"}, Path("course.toml"))
    assert idn.sender_email == "course@xn--gmq593j.jp"


def test_every_settings_error_is_reported_once_without_a_doubled_path() -> None:
    bad = {**BASE, "id": "Has Spaces", "timezone": "Tokyo", "send_time": "25:00"}
    with pytest.raises(CourseError) as raised:
        parse_course_settings(bad, Path("c/course.toml"))
    message = str(raised.value)
    assert message.count("c/course.toml") == 1
    assert "must be lowercase" in message
    assert "'Tokyo' is not an IANA zone" in message
    assert "'25:00' is not a time of day" in message


def test_a_lesson_file_that_is_not_utf8_is_a_course_error(tmp_path: Path) -> None:
    (tmp_path / "lessons").mkdir()
    (tmp_path / "lessons" / "01-welcome.md").write_bytes("---\nsubject: 件名\n".encode("cp932"))
    with pytest.raises(CourseError, match=r"01-welcome\.md:2: .*not UTF-8"):
        read_lesson_files(tmp_path / "lessons")
