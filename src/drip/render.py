"""Course + Lesson + Recipient -> RenderedEmail (subject, preheader, HTML, text, headers).

Pure: reads templates from the directory it is given, never the clock or the environment.

Rendering is split in two so that sending thousands of emails per second stays cheap:

1. Once per lesson (cached): the lesson Markdown is converted (`drip.markup`), the Jinja
   templates are rendered with every per-recipient value replaced by a *slot marker*, the CSS is
   inlined (css-inline, the expensive step), and the result is split at the markers. This is done
   for two variants, with and without a name, so templates may branch on `name`.
2. Per recipient: the split parts are joined with the recipient's values, HTML-escaped for the
   HTML part. No Jinja and no CSS work happen per recipient.

Templates therefore may print recipient values (`name`, `unsubscribe_url`, `manage_url`,
`confirm_url`) and test them with `{% if name %}`, but must not transform them (a filter such as
`name|upper` would act on the marker); a rendered email whose unsubscribe link went missing is
refused with `RenderError`.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple, overload

import css_inline
import jinja2
from markupsafe import Markup, escape

from drip.addresses import clean_name
from drip.course import RESERVED_CHARACTERS, Course, Lesson
from drip.errors import RenderError
from drip.markup import convert
from drip.message import BulkParts, OutgoingEmail

LAYOUTS = ("layout.html.j2", "layout.txt.j2")
LESSON_TEMPLATES = ("lesson.html.j2", "lesson.txt.j2")
CONFIRMATION_TEMPLATES = ("confirmation.html.j2", "confirmation.txt.j2")
REQUIRED_TEMPLATES = LAYOUTS + LESSON_TEMPLATES + CONFIRMATION_TEMPLATES

TEMPLATE_VARIABLES: dict[str, tuple[str, ...]] = {
    "lesson": (
        "course",  # .id .title .sender_name .postal_address .contact .contact_url
        "lesson",  # .number .total .slug .subject .preheader .is_first .is_last
        "subject",
        "preheader",
        "body_html",
        "body_text",
        "time_greeting",
        "name",
        "unsubscribe_url",
        "manage_url",
    ),
    "confirmation": (
        "course",
        "subject",
        "preheader",
        "name",  # always None: the confirmation email never shows a name
        "confirm_url",
        "unsubscribe_url",
        "manage_url",
    ),
}
"""The variables each kind of email template receives (lesson.*, confirmation.*)."""

LIST_UNSUBSCRIBE_POST = "List-Unsubscribe=One-Click"
SLOT_OPEN, SLOT_CLOSE = RESERVED_CHARACTERS  # private-use characters: never in real text
SLOT_RE = re.compile(f"{SLOT_OPEN}([a-z_]+){SLOT_CLOSE}")
URL_RE = re.compile(r"https?://[^\s<>\"'\x00-\x1f\x7f]+")
EMAIL_RE = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
BLANK_LINES_RE = re.compile(r"\n{4,}")


@dataclass(frozen=True)
class Recipient:
    """Who one email is for. The URLs are built by the caller (drip.links) and used verbatim."""

    email: str
    name: str | None
    unsubscribe_url: str
    manage_url: str


@dataclass(frozen=True)
class RenderedEmail:
    """One rendered email. `headers` are `list_unsubscribe_headers(unsubscribe_url)`."""

    subject: str
    preheader: str
    html: str
    text: str
    headers: dict[str, str]
    bulk: BulkParts | None = field(default=None, compare=False, repr=False)
    """The shared parts and this subscriber's values (lessons only), for bulk sending."""


@dataclass(frozen=True, eq=False)
class BulkLesson:
    """One lesson variant (with or without a name) as every reader of a send call gets it:
    what `OutgoingEmail` and `BulkParts` hold that is not the reader's. Made once per lesson
    variant per call and shared; compared by identity (`ComposedEmails` groups by it)."""

    html: tuple[str, ...]
    text: tuple[str, ...]
    subject: str
    from_address: str
    from_name: str | None
    slug: str
    date: datetime | None


