"""`drip course check`: one fixture course per error it must catch, plus the committed course."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from tests.support import ROOT, TEMPLATES, make_mailer

from drip.check import Problem, check_course, check_templates, sendable_problems
from drip.cli import main
from drip.course import load_course
from drip.delivery import check_sendable
from drip.errors import CourseNotSendableError
from drip.links import LinkBuilder
from drip.render import Recipient, Renderer
from drip.transports.memory import MemoryTransport

SOURCE = """はじめに。ようこそ。

## 第一章

第一章の本文です。

- 項目その一。

## 第二章

第二章の本文です。
"""

LESSONS = {
    "01-welcome.md": "---\nsubject: ようこそ\npreheader: 始まります\ndelay_days: 0\n---\n\n"
    "はじめに。ようこそ。\n",
    "02-first.md": "---\nsubject: 第一章\npreheader: 一\ndelay_days: 2\n---\n\n"
    "## 第一章\n\n第一章の本文です。\n\n- 項目その一。\n",
    "03-second.md": "---\nsubject: 第二章\npreheader: 二\ndelay_days: 2\n---\n\n"
    "## 第二章\n\n第二章の本文です。\n",
}

TOML = """id = "mini"
title = "ミニ講座"
sender_name = "ミニ講座"
sender_email = "mini@example.com"
source = "source.md"
lessons = ["welcome", "first", "second"]
postal_address = "〒100-0001 東京都千代田区千代田1-1 ミニ講座事務局"
contact = "mini@example.com"
"""


def make_course(tmp_path: Path) -> Path:
    course = tmp_path / "course"
    (course / "lessons").mkdir(parents=True)
    (course / "source.md").write_text(SOURCE, encoding="utf-8")
    (course / "course.toml").write_text(TOML, encoding="utf-8")
    for name, text in LESSONS.items():
        (course / "lessons" / name).write_text(text, encoding="utf-8")
    return course


def edit(course: Path, name: str, old: str, new: str) -> None:
    path = course / "lessons" / name if name.endswith(".md") else course / name
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new), encoding="utf-8")


def errors(problems: list[Problem]) -> list[str]:
    return [f"{p.path.name}:{p.line}: {p.message}" for p in problems if p.error]


def test_the_fixture_course_is_clean(tmp_path: Path) -> None:
    assert check_course(make_course(tmp_path), TEMPLATES) == []


def test_the_committed_course_passes(tmp_path: Path) -> None:
    problems = check_course(ROOT / "course", TEMPLATES)
    assert errors(problems) == []


Mutation = Callable[[Path], None]

CASES: list[tuple[str, Mutation, str]] = [
    (
        "unknown key",
        lambda c: edit(c, "02-first.md", "delay_days: 2", "delay_days: 2\nsubjet: x"),
        "02-first.md:5: unknown front-matter key 'subjet'",
    ),
    (
        "missing key",
        lambda c: edit(c, "02-first.md", "preheader: 一\n", ""),
        "02-first.md:1: front matter is missing 'preheader'",
    ),
    (
        "duplicate slug",
        lambda c: shutil.copy(c / "lessons" / "02-first.md", c / "lessons" / "04-first.md"),
        "04-first.md:1: duplicate slug 'first'",
    ),
    (
        "negative delay",
        lambda c: edit(c, "03-second.md", "delay_days: 2", "delay_days: -1"),
        "03-second.md:4: delay_days must be a whole number of days, 0 or more, not -1",
    ),
    (
        "text delay",
        lambda c: edit(c, "03-second.md", "delay_days: 2", "delay_days: two"),
        "03-second.md:4: delay_days must be a whole number",
    ),
    (
        "first lesson delayed",
        lambda c: edit(c, "01-welcome.md", "delay_days: 0", "delay_days: 1"),
        "01-welcome.md:4: the first lesson goes out at confirmation",
    ),
    (
        "subject too long",
        lambda c: edit(c, "02-first.md", "subject: 第一章", "subject: " + "長" * 31),
        "02-first.md:2: subject is 62 columns wide",
    ),
    (
        "mid-sentence",
        lambda c: edit(c, "03-second.md", "第二章の本文です。", "第二章の本文は、"),
        "03-second.md:9: the lesson ends mid-sentence",
    ),
    (
        "not covering",
        lambda c: edit(c, "02-first.md", "\n- 項目その一。\n", "\n"),
        "source.md:7: this source text is in no lesson",
    ),
    (
        "out of order",
        lambda c: edit(
            c, "course.toml", '["welcome", "first", "second"]', '["welcome", "second", "first"]'
        ),
        "this text is repeated or out of the source's order",
    ),
    (
        "unlisted lesson",
        lambda c: edit(c, "course.toml", ', "second"]', "]"),
        "03-second.md:1: 'second' is not in course.toml's lessons list",
    ),
    (
        "ends with heading",
        lambda c: edit(
            c, "03-second.md", "第二章の本文です。\n", "第二章の本文です。\n\n### 続き\n"
        ),
        "03-second.md:11: the lesson ends with a heading",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "expected"), [(m, e) for _, m, e in CASES], ids=[name for name, _, _ in CASES]
)
def test_each_error_is_reported_with_file_and_line(
    tmp_path: Path, mutate: Mutation, expected: str
) -> None:
    course = make_course(tmp_path)
    mutate(course)
    found = errors(check_course(course, TEMPLATES))
    assert any(expected in line for line in found), found


def test_undefined_template_variable_and_missing_unsubscribe_link(tmp_path: Path) -> None:
    course = make_course(tmp_path)
    templates = tmp_path / "templates"
    shutil.copytree(TEMPLATES, templates)
    layout = next(
        p
        for p in templates.iterdir()
        if "layout" in p.name and p.suffix == ".j2" and "html" in p.name
    )
    text = layout.read_text(encoding="utf-8")
    layout.write_text(text.replace("unsubscribe_url", "no_such_variable"), encoding="utf-8")
    found = "\n".join(errors(check_course(course, templates)))
    assert "no_such_variable" in found
    assert "unsubscribe" in found


def test_omit_must_name_source_text(tmp_path: Path) -> None:
    course = make_course(tmp_path)
    edit(course, "course.toml", 'source = "source.md"', 'source = "source.md"\nomit = ["無い文"]')
    assert any("omit lists '無い文'" in line for line in errors(check_course(course, TEMPLATES)))


def test_warning_only_exits_zero_and_errors_exit_one(tmp_path: Path) -> None:
    course = make_course(tmp_path)
    runner = CliRunner()
    env = {"DRIP_TEMPLATES_DIR": str(TEMPLATES)}
    edit(course, "02-first.md", "preheader: 一", "preheader: ''")
    ok = runner.invoke(main, ["course", "check", str(course)], env=env)
    assert ok.exit_code == 0, ok.output
    assert "warning: preheader is empty" in ok.output
    edit(course, "02-first.md", "delay_days: 2", "delay_days: -3")
    bad = runner.invoke(main, ["course", "check", str(course)], env=env)
    assert bad.exit_code == 1
    assert "02-first.md:4: error:" in bad.output


# --- check_templates ---------------------------------------------------------------------------

MINIMAL = {
    "layout.html.j2": (
        "<html><body>{% block content %}{% endblock %}"
        '<a href="{{ unsubscribe_url }}">配信停止</a>'
        "{{ course.postal_address }} {{ course.contact }}</body></html>\n"
    ),
    "layout.txt.j2": "{% block content %}{% endblock %}\n配信停止 {{ unsubscribe_url }}\n"
    "{{ course.postal_address }} {{ course.contact }}\n",
    "lesson.html.j2": '{% extends "layout.html.j2" %}{% block content %}{{ body_html }}'
    "{% endblock %}",
    "lesson.txt.j2": '{% extends "layout.txt.j2" %}{% block content %}{{ body_text }}'
    "{% endblock %}",
    "confirmation.html.j2": '{% extends "layout.html.j2" %}{% block content %}'
    '<a href="{{ confirm_url }}">確認</a>{% endblock %}',
    "confirmation.txt.j2": '{% set subject = "確認" %}{% set preheader = "" %}'
    '{% extends "layout.txt.j2" %}{% block content %}{{ confirm_url }}{% endblock %}',
}


def write_templates(tmp_path: Path, **changes: str) -> Path:
    target = tmp_path / "minimal"
    target.mkdir()
    for name, text in MINIMAL.items():
        text = changes.get(name.replace(".", "_"), text)
        (target / name).write_text(text, encoding="utf-8")
    return target


def located(problem: Problem) -> str:
    """FILE:LINE: message, as the template problems read before they were values."""
    return f"{problem.path}:{problem.line}: {problem.message}"


def test_committed_and_minimal_templates_are_clean(tmp_path: Path) -> None:
    assert check_templates(TEMPLATES) == []
    assert check_templates(write_templates(tmp_path)) == []


def test_check_templates_reports_an_undefined_variable(tmp_path: Path) -> None:
    templates = write_templates(
        tmp_path,
        lesson_txt_j2='{% extends "layout.txt.j2" %}{% block content %}\n\n'
        "{{ body_text }} {{ lesson.colour }}{% endblock %}",
    )
    problems = check_templates(templates)
    assert len(problems) == 1, problems
    assert located(problems[0]).startswith(
        f"{templates / 'lesson.txt.j2'}:3: undefined template variable"
    )
    assert "colour" in problems[0].message


def test_template_problems_are_values_with_file_line_and_severity(tmp_path: Path) -> None:
    templates = write_templates(
        tmp_path,
        lesson_txt_j2='{% extends "layout.txt.j2" %}{% block content %}\n\n'
        "{{ body_text }} {{ lesson.colour }}{% endblock %}",
    )
    [problem] = check_templates(templates)
    assert isinstance(problem, Problem)
    assert (problem.path, problem.line, problem.severity) == (
        templates / "lesson.txt.j2",
        3,
        "error",
    )
    assert problem.message.startswith("undefined template variable: ")
    assert "colour" in problem.message and str(templates) not in problem.message
    course_problems = check_course(make_course(tmp_path), templates)
    assert course_problems == [problem]


def test_check_templates_reports_a_layout_without_unsubscribe_link(tmp_path: Path) -> None:
    templates = write_templates(
        tmp_path, layout_html_j2="<html><body>{% block content %}{% endblock %}</body></html>"
    )
    problems = [located(problem) for problem in check_templates(templates)]
    assert (
        f"{templates / 'layout.html.j2'}:1: the layout never uses unsubscribe_url" in (problems[0])
    )
    assert any(
        "lesson.html.j2:1: the rendered email has no unsubscribe link" in p for p in problems
    )


@pytest.mark.parametrize("key", ["postal_address", "contact"])
def test_check_templates_reports_an_email_without_the_postal_address_or_contact(
    tmp_path: Path, key: str
) -> None:
    """Every email shows the sender's postal address and contact (特定電子メール法, CAN-SPAM): a
    layout that drops one is an error in each email made from it, and stops the send."""
    text = MINIMAL["layout.txt.j2"].replace(f"{{{{ course.{key} }}}}", "")
    templates = write_templates(tmp_path, layout_txt_j2=text)
    problems = {located(problem) for problem in check_templates(templates)}
    assert problems == {
        f"{templates / name}:1: the rendered email does not show the sender's {key}"
        f" ({{{{ course.{key} }}}}); 特定電子メール法 and CAN-SPAM require it in every email"
        for name in ("lesson.txt.j2", "confirmation.txt.j2")
    }
    loaded = load_course(make_course(tmp_path))
    assert len(sendable_problems(loaded, templates, sender=SENDER)) == 2


def test_check_templates_reports_syntax_errors_and_missing_files(tmp_path: Path) -> None:
    templates = write_templates(tmp_path, confirmation_html_j2="{% if %}\n")
    (templates / "lesson.txt.j2").unlink()
    problems = check_templates(templates)
    assert f"{templates / 'confirmation.html.j2'}:1: template syntax error" in located(problems[0])
    assert any(p.message.startswith(f"{templates / 'lesson.txt.j2'}: missing") for p in problems)
    assert check_templates(tmp_path / "nowhere")[0].message.endswith(
        "templates directory not found; set DRIP_TEMPLATES_DIR"
    )


# --- course.toml and lesson files are reported where they are (#22) ---------------------------


def test_every_course_toml_error_is_reported_on_its_line(tmp_path: Path) -> None:
    course = make_course(tmp_path)
    edit(course, "course.toml", 'id = "mini"', 'id = "Mini Course"\ntimezone = "Tokyo"')
    found = errors(check_course(course, TEMPLATES))
    assert any(line.startswith("course.toml:1: id 'Mini Course' must be") for line in found), found
    assert any(line.startswith("course.toml:2: timezone 'Tokyo'") for line in found), found
    assert not any("course.toml:" in line.split(": ", 1)[1] for line in found), found


def test_the_problem_line_does_not_repeat_the_file(tmp_path: Path) -> None:
    course = make_course(tmp_path)
    edit(course, "course.toml", 'id = "mini"', 'id = "Mini"')
    [problem] = [p for p in check_course(course, TEMPLATES) if p.error]
    assert str(problem) == f"{course / 'course.toml'}:1: error: id 'Mini' must be lowercase" + (
        problem.message.removeprefix("id 'Mini' must be lowercase")
    )
    assert str(course) not in problem.message


def test_a_yaml_error_is_reported_in_its_lesson_and_the_others_still_checked(
    tmp_path: Path,
) -> None:
    course = make_course(tmp_path)
    edit(course, "02-first.md", "preheader: 一", "preheader: [unclosed")
    edit(course, "03-second.md", "delay_days: 2", "delay_days: -1")
    found = errors(check_course(course, TEMPLATES))
    assert any(line.startswith("02-first.md:3: front matter is not valid YAML") for line in found)
    assert all("\n" not in line for line in found), found  # one line per problem
    assert any(line.startswith("03-second.md:4: delay_days must be") for line in found), found
    assert not any(line.startswith("course.toml") for line in found), found
    assert not any("lessons lists 'first'" in line for line in found), found


def test_send_time_inside_quiet_hours_is_a_warning(tmp_path: Path) -> None:
    course = make_course(tmp_path)
    edit(
        course,
        "course.toml",
        'source = "source.md"',
        'source = "source.md"\nsend_time = "22:00"\nquiet_hours = ["21:00", "07:00"]',
    )
    problems = check_course(course, TEMPLATES)
    warnings = [p for p in problems if not p.error]
    assert [p.line for p in warnings if "send_time" in p.message] == [6], problems
    assert "inside quiet_hours" in warnings[0].message
    assert errors(problems) == []


# --- every real lesson is rendered and built as the send would (#2, #3) -------------------------


def test_a_reserved_private_use_character_in_a_preheader_is_an_error(tmp_path: Path) -> None:
    course = make_course(tmp_path)
    edit(course, "02-first.md", "preheader: 一", "preheader: 一\ue000二")
    found = errors(check_course(course, TEMPLATES))
    assert any(line.startswith("02-first.md:3: preheader") and "U+E000" in line for line in found)
    [problem] = [p for p in sendable_problems(load_course(course), TEMPLATES, sender=SENDER)]
    assert problem.slug == "first" and "U+E000" in problem.message


def test_other_private_use_characters_are_a_warning(tmp_path: Path) -> None:
    course = make_course(tmp_path)
    edit(course, "02-first.md", "subject: 第一章", "subject: 第一章\ue0a5")
    edit(course, "03-second.md", "第二章の本文です。", "第二章の\uf8ff本文です。")
    source = course / "source.md"
    source.write_text(
        source.read_text(encoding="utf-8").replace(
            "第二章の本文です。", "第二章の\uf8ff本文です。"
        ),
        encoding="utf-8",
    )
    problems = check_course(course, TEMPLATES)
    assert errors(problems) == []
    warned = {(p.path.name, p.line) for p in problems if "private-use" in p.message}
    assert warned == {("02-first.md", 2), ("03-second.md", 9)}


def test_a_template_that_fails_only_for_a_real_lesson_names_that_lesson(tmp_path: Path) -> None:
    course = make_course(tmp_path)
    templates = tmp_path / "templates"
    shutil.copytree(TEMPLATES, templates)
    lesson_txt = templates / "lesson.txt.j2"
    lesson_txt.write_text(
        lesson_txt.read_text(encoding="utf-8").replace(
            "{{ body_text }}",
            '{{ body_text }}{% if lesson.slug == "second" %}{{ nope }}{% endif %}',
        ),
        encoding="utf-8",
    )
    assert check_templates(templates) == []  # the sample lessons do not show it
    found = [p for p in check_course(course, templates) if p.error]
    assert [(p.path.name, p.slug) for p in found] == [("03-second.md", "second")], found
    assert "nope" in found[0].message
    sendable = sendable_problems(load_course(course), templates, sender=SENDER)
    assert [p.slug for p in sendable] == ["second"]


def test_a_confirmation_that_fails_for_the_real_course_is_an_error(tmp_path: Path) -> None:
    course = make_course(tmp_path)
    templates = tmp_path / "templates"
    shutil.copytree(TEMPLATES, templates)
    confirmation = templates / "confirmation.txt.j2"
    confirmation.write_text(
        confirmation.read_text(encoding="utf-8").replace(
            "{% block content %}",
            '{% block content %}{% if course.title == "ミニ講座" %}{{ nope }}{% endif %}',
        ),
        encoding="utf-8",
    )
    found = [p for p in check_course(course, templates) if p.error]
    assert [(p.path.name, p.slug) for p in found] == [("confirmation.txt.j2", None)], found


SENDER = ("mini@example.com", "ミニ講座")


@pytest.mark.parametrize("address", ["講座@example.jp", "course@example", "a b@example.com"])
def test_an_unusable_sender_is_an_error_in_course_toml_and_in_drip_from(
    tmp_path: Path, address: str
) -> None:
    course = make_course(tmp_path)
    loaded = load_course(course)
    [problem] = sendable_problems(loaded, TEMPLATES, sender=(address, "講座"))
    assert (problem.path, problem.slug) == (Path("DRIP_FROM"), None)
    assert address in problem.message
    edit(course, "course.toml", 'sender_email = "mini@example.com"', f'sender_email = "{address}"')
    found = errors(check_course(course, TEMPLATES))
    assert any(line.startswith("course.toml:4: sender_email") for line in found), found


def test_an_international_sender_domain_passes_and_is_sent_in_ascii(tmp_path: Path) -> None:
    course = make_course(tmp_path)
    edit(course, "course.toml", "mini@example.com", "mini@人脈.jp")
    assert errors(check_course(course, TEMPLATES)) == []
    assert load_course(course).settings.sender_email == "mini@xn--gmq593j.jp"


def test_links_that_cannot_be_sent_are_one_error(tmp_path: Path) -> None:
    loaded = load_course(make_course(tmp_path))
    links = LinkBuilder("https://example.org/my list", ["k" * 32])
    found = sendable_problems(loaded, TEMPLATES, sender=SENDER, links=links)
    assert [(p.path, p.slug) for p in found] == [(Path("DRIP_BASE_URL"), None)], found
    assert "my list" in found[0].message


def test_sendable_problems_reuses_the_renderers_compiled_lessons(tmp_path: Path) -> None:
    loaded = load_course(make_course(tmp_path))
    renderer = Renderer(loaded, TEMPLATES)
    assert sendable_problems(loaded, TEMPLATES, sender=SENDER, renderer=renderer) == []
    compiled = dict(renderer._lessons)
    assert set(compiled) == set(loaded.lessons)
    renderer.lesson(loaded.lessons[0], renderer_recipient())
    assert renderer._lessons[loaded.lessons[0]] is compiled[loaded.lessons[0]]


def renderer_recipient() -> Recipient:
    return Recipient("r@example.com", None, "https://e.com/u/T", "https://e.com/m/T")


@pytest.mark.parametrize(
    ("key", "example"),
    [
        ("postal_address", 'postal_address = "〒100-0001 東京都千代田区千代田1-1'),
        ("contact", 'contact = "course@example.com"'),
    ],
)
def test_a_course_without_postal_address_or_contact_cannot_be_checked_or_sent(
    tmp_path: Path, key: str, example: str
) -> None:
    """特定電子メール法 and CAN-SPAM: every email shows the sender's postal address and a contact;
    a course.toml without either is an error for `drip course check` and for `drip send`."""
    course = make_course(tmp_path)
    line = next(line for line in TOML.splitlines() if line.startswith(f"{key} ="))
    edit(course, "course.toml", line + "\n", "")
    [problem] = [p for p in check_course(course, TEMPLATES) if p.error]
    assert (problem.path.name, problem.line, problem.slug) == ("course.toml", 1, None)
    assert problem.message.startswith(f"{key} is missing: every email must show")
    assert "特定電子メール法" in problem.message and example in problem.message
    loaded = load_course(course)
    assert sendable_problems(loaded, TEMPLATES, sender=SENDER) == [problem]
    with pytest.raises(CourseNotSendableError, match=f"{key} is missing"):
        check_sendable(make_mailer(MemoryTransport(), loaded))
    result = CliRunner().invoke(
        main, ["course", "check", str(course)], env={"DRIP_TEMPLATES_DIR": str(TEMPLATES)}
    )
    assert result.exit_code == 1
    assert f"course.toml:1: error: {key} is missing" in result.output


@pytest.mark.parametrize("key", ["postal_address", "contact"])
def test_an_empty_postal_address_or_contact_is_an_error_on_its_line(
    tmp_path: Path, key: str
) -> None:
    course = make_course(tmp_path)
    line = next(line for line in TOML.splitlines() if line.startswith(f"{key} ="))
    edit(course, "course.toml", line, f'{key} = "  "')
    found = errors(check_course(course, TEMPLATES))
    number = TOML.splitlines().index(line) + 1
    assert f"course.toml:{number}: '{key}' must be a non-empty string" in found, found


def test_the_committed_course_is_sendable() -> None:
    course = load_course(ROOT / "course")
    assert sendable_problems(course, TEMPLATES, sender=("course@example.com", "講座")) == []
