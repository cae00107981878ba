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

import orjson
import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, func, insert, inspect, select
from sqlalchemy.orm import sessionmaker
from tests.support import COURSE, COURSE_DIR, TEMPLATES

from drip import stats, store
from drip.cli import main
from drip.insight import course_stats
from drip.models import deliveries, events, subscribers
from drip.provider_events import record_sendgrid_events
from drip.store.ledger import SentItem
from drip.transports.sendgrid.events import parse_events

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


def _delivery(
    id_: int, subscriber: int, lesson: str, status: str = "sent", sent: datetime = DAY1
) -> dict[str, object]:
    return {
        "id": id_,
        "subscriber_id": subscriber,
        "course_id": COURSE.id,
        "lesson": lesson,
        "status": status,
        "run_id": "r",
        "attempts": 1,
        "claimed_at": sent,
        "lease_until": sent,
        "sent_at": sent + timedelta(hours=1) if status == "sent" else None,
        "provider_id": None,
        "detail": None,
        "updated_at": sent,
    }


# (number, delivery id, type, payload fields): numbers from 100 happened on day 2.
EVENTS: list[tuple[int, int, str, dict[str, object]]] = [
    (1, 11, "delivered", {}),
    (2, 21, "delivered", {}),
    (3, 31, "delivered", {}),
    (4, 11, "open", {"sg_machine_open": False}),
    (5, 11, "open", {}),
    (6, 21, "open", {"sg_machine_open": True}),
    (7, 11, "click", {}),
    (8, 41, "bounce", {"type": "bounce"}),
    (9, 11, "processed", {}),
    (100, 12, "open", {}),
    (101, 22, "spamreport", {}),
    (102, 61, "delivered", {}),
    (103, 61, "open", {"sg_machine_open": True}),
    (104, 61, "open", {}),
]


def _moment(number: int) -> datetime:
    return DAY2 + timedelta(hours=3) if number >= 100 else DAY1 + timedelta(hours=2)


def _event_row(
    number: int, delivery: int, type_: str, payload: dict[str, object]
) -> dict[str, object]:
    """An events row as the webhook stored it before migration 0004."""
    return {
        "provider": "sendgrid",
        "provider_event_id": f"ev{number}",
        "delivery_id": delivery,
        "subscriber_id": None,
        "type": type_,
        "occurred_at": _moment(number),
        "received_at": DAY2,
        "payload": {"event": type_, **payload},
    }


def sendgrid_body(events: list[tuple[int, int, str, dict[str, object]]]) -> bytes:
    """The events as SendGrid posts them (no `email`: the fixture's statuses are set by hand,
    and a spam report would suppress its reader)."""
    return orjson.dumps(
        [
            {
                "event": type_,
                "sg_event_id": f"ev{number}",
                "timestamp": int(_moment(number).timestamp()),
                "drip_delivery_id": str(delivery),
                **payload,
            }
            for number, delivery, type_, payload in events
        ]
    )


def post_events(engine: Engine, body: bytes, *, now: datetime = DAY2) -> None:
    """Store and apply `body` as the webhook does."""
    record_sendgrid_events(
        sessionmaker(engine), COURSE, parse_events(body, received_at=now), now=now
    )


