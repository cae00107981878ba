"""drip.render: every committed lesson and the confirmation email, rendered for real."""

from __future__ import annotations

import html
import re
import shutil
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import pytest
from tests.support import COURSE, TEMPLATES

from drip.course import Course, Lesson, split_front_matter
from drip.errors import DripError, RenderError
from drip.render import (
    SLOT_OPEN,
    Recipient,
    RenderedEmail,
    Renderer,
    list_unsubscribe_headers,
    time_greeting,
)

BASE = "https://drip.example.com"
NAMED = Recipient(
    email="yamada@example.com",
    name="山田 太郎",
    unsubscribe_url=f"{BASE}/u/PLACEHOLDER-TOKEN",
    manage_url=f"{BASE}/m/PLACEHOLDER-TOKEN",
)
NAMELESS = Recipient(
    email="anon@example.com",
    name=None,
    unsubscribe_url=f"{BASE}/u/OTHER-TOKEN?x=1&y=2",
    manage_url=f"{BASE}/m/OTHER-TOKEN",
)
VOID = {
    "area",
    "base",
    "br",
    "col",
    "embed",
    "hr",
    "img",
    "input",
    "link",
    "meta",
    "source",
    "track",
    "wbr",
}


class StrictTags(HTMLParser):
    """Records tag nesting problems; html.parser itself never raises on bad markup."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.problems: list[str] = []
        self.hrefs: list[str] = []
        self.metas: list[dict[str, str | None]] = []
        self.styles: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.hrefs.append(dict(attrs).get("href") or "")
        if tag == "meta":
            self.metas.append(dict(attrs))
        self._in_style = tag == "style"
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
            return
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.styles.append(data)


def parse_html(html: str) -> StrictTags:
    parser = StrictTags()
    parser.feed(html)
    parser.close()
    assert parser.problems == [], parser.problems[:5]
    assert parser.stack == [], parser.stack
    return parser


@pytest.fixture(scope="module")
def course() -> Course:
    return COURSE


@pytest.fixture(scope="module")
def renderer(course: Course) -> Renderer:
    return Renderer(course, TEMPLATES)


def lesson_ids(lesson: Lesson) -> str:
    return lesson.slug


COMMITTED = COURSE.lessons


@pytest.mark.parametrize("lesson", COMMITTED, ids=lesson_ids)
def test_every_committed_lesson_renders_completely(renderer: Renderer, lesson: Lesson) -> None:
    total = len(COMMITTED)
    email = renderer.lesson(lesson, NAMED)
    assert email.subject == lesson.subject
    assert email.preheader == lesson.preheader
    assert email.headers == {
        "List-Unsubscribe": f"<{NAMED.unsubscribe_url}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
    parsed = parse_html(email.html)
    assert NAMED.unsubscribe_url in parsed.hrefs and NAMED.manage_url in parsed.hrefs
    assert {"name": "color-scheme", "content": "light dark"} in parsed.metas
    for part in (email.html, email.text):
        assert f"{lesson.number}/{total}" in part
        assert "山田 太郎さん、" in part
        assert "配信停止" in part and "配信の一時停止・設定" in part
        assert NAMED.unsubscribe_url in part and NAMED.manage_url in part
        assert SLOT_OPEN not in part and "Undefined" not in part
    assert f"{NAMED.unsubscribe_url}\n" in email.text  # a URL on its own line
    assert email.preheader in email.html
    assert email.text.endswith("\n") and "\n\n\n\n" not in email.text
    assert not re.search(r"&(#\d+|[a-z]+);", email.text)


@pytest.mark.parametrize("lesson", COMMITTED, ids=lesson_ids)
def test_greeting_without_a_name_is_natural(renderer: Renderer, lesson: Lesson) -> None:
    email = renderer.lesson(lesson, NAMELESS)
    first_lines = email.text.split("\n\n")[1]
    assert first_lines in ("ご登録ありがとうございます。", "おはようございます。")
    assert "さん、" not in email.text.split("\n\n")[1]
    assert "None" not in email.html and "None" not in email.text
    assert "https://drip.example.com/u/OTHER-TOKEN?x=1&amp;y=2" in email.html
    assert "https://drip.example.com/u/OTHER-TOKEN?x=1&y=2" in email.text


def test_per_recipient_parts_are_the_only_difference(renderer: Renderer, course: Course) -> None:
    lesson = course.lessons[2]
    a = renderer.lesson(lesson, NAMED)
    other = Recipient("s@example.com", "佐藤 花子", f"{BASE}/u/T2", f"{BASE}/m/T2")
    b = renderer.lesson(lesson, other)
    swapped = (
        a.html.replace("山田 太郎", "佐藤 花子")
        .replace(NAMED.unsubscribe_url, other.unsubscribe_url)
        .replace(NAMED.manage_url, other.manage_url)
    )
    assert swapped == b.html
    assert renderer.lesson(lesson, NAMED) == a


def test_names_are_escaped_in_html_and_cleaned_in_text(renderer: Renderer, course: Course) -> None:
    hostile = Recipient(
        "x@example.com", '<script>alert("x")</script>\r\nBcc: a@b.c', f"{BASE}/u/T", f"{BASE}/m/T"
    )
    email = renderer.lesson(course.lessons[1], hostile)
    assert "<script>" not in email.html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; Bcc: a@b.c" in email.html
    assert '<script>alert("x")</script> Bcc: a@b.c' in email.text


def test_only_the_last_lesson_has_the_completion_block(renderer: Renderer, course: Course) -> None:
    closing = "講座はこれで終わりです"
    for lesson in course.lessons[:-1]:
        email = renderer.lesson(lesson, NAMED)
        assert closing not in email.html and closing not in email.text
    last = renderer.lesson(course.lessons[-1], NAMED)
    assert closing in last.html and closing in last.text
    source = course.lessons[-1].path.read_text(encoding="utf-8")
    assert closing not in source  # template text, not the author's


def test_layout_is_inlined_responsive_and_dark_mode_aware(
    renderer: Renderer, course: Course
) -> None:
    email = renderer.lesson(course.lessons[6], NAMED)
    parsed = parse_html(email.html)
    style = "".join(parsed.styles)
    assert "@media" in style and "prefers-color-scheme: dark" in style
    assert re.sub(r"@media[^{]*\{(?:[^{}]*\{[^{}]*\})*\s*\}", "", style).strip() == ""
    assert "max-width: 600px" in email.html
    assert "line-height: 1.8" in email.html
    assert 'class="preheader" style="display: none' in email.html
    assert "Hiragino" in email.html
    assert '<div class="table-wrap" style="' in email.html


def test_the_preheader_is_hidden_without_a_colour_trick(renderer: Renderer) -> None:
    """Hidden the ways mail clients honour (display, Outlook's mso-hide, no height, no opacity),
    never by text coloured like its background: SpamAssassin scores that HTML_FONT_LOW_CONTRAST."""
    for slug, email in all_emails(renderer):
        found = re.search(r'<div class="preheader" style="([^"]*)">', email.html)
        assert found, slug
        style = {
            name.strip(): value.strip()
            for name, value in (rule.split(":", 1) for rule in found.group(1).split(";") if rule)
        }
        assert style["display"] == "none" and style["mso-hide"] == "all", (slug, style)
        assert style["max-height"] == "0" and style["opacity"] == "0", (slug, style)
        assert not {"color", "background-color", "background"} & style.keys(), (slug, style)


def test_a_lesson_without_preheader_uses_its_first_paragraph(course: Course) -> None:
    lesson = course.lessons[0]
    bare = Lesson(lesson.slug, lesson.number, lesson.subject, "", 0, lesson.body, lesson.path)
    renderer = Renderer(course, TEMPLATES)
    email = renderer.lesson(bare, NAMED)
    body = split_front_matter(lesson.path.read_text(encoding="utf-8"), lesson.path)[1]
    assert email.preheader and body.startswith(email.preheader.rstrip("…"))


def test_confirmation_email(renderer: Renderer) -> None:
    confirm = f"{BASE}/c/CONFIRM-TOKEN"
    email = renderer.confirmation(NAMED, confirm)
    assert email.subject == "【40代からの人脈革命】ご登録の確認をお願いします"
    assert email.preheader
    parsed = parse_html(email.html)
    assert confirm in parsed.hrefs and NAMED.unsubscribe_url in parsed.hrefs
    assert "登録を確定する" in email.html and "登録を確定する" in email.text
    button = re.search(r'<a class="button" href="[^"]*" style="([^"]*)">登録を', email.html)
    assert button, "the confirm button lost its inlined style"
    assert "background-color: #1f6f5c" in button.group(1)
    assert re.search(r"(^|;)\s*color: #ffffff", button.group(1))  # white text, not link colour
    assert f"{confirm}\n" in email.text
    assert "山田" not in email.text and "山田" not in email.html  # no name: see below
    assert email.headers["List-Unsubscribe"] == f"<{NAMED.unsubscribe_url}>"
    assert email.headers == list_unsubscribe_headers(NAMED.unsubscribe_url)
    nameless = renderer.confirmation(NAMELESS, confirm)
    assert nameless.text.startswith("『40代からの人脈革命』へのご登録ありがとうございます。")


def all_emails(renderer: Renderer) -> list[tuple[str, RenderedEmail]]:
    """Every lesson email of the committed course, then the confirmation email."""
    emails = [(lesson.slug, renderer.lesson(lesson, NAMED)) for lesson in COMMITTED]
    return [*emails, ("confirmation", renderer.confirmation(NAMED, f"{BASE}/c/CONFIRM-TOKEN"))]


def test_every_footer_shows_the_sender_postal_address_and_contact(renderer: Renderer) -> None:
    """特定電子メール法 and CAN-SPAM: the sender's name, postal address and a contact, in the
    footer of both parts of every email, after the unsubscribe link."""
    settings = COURSE.settings
    assert settings.postal_address and settings.contact
    shown = [
        f"送信者: {settings.sender_name}",
        f"住所: {settings.postal_address}",
        f"お問い合わせ: {settings.contact}",
    ]
    for slug, email in all_emails(renderer):
        html_footer = email.html[email.html.index('class="footer"') :]
        text_footer = email.text[email.text.rindex("――――") :]
        assert NAMED.unsubscribe_url in html_footer and NAMED.unsubscribe_url in text_footer
        visible = html.unescape(re.sub(r"<br>", "\n", re.sub(r"<(?!br>)[^>]*>", "", html_footer)))
        after_links = visible[visible.rindex("配信停止") :]
        after_links_text = text_footer[text_footer.index(NAMED.unsubscribe_url) :]
        assert "\n".join(shown) in after_links, (slug, after_links)
        assert "\n".join(shown) + "\n" in after_links_text, (slug, after_links_text)
        assert f"mailto:{settings.contact}" in parse_html(email.html).hrefs, slug


@pytest.mark.parametrize(
    ("contact", "href", "shown_html"),
    [
        ("info@example.jp", "mailto:info@example.jp", "info@example.jp"),
        (
            "https://example.jp/contact?a=1&b=2",
            "https://example.jp/contact?a=1&b=2",
            "https://example.jp/contact?a=1&amp;b=2",
        ),
        ("03-1234-5678(平日10時〜17時)", None, "03-1234-5678(平日10時〜17時)"),
        ("<b>@example.jp", None, "&lt;b&gt;@example.jp"),
    ],
)
def test_the_contact_is_a_link_only_when_it_is_an_address_or_a_url(
    course: Course, contact: str, href: str | None, shown_html: str
) -> None:
    settings = replace(course.settings, contact=contact, postal_address="〒100-0001 <東京>")
    renderer = Renderer(replace(course, settings=settings), TEMPLATES)
    for email in (
        renderer.lesson(course.lessons[0], NAMED),
        renderer.confirmation(NAMED, f"{BASE}/c/T"),
    ):
        hrefs = parse_html(email.html).hrefs
        assert [h for h in hrefs if h in (contact, f"mailto:{contact}")] == ([href] if href else [])
        assert f"お問い合わせ: {contact}\n" in email.text
        assert shown_html in email.html and "住所: 〒100-0001 &lt;東京&gt;" in email.html
        assert "住所: 〒100-0001 <東京>\n" in email.text


@pytest.mark.parametrize(
    "url", ["javascript:alert(1)", "https://e.com/u/x\r\nBcc: a@b.c", 'https://e.com/"><b>', ""]
)
def test_unusable_urls_are_refused(renderer: Renderer, course: Course, url: str) -> None:
    bad = Recipient("x@example.com", None, url, f"{BASE}/m/T")
    with pytest.raises(RenderError, match="unsubscribe_url"):
        renderer.lesson(course.lessons[0], bad)
    with pytest.raises(RenderError, match="confirm_url"):
        renderer.confirmation(NAMED, url)


def test_list_unsubscribe_headers_offer_one_click_unsubscribe() -> None:
    assert list_unsubscribe_headers("https://e.com/u/T") == {
        "List-Unsubscribe": "<https://e.com/u/T>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }


def test_time_greeting_follows_the_send_hour() -> None:
    assert time_greeting(7) == "おはようございます。"
    assert time_greeting(12) == "こんにちは。"
    assert time_greeting(20) == "こんばんは。"


# --- broken templates --------------------------------------------------------------------------


def copy_templates(tmp_path: Path) -> Path:
    target = tmp_path / "templates"
    shutil.copytree(TEMPLATES, target)
    return target


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def test_undefined_variable_raises_a_drip_error_with_file_and_line(
    tmp_path: Path, course: Course
) -> None:
    templates = copy_templates(tmp_path)
    edit(templates / "lesson.html.j2", "{{ body_html }}", "{{ body_html }}\n{{ lesson.nmuber }}")
    renderer = Renderer(course, templates)
    with pytest.raises(RenderError) as caught:
        renderer.lesson(course.lessons[0], NAMED)
    assert isinstance(caught.value, DripError)
    assert re.search(
        r"lesson\.html\.j2:1[0-9]: undefined template variable: .*nmuber", str(caught.value)
    )


def test_syntax_error_raises_a_drip_error(tmp_path: Path, course: Course) -> None:
    templates = copy_templates(tmp_path)
    edit(templates / "lesson.txt.j2", "{% endblock %}", "{% endfor %}")
    with pytest.raises(RenderError, match=r"lesson\.txt\.j2:\d+: template syntax error"):
        Renderer(course, templates).lesson(course.lessons[0], NAMED)


def test_email_without_unsubscribe_link_is_refused(tmp_path: Path, course: Course) -> None:
    templates = copy_templates(tmp_path)
    edit(
        templates / "lesson.html.j2",
        "{% block content %}",
        "{% block footer_links %}{% endblock %}\n{% block content %}",
    )
    with pytest.raises(RenderError, match="no unsubscribe link"):
        Renderer(course, templates).lesson(course.lessons[0], NAMED)


def test_transformed_recipient_values_are_refused(tmp_path: Path, course: Course) -> None:
    templates = copy_templates(tmp_path)
    edit(templates / "lesson.txt.j2", "{{ name }}さん", "{{ name|upper }}さん")
    with pytest.raises(RenderError, match="changed by a filter"):
        Renderer(course, templates).lesson(course.lessons[1], NAMED)


def test_the_confirmation_email_never_carries_the_submitted_name(renderer: Renderer) -> None:
    """It goes to an address nobody has confirmed: a name there would relay spam (#14)."""
    spam = "【当選】10万円 受取はこちら https://evil.example/win"
    submitted = Recipient("x@example.com", spam, f"{BASE}/u/T", f"{BASE}/m/T")
    email = renderer.confirmation(submitted, f"{BASE}/c/CONFIRM-TOKEN")
    assert "当選" not in email.html and "当選" not in email.text
    assert "evil.example" not in email.html + email.text
    nameless = renderer.confirmation(
        Recipient("x@example.com", None, f"{BASE}/u/T", f"{BASE}/m/T"), f"{BASE}/c/CONFIRM-TOKEN"
    )
    assert (email.html, email.text) == (nameless.html, nameless.text)


@pytest.mark.parametrize("name", ["👨\u200d👩\u200d👧", "❤\ufe0f", "👍🏽"])
def test_emoji_names_survive_rendering(renderer: Renderer, course: Course, name: str) -> None:
    reader = Recipient("x@example.com", name, f"{BASE}/u/T", f"{BASE}/m/T")
    email = renderer.lesson(course.lessons[1], reader)
    assert f"{name}さん" in email.text
    assert f"{name}さん" in email.html
