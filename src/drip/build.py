"""`drip course build`: split a Markdown article into lesson files plus a `course.toml`.

The text before the first `##` heading becomes the welcome lesson; every `##` section becomes
one lesson, its body the section verbatim, less the blocks course.toml lists under `omit`.
Re-running never loses an author's edits: front matter of existing lessons is kept as it is, and
a lesson whose body the author changed is only rewritten with `force=True`.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path

import tomlkit

from drip.check import markdown_blocks
from drip.course import (
    LessonFile,
    parse_setting,
    read_course_toml,
    read_lesson_files,
    render_front_matter,
)
from drip.errors import UsageError

WELCOME_SLUG = "welcome"
FIRST_DELAY_DAYS = 0
DEFAULT_DELAY_DAYS = 2
PREHEADER_LENGTH = 60
SENTENCE_END_RE = re.compile(r"(?<=[。!?!?])")


@dataclass(frozen=True)
class Section:
    """One future lesson: its heading (None for the welcome text) and its Markdown, verbatim."""

    heading: str | None
    markdown: str


@dataclass(frozen=True)
class BuildReport:
    """What `build_course` did: lesson files written, lesson files already up to date, and
    whether it created `course.toml`."""

    written: tuple[Path, ...]
    unchanged: tuple[Path, ...]
    course_toml_written: bool


def split_sections(markdown: str) -> list[Section]:
    """Split at `## ` headings outside fenced code. Pure; the text before the first is kept too."""
    sections: list[Section] = []
    heading: str | None = None
    lines: list[str] = []
    fenced = False
    for line in markdown.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        if not fenced and line.startswith("## "):
            if heading is not None or "".join(lines).strip():
                sections.append(Section(heading, "\n".join(lines).strip() + "\n"))
            heading, lines = line[3:].strip(), []
        lines.append(line)
    if heading is not None or "".join(lines).strip():
        sections.append(Section(heading, "\n".join(lines).strip() + "\n"))
    return sections


def slug_for(heading: str | None, position: int, taken: AbstractSet[str] = frozenset()) -> str:
    """A URL- and file-safe slug: the first five ASCII words and numbers of the heading ("Step 1
    Basics" -> `step-1-basics`; full-width letters count), else (no ASCII word, numbers alone
    say nothing) `lesson-NN`; `-2`, `-3` ... is added while it is in `taken`, so every lesson
    of a course gets its own."""
    if heading is None:
        base = WELCOME_SLUG
    else:
        words = re.findall(r"[a-z0-9]+", unicodedata.normalize("NFKC", heading).lower())
        has_word = any(not word.isdigit() for word in words)
        base = "-".join(words[:5]) if has_word else f"lesson-{position:02d}"
    slug, suffix = base, 2
    while slug in taken:
        slug, suffix = f"{base}-{suffix}", suffix + 1
    return slug


def omit_blocks(markdown: str, omit: Iterable[str]) -> str:
    """`markdown` without the blocks `omit` names (course.toml's `omit`: a block's exact text, or
    a heading as `### text`), as `drip course check` matches them; other lines stay verbatim."""
    wanted = {entry.strip() for entry in omit}
    if not wanted:
        return markdown
    dropped: set[int] = set()
    for block in markdown_blocks(markdown):
        if wanted.intersection(block.names()):
            dropped.update(range(block.line - 1, max(block.last, block.line)))
    lines = [line for index, line in enumerate(markdown.split("\n")) if index not in dropped]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines))


def first_sentence(markdown: str) -> str:
    """The first sentence of the first paragraph (not a heading, list or table), shortened."""
    for block in markdown.split("\n\n"):
        block = block.strip()
        if block and not block.startswith(("#", "-", "*", "|", ">", "```")):
            sentence = SENTENCE_END_RE.split(block, maxsplit=1)[0].strip()
            if len(sentence) > PREHEADER_LENGTH:
                sentence = sentence[: PREHEADER_LENGTH - 1] + "…"
            return sentence
    return ""


def course_toml_text(title: str, slugs: list[str], source: str = "source/article.md") -> str:
    """The initial `course.toml`, with comments for the author."""
    doc = tomlkit.document()
    doc.add(
        tomlkit.comment("The course settings. Edit freely; 'drip course check' validates them.")
    )
    doc.add("id", "course")
    doc.add("title", title)
    doc.add("sender_name", title)
    doc.add("sender_email", "course@example.com")
    doc.add(
        tomlkit.comment(
            "Required before sending (特定電子メール法, CAN-SPAM): shown in every email and page."
        )
    )
    doc.add(tomlkit.comment('postal_address = "〒100-0001 東京都千代田区..."'))
    doc.add(tomlkit.comment('contact = "course@example.com"'))
    doc.add(tomlkit.nl())
    doc.add(tomlkit.comment("Default timezone of subscribers who give none (IANA name)."))
    doc.add("timezone", "Asia/Tokyo")
    doc.add(tomlkit.comment("Lessons after the first go out at this subscriber-local time."))
    doc.add("send_time", "07:30")
    doc.add(tomlkit.comment("Nothing is sent between these subscriber-local times."))
    doc.add("quiet_hours", ["21:00", "07:00"])
    doc.add(tomlkit.comment('send_days = ["mon", "tue", "wed", "thu", "fri"]'))
    doc.add(tomlkit.comment('skip_holidays = "JP"'))
    doc.add(tomlkit.nl())
    doc.add(tomlkit.comment("The article the lessons come from, and blocks left out on purpose."))
    doc.add("source", source)
    doc.add("omit", tomlkit.array())
    doc.add(tomlkit.nl())
    doc.add(tomlkit.comment("Sending order. Progress is kept by slug: insert, do not rename."))
    lessons = tomlkit.array()
    lessons.extend(slugs)
    lessons.multiline(True)
    doc.add("lessons", lessons)
    return tomlkit.dumps(doc)


def build_course(source: Path, course_dir: Path, *, force: bool = False) -> BuildReport:
    """Write `course_dir/lessons/NN-slug.md` for each section of `source` (and `course.toml`).

    The blocks an existing `course.toml` lists under `omit` are left out first. An existing
    lesson at the same position keeps its slug and its front matter. If its body differs from
    the source section the build raises `UsageError` listing every such file and writes nothing,
    unless `force` is true. An existing `course.toml` is never rewritten; a new one names
    `source` relative to `course_dir`.
    """
    try:
        markdown = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{source}: cannot read the article: {exc.strerror}") from exc
    toml_path = course_dir / "course.toml"
    if toml_path.exists():
        omit = parse_setting(read_course_toml(course_dir), "omit", toml_path)
        markdown = omit_blocks(markdown, omit)
    sections = split_sections(markdown)
    if not sections:
        raise UsageError(f"{source}: the article is empty")
    lessons_dir = course_dir / "lessons"
    existing = (
        {file.position: file for file in read_lesson_files(lessons_dir)}
        if lessons_dir.is_dir()
        else {}
    )
    title = article_title(markdown) or source.stem
    plan = _plan(sections, existing, lessons_dir, title, force=force)
    if plan.conflicts:
        listed = "\n  ".join(str(path) for path in plan.conflicts)
        raise UsageError(
            "these lessons were edited since the last build and differ from the article:\n  "
            f"{listed}\nnothing was written; re-run with --force to overwrite their bodies"
            " (front matter is kept either way)"
        )
    lessons_dir.mkdir(parents=True, exist_ok=True)
    for path, text in plan.writes:
        path.write_text(text, encoding="utf-8")
    wrote_toml = not toml_path.exists()
    if wrote_toml:
        slugs = [path.stem.split("-", 1)[1] for path in plan.paths]
        relative = Path(os.path.relpath(source.resolve(), course_dir.resolve())).as_posix()
        toml_path.write_text(course_toml_text(title, slugs, relative), encoding="utf-8")
    return BuildReport(
        written=tuple(path for path, _ in plan.writes),
        unchanged=tuple(plan.unchanged),
        course_toml_written=wrote_toml,
    )


@dataclass(frozen=True)
class _Plan:
    writes: list[tuple[Path, str]]
    """(path, new text) of every lesson file to write, in position order."""
    paths: list[Path]
    """Every lesson's file, in position order."""
    conflicts: list[Path]
    """Existing lessons whose body the author changed (only filled without `force`)."""
    unchanged: list[Path]


