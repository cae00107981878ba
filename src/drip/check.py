"""`drip course check`: every problem in a course that would reach a subscriber, with file and line.

Pure apart from reading the course and template files. Returns `Problem`s; the CLI prints them and
exits 1 when any is an error (warnings alone exit 0).
"""

from __future__ import annotations

import difflib
import functools
import re
from collections import Counter
from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal

import jinja2
from jinja2 import meta
from markdown_it.token import Token
from markupsafe import Markup

from drip.addresses import ascii_address
from drip.course import (
    LESSON_FILE_RE,
    Course,
    CourseSettings,
    Lesson,
    LessonFile,
    course_settings_issues,
    front_matter_issues,
    lesson_file_paths,
    lesson_from_file,
    private_use_issue,
    read_course_toml,
    read_lesson_file,
)
from drip.errors import CourseError, CourseFileError, DripError, InvalidAddressError, RenderError
from drip.links import LinkBuilder
from drip.markup import convert, parse
from drip.message import OutgoingEmail
from drip.mime import build_mime
from drip.render import (
    CONFIRMATION_TEMPLATES,
    LAYOUTS,
    LESSON_TEMPLATES,
    REQUIRED_TEMPLATES,
    CourseContext,
    LessonContext,
    Recipient,
    RenderedEmail,
    Renderer,
    check_url,
    describe_template_error,
    make_environment,
    template_error_location,
    time_greeting,
)
from drip.schedule import is_quiet, local_send_moment

SENTENCE_ENDINGS = tuple("。．.!！?？」』）)…】〕”’♪")


Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Problem:
    """One finding: the file and 1-based line it is about, and what is wrong there.

    `error` problems make `drip course check` exit 1 (and `drip send` refuse to start);
    warnings (`error=False`) are only shown.
    """

    path: Path
    line: int
    message: str
    error: bool = True
    slug: str | None = field(default=None, compare=False)
    """The lesson the problem holds back, when it is about one lesson (its file, its rendering);
    None when it concerns the whole course (course.toml, the templates, the sender, the links)."""

    @property
    def severity(self) -> Severity:
        return "error" if self.error else "warning"

    def __str__(self) -> str:
        """The line `drip course check` prints: FILE:LINE: error|warning: message."""
        return f"{self.path}:{self.line}: {self.severity}: {self.message}"


@dataclass(frozen=True)
class Block:
    """A unit of text the subscriber sees: a heading, a paragraph, a list item or a table row."""

    kind: str
    text: str
    line: int
    """1-based line within the Markdown it was parsed from."""
    last: int = field(default=0, compare=False)
    """1-based last line of the block's source (a heading, a paragraph, a table row)."""

    def names(self) -> tuple[str, ...]:
        """How `omit` in course.toml may name this block: its text, or `## heading` form."""
        if self.kind.startswith("h"):
            return (self.text, f"{'#' * int(self.kind[1:])} {self.text}")
        return (self.text,)


def markdown_blocks(markdown: str) -> list[Block]:
    """The text units of a Markdown document, in reading order.

    A list item yields its own paragraph (nested items follow as their own blocks); a table row
    yields its cells joined by " | ", so rows compare like the source's pipe-separated lines.
    """
    return list(_markdown_blocks(markdown))


@functools.lru_cache(maxsize=64)
def _markdown_blocks(markdown: str) -> tuple[Block, ...]:
    # Cached: a check reads each lesson's blocks twice (its ending, the coverage).
    blocks: list[Block] = []
    tokens = parse(markdown)
    context: list[str] = []
    row: list[str] = []
    row_line = row_last = 0
    for index, token in enumerate(tokens):
        if token.type in ("heading_open", "list_item_open", "tr_open"):
            context.append(token.type)
            if token.type == "tr_open":
                row, row_line, row_last = [], _line(token), _last(token)
        elif token.type in ("heading_close", "list_item_close", "tr_close"):
            context.pop()
            if token.type == "tr_close":
                blocks.append(Block("row", " | ".join(row), row_line, row_last))
        elif token.type == "inline":
            opener = tokens[index - 1]
            text = token.content.strip()
            if opener.type in ("th_open", "td_open"):
                row.append(text)
            elif opener.type == "heading_open":
                blocks.append(Block(opener.tag, text, _line(opener), _last(opener)))
            elif context and context[-1] == "list_item_open":
                blocks.append(Block("item", text, _line(token), _last(opener)))
            else:
                blocks.append(Block("paragraph", text, _line(token), _last(opener)))
    return tuple(blocks)


