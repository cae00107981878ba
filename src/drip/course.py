"""The course as data: load `course.toml` and `lessons/NN-slug.md` into a `Course`.

Pure apart from reading the files it is pointed at: no clock, no environment, no database.
A lesson file is YAML front matter between `---` lines followed by the Markdown body.
"""

from __future__ import annotations

import re
import tomllib
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import time
from pathlib import Path
from typing import Any, TypeGuard

import yaml

from drip.addresses import ascii_address, check_timezone
from drip.errors import CourseError, CourseFileError, InvalidAddressError

LESSON_FILE_RE = re.compile(r"^(?P<position>\d{2,3})-(?P<slug>[a-z0-9]+(?:-[a-z0-9]+)*)\.md$")
FRONT_MATTER_KEYS = ("subject", "preheader", "delay_days")
SUBJECT_WARN_WIDTH = 44
"""Display columns (a full-width character counts 2) a phone inbox shows on one line, roughly."""
SUBJECT_MAX_WIDTH = 60
PREHEADER_MAX_WIDTH = 200
MAX_DELAY_DAYS = 365
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
RESERVED_CHARACTERS = ("\ue000", "\ue001")
"""Private-use characters drip.render uses as slot markers: never allowed in a course's text."""


@dataclass(frozen=True)
class Lesson:
    """One email of the course. `number` is its 1-based position; `slug` is its stable identity."""

    slug: str
    number: int
    subject: str
    preheader: str
    delay_days: int
    body: str
    path: Path
    body_line: int = 1
    """Line of `path` on which `body` starts, so messages about the body can point at it."""


@dataclass(frozen=True)
class CourseSettings:
    """The author-editable settings of `course.toml` that shape sending."""

    id: str
    title: str
    sender_name: str
    sender_email: str
    timezone: str = "Asia/Tokyo"
    send_time: time = time(7, 30)
    quiet_hours: tuple[time, time] | None = None
    """(start, end) subscriber-local; may wrap midnight, e.g. 21:00-07:00."""
    send_days: frozenset[int] | None = None
    """Allowed weekdays, Monday = 0; None means every day."""
    skip_holidays: str | None = None
    """A country code for the `holidays` library, e.g. "JP"; None sends on holidays too."""
    source: str | None = None
    """The source article, relative to the course directory."""
    omit: tuple[str, ...] = ()
    """Source blocks deliberately left out of the lessons (exact text), e.g. an unfinished tail."""
    lessons: tuple[str, ...] = ()
    """Lesson slugs in sending order."""
    postal_address: str | None = None
    """The sender's postal address, shown in every email and page (特定電子メール法, CAN-SPAM)."""
    contact: str | None = None
    """How readers reach the sender (an email address or a URL), shown beside the address."""


@dataclass(frozen=True)
class Course:
    settings: CourseSettings
    lessons: tuple[Lesson, ...]
    directory: Path

    @property
    def id(self) -> str:
        return self.settings.id

    def has_lesson(self, slug: str) -> bool:
        return any(lesson.slug == slug for lesson in self.lessons)

    def lesson(self, slug: str) -> Lesson:
        for lesson in self.lessons:
            if lesson.slug == slug:
                return lesson
        raise KeyError(slug)

    def next_lesson(self, slug: str | None) -> Lesson | None:
        """The lesson after `slug` (the first one when `slug` is None); None after the last."""
        if slug is None:
            return self.lessons[0] if self.lessons else None
        for index, lesson in enumerate(self.lessons):
            if lesson.slug == slug:
                return self.lessons[index + 1] if index + 1 < len(self.lessons) else None
        raise KeyError(slug)


@dataclass(frozen=True)
class LessonFile:
    """A lesson file as written, before validation: front matter may hold anything."""

    path: Path
    position: int
    slug: str
    front_matter: dict[str, Any]
    body: str
    body_line: int