def seed(engine: Engine, *, with_events: bool = True) -> None:
    """Five readers on day 1 who confirmed after 10, 20, 30, 40 and 50 minutes; on day 2 one
    who confirmed after 60 and one who never did.

    1 got lessons 1-3, 2 got 1-2, 3 got 1 and unsubscribed, 4 got 1 and bounced, 5
    unsubscribed before lesson 1, 6 got lesson 1 on day 2; lesson 2 of reader 3 is in doubt (not
    sent). Events (`EVENTS`, through the webhook): lesson 1 delivered to 1, 2, 3 and 6; opened
    twice by 1 (one delivery), machine-opened by 2, opened by 6 both ways, clicked by 1, bounced
    for 4; lesson 2 opened by 1 and reported as spam by 2 (a day-2 event of a day-1 send).
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
                _subscriber(6, "active", DAY2, 60, "rethink"),
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
                _delivery(61, 6, "welcome", sent=DAY2),
            ],
        )
    if with_events:
        post_events(engine, sendgrid_body(EVENTS))


def check_hand_count(report: stats.Report) -> None:
    rows = {row.lesson: row for row in report.lessons}
    welcome, rethink, lesson3 = rows["welcome"], rows["rethink"], rows["events"]
    assert (welcome.sent, welcome.delivered, welcome.opened, welcome.machine_opened) == (5, 4, 2, 2)
    assert (welcome.clicked, welcome.bounced, welcome.complained) == (1, 1, 0)
    assert welcome.unsubscribed_after == 1  # reader 3 (reader 4 bounced: not an unsubscribe)
    assert welcome.reached == 1.0
    assert (rethink.sent, rethink.opened, rethink.complained, rethink.reached) == (2, 1, 1, 0.4)
    assert (lesson3.sent, lesson3.reached) == (1, 0.2)
    assert all(row.sent == 0 and row.reached == 0 for row in report.lessons[3:])
    assert report.left_before_start == 1  # reader 5
    assert report.signups_per_day == [("2026-12-01", 5, 5), ("2026-12-02", 2, 1)]
    assert (report.signups, report.confirmed) == (7, 6)
    assert report.confirmation_rate == pytest.approx(6 / 7)
    # Confirmed after 10, 20, 30, 40, 50, 60 min: the lower middle of six is 30.
    assert report.median_hours_to_confirm == pytest.approx(0.5, abs=1e-3)


def test_the_funnel_and_signups_match_the_hand_count(engine: Engine) -> None:
    seed(engine)
    check_hand_count(course_stats(sessionmaker(engine), COURSE, since=None))


def test_redelivered_and_reordered_events_count_once(engine: Engine) -> None:
    seed(engine)
    post_events(engine, sendgrid_body(EVENTS))  # the whole batch again
    post_events(engine, sendgrid_body(list(reversed(EVENTS))))
    # New events of outcomes already counted: a third open, another click, another delivered.
    post_events(
        engine,
        sendgrid_body([(200, 11, "open", {}), (201, 11, "click", {}), (202, 21, "delivered", {})]),
    )
    check_hand_count(course_stats(sessionmaker(engine), COURSE, since=None))


def test_since_counts_the_lessons_sent_from_then_on_and_what_became_of_them(
    engine: Engine,
) -> None:
    seed(engine)
    report = course_stats(sessionmaker(engine), COURSE, since=DAY2)
    rows = {row.lesson: row for row in report.lessons}
    welcome = rows["welcome"]
    # Only reader 6's lesson 1 was sent on day 2, opened both ways.
    assert (welcome.sent, welcome.delivered, welcome.opened, welcome.machine_opened) == (1, 1, 1, 1)
    assert (welcome.clicked, welcome.bounced, welcome.reached) == (0, 0, 1.0)
    # The day-2 spam report and open are about day-1 sends: the day-1 cohort's.
    assert (rows["rethink"].sent, rows["rethink"].opened, rows["rethink"].complained) == (0, 0, 0)
    assert report.left_before_start == 0 and welcome.unsubscribed_after == 0
    assert report.signups_per_day == [("2026-12-02", 2, 1)]
    assert report.median_hours_to_confirm == pytest.approx(1.0, abs=1e-3)
    whole = course_stats(sessionmaker(engine), COURSE, since=DAY1)
    check_hand_count(whole)  # from the first moment anything happened: everything


def test_events_before_the_send_is_recorded_count_once_it_is(engine: Engine) -> None:
    """SendGrid can report a message before `drip send` records it sent (a slow commit, a
    delivery in doubt); its outcome is kept and counted from the moment it is sent. A delivery
    settled as not sent and sent again counts once."""
    seed(engine)
    sessions = sessionmaker(engine)
    with engine.begin() as conn:
        conn.execute(insert(deliveries).values(_delivery(23, 2, "events", status="sending")))
    post_events(engine, sendgrid_body([(300, 23, "delivered", {}), (301, 23, "click", {})]))
    before = {row.lesson: row for row in course_stats(sessions, COURSE, since=None).lessons}
    assert (before["events"].sent, before["events"].delivered, before["events"].clicked) == (
        1,
        0,
        0,
    )
    with sessions() as session, session.begin():
        store.record_sent(session, [SentItem(23, "sg-23", DAY2, "side-job", None)], run_id="r")
    after = {row.lesson: row for row in course_stats(sessions, COURSE, since=None).lessons}
    assert (after["events"].sent, after["events"].delivered, after["events"].clicked) == (2, 1, 1)
    # Reader 3's in-doubt lesson 2: settled as not sent, sent again, then reported twice.
    with sessions() as session, session.begin():
        store.resolve_in_doubt(
            session, 32, sent=False, now=DAY2, next_lesson=None, next_send_at=DAY2
        )
    with engine.begin() as conn:  # a later run claims it and hands it over again
        conn.execute(
            deliveries.update().where(deliveries.c.id == 32).values(status="sending", run_id="r2")
        )
    with sessions() as session, session.begin():
        store.record_sent(session, [SentItem(32, "sg-32", DAY2, "events", None)], run_id="r2")
    post_events(engine, sendgrid_body([(302, 32, "delivered", {}), (303, 32, "delivered", {})]))
    rethink = {row.lesson: row for row in course_stats(sessions, COURSE, since=None).lessons}[
        "rethink"
    ]
    assert (rethink.sent, rethink.delivered) == (3, 1)


def test_upgrading_a_populated_0003_database_backfills_the_outcomes(
    empty_database_url: str,
) -> None:
    """Events stored before migration 0004 count the same after it: the backfill applies the
    webhook's rule (a machine open is one whose `sg_machine_open` is true) to every stored
    event. The downgrade drops the column and an upgrade backfills it again."""
    from alembic import command

    from drip.db import alembic_config, make_engine, upgrade

    url = empty_database_url
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            if conn.dialect.name == "sqlite":  # 0003 rebuilds tables: as drip.db runs it
                conn.rollback()
                conn.connection.driver_connection.execute("PRAGMA foreign_keys = OFF")  # type: ignore[union-attr]
            with conn.begin():
                command.upgrade(alembic_config(conn), "0003")
        seed(engine, with_events=False)
        with engine.begin() as conn:
            conn.execute(insert(events), [_event_row(*event) for event in EVENTS])
    finally:
        engine.dispose()
    for _ in range(2):
        upgrade(url)
        engine = make_engine(url)
        try:
            check_hand_count(course_stats(sessionmaker(engine), COURSE, since=None))
            with engine.begin() as conn:
                command.downgrade(alembic_config(conn), "0003")
                columns = {column["name"] for column in inspect(conn).get_columns("deliveries")}
                assert "event_flags" not in columns
                assert conn.execute(select(func.count()).select_from(events)).scalar() == len(
                    EVENTS
                )
        finally:
            engine.dispose()


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
    assert [row["sent"] for row in rows[:3]] == ["5", "2", "1"]
    assert rows[1]["reached"] == "0.4000"
    as_json = json.loads(runner.invoke(main, ["stats", "--format", "json"], env=env).output)
    assert as_json["lessons"][0]["machine_opened"] == 2
    page = (tmp_path / "stats.html").read_text(encoding="utf-8")
    assert "<svg" in page and "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "<script" not in page
    since = runner.invoke(main, ["stats", "--since", "2026-12-02", "--format", "json"], env=env)
    assert json.loads(since.output)["signups"] == 2
    assert json.loads(since.output)["lessons"][0]["sent"] == 1
    bad = runner.invoke(main, ["stats", "--since", "yesterday"], env=env)
    assert bad.exit_code == 2 and "yesterday" in bad.output


def test_drip_stats_on_an_empty_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    env = {"DRIP_COURSE_DIR": str(COURSE_DIR), "DRIP_TEMPLATES_DIR": str(TEMPLATES)}
    result = CliRunner().invoke(main, ["stats", "--format", "json"], env=env)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert [row["sent"] for row in report["lessons"]] == [0] * len(COURSE.lessons)
    assert report["signups"] == 0 and report["lessons"][0]["reached"] is None


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


def test_the_stats_do_not_hold_sqlites_write_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A million-reader report takes seconds: meanwhile the webhook and `drip send` must be
    able to write (before `db.reading`, every read began with BEGIN IMMEDIATE)."""
    import sqlite3

    from drip.db import make_engine, upgrade

    path = tmp_path / "drip.db"
    upgrade(f"sqlite:///{path}")
    engine = make_engine(f"sqlite:///{path}")
    seed(engine)
    counted = store.stats.lesson_counts
    writes: list[str] = []

    def lesson_counts_then_write(*args: object, **kwargs: object) -> store.LessonCounts:
        found = counted(*args, **kwargs)  # type: ignore[arg-type]
        other = sqlite3.connect(path, timeout=0.2, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # "database is locked" while the stats hold it
            other.execute("UPDATE subscribers SET name = 'w' WHERE id = 1")
            other.execute("COMMIT")
            writes.append("written")
        finally:
            other.close()
        return found

    monkeypatch.setattr(store, "lesson_counts", lesson_counts_then_write)
    try:
        check_hand_count(course_stats(sessionmaker(engine), COURSE, since=None))
    finally:
        engine.dispose()
    assert writes == ["written"]
