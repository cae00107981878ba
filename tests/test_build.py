"""`drip course build`: the split, slugs, front matter, and never losing an author's edits."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from tests.support import ROOT, TEMPLATES

from drip.build import build_course, first_sentence, split_sections
from drip.check import check_course
from drip.cli import main
from drip.course import load_course, read_lesson_files
from drip.errors import CourseError, UsageError

ARTICLE = ROOT / "course" / "source" / "article.md"

SMALL = """# 小さな講座

はじめの段落です。二つ目の文です。

## 第一章 First Steps

本文です。

### 小見出し

- 項目です。

## 第二章

```
## not a heading inside code
```

終わりです。
"""


def test_split_puts_the_text_before_the_first_section_in_a_welcome_lesson() -> None:
    sections = split_sections(SMALL)
    assert [s.heading for s in sections] == [None, "第一章 First Steps", "第二章"]
    assert sections[0].markdown.startswith("# 小さな講座")
    assert "### 小見出し" in sections[1].markdown
    assert "## not a heading inside code" in sections[2].markdown


def test_the_article_splits_into_eight_lessons(tmp_path: Path) -> None:
    report = build_course(ARTICLE, tmp_path)
    assert len(report.written) == 8
    assert report.course_toml_written
    course = load_course(tmp_path)
    assert [lesson.delay_days for lesson in course.lessons] == [0] + [2] * 7
    assert course.lessons[1].subject == "40代の「人脈」再考:なぜ今、新たな出会いが必要なのか?"
    assert course.lessons[0].slug == "welcome"
    # Bodies are the source sections verbatim: rejoined, they are the article.
    rejoined = "\n".join(lesson.body for lesson in course.lessons)
    assert rejoined.split() == ARTICLE.read_text(encoding="utf-8").split()


def test_slugs_and_preheaders(tmp_path: Path) -> None:
    source = tmp_path / "small.md"
    source.write_text(SMALL, encoding="utf-8")
    build_course(source, tmp_path / "course")
    names = [path.name for path in sorted((tmp_path / "course" / "lessons").iterdir())]
    assert names == ["01-welcome.md", "02-first-steps.md", "03-lesson-03.md"]
    course = load_course(tmp_path / "course")
    assert course.settings.title == "小さな講座"
    assert course.lessons[0].preheader == "はじめの段落です。"
    assert first_sentence("## 見出し\n\n" + "あ" * 100 + "。") == "あ" * 59 + "…"


def test_rebuild_keeps_edited_front_matter_and_renamed_slugs(tmp_path: Path) -> None:
    build_course(ARTICLE, tmp_path)
    lesson = tmp_path / "lessons" / "02-lesson-02.md"
    edited = lesson.read_text(encoding="utf-8").replace(
        "subject: 40代の「人脈」再考:なぜ今、新たな出会いが必要なのか?", "subject: 編集した件名"
    )
    renamed = tmp_path / "lessons" / "02-rethink.md"
    renamed.write_text(edited, encoding="utf-8")
    lesson.unlink()
    toml_before = (tmp_path / "course.toml").read_text(encoding="utf-8")

    report = build_course(ARTICLE, tmp_path)

    assert report.written == ()
    assert len(report.unchanged) == 8
    assert renamed.read_text(encoding="utf-8") == edited
    assert not lesson.exists()
    assert (tmp_path / "course.toml").read_text(encoding="utf-8") == toml_before


def test_rebuild_refuses_to_overwrite_an_edited_body_without_force(tmp_path: Path) -> None:
    build_course(ARTICLE, tmp_path)
    last = tmp_path / "lessons" / "08-lesson-08.md"
    cut = last.read_text(encoding="utf-8").split("### 即効性")[0]
    last.write_text(cut, encoding="utf-8")
    other = tmp_path / "lessons" / "03-lesson-03.md"
    other_text = other.read_text(encoding="utf-8")
    other.write_text(other_text.replace("subject:", "subject: 変更"), encoding="utf-8")

    with pytest.raises(UsageError, match=r"08-lesson-08\.md"):
        build_course(ARTICLE, tmp_path)
    assert last.read_text(encoding="utf-8") == cut  # nothing written

    report = build_course(ARTICLE, tmp_path, force=True)
    assert report.written == (last,)
    assert "人脈構築は、" in last.read_text(encoding="utf-8")
    files = {file.slug: file for file in read_lesson_files(tmp_path / "lessons")}
    assert files["lesson-03"].front_matter["subject"].startswith("変更")


def test_build_command_reports_and_exit_codes(tmp_path: Path) -> None:
    runner = CliRunner()
    env = {"DRIP_COURSE_DIR": str(tmp_path / "c")}
    result = runner.invoke(main, ["course", "build", str(ARTICLE)], env=env)
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "course.toml" in result.output
    missing = runner.invoke(main, ["course", "build", str(tmp_path / "nope.md")], env=env)
    assert missing.exit_code == 2
    assert "cannot read the article" in missing.output


def snapshot(course: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(course)): path.read_bytes()
        for path in sorted(course.rglob("*"))
        if path.is_file()
    }


def test_building_the_shipped_course_again_changes_nothing(tmp_path: Path) -> None:
    """The committed course is what the build leaves, with `omit` honoured (#17): a no-op, and
    --force changes nothing either (it used to append the omitted, cut-off text to lesson 8)."""
    course = tmp_path / "course"
    shutil.copytree(ROOT / "course", course)
    before = snapshot(course)
    report = build_course(course / "source" / "article.md", course)
    assert (report.written, len(report.unchanged), report.course_toml_written) == ((), 8, False)
    forced = build_course(course / "source" / "article.md", course, force=True)
    assert forced.written == ()
    assert snapshot(course) == before
    runner = CliRunner()
    result = runner.invoke(
        main,
        ["course", "build", "--force", str(course / "source" / "article.md")],
        env={"DRIP_COURSE_DIR": str(course)},
    )
    assert result.exit_code == 0, result.output
    assert snapshot(course) == before


def test_omitted_blocks_are_left_out_of_the_lessons(tmp_path: Path) -> None:
    source = tmp_path / "small.md"
    source.write_text(SMALL, encoding="utf-8")
    course = tmp_path / "course"
    course.mkdir()
    (course / "course.toml").write_text(
        'id = "small"\nomit = ["### 小見出し", "項目です。"]\n', encoding="utf-8"
    )
    build_course(source, course)
    second = (course / "lessons" / "02-first-steps.md").read_text(encoding="utf-8")
    assert second.endswith("## 第一章 First Steps\n\n本文です。\n"), second
    assert "小見出し" not in second and "項目" not in second


def test_a_bad_omit_list_is_a_course_error(tmp_path: Path) -> None:
    course = tmp_path / "course"
    course.mkdir()
    (course / "course.toml").write_text('omit = "all"\n', encoding="utf-8")
    with pytest.raises(CourseError, match="'omit' must be a list"):
        build_course(ARTICLE, course)


HEADINGS = """# Steps

Intro.

## Step 1 Basics

One.

## Step 2 Basics

Two.

## Step 1 Basics

Again.

## Step 1 of the big plan

Three.

## Step 1 of the big idea

Four.
"""


def test_headings_give_distinct_slugs_that_stay(tmp_path: Path) -> None:
    source = tmp_path / "steps.md"
    source.write_text(HEADINGS, encoding="utf-8")
    build_course(source, tmp_path / "c")
    names = [path.name for path in sorted((tmp_path / "c" / "lessons").iterdir())]
    assert names == [
        "01-welcome.md",
        "02-step-1-basics.md",
        "03-step-2-basics.md",
        "04-step-1-basics-2.md",
        "05-step-1-of-the-big.md",
        "06-step-1-of-the-big-2.md",
    ]
    assert build_course(source, tmp_path / "c").written == ()
    assert [path.name for path in sorted((tmp_path / "c" / "lessons").iterdir())] == names
    load_course(tmp_path / "c")  # no duplicate slugs


def test_a_course_built_into_a_new_directory_passes_its_own_source_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`DRIP_COURSE_DIR=newc drip course build course/source/article.md` (#22): `source` in the
    new course.toml is relative to the new course directory."""
    shutil.copytree(ROOT / "course" / "source", tmp_path / "course" / "source")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        main,
        ["course", "build", "course/source/article.md"],
        env={"DRIP_COURSE_DIR": "newc", "DRIP_TEMPLATES_DIR": str(TEMPLATES)},
    )
    assert result.exit_code == 0, result.output
    settings = load_course(tmp_path / "newc").settings
    assert settings.source is not None
    assert (tmp_path / "newc" / settings.source).resolve() == (
        tmp_path / "course" / "source" / "article.md"
    ).resolve()
    problems = check_course(tmp_path / "newc", TEMPLATES)
    # A new course.toml has no postal address or contact: only the author can give them, and
    # the check says so (tests/test_check.py); nothing else about course.toml or the source.
    found = [p for p in problems if p.path.name in ("course.toml", "article.md")]
    assert [p.message.split(" ", 1)[0] for p in found] == ["postal_address", "contact"], found