def _plan(
    sections: list[Section],
    existing: dict[int, LessonFile],
    lessons_dir: Path,
    title: str,
    *,
    force: bool,
) -> _Plan:
    """What the build would write: an existing lesson at a position keeps its path and front
    matter; a new one gets a slug from its heading and default front matter."""
    plan = _Plan([], [], [], [])
    taken = {file.slug for file in existing.values()}
    for position, section in enumerate(sections, start=1):
        old = existing.get(position)
        if old is not None:
            front = dict(old.front_matter)
            path = old.path
        else:
            front = {
                "subject": section.heading or title,
                "preheader": first_sentence(section.markdown),
                "delay_days": FIRST_DELAY_DAYS if position == 1 else DEFAULT_DELAY_DAYS,
            }
            slug = slug_for(section.heading, position, taken)
            taken.add(slug)
            path = lessons_dir / f"{position:02d}-{slug}.md"
        plan.paths.append(path)
        if old is not None and old.body.strip() == section.markdown.strip():
            plan.unchanged.append(path)
            continue
        if old is not None and not force:
            plan.conflicts.append(path)
        plan.writes.append((path, render_front_matter(front) + section.markdown))
    return plan


def article_title(markdown: str) -> str | None:
    """The article's `# ` title, if it has one."""
    match = re.search(r"^# (.+)$", markdown, flags=re.MULTILINE)
    return match.group(1).strip() if match else None
