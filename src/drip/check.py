"""`drip course check`: every problem in a course that would reach a subscriber, with file and line.

Pure apart from reading the course and template files. Returns `Problem`s; the CLI prints them and
exits 1 when any is an error (warnings alone exit 0).
"""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import jinja2
from jinja2 import meta
from markdown_it.token import Token
from markupsafe import Markup

from drip.addresses import InvalidAddressError, normalize_email
from drip.course import (
    CourseSettings,
    LessonFile,
    front_matter_issues,
    parse_course_settings,
    read_course_toml,
    read_lesson_files,
)
from drip.errors import CourseError
from drip.markup import convert, parse
from drip.render import (
    CONFIRMATION_TEMPLATES,
    LAYOUTS,
    LESSON_TEMPLATES,
    REQUIRED_TEMPLATES,
    CourseContext,
    LessonContext,
    describe_template_error,
    make_environment,
    template_error_location,
    time_greeting,
)

SENTENCE_ENDINGS = tuple("。．.!！?？」』）)…】〕”’♪")


Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Problem:
    """One finding: the file and 1-based line it is about, and what is wrong there.

    `error` problems make `drip course check` exit 1; warnings (`error=False`) are only shown.
    """

    path: Path
    line: int
    message: str
    error: bool = True

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
    blocks: list[Block] = []
    tokens = parse(markdown)
    context: list[str] = []
    row: list[str] = []
    row_line = 0
    for index, token in enumerate(tokens):
        if token.type in ("heading_open", "list_item_open", "tr_open"):
            context.append(token.type)
            if token.type == "tr_open":
                row, row_line = [], _line(token)
        elif token.type in ("heading_close", "list_item_close", "tr_close"):
            context.pop()
            if token.type == "tr_close":
                blocks.append(Block("row", " | ".join(row), row_line))
        elif token.type == "inline":
            opener = tokens[index - 1]
            text = token.content.strip()
            if opener.type in ("th_open", "td_open"):
                row.append(text)
            elif opener.type == "heading_open":
                blocks.append(Block(opener.tag, text, _line(opener)))
            elif context and context[-1] == "list_item_open":
                blocks.append(Block("item", text, _line(token)))
            else:
                blocks.append(Block("paragraph", text, _line(token)))
    return blocks


def _line(token: Token) -> int:
    return token.map[0] + 1 if token.map else 1


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


def _body_problems(file: LessonFile) -> list[Problem]:
    """The lesson has text, and its last block is a finished sentence (not a heading)."""
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


def check_course(course_dir: Path, templates_dir: Path) -> list[Problem]:
    """Every problem found in the course directory and the email templates, errors first."""
    toml_path = course_dir / "course.toml"
    try:
        settings = parse_course_settings(read_course_toml(course_dir), toml_path)
        files = read_lesson_files(course_dir / "lessons")
    except CourseError as exc:
        return [Problem(toml_path, 1, str(exc))]
    problems: list[Problem] = []
    try:
        normalize_email(settings.sender_email)
    except InvalidAddressError as exc:
        problems.append(Problem(toml_path, 1, f"sender_email: {exc}"))
    by_slug, clashes = _lesson_names(files)
    problems.extend(clashes)
    order = list(settings.lessons) or [file.slug for file in files]
    problems.extend(_order_problems(toml_path, order, by_slug, files))
    ordered = [by_slug[slug] for slug in dict.fromkeys(order) if slug in by_slug]
    for number, file in enumerate(ordered, start=1):
        problems.extend(check_lesson_file(file, number))
    problems.extend(check_coverage(settings, course_dir, ordered))
    problems.extend(check_templates(templates_dir))
    return sorted(problems, key=lambda p: (not p.error, str(p.path), p.line))


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
    toml_path: Path, order: list[str], by_slug: dict[str, LessonFile], files: list[LessonFile]
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
        if slug not in by_slug
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


# --- the email templates ------------------------------------------------------------------------

SAMPLE_BODY = """## 見出し

本文の段落です。

- 項目
  - 入れ子の項目

| 方法 | 特徴 |
|---|---|
| A | 一行目<br>二行目 |
"""


def check_templates(templates_dir: Path) -> list[Problem]:
    """Problems with the email templates, in the order found, each once (empty when fine).

    Reports: missing required templates, syntax errors, undefined variables (each template is
    rendered with sample data under StrictUndefined, as the renderer does), a layout that never
    uses `unsubscribe_url`, and rendered emails without the unsubscribe link.
    """
    if not templates_dir.is_dir():
        message = f"{templates_dir}: templates directory not found; set DRIP_TEMPLATES_DIR"
        return [Problem(templates_dir, 1, message)]
    env = make_environment(templates_dir)
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


def _sample_contexts() -> Iterator[tuple[str, dict[str, Any]]]:
    """(template kind, context) pairs covering both name variants and first/middle/last lessons."""
    converted = convert(SAMPLE_BODY)
    course = CourseContext(id="sample", title="サンプル講座", sender_name="サンプル講座事務局")
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
