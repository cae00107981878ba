"""Lesson Markdown -> email HTML fragment and plain text, from one markdown-it token stream.

Pure: text in, text out. Called once per lesson by `drip.render.Renderer` (never per recipient).

Rules the course relies on:
- CommonMark plus GFM tables. Raw HTML is parsed (so it can be recognised) but escaped on
  output; the one exception is `<br>` (as the comparison table uses inside cells), which becomes a
  line break in HTML and a newline in text.
- Tables are wrapped in a horizontally scrollable container, the first cell of a body row becomes
  its row header (`<th scope="row">`), and every body cell carries its column name (a hidden
  label span, then a space, plus `data-label`) so the layout can stack rows into cards on
  narrow screens.
- The text part is built from the tokens, not by stripping tags: "■" / "【】" headings, "・"
  bullets indented with full-width spaces per nesting level, and tables as one block per row.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml
from markdown_it.token import Token
from markdown_it.utils import EnvType, OptionsDict

BR_RE = re.compile(r"<br\s*/?>", re.IGNORECASE)
# A cell line that the author started with a dash is a bullet in all but name.
CELL_BULLET_RE = re.compile(r"^[-–—*•・]\s*")
INDENT = "\u3000"  # a full-width space: visible indentation even in proportional fonts
RULE = "―" * 20
SUMMARY_LENGTH = 90
SHORT_CELL = 6  # characters; see _mark_short_columns
LIST_TOKENS = frozenset(
    (
        "bullet_list_open",
        "ordered_list_open",
        "bullet_list_close",
        "ordered_list_close",
        "list_item_open",
    )
)


@dataclass(frozen=True)
class ConvertedMarkdown:
    """One lesson body, converted once and shared by every recipient's email."""

    html: str
    """An HTML fragment (no <html>/<body>); safe to insert unescaped."""
    text: str
    """Plain text, blocks separated by one blank line, ending without a newline."""
    summary: str
    """The first paragraph as text, cut to SUMMARY_LENGTH characters (a preheader fallback)."""


def _markdown() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": True}).enable("table")
    md.add_render_rule("html_inline", _render_html_inline)
    md.add_render_rule("html_block", _render_html_block)
    md.add_render_rule("table_open", _render_table_open)
    md.add_render_rule("table_close", _render_table_close)
    md.add_render_rule("td_open", _render_cell_open)
    md.add_render_rule("th_open", _render_cell_open)
    return md


