"""`drip course preview`: write every email of the course as files to open and inspect.

For a sample subscriber (山田 太郎 <yamada@example.com>) each lesson is written as `.html`,
`.txt` and `.eml` (the exact MIME message an SMTP transport would send), plus the confirmation
email and an `index.html` linking them. Paths, the base URL and `now` are parameters; the CLI
supplies them from Settings and the clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from jinja2 import Environment

from drip.course import Course, Lesson, load_course
from drip.errors import UsageError
from drip.message import OutgoingEmail
from drip.mime import build_mime, to_bytes
from drip.render import Recipient, RenderedEmail, Renderer

SAMPLE_NAME = "山田 太郎"
SAMPLE_EMAIL = "yamada@example.com"
PLACEHOLDER_TOKEN = "PLACEHOLDER-TOKEN"

INDEX_TEMPLATE = """<!DOCTYPE html>
<html lang="ja">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}: email preview</title>
<style>
  body { max-width: 760px; margin: 2em auto; padding: 0 16px; line-height: 1.7;
    font-family: -apple-system, "Hiragino Sans", "Noto Sans JP", Meiryo, sans-serif; }
  li { margin: 0 0 0.6em; }
  .files a { margin-right: 0.8em; font-size: 0.9em; }
  @media (prefers-color-scheme: dark) { body { background: #161616; color: #e4e2dd; }
    a { color: #7fd0b8; } }
</style>
</head>
<body>
<h1>{{ title }}</h1>
<p>Preview for the sample subscriber {{ name }} &lt;{{ email }}&gt;. Links use the placeholder
token {{ token }}.</p>
<ol>
{% for item in items %}
<li><strong>{{ item.label }}</strong> {{ item.subject }}<br>
<span class="files">
{% for path in item.files %}<a href="{{ path }}">{{ path }}</a>{% endfor %}
</span></li>
{% endfor %}
</ol>
</body>
</html>
"""


@dataclass(frozen=True)
class _IndexItem:
    label: str
    subject: str
    files: tuple[str, ...]


def select_lessons(course: Course, selector: str | None) -> tuple[Lesson, ...]:
    """All lessons, or the one named by slug or number ("3", "03"); else `UsageError`."""
    if selector is None:
        return course.lessons
    for lesson in course.lessons:
        if selector == lesson.slug or (selector.isdigit() and int(selector) == lesson.number):
            return (lesson,)
    choices = ", ".join(f"{lesson.number} ({lesson.slug})" for lesson in course.lessons)
    raise UsageError(f"no lesson {selector!r} in the course; choose one of {choices}")


def sample_recipient(base_url: str) -> Recipient:
    """The preview subscriber, with links that show where real tokens will go."""
    base = base_url.rstrip("/")
    return Recipient(
        email=SAMPLE_EMAIL,
        name=SAMPLE_NAME,
        unsubscribe_url=f"{base}/u/{PLACEHOLDER_TOKEN}",
        manage_url=f"{base}/m/{PLACEHOLDER_TOKEN}",
    )


def _write_email(
    out_dir: Path, stem: str, rendered: RenderedEmail, course: Course, now: datetime
) -> list[Path]:
    sender = course.settings.sender_email
    outgoing = OutgoingEmail(
        delivery_id=f"preview-{stem}",
        to_address=SAMPLE_EMAIL,
        to_name=SAMPLE_NAME,
        from_address=sender,
        from_name=course.settings.sender_name,
        subject=rendered.subject,
        html=rendered.html,
        text=rendered.text,
        headers=rendered.headers,
    )
    message = build_mime(outgoing, date=now, message_id_domain=sender.rpartition("@")[2])
    paths = [out_dir / f"{stem}.html", out_dir / f"{stem}.txt", out_dir / f"{stem}.eml"]
    _write(out_dir, paths[0], rendered.html.encode("utf-8"))
    _write(out_dir, paths[1], rendered.text.encode("utf-8"))
    _write(out_dir, paths[2], to_bytes(message))
    return paths


def _unwritable(out_dir: Path, exc: OSError) -> UsageError:
    return UsageError(
        f"{out_dir}: cannot write the preview there ({exc.strerror or exc}); choose another"
        " directory with --out"
    )


def _make_directory(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _unwritable(out_dir, exc) from exc


def _write(out_dir: Path, path: Path, data: bytes) -> None:
    try:
        path.write_bytes(data)
    except OSError as exc:
        raise _unwritable(out_dir, exc) from exc


def write_preview(
    course_dir: Path,
    templates_dir: Path,
    base_url: str,
    out_dir: Path,
    *,
    now: datetime,
    lesson: str | None = None,
) -> list[Path]:
    """Render the course's emails into `out_dir` (created if needed); returns the paths written.

    `lesson` limits the lessons to one (slug or number). Raises `CourseError` for a broken
    course, `RenderError` for broken templates, `UsageError` for an unknown lesson or an
    `out_dir` that cannot be made or written (a file on its path, /proc, no permission).
    """
    course = load_course(course_dir)
    lessons = select_lessons(course, lesson)
    renderer = Renderer(course, templates_dir)
    recipient = sample_recipient(base_url)
    _make_directory(out_dir)
    written: list[Path] = []
    items: list[_IndexItem] = []
    total = len(course.lessons)
    for chosen in lessons:
        stem = f"{chosen.number:02d}-{chosen.slug}"
        rendered = renderer.lesson(chosen, recipient)
        paths = _write_email(out_dir, stem, rendered, course, now)
        written += paths
        label = f"{chosen.number}/{total}"
        items.append(_IndexItem(label, rendered.subject, tuple(path.name for path in paths)))
    confirm_url = f"{base_url.rstrip('/')}/c/{PLACEHOLDER_TOKEN}"
    rendered = renderer.confirmation(recipient, confirm_url)
    paths = _write_email(out_dir, "confirmation", rendered, course, now)
    written += paths
    items.append(_IndexItem("確認", rendered.subject, tuple(path.name for path in paths)))
    index = (
        Environment(autoescape=True)
        .from_string(INDEX_TEMPLATE)
        .render(
            title=course.settings.title,
            name=SAMPLE_NAME,
            email=SAMPLE_EMAIL,
            token=PLACEHOLDER_TOKEN,
            items=items,
        )
    )
    index_path = out_dir / "index.html"
    _write(out_dir, index_path, index.encode("utf-8"))
    written.append(index_path)
    return written
