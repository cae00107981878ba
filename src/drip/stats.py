"""`drip stats`: the per-lesson funnel and the signups, as a table, CSV, JSON or one HTML page.

Pure: the store's aggregates (`store.stats`) and the course come in, a `Report` and its
renderings come out. The HTML page is self-contained (inline CSS and SVG, no script, no external
asset) so it can be mailed or opened from disk on a phone.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass
from html import escape
from typing import Any

from drip.course import Course
from drip.store.stats import LessonCounts, LessonOutcomes, Signups

COLUMNS = (
    ("sent", "sent"),
    ("delivered", "delivered"),
    ("opened", "opened"),
    ("machine_opened", "machine opens"),
    ("clicked", "clicked"),
    ("bounced", "bounced"),
    ("complained", "complained"),
    ("unsubscribed_after", "unsubscribed after"),
    ("reached", "reached"),
)


@dataclass(frozen=True)
class LessonRow:
    number: int
    lesson: str
    subject: str
    sent: int
    delivered: int
    opened: int
    """Deliveries opened by a person (at least once); machine opens are counted apart."""
    machine_opened: int
    clicked: int
    bounced: int
    complained: int
    unsubscribed_after: int
    """Readers who unsubscribed after this lesson, before the next one."""
    reached: float | None
    """Share of the readers who got lesson 1 who got this lesson (the funnel); None: no starter."""


@dataclass(frozen=True)
class Report:
    course_id: str
    title: str
    since: str | None
    lessons: list[LessonRow]
    left_before_start: int
    """Readers who unsubscribed, bounced or complained before lesson 1 went out."""
    signups_per_day: list[tuple[str, int, int]]
    signups: int
    confirmed: int
    confirmation_rate: float | None
    median_hours_to_confirm: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_report(
    course: Course, counts: LessonCounts, signups: Signups, *, since: str | None
) -> Report:
    """The report of `course` from the store's aggregates."""
    lessons = list(course.lessons)
    nobody = LessonOutcomes()
    starters = counts.per_lesson.get(lessons[0].slug, nobody).sent if lessons else 0
    rows = []
    for index, lesson in enumerate(lessons):
        following = lessons[index + 1].slug if index + 1 < len(lessons) else None
        got = counts.per_lesson.get(lesson.slug, nobody)
        rows.append(
            LessonRow(
                number=lesson.number,
                lesson=lesson.slug,
                subject=lesson.subject,
                sent=got.sent,
                delivered=got.delivered,
                opened=got.opened,
                machine_opened=got.machine_opened,
                clicked=got.clicked,
                bounced=got.bounced,
                complained=got.complained,
                unsubscribed_after=counts.left_before.get(following, {}).get("unsubscribed", 0),
                reached=got.sent / starters if starters else None,
            )
        )
    before = sum(counts.left_before.get(lessons[0].slug, {}).values()) if lessons else 0
    rate = signups.confirmed / signups.total if signups.total else None
    median = signups.median_seconds_to_confirm
    return Report(
        course_id=course.id,
        title=course.settings.title,
        since=since,
        lessons=rows,
        left_before_start=before,
        signups_per_day=signups.per_day,
        signups=signups.total,
        confirmed=signups.confirmed,
        confirmation_rate=rate,
        median_hours_to_confirm=None if median is None else median / 3600,
    )


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _cells(row: LessonRow) -> list[str]:
    values = [getattr(row, key) for key, _ in COLUMNS]
    return [str(v) for v in values[:-1]] + [_percent(row.reached)]


def as_table(report: Report) -> str:
    """Fixed-width text for a terminal."""
    header = ["#", "lesson", *(label for _, label in COLUMNS)]
    body = [[str(row.number), row.lesson, *_cells(row)] for row in report.lessons]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(widths[i]) if i < 2 else cell.rjust(widths[i]) for i, cell in enumerate(line)
        )
        for line in [header, *body]
    ]
    minutes = report.median_hours_to_confirm
    lines += [
        "",
        f"signups {report.signups}, confirmed {report.confirmed}"
        f" ({_percent(report.confirmation_rate)}); median time to confirm: "
        + ("-" if minutes is None else f"{minutes * 60:.0f} min"),
        f"left before lesson 1: {report.left_before_start}",
    ]
    return "\n".join(lines)