def _render_html_inline(
    self: Any, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    content = tokens[idx].content
    return "<br>" if BR_RE.fullmatch(content.strip()) else escapeHtml(content)


def _render_html_block(
    self: Any, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    content = tokens[idx].content.strip()
    if BR_RE.fullmatch(content):
        return "<br>\n"
    # Shown as the text the author typed, so a stray tag is visible to fix, never executed.
    return f"<p>{escapeHtml(content)}</p>\n"


def _render_table_open(
    self: Any, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    return '<div class="table-wrap">\n<table class="lesson-table">\n'


def _render_table_close(
    self: Any, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    return "</table>\n</div>\n"


def _render_cell_open(
    self: Any, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    token = tokens[idx]
    opened: str = self.renderToken(tokens, idx, options, env)
    label = token.meta.get("label")
    if not label:
        return opened
    # The space keeps label and value two words for whatever reads the HTML without the CSS
    # (a client that drops <style>, a screen reader, a spam filter: SpamAssassin counts a word
    # split by a tag as obfuscation, HTML_OBFUSCATE_*); browsers drop it at the start of a line.
    return f'{opened}<span class="cell-label">{escapeHtml(label)}</span> '


def _mark_short_columns(tokens: list[Token]) -> None:
    """Mark cells of columns whose every line is short with class "nowrap".

    Why: in a desktop-width table the browser squeezes a column such as 難易度 (values 中, 高) until
    its header breaks after every character; a nowrap column keeps its few characters together.
    """
    tables: list[list[tuple[int, Token]]] = []
    widths: dict[int, int] = {}
    column = 0
    for index, token in enumerate(tokens):
        if token.type == "table_open":
            tables.append([])
            widths = {}
        elif token.type == "tr_open":
            column = 0
        elif token.type in ("th_open", "td_open"):
            text = _inline_text(tokens[index + 1].children or [])
            longest = max((len(line.strip()) for line in text.split("\n")), default=0)
            widths[column] = max(widths.get(column, 0), longest)
            tables[-1].append((column, token))
            column += 1
        elif token.type == "table_close":
            for cell_column, cell in tables[-1]:
                if widths.get(cell_column, 0) <= SHORT_CELL:
                    cell.attrJoin("class", "nowrap")


def _mark_tables(tokens: list[Token]) -> None:
    """Give body cells their column label and turn each body row's first cell into a row header."""
    _mark_short_columns(tokens)
    headers: list[str] = []
    in_head = False
    column = 0
    for index, token in enumerate(tokens):
        if token.type == "table_open":
            headers = []
        elif token.type == "thead_open":
            in_head = True
        elif token.type == "thead_close":
            in_head = False
        elif token.type == "tr_open":
            column = 0
        elif token.type == "th_open" and in_head:
            headers.append(_inline_text(tokens[index + 1].children or []).replace("\n", " "))
        elif token.type == "td_open":
            label = headers[column] if column < len(headers) else ""
            if column == 0:
                token.tag = "th"
                token.attrSet("scope", "row")
            else:
                token.meta["label"] = label
                if label:
                    token.attrSet("data-label", label)
            column += 1
        elif token.type == "td_close" and column == 1:
            token.tag = "th"


def _inline_text(children: Sequence[Token]) -> str:
    """Plain text of an inline token's children; links keep their URL, `<br>` is a newline."""
    parts: list[str] = []
    link_stack: list[tuple[str, int]] = []
    for child in children:
        kind = child.type
        if kind in ("text", "code_inline"):
            parts.append(child.content)
        elif kind in ("softbreak", "hardbreak"):
            parts.append("\n")
        elif kind == "html_inline":
            parts.append("\n" if BR_RE.fullmatch(child.content.strip()) else child.content)
        elif kind == "image":
            parts.append(_inline_text(child.children or []) or str(child.attrGet("alt") or ""))
        elif kind == "link_open":
            link_stack.append((str(child.attrGet("href") or ""), len(parts)))
        elif kind == "link_close" and link_stack:
            href, start = link_stack.pop()
            label = "".join(parts[start:])
            if href and href != label and f"mailto:{label}" != href:
                parts.append(f" ( {href} )")
    return "".join(parts)


def _cell_lines(text: str) -> list[str]:
    return [CELL_BULLET_RE.sub("・", line.strip()) for line in text.split("\n") if line.strip()]


class _TextWriter:
    """Walks block tokens and writes the text part. Each block is a list of lines."""

    def __init__(self, tokens: Sequence[Token]) -> None:
        self.tokens = tokens
        self.blocks: list[str] = []
        # One entry per open list: its marker style ("・" or the next ordinal number).
        self.lists: list[list[int] | None] = []
        self.item_marker: str | None = None
        self.quote_depth = 0
        self.summary = ""
        self.list_starts = False

    def indent(self) -> str:
        return INDENT * max(len(self.lists) - 1, 0)

    def emit(self, text: str, *, tight_with_previous: bool = False) -> None:
        prefix = "> " * self.quote_depth
        lines = text.split("\n")
        if self.lists:
            marker = self.item_marker
            self.item_marker = None
            base = self.indent()
            if marker is not None:
                hang = base + INDENT
                lines = [f"{base}{marker}{lines[0]}"] + [f"{hang}{line}" for line in lines[1:]]
            else:
                lines = [f"{base}{INDENT}{line}" for line in lines]
            tight_with_previous = not self.list_starts
            self.list_starts = False
        block = "\n".join(f"{prefix}{line}".rstrip() for line in lines)
        if tight_with_previous and self.blocks:
            self.blocks[-1] += "\n" + block
        else:
            self.blocks.append(block)

    def run(self) -> str:
        index = 0
        while index < len(self.tokens):
            index = self.step(index)
        return "\n\n".join(block for block in self.blocks if block.strip())

    def step(self, index: int) -> int:
        """Write what token `index` starts; returns the index of the next token to look at."""
        token = self.tokens[index]
        kind = token.type
        if kind == "heading_open":
            title = _inline_text(self.tokens[index + 1].children or []).replace("\n", " ")
            self.emit(f"■ {title}" if token.tag in ("h1", "h2") else f"【{title}】")
            return index + 3
        if kind == "table_open":
            return self.table(index)
        if kind == "inline":
            text = _inline_text(token.children or [])
            if not self.summary and text.strip():
                self.summary = text.replace("\n", "").strip()
            self.emit(text)
        elif kind in LIST_TOKENS:
            self.list_token(token)
        else:
            self.block_token(token)
        return index + 1

    def list_token(self, token: Token) -> None:
        """Open or close a list, or start an item (its marker goes on its first line)."""
        kind = token.type
        if kind == "bullet_list_open":
            self.list_starts = self.list_starts or not self.lists
            self.lists.append(None)
        elif kind == "ordered_list_open":
            self.list_starts = self.list_starts or not self.lists
            self.lists.append([int(token.attrGet("start") or 1)])
        elif kind in ("bullet_list_close", "ordered_list_close"):
            self.lists.pop()
        else:  # list_item_open
            counter = self.lists[-1]
            if counter is None:
                self.item_marker = "・"
            else:
                self.item_marker = f"{counter[0]}. "
                counter[0] += 1

    def block_token(self, token: Token) -> None:
        """Quotes, code, rules and raw HTML blocks; other tokens (closers, paragraphs) write
        nothing themselves."""
        kind = token.type
        if kind == "blockquote_open":
            self.quote_depth += 1
        elif kind == "blockquote_close":
            self.quote_depth -= 1
        elif kind in ("fence", "code_block"):
            code = token.content.rstrip("\n").split("\n")
            self.emit("\n".join("    " + line for line in code))
        elif kind == "hr":
            self.emit(RULE)
        elif kind == "html_block":
            content = token.content.strip()
            self.emit("" if BR_RE.fullmatch(content) else content)

    def table(self, start: int) -> int:
        """Write a table as one block per body row; returns the index after `table_close`."""
        headers: list[str] = []
        rows: list[list[str]] = []
        row: list[str] = []
        index = start
        while self.tokens[index].type != "table_close":
            token = self.tokens[index]
            if token.type == "tr_open":
                row = []
            elif token.type == "inline":
                row.append(_inline_text(token.children or []))
            elif token.type == "tr_close":
                if headers or rows:
                    rows.append(row)
                else:
                    headers = row
            index += 1
        for cells in rows:
            lines = [f"【{' '.join(_cell_lines(cells[0])) if cells else ''}】"]
            for column, cell in enumerate(cells[1:], start=1):
                label = " ".join(_cell_lines(headers[column])) if column < len(headers) else ""
                values = _cell_lines(cell)
                head = f"{label}：" if label else ""
                if len(values) == 1:
                    lines.append(f"{head}{values[0]}")
                elif values:
                    lines.append(head)
                    lines.extend(INDENT + value for value in values)
            self.emit("\n".join(line for line in lines if line))
        return index + 1


_MD = _markdown()


def parse(source: str) -> list[Token]:
    """The block tokens of a Markdown text, parsed exactly as `convert` parses it (for checks)."""
    return _MD.parse(source)


def convert(source: str) -> ConvertedMarkdown:
    """Convert one lesson's Markdown body. Deterministic; the caller caches the result."""
    tokens = _MD.parse(source)
    _mark_tables(tokens)
    html = _MD.renderer.render(tokens, _MD.options, {})
    writer = _TextWriter(tokens)
    text = writer.run()
    summary = writer.summary
    if len(summary) > SUMMARY_LENGTH:
        summary = summary[: SUMMARY_LENGTH - 1] + "…"
    return ConvertedMarkdown(html=html, text=text, summary=summary)