class Reader(NamedTuple):
    """One reader of a send call in compact form: a tuple, not three dataclasses per reader.

    `name` is the stored name (the `to` name), `shown_name` the slot value (`clean_name`'s, or
    ""); the URLs are checked (`check_url`). `delivery_id` and `subscriber_id` are strings as
    they go in custom_args."""

    delivery_id: str
    subscriber_id: str
    email: str
    name: str | None
    shown_name: str
    unsubscribe_url: str
    manage_url: str
    lesson: BulkLesson

    def values(self) -> dict[str, str]:
        """The slot values, as `BulkParts.values`."""
        return {
            "name": self.shown_name,
            "unsubscribe_url": self.unsubscribe_url,
            "manage_url": self.manage_url,
        }


class ComposedEmails(Sequence[OutgoingEmail]):
    """Lesson emails left unfilled (`Renderer.lesson(fill=False)`), kept as `Reader` tuples.

    A sequence of `OutgoingEmail` like any other: each item is made when asked for, equal to
    what `drip.delivery.compose` makes. A bulk transport reads `readers` instead and never makes
    them (`drip.transports.sendgrid.bulk`)."""

    __slots__ = ("readers",)

    def __init__(self, readers: list[Reader]) -> None:
        self.readers = readers

    def __len__(self) -> int:
        return len(self.readers)

    @overload
    def __getitem__(self, index: int) -> OutgoingEmail: ...

    @overload
    def __getitem__(self, index: slice) -> list[OutgoingEmail]: ...

    def __getitem__(self, index: int | slice) -> OutgoingEmail | list[OutgoingEmail]:
        if isinstance(index, slice):
            return [reader_email(reader) for reader in self.readers[index]]
        return reader_email(self.readers[index])


def reader_email(reader: Reader) -> OutgoingEmail:
    """The `OutgoingEmail` of one reader (html and text empty, its bulk parts set)."""
    lesson = reader.lesson
    return OutgoingEmail(
        delivery_id=reader.delivery_id,
        to_address=reader.email,
        to_name=reader.name,
        from_address=lesson.from_address,
        from_name=lesson.from_name,
        subject=lesson.subject,
        html="",
        text="",
        headers=list_unsubscribe_headers(reader.unsubscribe_url),
        custom_args={
            "drip_delivery_id": reader.delivery_id,
            "drip_lesson": lesson.slug,
            "drip_subscriber": reader.subscriber_id,
        },
        bulk=BulkParts(lesson.html, lesson.text, reader.values()),
        date=lesson.date,
    )


@dataclass(frozen=True)
class CourseContext:
    """What templates see as `course`."""

    id: str
    title: str
    sender_name: str
    postal_address: str | None = None
    """The sender's postal address, shown in every footer (特定電子メール法, CAN-SPAM)."""
    contact: str | None = None
    """Where readers reach the sender (an email address, a URL or a phone number)."""

    @property
    def contact_url(self) -> str | None:
        """`contact` as a link target: `mailto:` for an email address, an http(s) URL as it
        is, None for anything else (a phone number is shown as text)."""
        contact = self.contact or ""
        if EMAIL_RE.fullmatch(contact):
            return f"mailto:{contact}"
        if URL_RE.fullmatch(contact):
            return contact
        return None


@dataclass(frozen=True)
class LessonContext:
    """What templates see as `lesson`."""

    number: int
    total: int
    slug: str
    subject: str
    preheader: str
    is_first: bool
    is_last: bool


@dataclass(frozen=True)
class _SlotTemplate:
    """Rendered text split at slot markers: literal, slot name, literal, slot name, ..., literal."""

    parts: tuple[str, ...]

    @classmethod
    def split(cls, rendered: str) -> _SlotTemplate:
        return cls(tuple(SLOT_RE.split(rendered)))

    @property
    def slots(self) -> frozenset[str]:
        return frozenset(self.parts[1::2])

    def fill(self, values: Mapping[str, str]) -> str:
        parts = list(self.parts)
        parts[1::2] = [values[slot] for slot in self.parts[1::2]]
        return "".join(parts)


