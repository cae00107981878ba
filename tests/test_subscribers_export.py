"""`drip subscribers export` and its round trip through `drip subscribers import`, and the
import's progress and summary table, on a real SQLite file and a real PostgreSQL."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import delete, update
from sqlalchemy.orm import Session, sessionmaker
from tests.support import COURSE, Drip, ok

from drip import store
from drip.cli import subscribers as subscribers_cli
from drip.importer import EXPORT_COLUMNS, ImportReport, import_subscribers
from drip.models import deliveries, events, subscribers

MORNING = "2026-04-01T09:00:00+09:00"
T0 = datetime(2026, 4, 1, 0, 0, tzinfo=UTC)


def readers(sessions: sessionmaker[Session]) -> dict[str, tuple[str | None, str, str]]:
    with sessions() as session:
        return {
            view.email: (view.name, view.timezone, view.status.value)
            for view in store.list_subscribers(session, COURSE.id)
        }


def a_course_of_every_state(drip: Drip, sessions: sessionmaker[Session]) -> None:
    ok(
        drip(
            "subscribe", "a@example.com", "--name", '山田, "太郎"', "--confirmed", "--now", MORNING
        )
    )
    ok(drip("subscribe", "ny@example.com", "--timezone", "America/New_York", "--confirmed"))
    ok(drip("subscribe", "p@example.com", "--name", "保留", "--now", MORNING))
    ok(drip("subscribe", "u@example.com", "--confirmed", "--now", MORNING))
    ok(drip("subscribers", "unsubscribe", "u@example.com", "--now", MORNING))
    ok(drip("subscribe", "b@example.com", "--confirmed", "--now", MORNING))
    ok(drip("subscribe", "done@example.com", "--confirmed", "--now", MORNING))
    ok(drip("subscribe", "zz@example.com", "--confirmed", "--now", MORNING))
    ok(drip("subscribers", "pause", "zz@example.com", "--now", MORNING))
    with sessions() as session, session.begin():
        store.mark_suppressed(session, "b@example.com", "bounced", T0)
        session.connection().execute(
            update(subscribers)
            .where(subscribers.c.email == "done@example.com")
            .values(status="completed", next_lesson=None, next_send_at=None)
        )


def test_export_writes_the_documented_columns_streamed_as_excel_csv(
    drip: Drip, sessions: sessionmaker[Session]
) -> None:
    a_course_of_every_state(drip, sessions)
    result = ok(drip("subscribers", "export"))
    raw = result.stdout_bytes
    assert raw.startswith(b"\xef\xbb\xbf")  # UTF-8 BOM: Excel's "CSV UTF-8"
    rows = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"), newline="")))
    assert tuple(rows[0]) == EXPORT_COLUMNS
    by_email = {r[0]: dict(zip(EXPORT_COLUMNS, r, strict=True)) for r in rows[1:]}
    assert set(by_email) == set(readers(sessions))
    first = by_email["a@example.com"]
    assert first["name"] == '山田, "太郎"' and first["status"] == "active"
    assert first["consent_source"] == "cli" and first["consent_at"] == T0.isoformat()
    assert by_email["p@example.com"]["confirmed_at"] == ""
    only = ok(drip("subscribers", "export", "--status", "unsubscribed")).stdout
    assert [r[0] for r in csv.reader(io.StringIO(only.lstrip("\ufeff")))][1:] == ["u@example.com"]


def test_import_of_an_export_gives_back_the_same_readers_without_warnings(
    drip: Drip, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    a_course_of_every_state(drip, sessions)
    before = readers(sessions)
    export = tmp_path / "readers.csv"
    export.write_bytes(ok(drip("subscribers", "export")).stdout_bytes)

    # Into the same database: every reader is already there and is left alone.
    same = ok(drip("subscribers", "import", str(export), "--confirmed", "--now", MORNING))
    assert same.stderr == ""
    assert "already present: 5 (left as they are)" in same.stdout
    assert "suppressed: 2 " in same.stdout
    assert readers(sessions) == before  # the pending reader was not confirmed by the file

    # Into an emptied database (a move): the same people, names, zones; suppressions kept.
    with sessions() as session, session.begin():
        for table in (events, deliveries, subscribers):
            session.connection().execute(delete(table))
    moved = ok(drip("subscribers", "import", str(export), "--confirmed", "--now", MORNING))
    assert moved.stderr == "", moved.stderr  # no warning of any kind
    assert "imported: 3 (active, first lesson scheduled)" in moved.stdout
    assert "kept as unsubscribed: 1" in moved.stdout and "kept as pending: 1" in moved.stdout
    after = readers(sessions)
    expected = dict(before)
    expected["zz@example.com"] = (None, "Asia/Tokyo", "active")  # a pause is not carried
    assert after == expected
    # A kept reader gets nothing: no lesson is scheduled for any of them.
    with sessions() as session:
        for email in ("u@example.com", "b@example.com", "done@example.com", "p@example.com"):
            view = store.get_subscriber(session, COURSE.id, email)
            assert view is not None and view.next_send_at is None, email
    # And the unsubscribed one is still never re-activated.
    assert drip("subscribe", "u@example.com", "--confirmed").exit_code == 2


def test_a_bad_status_in_the_file_is_an_invalid_row(
    drip: Drip, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    file = tmp_path / "x.csv"
    file.write_text("email,status\nok@example.com,\nbad@example.com,vip\n", encoding="utf-8")
    result = drip("subscribers", "import", str(file), "--confirmed", "--now", MORNING)
    assert result.exit_code == 1
    assert "x.csv:3: has status 'vip'; use one of" in result.stderr
    assert set(readers(sessions)) == {"ok@example.com"}


def test_unknown_columns_still_warn_but_an_exports_columns_do_not(
    drip: Drip, tmp_path: Path
) -> None:
    file = tmp_path / "x.csv"
    file.write_text("email,consent_source,phone\na@example.com,cli,090\n", encoding="utf-8")
    result = ok(drip("subscribers", "import", str(file), "--confirmed", "--now", MORNING))
    assert "ignored column(s) 'phone'" in result.stderr
    assert "consent_source" not in result.stderr


def test_import_reports_progress_per_batch(sessions: sessionmaker[Session], tmp_path: Path) -> None:
    file = tmp_path / "x.csv"
    file.write_text(
        "email\n" + "".join(f"r{n}@example.com\n" for n in range(5)) + "bad\n", encoding="utf-8"
    )
    seen: list[int] = []
    report = import_subscribers(
        sessions,
        file,
        course_id=COURSE.id,
        default_timezone="Asia/Tokyo",
        first_lesson="welcome",
        now=T0,
        confirmed=False,
        batch_size=2,
        progress=seen.append,
    )
    assert seen == [2, 2, 1] and report.imported == 5 and len(report.invalid) == 1


def test_the_summary_is_a_table_on_a_terminal_and_plain_lines_otherwise(
    drip: Drip, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = tmp_path / "x.csv"
    file.write_text("email\na@example.com\na@example.com\n", encoding="utf-8")
    plain = ok(drip("subscribers", "import", str(file), "--dry-run"))
    assert "merged duplicates: 1 (line 3 = line 2)" in plain.stdout  # what scripts parse
    monkeypatch.setattr(subscribers_cli, "_stdout_is_terminal", lambda: True)
    table = ok(drip("subscribers", "import", str(file), "--dry-run"))
    assert "merged duplicates: 1" not in table.stdout
    assert "import of x.csv" in table.stdout
    lines = [line for line in table.stdout.splitlines() if "merged duplicates" in line]
    assert len(lines) == 1 and "line 3 = line 2" in lines[0]


def test_table_rows_count_what_the_report_says() -> None:
    report = ImportReport(
        rows=5, imported=2, present=1, suppressed=[4], merged=[(3, 2)], kept={"pending": 1}
    )
    rows = subscribers_cli.import_table_rows(report, confirmed=False, dry_run=False)
    counts = {what: count for what, count, _ in rows}
    assert counts == {
        "rows read": 5,
        "imported": 2,
        "merged duplicates": 1,
        "already present": 1,
        "suppressed": 1,
        "kept as pending": 1,
        "invalid": 0,
    }


def test_ctrl_c_during_an_import_keeps_the_batches_done_and_says_how_to_finish(
    drip: Drip, sessions: sessionmaker[Session], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = tmp_path / "big.csv"
    file.write_text(
        "email\n" + "".join(f"r{n}@example.com\n" for n in range(1500)), encoding="utf-8"
    )
    real_insert = store.insert_subscribers
    calls = 0

    def insert_then_ctrl_c(*args: object, **kwargs: object) -> int:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise KeyboardInterrupt
        return real_insert(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "insert_subscribers", insert_then_ctrl_c)
    stopped = drip("subscribers", "import", str(file), "--now", MORNING)
    assert stopped.exit_code == 130
    assert stopped.stderr.splitlines() == [
        "error: interrupted: the first 1,000 row(s) stay imported; run the same import again to"
        " finish (rows already there are left alone)"
    ]
    assert len(readers(sessions)) == 1000
    monkeypatch.setattr(store, "insert_subscribers", real_insert)
    again = ok(drip("subscribers", "import", str(file), "--now", MORNING))
    assert "imported: 500 (pending)" in again.stdout
    assert "already present: 1000" in again.stdout
    assert len(readers(sessions)) == 1500