def split_front_matter(text: str, path: Path) -> tuple[dict[str, Any], str, int]:
    """Split `---` YAML front matter from a Markdown document.

    Returns (front matter, body, line number where the body starts). Raises `CourseFileError`
    with the file and line when the YAML is broken or is not a mapping.
    """
    if not text.startswith("---\n"):
        return {}, text, 1
    end = text.find("\n---\n", 3)
    if end == -1:
        raise CourseFileError(path, 1, "front matter opened with '---' is never closed by '---'")
    raw = text[4 : end + 1]
    try:
        data = yaml.safe_load(raw) or {}
    except yaml.YAMLError as exc:
        # The context mark points at the construct that is broken (an unclosed list); the
        # problem mark can point past it, at the end of the text.
        mark = getattr(exc, "context_mark", None) or getattr(exc, "problem_mark", None)
        line = mark.line + 2 if mark is not None else 1
        parts = [getattr(exc, "context", None), getattr(exc, "problem", None)]
        reason = "; ".join(str(part) for part in parts if part) or str(exc)
        raise CourseFileError(path, line, f"front matter is not valid YAML: {reason}") from exc
    if not isinstance(data, dict):
        raise CourseFileError(path, 2, "front matter must be 'key: value' lines")
    body = text[end + 5 :]
    body_line = text[: end + 5].count("\n") + 1
    return data, body.lstrip("\n"), body_line + (len(body) - len(body.lstrip("\n")))


def render_front_matter(data: dict[str, Any]) -> str:
    """Serialise front matter the way `drip course build` writes it (keys in a fixed order)."""
    dumped = yaml.safe_dump(data, allow_unicode=True, sort_keys=False, width=1000)
    return f"---\n{dumped}---\n\n"


def lesson_file_paths(lessons_dir: Path) -> list[Path]:
    """The `*.md` files under `lessons_dir`, in name order; `CourseError` without the directory."""
    if not lessons_dir.is_dir():
        raise CourseError(f"{lessons_dir}: no lessons directory; run 'drip course build' first")
    return sorted(lessons_dir.glob("*.md"))


def read_text_file(path: Path) -> str:
    """A course file's text; `CourseFileError` (with the line of the first bad byte) for a file
    that is not UTF-8 or cannot be read."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CourseFileError(path, None, f"cannot be read ({exc.strerror or exc})") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise CourseFileError(
            path, line, "is not UTF-8 (Shift_JIS?); save it as UTF-8 in your editor"
        ) from exc
    return text.replace("\r\n", "\n").replace("\r", "\n")  # as text mode reads it


def read_lesson_file(path: Path) -> LessonFile:
    """One `NN-slug.md` lesson file; raises `CourseFileError` naming the file (and line)."""
    match = LESSON_FILE_RE.match(path.name)
    if match is None:
        raise CourseFileError(
            path,
            None,
            "lesson files are named NN-slug.md (slug in lowercase a-z, 0-9 and '-'); rename it",
        )
    front, body, body_line = split_front_matter(read_text_file(path), path)
    return LessonFile(path, int(match["position"]), match["slug"], front, body, body_line)


def read_lesson_files(lessons_dir: Path) -> list[LessonFile]:
    """Every `NN-slug.md` under `lessons_dir`, in position order. The first unreadable file, or
    another `.md` name, raises `CourseFileError`."""
    return [read_lesson_file(path) for path in lesson_file_paths(lessons_dir)]


SETTINGS_KEYS = (
    "id",
    "title",
    "sender_name",
    "sender_email",
    "timezone",
    "send_time",
    "quiet_hours",
    "send_days",
    "skip_holidays",
    "source",
    "omit",
    "lessons",
    "postal_address",
    "contact",
)


class _Invalid(Exception):
    """The problem of one setting; the message names the key, not the file."""


@dataclass(frozen=True)
class SettingsIssue:
    """Something wrong in course.toml: the `key` it is about, and what; `error=False` warns."""

    key: str | None
    message: str
    error: bool = True


def _parse_time(value: Any, where: str) -> time:
    if isinstance(value, time):
        return value
    if isinstance(value, str) and re.fullmatch(r"\d{1,2}:\d{2}", value):
        hours, minutes = (int(part) for part in value.split(":"))
        if hours < 24 and minutes < 60:
            return time(hours, minutes)
    raise _Invalid(f'{where}: {value!r} is not a time of day; write it as "HH:MM"')


def _text(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Invalid(f"'{key}' must be a non-empty string")
    return value.strip()


def _optional(parse: Callable[[Any], str]) -> Callable[[Any], str | None]:
    """`parse`, except that an absent key is None."""

    def optional(value: Any) -> str | None:
        return None if value is None else parse(value)

    return optional


def _shown_text(key: str) -> Callable[[Any], str]:
    """A text every email shows (title, sender_name): non-empty, without reserved characters."""

    def parse(value: Any) -> str:
        text = _text(key, value)
        reserved = private_use_issue(key, text)
        if reserved is not None and reserved.error:
            raise _Invalid(reserved.message)
        return text

    return parse


def _course_id(value: Any) -> str:
    course_id = _text("id", value)
    if not re.fullmatch(r"[a-z0-9]+(?:-[a-z0-9]+)*", course_id):
        raise _Invalid(f"id {course_id!r} must be lowercase a-z, 0-9 and '-'")
    return course_id


def _sender_email(value: Any) -> str:
    """The sender in the ASCII form every message is sent with (drip.mime's rule)."""
    try:
        return ascii_address(_text("sender_email", value))
    except InvalidAddressError as exc:
        raise _Invalid(f"sender_email: {exc}") from exc


def _timezone(value: Any) -> str:
    """An IANA zone, by the rule subscribers' zones follow (`addresses.check_timezone`):
    host-specific keys such as `localtime` or `Factory` are refused, not only unknown names."""
    timezone = _text("timezone", value)
    try:
        return check_timezone(timezone)
    except InvalidAddressError as exc:
        raise _Invalid(f"timezone {timezone!r} is not an IANA zone such as Asia/Tokyo") from exc


def _quiet_hours(value: Any) -> tuple[time, time] | None:
    if value is None:
        return None
    if not (isinstance(value, list) and len(value) == 2):
        raise _Invalid('quiet_hours must be ["HH:MM", "HH:MM"] (start, end)')
    return (_parse_time(value[0], "quiet_hours"), _parse_time(value[1], "quiet_hours"))


def _send_days(value: Any) -> frozenset[int] | None:
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or not value
        or any(not isinstance(day, str) or day.lower()[:3] not in WEEKDAYS for day in value)
    ):
        raise _Invalid('send_days must list weekdays, e.g. ["mon", "tue", "fri"]')
    return frozenset(WEEKDAYS.index(day.lower()[:3]) for day in value)