def as_csv(report: Report) -> str:
    """One row per lesson, a header row first."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["number", "lesson", "subject", *(key for key, _ in COLUMNS)])
    for row in report.lessons:
        reached = "" if row.reached is None else f"{row.reached:.4f}"
        values = [getattr(row, key) for key, _ in COLUMNS[:-1]]
        writer.writerow([row.number, row.lesson, row.subject, *values, reached])
    return out.getvalue()


def as_json(report: Report) -> str:
    return json.dumps(report.as_dict(), ensure_ascii=False, indent=2)


def _funnel_svg(report: Report) -> str:
    """Horizontal bars: each lesson's share of the starters, with the count."""
    bar_height, gap, label_width, width = 24, 6, 112, 400
    rows = report.lessons
    height = len(rows) * (bar_height + gap) + gap
    parts = [
        f'<svg viewBox="0 0 {width} {height}" width="100%" role="img"'
        ' aria-label="Funnel: share of starters who got each lesson"'
        ' xmlns="http://www.w3.org/2000/svg">'
    ]
    for index, row in enumerate(rows):
        y = gap + index * (bar_height + gap)
        share = row.reached or 0.0
        bar = max(share * (width - label_width - 112), 1 if row.sent else 0)
        parts.append(
            f'<text x="0" y="{y + 18}" class="label">{row.number}. {escape(row.lesson)}</text>'
            f'<rect x="{label_width}" y="{y}" width="{bar:.1f}" height="{bar_height}"'
            ' class="bar"/>'
            f'<text x="{label_width + bar + 6:.1f}" y="{y + 18}" class="value">'
            f"{_percent(row.reached)} ({row.sent})</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _signups_svg(report: Report) -> str:
    """Signups per day as columns, the confirmed part darker."""
    days = report.signups_per_day
    if not days:
        return "<p>No signups yet.</p>"
    width, height, pad = 400, 150, 8
    peak = max(n for _, n, _ in days) or 1
    step = (width - 2 * pad) / len(days)
    parts = [
        f'<svg viewBox="0 0 {width} {height + 20}" width="100%" role="img"'
        ' aria-label="Signups per day" xmlns="http://www.w3.org/2000/svg">'
    ]
    for index, (day, total, confirmed) in enumerate(days):
        x = pad + index * step
        h_total = (height - pad) * total / peak
        h_confirmed = (height - pad) * confirmed / peak
        w = min(max(step - 2, 1), 24)  # a few days stay columns, not one block
        parts.append(
            f'<rect x="{x:.1f}" y="{height - h_total:.1f}" width="{w:.1f}"'
            f' height="{h_total:.1f}" class="signup"><title>{day}: {total} signups,'
            f" {confirmed} confirmed</title></rect>"
            f'<rect x="{x:.1f}" y="{height - h_confirmed:.1f}" width="{w:.1f}"'
            f' height="{h_confirmed:.1f}" class="confirmed"/>'
        )
    first, last = days[0][0], days[-1][0]
    parts.append(f'<text x="{pad}" y="{height + 16}" class="axis">{first}</text>')
    if last != first:
        parts.append(
            f'<text x="{width - pad}" y="{height + 16}" class="axis"'
            f' text-anchor="end">{last}</text>'
        )
    # Top right: clear of the first columns, which are the tallest in a new course.
    parts.append(
        f'<text x="{width - pad}" y="14" class="axis" text-anchor="end">max {peak}/day</text></svg>'
    )
    return "".join(parts)


_STYLE = """
body { margin: 0 auto; max-width: 980px; padding: 16px; font: 15px/1.6 system-ui,
  "Hiragino Sans", "Noto Sans CJK JP", sans-serif; color: #1f1f1f; background: #fff; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 2rem; }
.wrap { overflow-x: auto; }
table { border-collapse: collapse; font-size: 13px; min-width: 100%; }
th, td { padding: 4px 6px; border-bottom: 1px solid #ddd; text-align: right; white-space: nowrap; }
th:nth-child(-n+2), td:nth-child(-n+2) { text-align: left; }
svg { display: block; max-width: 560px; }
svg .label, svg .value, svg .axis { font-size: 13px; fill: #1f1f1f; }
svg .bar { fill: #8a3b12; } svg .signup { fill: #e2b89c; } svg .confirmed { fill: #8a3b12; }
.note { color: #4a4a4a; font-size: 13px; }
"""


def as_html(report: Report) -> str:
    """One self-contained page: the funnel chart, signups over time, and the tables."""
    header = "".join(f"<th>{escape(label)}</th>" for _, label in COLUMNS)
    rows = "".join(
        f"<tr><td>{row.number}</td><td>{escape(row.lesson)}</td>"
        + "".join(f"<td>{escape(cell)}</td>" for cell in _cells(row))
        + "</tr>"
        for row in report.lessons
    )
    days = "".join(
        f"<tr><td>{day}</td><td>{total}</td><td>{confirmed}</td></tr>"
        for day, total, confirmed in reversed(report.signups_per_day)
    )
    median = report.median_hours_to_confirm
    since = f" since {escape(report.since)}" if report.since else ""
    return f"""<!doctype html>
<html lang="ja"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(report.title)}: stats</title><style>{_STYLE}</style></head>
<body>
<h1>{escape(report.title)}</h1>
<p class="note">Course <code>{escape(report.course_id)}</code>{since}. Opens exclude machine
opens (e.g. Apple Mail Privacy Protection), which are counted apart.</p>
<h2>Funnel: share of starters who got each lesson</h2>
{_funnel_svg(report)}
<div class="wrap"><table><thead><tr><th>#</th><th>lesson</th>{header}</tr></thead>
<tbody>{rows}</tbody></table></div>
<p class="note">Left before lesson 1: {report.left_before_start}.</p>
<h2>Signups</h2>
<p>{report.signups} signups, {report.confirmed} confirmed
({_percent(report.confirmation_rate)}); median time to confirm:
{"-" if median is None else f"{median * 60:.0f} min"}.</p>
{_signups_svg(report)}
<div class="wrap"><table><thead><tr><th>day (UTC)</th><th>signups</th><th>confirmed</th></tr>
</thead><tbody>{days}</tbody></table></div>
</body></html>
"""