def _line(token: Token) -> int:
    return token.map[0] + 1 if token.map else 1


def _last(token: Token) -> int:
    return token.map[1] if token.map else _line(token)


def ends_mid_sentence(block: Block) -> bool:
    """True when a paragraph or list item does not end like a finished sentence."""
    if block.kind not in ("paragraph", "item"):
        return False
    return not block.text.rstrip().endswith(SENTENCE_ENDINGS)


def _key_line(file: LessonFile, key: str) -> int:
    for number, line in enumerate(file.path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.startswith(f"{key}:"):
            return number
    return 2


def check_lesson_file(file: LessonFile, number: int) -> list[Problem]:
    """Front matter and body problems of one lesson file. `number` is its position in the course."""
    problems = [
        Problem(
            file.path,
            1 if issue.key is None else _key_line(file, issue.key),
            issue.message,
            issue.error,
        )
        for issue in front_matter_issues(file.front_matter, number)
    ]
    return problems + _body_problems(file)


def _private_use_problems(file: LessonFile) -> list[Problem]:
    """Private-use characters in the body, each line once (see `private_use_issue`)."""
    problems = []
    for offset, text in enumerate(file.body.split("\n")):
        issue = private_use_issue(None, text)
        if issue is not None:
            message = issue.message.replace("the text", "the line", 1)
            problems.append(Problem(file.path, file.body_line + offset, message, issue.error))
    return problems


def _body_problems(file: LessonFile) -> list[Problem]:
    """The lesson has text, and its last block is a finished sentence (not a heading)."""
    return _private_use_problems(file) + _ending_problems(file)


def _ending_problems(file: LessonFile) -> list[Problem]:
    blocks = markdown_blocks(file.body)
    if not blocks:
        return [Problem(file.path, file.body_line, "the lesson has no text")]
    last = blocks[-1]
    line = file.body_line + last.line - 1
    if last.kind in ("h1", "h2", "h3", "h4", "h5", "h6"):
        return [Problem(file.path, line, "the lesson ends with a heading")]
    if ends_mid_sentence(last):
        message = (
            f"the lesson ends mid-sentence (…{last.text[-20:]}); no reader may get a broken"
            " sentence: finish it, or cut the unfinished part (and list it under 'omit'"
            " in course.toml)"
        )
        return [Problem(file.path, line, message)]
    return []


def check_coverage(
    settings: CourseSettings, course_dir: Path, files: list[LessonFile]
) -> list[Problem]:
    """Compare the lessons, in course order, with the source article block by block.

    A source block in no lesson (and not listed in `omit`) or a block out of order is an error;
    a block repeated is an error; text that is not from the source is a warning.
    """
    if settings.source is None:
        return []
    source_path = course_dir / settings.source
    try:
        source_blocks = markdown_blocks(source_path.read_text(encoding="utf-8"))
    except OSError as exc:
        return [Problem(course_dir / "course.toml", 1, f"source {source_path}: {exc.strerror}")]
    omit = {entry.strip() for entry in settings.omit}
    problems = [
        Problem(course_dir / "course.toml", 1, f"omit lists {entry!r}, which is not in the source")
        for entry in sorted(omit)
        if not any(entry in block.names() for block in source_blocks)
    ]
    expected = [block for block in source_blocks if not omit.intersection(block.names())]
    actual: list[tuple[LessonFile, Block]] = [
        (file, block) for file in files for block in markdown_blocks(file.body)
    ]
    problems.extend(_coverage_differences(source_path, source_blocks, expected, actual))
    return problems


def _coverage_differences(
    source_path: Path,
    source_blocks: list[Block],
    expected: list[Block],
    actual: list[tuple[LessonFile, Block]],
) -> list[Problem]:
    """Where the lessons' blocks (`actual`) differ from the source blocks they should be."""
    source_texts = Counter(block.text for block in source_blocks)
    matcher = difflib.SequenceMatcher(
        a=[block.text for block in expected], b=[block.text for _, block in actual], autojunk=False
    )
    problems: list[Problem] = []
    for tag, a0, a1, b0, b1 in matcher.get_opcodes():
        if tag in ("delete", "replace"):
            problems.extend(
                Problem(
                    source_path,
                    block.line,
                    f"this source text is in no lesson, or out of order: {block.text[:40]}…"
                    " (add it back, or list it under 'omit' in course.toml)",
                )
                for block in expected[a0:a1]
            )
        if tag in ("insert", "replace"):
            problems.extend(
                _foreign_text(file, block, in_source=source_texts[block.text] > 0)
                for file, block in actual[b0:b1]
            )
    return problems


def _foreign_text(file: LessonFile, block: Block, *, in_source: bool) -> Problem:
    """A lesson block where the source has none: repeated or moved (error), or new (warning)."""
    line = file.body_line + block.line - 1
    if in_source:
        message = f"this text is repeated or out of the source's order: {block.text[:40]}…"
        return Problem(file.path, line, message)
    message = f"this text is not in the source: {block.text[:40]}…"
    return Problem(file.path, line, message, error=False)


def check_course(
    course_dir: Path,
    templates_dir: Path,
    *,
    sender: tuple[str, str | None] | None = None,
    renderer: Renderer | None = None,
    links: LinkBuilder | None = None,
) -> list[Problem]:
    """Every problem found in the course directory and the email templates, errors first.

    Besides the files themselves, every lesson and the confirmation email are rendered for a
    sample reader through `renderer` (by default one made for the lessons that load) and built
    as MIME messages from `sender` (by default the course's), exactly as `drip send` would;
    `links` (by default placeholders) makes the links as a send would.
    """
    toml_path = course_dir / "course.toml"
    settings, problems = _settings_problems(course_dir)
    files, file_problems, unreadable = _read_lessons(course_dir / "lessons")
    problems.extend(file_problems)
    by_slug, clashes = _lesson_names(files)
    problems.extend(clashes)
    order = list(settings.lessons) if settings and settings.lessons else list(by_slug)
    if settings is not None:
        problems.extend(_order_problems(toml_path, order, by_slug, files, unreadable))
    ordered = [by_slug[slug] for slug in dict.fromkeys(order) if slug in by_slug]
    for number, file in enumerate(ordered, start=1):
        problems.extend(replace(p, slug=file.slug) for p in check_lesson_file(file, number))
    if settings is not None and not unreadable:
        problems.extend(check_coverage(settings, course_dir, ordered))
    template_problems = check_templates(
        templates_dir, env=renderer.env if renderer is not None else None
    )
    problems.extend(template_problems)
    if settings is not None and not any(problem.error for problem in template_problems):
        if renderer is None:
            renderer = _renderer(settings, ordered, course_dir, templates_dir)
        held = {problem.slug for problem in problems if problem.error and problem.slug}
        problems.extend(
            render_problems(
                renderer,
                sender=sender or (settings.sender_email, settings.sender_name),
                links=links,
                skip=held,
            )
        )
    unique = dict.fromkeys(problems)
    return sorted(unique, key=lambda p: (not p.error, str(p.path), p.line))


def sendable_problems(
    course: Course,
    templates_dir: Path,
    *,
    sender: tuple[str, str | None],
    renderer: Renderer | None = None,
    links: LinkBuilder | None = None,
) -> list[Problem]:
    """The errors that must stop `drip send` before it claims anything: every error `drip course
    check` reports for `course`, and every reason a lesson or the confirmation could not be
    rendered and built (the sender `(address, display name)`, e.g. from DRIP_FROM, the links
    `links` makes, the templates, each lesson).

    Pass the send's `renderer` so the lessons it compiles here are not compiled again when
    sending. A problem's `slug` names the one lesson it concerns, None the whole course.
    """
    renderer = renderer or Renderer(course, templates_dir)
    problems = check_course(
        course.directory, templates_dir, sender=sender, renderer=renderer, links=links
    )
    return [problem for problem in problems if problem.error]


def _settings_problems(course_dir: Path) -> tuple[CourseSettings | None, list[Problem]]:
    """course.toml read and validated: the settings (None when unusable) and every problem,
    each on the line of its key."""
    toml_path = course_dir / "course.toml"
    try:
        data = read_course_toml(course_dir)
    except CourseFileError as exc:
        return None, [Problem(toml_path, exc.line or 1, exc.reason)]
    settings, issues = course_settings_issues(data)
    text = toml_path.read_text(encoding="utf-8")
    problems = [
        Problem(toml_path, _toml_key_line(text, issue.key), issue.message, issue.error)
        for issue in issues
    ]
    if settings is not None:
        problems.extend(_compliance_problems(toml_path, settings))
        problems.extend(_send_time_problems(toml_path, text, settings))
    return settings, problems


COMPLIANCE_SETTINGS = {
    "postal_address": (
        "the sender's postal address",
        '"〒100-0001 東京都千代田区千代田1-1 ○○株式会社"',
    ),
    "contact": (
        "where readers can reach the sender (an email address, a URL or a phone number)",
        '"course@example.com"',
    ),
}
"""The settings every email's footer must show, by law (特定電子メール法 article 4, CAN-SPAM):
what each one is, and an example value."""


def _compliance_problems(toml_path: Path, settings: CourseSettings) -> list[Problem]:
    """An error for each of `COMPLIANCE_SETTINGS` that course.toml leaves out: no email may go
    out without the sender's postal address and a way to contact them."""
    values = {"postal_address": settings.postal_address, "contact": settings.contact}
    return [
        Problem(
            toml_path,
            1,
            f"{key} is missing: every email must show {what} (特定電子メール法, CAN-SPAM);"
            f" add it to course.toml, e.g. {key} = {example}",
        )
        for key, (what, example) in COMPLIANCE_SETTINGS.items()
        if values[key] is None
    ]


def _toml_key_line(text: str, key: str | None) -> int:
    """The line on which course.toml sets `key` (1 when it does not)."""
    if key is not None:
        pattern = re.compile(rf"\s*{re.escape(key)}\s*=")
        for number, line in enumerate(text.splitlines(), start=1):
            if pattern.match(line):
                return number
    return 1


def _send_time_problems(toml_path: Path, text: str, settings: CourseSettings) -> list[Problem]:
    """A warning when send_time falls inside quiet_hours (lessons would wait for their end)."""
    if settings.quiet_hours is None:
        return []
    day = date(2026, 1, 5)  # any ordinary day: quiet hours are wall-clock times
    moment = local_send_moment(settings.timezone, day, settings.send_time)
    if not is_quiet(settings, settings.timezone, moment):
        return []
    start, end = settings.quiet_hours
    message = (
        f"send_time {settings.send_time:%H:%M} is inside quiet_hours {start:%H:%M}-{end:%H:%M}:"
        f" lessons would wait until {end:%H:%M}; move send_time out of the quiet hours"
    )
    return [Problem(toml_path, _toml_key_line(text, "send_time"), message, error=False)]


def _read_lessons(lessons_dir: Path) -> tuple[list[LessonFile], list[Problem], set[str]]:
    """The lesson files that can be read, a problem for each that cannot (on its own file and
    line), and the slugs of those (from their names) so they are not reported missing too."""
    try:
        paths = lesson_file_paths(lessons_dir)
    except CourseError as exc:
        return [], [Problem(lessons_dir, 1, str(exc).removeprefix(f"{lessons_dir}: "))], set()
    files: list[LessonFile] = []
    problems: list[Problem] = []
    unreadable: set[str] = set()
    for path in paths:
        try:
            files.append(read_lesson_file(path))
        except CourseFileError as exc:
            match = LESSON_FILE_RE.match(path.name)
            slug = match["slug"] if match else None
            problems.append(Problem(path, exc.line or 1, exc.reason, slug=slug))
            unreadable.add(slug or path.stem)
    return files, problems, unreadable


def _renderer(
    settings: CourseSettings, files: list[LessonFile], course_dir: Path, templates_dir: Path
) -> Renderer:
    """A renderer for the lessons whose front matter can be sent (the rest are reported)."""
    lessons: list[Lesson] = []
    for file in files:
        try:
            lessons.append(lesson_from_file(file, len(lessons) + 1))
        except CourseError:
            continue
    return Renderer(Course(settings, tuple(lessons), course_dir), templates_dir)


def _lesson_names(files: list[LessonFile]) -> tuple[dict[str, LessonFile], list[Problem]]:
    """The lesson files by slug (the first of each), and files that share a slug or a number."""
    by_slug: dict[str, LessonFile] = {}
    problems = []
    positions = Counter(file.position for file in files)
    for file in files:
        if file.slug in by_slug:
            problems.append(
                Problem(
                    file.path,
                    1,
                    f"duplicate slug '{file.slug}' (also"
                    f" {by_slug[file.slug].path.name}); slugs must be unique",
                )
            )
        by_slug.setdefault(file.slug, file)
        if positions[file.position] > 1:
            problems.append(
                Problem(file.path, 1, f"two lesson files have number {file.position:02d}")
            )
    return by_slug, problems


def _order_problems(
    toml_path: Path,
    order: list[str],
    by_slug: dict[str, LessonFile],
    files: list[LessonFile],
    unreadable: AbstractSet[str] = frozenset(),
) -> list[Problem]:
    """course.toml's `lessons` list against the lesson files: repeats, missing and unlisted."""
    problems = [
        Problem(toml_path, 1, f"lessons lists '{slug}' {count} times")
        for slug, count in Counter(order).items()
        if count > 1
    ]
    problems.extend(
        Problem(toml_path, 1, f"lessons lists '{slug}' but there is no lessons/NN-{slug}.md")
        for slug in order
        if slug not in by_slug and slug not in unreadable
    )
    problems.extend(
        Problem(
            file.path,
            1,
            f"'{file.slug}' is not in course.toml's lessons list: add it there or delete the file",
        )
        for file in files
        if file.slug not in order
    )
    return problems


# --- every real email, rendered and built as `drip send` would ----------------------------------

SAMPLE_EMAIL = "yamada@example.com"
SAMPLE_NAME = "山田 太郎"
SAMPLE_LINKS = "https://example.com"
SAMPLE_DATE = datetime(2026, 4, 1, tzinfo=UTC)


def render_problems(
    renderer: Renderer,
    *,
    sender: tuple[str, str | None],
    links: LinkBuilder | None = None,
    skip: AbstractSet[str] = frozenset(),
) -> list[Problem]:
    """Render each lesson of `renderer.course` (but those in `skip`) and the confirmation email
    for a sample reader, with and without a name, and build each as the MIME message a send hands
    over, from `sender` (address, display name). Any failure is a problem: on the lesson's file
    (with its slug), on confirmation.txt.j2, or on DRIP_FROM / DRIP_BASE_URL for a sender or
    links no email could be sent with."""
    settings = renderer.course.settings
    problems, from_address = _sender_problems(settings.sender_email, sender[0])
    recipients, confirm_url, link_problems = _sample_links(links)
    if link_problems:
        return problems + link_problems  # every email would fail the same way
    from_party = (from_address, sender[1])
    for lesson in renderer.course.lessons:
        if lesson.slug in skip:
            continue
        try:
            for recipient in recipients:
                rendered = renderer.lesson(lesson, recipient)
            _build(rendered, recipients[0], from_party, lesson.slug)
        except Exception as exc:  # any failure is a finding, not a crash of the check
            message = f"this lesson cannot be rendered and sent: {_reason(exc)}"
            problems.append(Problem(lesson.path, 1, message, slug=lesson.slug))
    try:
        for recipient in recipients:
            rendered = renderer.confirmation(recipient, confirm_url)
        _build(rendered, recipients[0], from_party, "confirmation")
    except Exception as exc:
        path = renderer.templates_dir / "confirmation.txt.j2"
        message = f"the confirmation email cannot be rendered and sent: {_reason(exc)}"
        problems.append(Problem(path, 1, message))
    return problems


def _sender_problems(course_sender: str, address: str) -> tuple[list[Problem], str]:
    """The sender checked by the rule drip.mime applies (course.toml's was checked on loading):
    problems, and the ASCII address to build with (the course's when `address` is unusable)."""
    if address == course_sender:
        return [], address
    try:
        return [], ascii_address(address, what="DRIP_FROM address")
    except InvalidAddressError as exc:
        return [Problem(Path("DRIP_FROM"), 1, str(exc))], course_sender


def _sample_links(links: LinkBuilder | None) -> tuple[list[Recipient], str, list[Problem]]:
    """Two sample readers (with and without a name) with links as a send makes them, the
    confirmation link, and a problem when such links cannot be sent."""
    if links is None:
        urls = [f"{SAMPLE_LINKS}/{kind}/SAMPLE-TOKEN" for kind in ("u", "m", "c")]
    else:
        urls = [
            links.unsubscribe_url(1),
            links.manage_url(1),
            links.confirm_url(1, now=SAMPLE_DATE),
        ]
    try:
        for name, url in zip(("unsubscribe_url", "manage_url", "confirm_url"), urls, strict=True):
            check_url(name, url)
    except RenderError as exc:
        return [], "", [Problem(Path("DRIP_BASE_URL"), 1, f"{exc}; fix DRIP_BASE_URL")]
    recipients = [Recipient(SAMPLE_EMAIL, name, urls[0], urls[1]) for name in (SAMPLE_NAME, None)]
    return recipients, urls[2], []


def _build(
    rendered: RenderedEmail, recipient: Recipient, sender: tuple[str, str | None], stem: str
) -> None:
    """Build the MIME message of one rendered email; raises `MimeError` as sending would."""
    outgoing = OutgoingEmail(
        delivery_id=f"check-{stem}",
        to_address=recipient.email,
        to_name=recipient.name,
        from_address=sender[0],
        from_name=sender[1],
        subject=rendered.subject,
        html=rendered.html,
        text=rendered.text,
        headers=rendered.headers,
    )
    build_mime(outgoing, date=SAMPLE_DATE, message_id_domain=sender[0].rpartition("@")[2])


def _reason(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, DripError) else f"{type(exc).__name__}: {exc}"


# --- the email templates ------------------------------------------------------------------------

SAMPLE_BODY = """## 見出し

本文の段落です。

- 項目
  - 入れ子の項目

| 方法 | 特徴 |
|---|---|
| A | 一行目<br>二行目 |
"""


def check_templates(templates_dir: Path, *, env: jinja2.Environment | None = None) -> list[Problem]:
    """Problems with the email templates, in the order found, each once (empty when fine).

    Reports: missing required templates, syntax errors, undefined variables (each template is
    rendered with sample data under StrictUndefined, as the renderer does), a layout that never
    uses `unsubscribe_url`, and rendered emails without the unsubscribe link, the sender's
    postal address or the contact. `env` (by default a new one) is the Jinja environment to
    compile them in, e.g. the renderer's.
    """
    if not templates_dir.is_dir():
        message = f"{templates_dir}: templates directory not found; set DRIP_TEMPLATES_DIR"
        return [Problem(templates_dir, 1, message)]
    env = env or make_environment(templates_dir)
    unparsable = _syntax_errors(env, templates_dir)
    missing = _missing_templates(templates_dir)
    broken = unparsable.keys() | missing.keys()
    problems = [
        *unparsable.values(),
        *missing.values(),
        *_layouts_without_unsubscribe(env, templates_dir, broken),
        *_sample_render_problems(env, templates_dir, broken),
    ]
    return list(dict.fromkeys(problems))


def _syntax_errors(env: jinja2.Environment, templates_dir: Path) -> dict[str, Problem]:
    """Every `*.j2` under `templates_dir` that does not parse, by template name."""
    found = {}
    for path in sorted(templates_dir.rglob("*.j2")):
        name = path.relative_to(templates_dir).as_posix()
        try:
            env.get_template(name)
        except jinja2.TemplateSyntaxError as exc:
            found[name] = Problem(templates_dir / name, exc.lineno, describe_template_error(exc))
    return found


def _missing_templates(templates_dir: Path) -> dict[str, Problem]:
    # The message repeats the file after the directory: `drip course check` has always printed
    # these as "DIR:1: error: DIR/NAME: missing; ...".
    return {
        name: Problem(
            templates_dir, 1, f"{templates_dir / name}: missing; every course needs {name}"
        )
        for name in REQUIRED_TEMPLATES
        if not (templates_dir / name).is_file()
    }


def _layouts_without_unsubscribe(
    env: jinja2.Environment, templates_dir: Path, broken: AbstractSet[str]
) -> Iterator[Problem]:
    for layout in LAYOUTS:
        if layout in broken:
            continue
        try:
            used = _referenced_variables(env, layout, set())
        except jinja2.TemplateError:
            continue  # reported by the syntax pass or the render pass
        if "unsubscribe_url" not in used:
            yield Problem(
                templates_dir / layout,
                1,
                "the layout never uses unsubscribe_url; every email must show a visible"
                " unsubscribe link (配信停止)",
            )


def _referenced_variables(env: jinja2.Environment, name: str, seen: set[str]) -> set[str]:
    """Variables used by template `name` and by every template it extends, includes or imports."""
    if name in seen:
        return set()
    seen.add(name)
    assert env.loader is not None
    source = env.loader.get_source(env, name)[0]
    ast = env.parse(source)
    found = set(meta.find_undeclared_variables(ast))
    for child in meta.find_referenced_templates(ast):
        if child is not None:
            found |= _referenced_variables(env, child, seen)
    return found


def _sample_render_problems(
    env: jinja2.Environment, templates_dir: Path, broken: AbstractSet[str]
) -> Iterator[Problem]:
    """Render every lesson and confirmation template that parses with each sample context."""
    for kind, context in _sample_contexts():
        names = LESSON_TEMPLATES if kind == "lesson" else CONFIRMATION_TEMPLATES
        for name in names:
            if name not in broken:
                yield from _sample_render_problem(env, templates_dir, name, context)


def _sample_render_problem(
    env: jinja2.Environment, templates_dir: Path, name: str, context: dict[str, Any]
) -> Iterator[Problem]:
    try:
        rendered = env.get_template(name).render(context)
    except Exception as exc:  # any failure is a finding, not a crash of `course check`
        file, line = template_error_location(exc, templates_dir, name)
        yield Problem(Path(file), line, describe_template_error(exc))
        return
    if context["unsubscribe_url"] not in rendered:
        yield Problem(
            templates_dir / name,
            1,
            "the rendered email has no unsubscribe link ({{ unsubscribe_url }}, 配信停止)",
        )
    course: CourseContext = context["course"]
    for key, shown in (("postal_address", course.postal_address), ("contact", course.contact)):
        if shown is not None and shown not in rendered:
            yield Problem(
                templates_dir / name,
                1,
                f"the rendered email does not show the sender's {key} ({{{{ course.{key} }}}});"
                " 特定電子メール法 and CAN-SPAM require it in every email",
            )


def _sample_contexts() -> Iterator[tuple[str, dict[str, Any]]]:
    """(template kind, context) pairs covering both name variants and first/middle/last lessons."""
    converted = convert(SAMPLE_BODY)
    course = CourseContext(
        id="sample",
        title="サンプル講座",
        sender_name="サンプル講座事務局",
        postal_address="〒100-0001 東京都千代田区千代田1-1",
        contact="info@example.com",
    )
    urls = {
        "unsubscribe_url": "https://example.com/u/SAMPLE-TOKEN",
        "manage_url": "https://example.com/m/SAMPLE-TOKEN",
    }
    for name in ("山田 太郎", None):
        for number in (1, 2, 3):
            lesson = LessonContext(
                number=number,
                total=3,
                slug="sample",
                subject="件名",
                preheader="プレヘッダー",
                is_first=number == 1,
                is_last=number == 3,
            )
            yield (
                "lesson",
                {
                    "course": course,
                    "lesson": lesson,
                    "subject": "件名",
                    "preheader": "プレヘッダー",
                    "body_html": Markup(converted.html),
                    "body_text": converted.text,
                    "time_greeting": time_greeting(7),
                    "name": name,
                    **urls,
                },
            )
        yield (
            "confirmation",
            {
                "course": course,
                "name": None,
                "confirm_url": "https://example.com/c/SAMPLE-TOKEN",
                "subject": "件名",
                "preheader": "プレヘッダー",
                **urls,
            },
        )