def _skip_holidays(value: Any) -> str | None:
    if value is None:
        return None
    import holidays  # here, not with the module: only a course with skip_holidays needs it

    if not isinstance(value, str) or value.upper() not in holidays.list_supported_countries():
        raise _Invalid(
            f"skip_holidays = {value!r} is not a country code the holidays library knows;"
            ' use an ISO code such as "JP"'
        )
    return value.upper()


def _source(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise _Invalid("'source' must be a path relative to the course directory")
    return value


def _strings(key: str, what: str) -> Callable[[Any], tuple[str, ...]]:
    def parse(value: Any) -> tuple[str, ...]:
        if value is None:
            return ()
        if not isinstance(value, list) or any(not isinstance(item, str) for item in value):
            raise _Invalid(f"'{key}' must be a list of {what}")
        return tuple(value)

    return parse


_SETTINGS: dict[str, tuple[Callable[[Any], Any], Any]] = {
    "id": (_course_id, None),
    "timezone": (_timezone, "Asia/Tokyo"),
    "quiet_hours": (_quiet_hours, None),
    "send_days": (_send_days, None),
    "skip_holidays": (_skip_holidays, None),
    "lessons": (_strings("lessons", "lesson slugs"), None),
    "omit": (_strings("omit", "source blocks (strings)"), None),
    "source": (_source, None),
    "title": (_shown_text("title"), None),
    "sender_name": (_shown_text("sender_name"), None),
    "sender_email": (_sender_email, None),
    "send_time": (lambda value: _parse_time(value, "send_time"), "07:30"),
    "postal_address": (_optional(_shown_text("postal_address")), None),
    "contact": (_optional(_shown_text("contact")), None),
}
"""Each key of course.toml: how it is parsed and its default (None: absent means None)."""


def course_settings_issues(
    data: Mapping[str, Any],
) -> tuple[CourseSettings | None, list[SettingsIssue]]:
    """Validate the parsed `course.toml`: the settings (None when any key is in error) and every
    issue found, each naming its key; unknown keys are warnings."""
    known = ", ".join(SETTINGS_KEYS)
    issues = [
        SettingsIssue(str(key), f"unknown key '{key}' (known: {known})", error=False)
        for key in data
        if key not in SETTINGS_KEYS
    ]
    values: dict[str, Any] = {}
    for key, (parse, default) in _SETTINGS.items():
        try:
            values[key] = parse(data.get(key, default))
        except _Invalid as exc:
            issues.append(SettingsIssue(key, str(exc)))
    if any(issue.error for issue in issues):
        return None, issues
    return CourseSettings(**values), issues


def parse_setting(data: Mapping[str, Any], key: str, path: Path) -> Any:
    """One key of the parsed `course.toml` (e.g. `omit` for the build), validated as
    `parse_course_settings` does; `CourseError` when it is invalid."""
    parse, default = _SETTINGS[key]
    try:
        return parse(data.get(key, default))
    except _Invalid as exc:
        raise CourseError(f"{path}: {exc}") from exc


def parse_course_settings(data: Mapping[str, Any], path: Path) -> CourseSettings:
    """Validate the parsed `course.toml`; raises `CourseError` listing every key at fault."""
    settings, issues = course_settings_issues(data)
    errors = [issue.message for issue in issues if issue.error]
    if settings is None or errors:
        if len(errors) == 1:
            raise CourseError(f"{path}: {errors[0]}")
        raise CourseError(f"{path}: {len(errors)} errors:\n  " + "\n  ".join(errors))
    return settings


def read_course_toml(course_dir: Path) -> dict[str, Any]:
    """`course_dir/course.toml` parsed; `CourseFileError` (with the line when known) when it is
    missing, unreadable or not TOML."""
    path = course_dir / "course.toml"
    if not path.exists():
        raise CourseFileError(
            path,
            None,
            f"not found (looked in {path.resolve().parent}, from the working directory"
            f" {Path.cwd()}); run drip from the project directory (cron: cd there first), set"
            " DRIP_COURSE_DIR to the course directory, or make a course with"
            " 'drip course build SOURCE.md'",
        )
    try:
        return tomllib.loads(read_text_file(path))
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"at line (\d+)", str(exc))
        line = int(found[1]) if found else 1
        raise CourseFileError(path, line, f"not valid TOML: {exc}") from exc


