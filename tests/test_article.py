"""The article round trip: every paragraph, list item and table row of the source text appears
exactly once, in order, across the committed lessons, except the unfinished tail."""

from __future__ import annotations

import pytest
from tests.support import COURSE, ROOT

from drip.check import markdown_blocks

ARTICLE_TXT = ROOT / "course" / "source" / "article.txt"
SHARED_ARTICLE = ROOT.parent / "shared" / "article.txt"
UNFINISHED_TAIL = ["即効性を求めず、長期的な視点で関係を育む", "人脈構築は、"]


def source_units() -> list[str]:
    """The article's lines as comparable units: table rows as their cells joined by ' | '."""
    units = []
    for line in ARTICLE_TXT.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or set(line) <= {"-", "|"}:
            continue  # blank lines and the table's separator row carry no text
        if "|" in line:
            units.append(" | ".join(cell.strip() for cell in line.strip("|").split("|")))
        else:
            units.append(line.removeprefix("- "))
    return units


def lesson_units() -> list[str]:
    return [block.text for lesson in COURSE.lessons for block in markdown_blocks(lesson.body)]


def test_committed_copy_matches_the_shared_article() -> None:
    if not SHARED_ARTICLE.exists():
        pytest.skip(f"{SHARED_ARTICLE} is not beside this checkout")
    assert ARTICLE_TXT.read_bytes() == SHARED_ARTICLE.read_bytes()


def test_every_unit_appears_once_in_order_except_the_unfinished_tail() -> None:
    expected = source_units()
    assert expected[-2:] == UNFINISHED_TAIL
    assert lesson_units() == expected[:-2]


def test_article_markdown_keeps_every_unit() -> None:
    markdown = (ROOT / "course" / "source" / "article.md").read_text(encoding="utf-8")
    assert [block.text for block in markdown_blocks(markdown)] == source_units()


def test_headings_and_nesting_of_the_markdown() -> None:
    markdown = (ROOT / "course" / "source" / "article.md").read_text(encoding="utf-8")
    blocks = markdown_blocks(markdown)
    assert [b.kind for b in blocks].count("h2") == 7
    assert [b.kind for b in blocks].count("h3") == 18
    assert sum(b.kind == "row" for b in blocks) == 5
    assert "  - 名刺: " in markdown  # sub-items of 事前準備を怠らない are nested


def test_course_has_eight_lessons_over_about_two_weeks() -> None:
    assert len(COURSE.lessons) == 8
    assert COURSE.lessons[0].delay_days == 0
    assert 10 <= sum(lesson.delay_days for lesson in COURSE.lessons) <= 16
