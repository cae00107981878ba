"""`drip stats`: the funnel and signups against a fixture whose figures were worked out by hand,
on SQLite and PostgreSQL; the HTML page in a real browser."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, insert
from tests.support import COURSE, COURSE_DIR, TEMPLATES

from drip import stats
from drip.cli import main
from drip.insight import course_stats
from drip.models import deliveries, events, subscribers

DAY1 = datetime(2026, 12, 1, 1, 0, tzinfo=UTC)
DAY2 = DAY1 + timedelta(days=1)


def _subscriber(
    id_: int, status: str, created: datetime, confirm_after: float | None, next_lesson: str | None
) -> dict[str, object]:
    return {
        "id": id_,
        "course_id": COURSE.id,
        "email": f"r{id_}@example.com",
        "name": None,
        "timezone": "Asia/Tokyo",
        "status": status,
        "created_at": created,
        "consent_at": created,
        "consent_source": "web",
        "confirmed_at": None
        if confirm_after is None
        else created + timedelta(minutes=confirm_after),
        "paused_at": None,
        "status_changed_at": created,
        "confirmation_sent_at": created,
        "next_lesson": next_lesson,
        "next_send_at": None,
        "last_sent_at": None,
    }


def _delivery(id_: int, subscriber: int, lesson: str, status: str = "sent") -> dict[str, object]:
    return {
        "id": id_,
        "subscriber_id": subscriber,
        "course_id": COURSE.id,
        "lesson": lesson,
        "status": status,
        "run_id": "r",
        "attempts": 1,
        "claimed_at": DAY1,
        "lease_until": DAY1,
        "sent_at": DAY1 + timedelta(hours=1) if status == "sent" else None,
        "provider_id": None,
        "detail": None,
        "updated_at": DAY1,
    }


def _event(number: int, delivery: int, type_: str, **payload: object) -> dict[str, object]:
    return {
        "provider": "sendgrid",
        "provider_event_id": f"ev{number}",
        "delivery_id": delivery,
        "subscriber_id": None,
        "type": type_,
        "occurred_at": DAY2 if number >= 100 else DAY1 + timedelta(hours=2),
        "received_at": DAY2,
        "payload": {"event": type_, **payload},
    }


def seed(engine: Engine) -> None:
    """Five readers on day 1 who confirmed after 10, 20, 30, 40 and 50 minutes; on day 2 one
    who confirmed after 60 and one who never did.

    1 got lessons 1-3, 2 got 1-2, 3 got 1 and unsubscribed, 4 got 1 and bounced, 5
    unsubscribed before lesson 1; lesson 2 of reader 3 is in doubt (not sent). Events: lesson 1
    delivered to 1, 2, 3; opened twice by 1 (one delivery), machine-opened by 2, clicked by 1,
    bounced for 4; lesson 2 opened by 1 and reported as spam by 2 (a day-2 event).
    """
    with engine.begin() as conn:
        conn.execute(
            insert(subscribers),
            [
                _subscriber(1, "active", DAY1, 10, "side-job"),
                _subscriber(2, "active", DAY1, 20, "events"),
                _subscriber(3, "unsubscribed", DAY1, 30, "rethink"),
                _subscriber(4, "bounced", DAY1, 40, "rethink"),
                _subscriber(5, "unsubscribed", DAY1, 50, "welcome"),
                _subscriber(6, "active", DAY2, 60, "welcome"),
                _subscriber(7, "pending", DAY2, None, "welcome"),
            ],
        )
        conn.execute(
            insert(deliveries),
            [
                _delivery(11, 1, "welcome"),
                _delivery(12, 1, "rethink"),
                _delivery(13, 1, "events"),
                _delivery(21, 2, "welcome"),
                _delivery(22, 2, "rethink"),
                _delivery(31, 3, "welcome"),
                _delivery(32, 3, "rethink", status="in_doubt"),
                _delivery(41, 4, "welcome"),
            ],
        )
        conn.execute(
            insert(events),
            [
                _event(1, 11, "delivered"),
                _event(2, 21, "delivered"),
                _event(3, 31, "delivered"),
                _event(4, 11, "open", sg_machine_open=False),
                _event(5, 11, "open"),
                _event(6, 21, "open", sg_machine_open=True),
                _event(7, 11, "click"),
                _event(8, 41, "bounce"),
                _event(100, 12, "open"),
                _event(101, 22, "spamreport"),
            ],
        )


def test_the_funnel_and_signups_match_the_hand_count(engine: Engine) -> None:
    from sqlalchemy.orm import sessionmaker

    seed(engine)
    report = course_stats(sessionmaker(engine), COURSE, since=None)
    rows = {row.lesson: row for row in report.lessons}
    welcome, rethink, lesson3 = rows["welcome"], rows["rethink"], rows["events"]
    assert (welcome.sent, welcome.delivered, welcome.opened, welcome.machine_opened) == (4, 3, 1, 1)
    assert (welcome.clicked, welcome.bounced, welcome.complained) == (1, 1, 0)
    assert welcome.unsubscribed_after == 1  # reader 3 (reader 4 bounced: not an unsubscribe)
    assert welcome.reached == 1.0
    assert (rethink.sent, rethink.opened, rethink.complained, rethink.reached) == (2, 1, 1, 0.5)
    assert (lesson3.sent, lesson3.reached) == (1, 0.25)
    assert all(row.sent == 0 and row.reached == 0 for row in report.lessons[3:])
    assert report.left_before_start == 1  # reader 5
    assert report.signups_per_day == [("2026-12-01", 5, 5), ("2026-12-02", 2, 1)]
    assert (report.signups, report.confirmed) == (7, 6)
    assert report.confirmation_rate == pytest.approx(6 / 7)
    # Confirmed after 10, 20, 30, 40, 50, 60 min: the lower middle of six is 30.
    assert report.median_hours_to_confirm == pytest.approx(0.5, abs=1e-3)


def test_since_counts_only_what_happened_from_then_on(engine: Engine) -> None:
    from sqlalchemy.orm import sessionmaker

    seed(engine)
    report = course_stats(sessionmaker(engine), COURSE, since=DAY2)
    rows = {row.lesson: row for row in report.lessons}
    assert rows["welcome"].sent == 0  # every send was on day 1
    assert (rows["rethink"].opened, rows["rethink"].complained) == (1, 1)  # day-2 events
    assert rows["welcome"].opened == 0
    assert report.signups_per_day == [("2026-12-02", 2, 1)]
    assert report.median_hours_to_confirm == pytest.approx(1.0, abs=1e-3)


def test_drip_stats_formats_and_the_html_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from drip.db import make_engine, upgrade

    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'drip.db'}"
    upgrade(url)
    engine = make_engine(url)
    seed(engine)
    engine.dispose()
    env = {"DRIP_COURSE_DIR": str(COURSE_DIR), "DRIP_TEMPLATES_DIR": str(TEMPLATES)}
    runner = CliRunner()
    table = runner.invoke(main, ["stats", "--html", "stats.html"], env=env)
    assert table.exit_code == 0, table.output
    assert "welcome" in table.output and "signups 7, confirmed 6 (85.7%)" in table.output
    as_csv = runner.invoke(main, ["stats", "--format", "csv"], env=env)
    rows = list(csv.DictReader(io.StringIO(as_csv.output)))
    assert [row["sent"] for row in rows[:3]] == ["4", "2", "1"]
    assert rows[1]["reached"] == "0.5000"
    as_json = json.loads(runner.invoke(main, ["stats", "--format", "json"], env=env).output)
    assert as_json["lessons"][0]["machine_opened"] == 1
    page = (tmp_path / "stats.html").read_text(encoding="utf-8")
    assert "<svg" in page and "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "<script" not in page
    since = runner.invoke(main, ["stats", "--since", "2026-12-02", "--format", "json"], env=env)
    assert json.loads(since.output)["signups"] == 2
    bad = runner.invoke(main, ["stats", "--since", "yesterday"], env=env)
    assert bad.exit_code == 2 and "yesterday" in bad.output


@pytest.mark.browser
def test_the_html_page_fits_a_phone_in_chromium(tmp_path: Path) -> None:
    if shutil.which("chromium") is None:
        pytest.skip("chromium is not installed (CI installs it)")
    report = stats.Report(
        course_id=COURSE.id,
        title=COURSE.settings.title,
        since=None,
        lessons=[
            stats.LessonRow(
                i + 1,
                lesson.slug,
                lesson.subject,
                100 - 9 * i,
                90,
                50,
                20,
                10,
                1,
                0,
                2,
                (100 - 9 * i) / 100,
            )
            for i, lesson in enumerate(COURSE.lessons)
        ],
        left_before_start=3,
        signups_per_day=[(f"2026-11-{day:02d}", day, day - 1) for day in range(1, 31)],
        signups=465,
        confirmed=435,
        confirmation_rate=435 / 465,
        median_hours_to_confirm=0.4,
    )
    page = tmp_path / "stats.html"
    page.write_text(stats.as_html(report), encoding="utf-8")
    shot = tmp_path / "stats-375.png"
    subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--screenshot={shot}",
            "--window-size=375,1400",
            page.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    assert shot.stat().st_size > 10_000
    dom = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri()],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert dom.count("<rect") == len(report.lessons) + 2 * len(report.signups_per_day)