# --- front matter ---------------------------------------------------------------------------------
# The rules for a lesson's front matter, in one place: `lesson_from_file` refuses what cannot be
# sent, `front_matter_issues` lists everything `drip course check` reports.


def is_subject(value: object) -> TypeGuard[str]:
    """A usable `subject`: text that is not blank."""
    return isinstance(value, str) and bool(value.strip())


def is_preheader(value: object) -> TypeGuard[str]:
    """A usable `preheader`: any text (blank means "inboxes show the body's first words")."""
    return isinstance(value, str)


def is_delay_days(value: object) -> TypeGuard[int]:
    """A usable `delay_days`: a whole number of days, 0 or more (YAML `true` is not one)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def display_width(text: str) -> int:
    """Columns `text` takes in an inbox list: a full-width (East Asian wide) character counts 2."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


@dataclass(frozen=True)
class FrontMatterIssue:
    """Something wrong with a lesson's front matter. `key` is the key it is about, or None for
    the front matter as a whole; `error=False` marks a warning."""

    key: str | None
    message: str
    error: bool = True


def private_use_issue(key: str | None, text: str) -> FrontMatterIssue | None:
    """A private-use character in text a reader sees: an error for the two drip reserves
    (U+E000, U+E001: rendering would break), else a warning (a 外字 shows as a box or a wrong
    character on the reader's device). None when there is none."""
    found = next((ch for ch in text if unicodedata.category(ch) == "Co"), None)
    if found is None:
        return None
    reserved = next((ch for ch in text if ch in RESERVED_CHARACTERS), None)
    if reserved is not None:
        message = (
            f"{key or 'the text'} contains U+{ord(reserved):04X}, a private-use character drip"
            " reserves; remove it"
        )
        return FrontMatterIssue(key, message)
    message = (
        f"{key or 'the text'} contains the private-use character U+{ord(found):04X} (外字), which"
        " readers' devices show as a box or a wrong character; replace it"
    )
    return FrontMatterIssue(key, message, error=False)


def front_matter_issues(front: Mapping[str, Any], number: int) -> list[FrontMatterIssue]:
    """Every problem of one lesson's front matter; `number` is the lesson's position (1-based)."""
    return [
        *_key_issues(front),
        *_subject_issues(front),
        *_preheader_issues(front),
        *_delay_issues(front, number),
        *(
            issue
            for key in ("subject", "preheader")
            if isinstance(front.get(key), str)
            and (issue := private_use_issue(key, front[key])) is not None
        ),
    ]