@dataclass(frozen=True)
class _Compiled:
    """One email kind (a lesson, or the confirmation) ready for cheap per-recipient rendering."""

    subject: str
    preheader: str
    html: Mapping[bool, _SlotTemplate]  # keyed by "the recipient has a name"
    text: Mapping[bool, _SlotTemplate]


def slot(name: str) -> str:
    """The marker that stands for the per-recipient value `name` during the per-lesson render."""
    return f"{SLOT_OPEN}{name}{SLOT_CLOSE}"


def list_unsubscribe_headers(unsubscribe_url: str) -> dict[str, str]:
    """The List-Unsubscribe (RFC 2369) and one-click List-Unsubscribe-Post (RFC 8058) headers of
    an email whose unsubscribe link is `unsubscribe_url`, which is used as it is."""
    return {
        "List-Unsubscribe": f"<{unsubscribe_url}>",
        "List-Unsubscribe-Post": LIST_UNSUBSCRIBE_POST,
    }


def make_environment(templates_dir: Path) -> jinja2.Environment:
    """The Jinja environment for email templates: StrictUndefined, autoescape for `*.html.j2`."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir),
        autoescape=jinja2.select_autoescape(
            enabled_extensions=("html.j2", "html"), default_for_string=False, default=False
        ),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
    )


def time_greeting(hour: int) -> str:
    """A greeting that fits the subscriber-local hour lessons are sent at."""
    if 4 <= hour < 10:
        return "おはようございます。"
    if 10 <= hour < 18:
        return "こんにちは。"
    return "こんばんは。"


def _tidy_text(text: str) -> str:
    lines = [line.rstrip() for line in text.strip("\n").split("\n")]
    return BLANK_LINES_RE.sub("\n\n\n", "\n".join(lines)) + "\n"


def template_error_location(
    exc: BaseException, templates_dir: Path, fallback: str
) -> tuple[str, int]:
    """(file, line) of the innermost template frame of `exc` (Jinja rewrites tracebacks so the
    template's own file and line appear as frames); `fallback`'s first line when there is none."""
    if isinstance(exc, jinja2.TemplateSyntaxError) and exc.lineno:
        return exc.filename or exc.name or fallback, exc.lineno
    root = str(templates_dir.resolve())
    found = None
    for frame in traceback.extract_tb(exc.__traceback__):
        filename = frame.filename
        if filename.endswith(".j2") or str(Path(filename).resolve()).startswith(root):
            found = (filename, frame.lineno or 1)
    return found or (str(templates_dir / fallback), 1)


def describe_template_error(exc: BaseException) -> str:
    """What went wrong in a template, without its location."""
    if isinstance(exc, jinja2.UndefinedError):
        return f"undefined template variable: {exc.message}"
    if isinstance(exc, jinja2.TemplateSyntaxError):
        return f"template syntax error: {exc.message}"
    if isinstance(exc, jinja2.TemplateNotFound):
        return f"template not found: {exc.name}"
    return f"{type(exc).__name__}: {exc}"


def _template_error(exc: BaseException, templates_dir: Path, name: str) -> RenderError:
    file, line = template_error_location(exc, templates_dir, name)
    return RenderError(f"{file}:{line}: {describe_template_error(exc)}")


def _inline_css(html: str) -> str:
    inliner = css_inline.CSSInliner(keep_at_rules=True, load_remote_stylesheets=False)
    return inliner.inline(html)


class Renderer:
    """Renders a course's emails. Build one per process (or per send run) and reuse it.

    Each lesson is compiled on first use and cached by the `Lesson` value, so an edited lesson is
    compiled afresh. Raises `RenderError` (a `DripError`) naming the template file and line when a
    template is broken, uses an undefined variable, or drops the unsubscribe link.
    """

    def __init__(self, course: Course, templates_dir: Path) -> None:
        self.course = course
        self.templates_dir = templates_dir
        self.env = make_environment(templates_dir)
        self.course_context = CourseContext(
            id=course.settings.id,
            title=course.settings.title,
            sender_name=course.settings.sender_name,
            postal_address=course.settings.postal_address,
            contact=course.settings.contact,
        )
        self._lessons: dict[Lesson, _Compiled] = {}
        self._confirmation: _Compiled | None = None

    # --- per recipient -------------------------------------------------------------------------

    def lesson(self, lesson: Lesson, recipient: Recipient, *, fill: bool = True) -> RenderedEmail:
        """The email for `lesson` addressed to `recipient`; cheap after the lesson's first call.

        With `fill=False` the html and text are left empty and only `bulk` (the shared parts and
        this subscriber's checked values) is set: for a transport that fills them itself
        (`drip.transports.sendgrid.protocol.fill_parts`), so a subscriber sent in bulk costs no
        per-subscriber HTML.
        """
        return self._fill(self._compiled(lesson), recipient, {}, bulk=True, fill=fill)

    def bulk_lesson(
        self,
        lesson: Lesson,
        *,
        named: bool,
        sender: tuple[str, str | None],
        date: datetime | None,
    ) -> BulkLesson:
        """The shared part of `lesson`'s emails to readers with a name (`named`) or without,
        from `sender` (address, name), dated `date`: for `ComposedEmails`."""
        compiled = self._compiled(lesson)
        return BulkLesson(
            compiled.html[named].parts,
            compiled.text[named].parts,
            compiled.subject,
            sender[0],
            sender[1],
            lesson.slug,
            date,
        )

    def _compiled(self, lesson: Lesson) -> _Compiled:
        compiled = self._lessons.get(lesson)
        if compiled is None:
            compiled = self._compile_lesson(lesson)
            self._lessons[lesson] = compiled
        return compiled

    def confirmation(self, recipient: Recipient, confirm_url: str) -> RenderedEmail:
        """The double opt-in email asking `recipient` to open `confirm_url`.

        It never shows the recipient's name (templates see `name` as None): the address is not
        confirmed yet, and the name was typed by whoever filled in the form.
        """
        if self._confirmation is None:
            self._confirmation = self._compile_confirmation()
        return self._fill(
            self._confirmation,
            replace(recipient, name=None),
            {"confirm_url": check_url("confirm_url", confirm_url)},
        )

    def _fill(
        self,
        compiled: _Compiled,
        recipient: Recipient,
        extra: Mapping[str, str],
        *,
        bulk: bool = False,
        fill: bool = True,
    ) -> RenderedEmail:
        name = clean_name(recipient.name, max_length=None, strict=False)
        unsubscribe_url = check_url("unsubscribe_url", recipient.unsubscribe_url)
        values = {
            "name": name or "",
            "unsubscribe_url": unsubscribe_url,
            "manage_url": check_url("manage_url", recipient.manage_url),
            **extra,
        }
        has_name = name is not None
        html, text = compiled.html[has_name], compiled.text[has_name]
        if fill:
            escaped = {key: str(escape(value)) for key, value in values.items()}
            html_text, plain_text = html.fill(escaped), text.fill(values)
        else:
            html_text = plain_text = ""
        return RenderedEmail(
            subject=compiled.subject,
            preheader=compiled.preheader,
            html=html_text,
            text=plain_text,
            headers=list_unsubscribe_headers(unsubscribe_url),
            bulk=BulkParts(html.parts, text.parts, values) if bulk else None,
        )

    # --- once per lesson -----------------------------------------------------------------------

    def _compile_lesson(self, lesson: Lesson) -> _Compiled:
        for where, value in (
            ("the lesson", lesson.body),
            ("its subject", lesson.subject),
            ("its preheader", lesson.preheader),
        ):
            if SLOT_OPEN in value or SLOT_CLOSE in value:
                raise RenderError(
                    f"{lesson.path}:{lesson.body_line}: {where} contains the private-use"
                    " characters U+E000/U+E001, which drip reserves; remove them"
                )
        converted = convert(lesson.body)
        lessons = self.course.lessons
        total = len(lessons)
        position = next(
            (index for index, known in enumerate(lessons, 1) if known.slug == lesson.slug),
            lesson.number,
        )
        preheader = lesson.preheader or converted.summary
        context: dict[str, Any] = {
            "course": self.course_context,
            "lesson": LessonContext(
                number=position,
                total=total,
                slug=lesson.slug,
                subject=lesson.subject,
                preheader=preheader,
                is_first=position == 1,
                is_last=position == total,
            ),
            "subject": lesson.subject,
            "preheader": preheader,
            "body_html": Markup(converted.html),
            "body_text": converted.text,
            "time_greeting": time_greeting(self.course.settings.send_time.hour),
            "unsubscribe_url": slot("unsubscribe_url"),
            "manage_url": slot("manage_url"),
        }
        html = {}
        text = {}
        for has_name in (True, False):
            context["name"] = slot("name") if has_name else None
            html[has_name] = self._render("lesson.html.j2", context, html=True)
            text[has_name] = self._render("lesson.txt.j2", context, html=False)
        return _Compiled(lesson.subject, preheader, html, text)

    def _compile_confirmation(self) -> _Compiled:
        # `name` is always None here: the address is not confirmed yet, and a name chosen by
        # whoever filled in the form would make the email a spam relay.
        context: dict[str, Any] = {
            "course": self.course_context,
            "confirm_url": slot("confirm_url"),
            "unsubscribe_url": slot("unsubscribe_url"),
            "manage_url": slot("manage_url"),
            "name": None,
        }
        module = self._module("confirmation.txt.j2", context)
        subject = str(getattr(module, "subject", ""))
        preheader = str(getattr(module, "preheader", ""))
        if not subject.strip() or SLOT_OPEN in subject + preheader:
            raise RenderError(
                f"{self.templates_dir / 'confirmation.txt.j2'}:1: set a fixed subject and"
                ' preheader at the top, e.g. {% set subject = "..." %}; they may not use'
                " recipient values"
            )
        text = self._checked(_tidy_text(str(module)), "confirmation.txt.j2")
        html_context = {**context, "subject": subject, "preheader": preheader}
        html = self._render("confirmation.html.j2", html_context, html=True)
        if "confirm_url" not in html.slots | text.slots:
            raise RenderError(
                f"{self.templates_dir / 'confirmation.html.j2'}:1: the confirmation email"
                " never shows confirm_url; add a link to {{ confirm_url }}"
            )
        both = (True, False)
        return _Compiled(
            subject.strip(),
            preheader.strip(),
            dict.fromkeys(both, html),
            dict.fromkeys(both, text),
        )

    def _module(self, name: str, context: Mapping[str, Any]) -> Any:
        try:
            return self.env.get_template(name).make_module(dict(context))
        except jinja2.TemplateError as exc:
            raise _template_error(exc, self.templates_dir, name) from exc

    def _render(self, name: str, context: Mapping[str, Any], *, html: bool) -> _SlotTemplate:
        try:
            rendered = self.env.get_template(name).render(context)
        except jinja2.TemplateError as exc:
            raise _template_error(exc, self.templates_dir, name) from exc
        return self._checked(_inline_css(rendered) if html else _tidy_text(rendered), name)

    def _checked(self, rendered: str, name: str) -> _SlotTemplate:
        template = _SlotTemplate.split(rendered)
        if "unsubscribe_url" not in template.slots:
            raise RenderError(
                f"{self.templates_dir / name}:1: the rendered email has no unsubscribe link;"
                " the layout must show {{ unsubscribe_url }} (配信停止) in every email"
            )
        unknown = template.slots - set(TEMPLATE_VARIABLES["confirmation"])
        if unknown or SLOT_OPEN in "".join(template.parts[::2]):
            raise RenderError(
                f"{self.templates_dir / name}:1: a recipient value (name or a URL) was changed by"
                " a filter; print it as it is, e.g. {{ name }}"
            )
        return template


def check_url(field: str, url: str) -> str:
    """`url` if it can be a recipient link (a plain http(s) URL), else `RenderError`."""
    if not URL_RE.fullmatch(url):
        raise RenderError(
            f"{field} {url[:80]!r} is not a plain http(s) URL (no spaces, quotes, < > or control"
            " characters); build it with drip.links"
        )
    return url
