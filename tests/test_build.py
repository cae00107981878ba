"""`drip course build`: the split, slugs, front matter, and never losing an author's edits."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from tests.support import ROOT

from drip.build import build_course, first_sentence, split_sections
from drip.cli import main
from drip.course import load_course, read_lesson_files
from drip.errors import UsageError

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


def test_committed_course_is_what_build_leaves_plus_the_authors_edits(tmp_path: Path) -> None:
    """Re-running the build on the committed course only refuses the lesson the author cut."""
    shutil.copytree(ROOT / "course", tmp_path / "course")
    with pytest.raises(UsageError) as caught:
        build_course(ARTICLE, tmp_path / "course")
    assert "08-pitfalls.md" in str(caught.value)
    assert "0" + "7-comparison.md" not in str(caught.value)