def _key_issues(front: Mapping[str, Any]) -> list[FrontMatterIssue]:
    if not front:
        return [FrontMatterIssue(None, "no front matter; start the file with '---'")]
    known = ", ".join(FRONT_MATTER_KEYS)
    unknown = [
        FrontMatterIssue(str(key), f"unknown front-matter key '{key}' (known: {known})")
        for key in front
        if key not in FRONT_MATTER_KEYS
    ]
    missing = [
        FrontMatterIssue(None, f"front matter is missing '{key}'")
        for key in FRONT_MATTER_KEYS
        if key not in front
    ]
    return unknown + missing


def _subject_issues(front: Mapping[str, Any]) -> list[FrontMatterIssue]:
    subject = front.get("subject")
    if "subject" in front and not is_subject(subject):
        return [FrontMatterIssue("subject", "'subject' must be non-empty text")]
    if not isinstance(subject, str):
        return []
    width = display_width(subject.strip())
    if width > SUBJECT_MAX_WIDTH:
        message = (
            f"subject is {width} columns wide (full-width characters count 2); at most"
            f" {SUBJECT_MAX_WIDTH} fit a phone inbox: shorten it"
        )
        return [FrontMatterIssue("subject", message)]
    if width > SUBJECT_WARN_WIDTH:
        message = f"subject is {width} columns wide; phones cut it after about {SUBJECT_WARN_WIDTH}"
        return [FrontMatterIssue("subject", message, error=False)]
    return []


def _preheader_issues(front: Mapping[str, Any]) -> list[FrontMatterIssue]:
    preheader = front.get("preheader")
    if "preheader" in front and not is_preheader(preheader):
        return [FrontMatterIssue("preheader", "'preheader' must be text")]
    if not isinstance(preheader, str):
        return []
    if not preheader.strip():
        message = "preheader is empty; inboxes will show the body's first words"
        return [FrontMatterIssue("preheader", message, error=False)]
    if display_width(preheader) > PREHEADER_MAX_WIDTH:
        message = f"preheader is longer than {PREHEADER_MAX_WIDTH} columns"
        return [FrontMatterIssue("preheader", message)]
    return []


def _delay_issues(front: Mapping[str, Any], number: int) -> list[FrontMatterIssue]:
    if "delay_days" not in front:
        return []
    delay = front["delay_days"]
    if not is_delay_days(delay):
        message = f"delay_days must be a whole number of days, 0 or more, not {delay!r}"
    elif delay > MAX_DELAY_DAYS:
        message = f"delay_days {delay} is more than a year; is that a typo?"
    elif number == 1 and delay != 0:
        message = "the first lesson goes out at confirmation: set delay_days: 0"
    else:
        return []
    return [FrontMatterIssue("delay_days", message)]


def lesson_from_file(file: LessonFile, number: int) -> Lesson:
    """Turn a lesson file into a `Lesson`; raises `CourseError` when front matter is unusable.

    `drip course check` reports the finer problems (`front_matter_issues`); this only refuses
    what cannot be sent.
    """
    front = file.front_matter
    subject = front.get("subject")
    preheader = front.get("preheader", "")
    delay = front.get("delay_days")
    if not is_subject(subject):
        raise CourseError(f"{file.path}:2: 'subject' is missing or empty")
    if not is_preheader(preheader):
        raise CourseError(f"{file.path}:2: 'preheader' must be text")
    if not is_delay_days(delay):
        raise CourseError(f"{file.path}:2: 'delay_days' must be a whole number of days, 0 or more")
    return Lesson(
        slug=file.slug,
        number=number,
        subject=subject.strip(),
        preheader=preheader.strip(),
        delay_days=delay,
        body=file.body,
        path=file.path,
        body_line=file.body_line,
    )


def load_course(course_dir: Path) -> Course:
    """Load a course directory. Lessons are ordered by `course.toml`'s `lessons` list.

    Raises `CourseError` when a file is unreadable or the lesson list names a missing lesson.
    """
    settings = parse_course_settings(read_course_toml(course_dir), course_dir / "course.toml")
    files = {file.slug: file for file in read_lesson_files(course_dir / "lessons")}
    order = settings.lessons or tuple(files)
    lessons = []
    for number, slug in enumerate(order, start=1):
        if slug not in files:
            raise CourseError(
                f"{course_dir / 'course.toml'}: lesson {slug!r} is listed but there is no"
                f" lessons/NN-{slug}.md"
            )
        lessons.append(lesson_from_file(files[slug], number))
    if not lessons:
        raise CourseError(f"{course_dir}: the course has no lessons")
    return Course(settings=settings, lessons=tuple(lessons), directory=course_dir)
