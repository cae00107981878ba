"""CSV import on SQLite and PostgreSQL, via the library and `drip subscribers import`."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker
from tests.support import COURSE_DIR

from drip import store
from drip.cli import main
from drip.db import head_revision
from drip.errors import UsageError
from drip.importer import ImportReport, import_subscribers
from drip.models import subscribers

COURSE = "course-a"
T0 = datetime(2026, 4, 1, 0, 0, tzinfo=UTC)


def first_send_at(timezone: str) -> datetime:
    # A stand-in for drip.schedule: distinct per timezone so the test can tell which was used.
    return T0 + timedelta(hours=1 if timezone == "Asia/Tokyo" else 2)


def write(tmp_path: Path, text: str, name: str = "list.csv", *, bom: bool = False) -> Path:
    path = tmp_path / name
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


@pytest.fixture
def run_import(engine: Engine) -> Callable[..., ImportReport]:
    def run(path: Path, **options: object) -> ImportReport:
        arguments: dict[str, object] = {
            "course_id": COURSE,
            "default_timezone": "Asia/Tokyo",
            "first_lesson": "welcome",
            "now": T0,
            "confirmed": False,
            "first_send_at": first_send_at,
            **options,
        }
        return import_subscribers(sessionmaker(engine), path, **arguments)  # type: ignore[arg-type]

    return run


def rows(engine: Engine, course: str = COURSE) -> dict[str, store.SubscriberView]:
    with Session(engine) as session:
        emails = session.connection().execute(select(subscribers.c.email)).scalars().all()
        found = {email: store.get_subscriber(session, course, email) for email in emails}
    return {email: view for email, view in found.items() if view is not None}


def test_valid_rows_are_imported_and_invalid_ones_reported_by_line(
    tmp_path: Path, engine: Engine, run_import: Callable[..., ImportReport]
) -> None:
    path = write(
        tmp_path,
        "email,name,timezone\n"
        "taro@example.com,山田 太郎,\n"
        "not-an-address,Bad,\n"
        "\n"
        "hanako@example.com,花子,Europe/London\n"
        "ken@example.com,Ken,Mars/Olympus\n"
        "only-one-field@example.com\n"
        '"multi\nline@example.com",x,\n'
        ",no email,\n"
        "jiro@example.com,,\n",
    )
    report = run_import(path)
    assert report.imported == 3 and report.rows == 8
    assert [line for line, _ in report.invalid] == [3, 6, 7, 8, 10]
    reasons = dict(report.invalid)
    assert "not-an-address" in reasons[3]
    assert "Mars/Olympus" in reasons[6] and "timezone" in reasons[6]
    assert "1 field(s)" in reasons[7]
    assert reasons[10] == "has no email address"
    stored = rows(engine)
    assert set(stored) == {"taro@example.com", "hanako@example.com", "jiro@example.com"}
    taro = stored["taro@example.com"]
    assert (taro.name, taro.timezone, taro.status) == ("山田 太郎", "Asia/Tokyo", "pending")
    assert taro.consent_source == "import:list.csv" and taro.consent_at == T0
    assert taro.next_send_at is None
    assert stored["hanako@example.com"].timezone == "Europe/London"
    assert stored["jiro@example.com"].name is None


def test_a_byte_order_mark_and_header_case_are_accepted(
    tmp_path: Path, engine: Engine, run_import: Callable[..., ImportReport]
) -> None:
    path = write(tmp_path, " Email ,NAME\r\na@example.com,A\r\n", bom=True)
    report = run_import(path)
    assert (report.imported, report.invalid) == (1, [])
    assert rows(engine)["a@example.com"].name == "A"


# --- the file as a whole: decoded strictly and parsed strictly before anything is written ------


@pytest.mark.parametrize(
    "text",
    [
        "email,name\nok@example.com,OK\nsj@example.com,山田太郎\n",  # Excel's "CSV": CP932
        "email,name\nmika@example.com,ﾐｶ\n",  # half-width kana: valid UTF-8 bytes (ж)
        "email,name\nok@example.com,ｶﾀｶﾅ ﾀﾛｳ\n",
    ],
)
def test_a_shift_jis_file_is_refused_whole_with_how_to_fix_it(
    tmp_path: Path, engine: Engine, run_import: Callable[..., ImportReport], text: str
) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes(text.encode("cp932"))
    with pytest.raises(UsageError, match="Shift_JIS/CP932") as raised:
        run_import(path)
    assert "CSV UTF-8" in str(raised.value) and "nothing was imported" in str(raised.value)
    assert rows(engine) == {}


@pytest.mark.parametrize(
    "data",
    [
        "email,name\nok@example.com,山田\n".encode("utf-16"),
        "email,name\nok@example.com,山田\n".encode("utf-16-le"),
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
        b"PK\x03\x04\x14\x00\x06\x00",  # an .xlsx workbook
        "email,name\nok@example.com,OK\nbad@example.com,\udcff\n".encode(
            "utf-8", "surrogateescape"
        ),
    ],
    ids=["utf-16", "utf-16-le", "binary", "xlsx", "one-bad-byte"],
)
def test_a_file_that_is_not_utf8_is_refused_whole(
    tmp_path: Path, engine: Engine, run_import: Callable[..., ImportReport], data: bytes
) -> None:
    path = tmp_path / "list.csv"
    path.write_bytes(data)
    with pytest.raises(UsageError, match="not a UTF-8 CSV") as raised:
        run_import(path)
    assert "unknown column" not in str(raised.value)
    assert rows(engine) == {}


def test_utf8_names_in_other_scripts_are_not_taken_for_shift_jis(
    tmp_path: Path, engine: Engine, run_import: Callable[..., ImportReport]
) -> None:
    path = write(tmp_path, "email,name\nivan@example.com,Иван\nmaria@example.com,Μαρία\n")
    assert run_import(path).imported == 2
    assert rows(engine)["ivan@example.com"].name == "Иван"


def test_a_directory_is_named_as_one(
    tmp_path: Path, run_import: Callable[..., ImportReport]
) -> None:
    with pytest.raises(UsageError, match="is a directory"):
        run_import(tmp_path)


def test_an_unterminated_quote_stops_the_import_before_anything_is_written(
    tmp_path: Path, engine: Engine, run_import: Callable[..., ImportReport]
) -> None:
    path = write(
        tmp_path,
        'email,name\nok@example.com,OK\na@example.com,"山田\nb@example.com,鈴木\nc@example.com,佐藤\n',
    )
    with pytest.raises(UsageError, match=r"list\.csv:3: .*quote") as raised:
        run_import(path)
    assert "nothing was imported" in str(raised.value)
    assert rows(engine) == {}
    write(tmp_path, 'email,name\nok@example.com,"山田"太郎\n')
    with pytest.raises(UsageError, match=r"list\.csv:2: "):
        run_import(path)


def test_a_quoted_field_spanning_lines_is_an_invalid_row(
    tmp_path: Path, engine: Engine, run_import: Callable[..., ImportReport]
) -> None:
    path = write(
        tmp_path, 'email,name\na@example.com,"山田\nb@example.com,鈴木"\nc@example.com,佐藤\n'
    )
    report = run_import(path)
    assert report.imported == 1
    assert [line for line, _ in report.invalid] == [2]
    assert "line break" in report.invalid[0][1]
    assert set(rows(engine)) == {"c@example.com"}


@pytest.mark.parametrize("line_break", ["\n", "\r", "\r\n"])
def test_any_line_break_inside_a_field_makes_the_row_invalid_with_the_reason(
    tmp_path: Path, engine: Engine, run_import: Callable[..., ImportReport], line_break: str
) -> None:
    text = f'email,name\na@example.com,"山田{line_break}太郎"\nc@example.com,佐藤\n'
    path = write(tmp_path, text)
    report = run_import(path)
    assert report.imported == 1
    assert report.invalid == [
        (
            2,
            "has a field holding a line break: a quote opened on this line closes on a later"
            " one, swallowing the rows between; fix the quotes",
        )
    ]


def test_extra_columns_are_ignored_with_their_names(
    tmp_path: Path, engine: Engine, run_import: Callable[..., ImportReport]
) -> None:
    path = write(
        tmp_path, "Email,Phone,name,Company,\na@example.com,090,山田,ACME,\nb@example.com,,,,\n"
    )
    report = run_import(path)
    assert (report.imported, report.invalid) == (2, [])
    assert report.ignored_columns == ["Phone", "Company", ""]
    assert rows(engine)["a@example.com"].name == "山田"


def test_duplicates_are_merged_and_the_first_wins_even_across_batches(
    tmp_path: Path, engine: Engine, run_import: Callable[..., ImportReport]
) -> None:
    path = write(
        tmp_path,
        "email,name\n"
        "a@example.com,First\n"
        "b@example.com,B\n"
        "c@example.com,C\n"
        "A@EXAMPLE.COM,Second\n"
        "d@example.com,D\n"
        "a@example.com,Third\n",
    )
    report = run_import(path, batch_size=2)
    assert report.imported == 4
    assert report.merged == [(5, 2), (7, 2)]
    assert rows(engine)["a@example.com"].name == "First"


def test_existing_subscribers_are_left_alone_and_suppressed_never_reactivated(
    tmp_path: Path, engine: Engine, run_import: Callable[..., ImportReport]
) -> None:
    with Session(engine) as session:
        for email, confirmed in (("gone@example.com", True), ("on@example.com", True)):
            store.add_subscriber(
                session,
                course_id=COURSE,
                email=email,
                name="Old",
                timezone="Asia/Tokyo",
                now=T0 - timedelta(days=9),
                consent_source="form",
                confirmed=confirmed,
                first_lesson="welcome",
                first_send_at=T0 - timedelta(days=9),
            )
        gone = store.get_subscriber(session, COURSE, "gone@example.com")
        assert gone is not None
        store.unsubscribe(session, gone.id, T0 - timedelta(days=1))
        session.commit()
    path = write(tmp_path, "email,name\ngone@example.com,New\non@example.com,New\nnew@x.org,N\n")
    report = run_import(path, confirmed=True)
    assert (report.imported, report.present, report.suppressed) == (1, 1, [2])
    stored = rows(engine)
    assert stored["gone@example.com"].status == "unsubscribed"
    assert stored["gone@example.com"].next_send_at is None
    assert stored["on@example.com"].name == "Old"
    assert stored["on@example.com"].consent_source == "form"


def test_a_confirmed_import_starts_new_rows_and_confirms_pending_ones(
    tmp_path: Path, engine: Engine, run_import: Callable[..., ImportReport]
) -> None:
    with Session(engine) as session:
        store.add_subscriber(
            session,
            course_id=COURSE,
            email="waiting@example.com",
            name=None,
            timezone="Europe/London",
            now=T0 - timedelta(days=1),
            consent_source="form",
            confirmed=False,
            first_lesson="welcome",
            first_send_at=None,
        )
        session.commit()
    path = write(tmp_path, "email,timezone\nwaiting@example.com,Asia/Tokyo\nnew@example.com,\n")
    report = run_import(path, confirmed=True)
    assert (report.imported, report.confirmed, report.present) == (1, 1, 0)
    stored = rows(engine)
    new, waiting = stored["new@example.com"], stored["waiting@example.com"]
    assert (new.status, new.next_lesson, new.next_send_at) == (
        "active",
        "welcome",
        T0 + timedelta(hours=1),
    )
    assert new.confirmed_at == T0
    # Confirmed in its own stored timezone, not the one in the file.
    assert (waiting.status, waiting.timezone) == ("active", "Europe/London")
    assert waiting.next_send_at == T0 + timedelta(hours=2)
    with Session(engine) as session:
        assert store.count_due(session, COURSE, T0 + timedelta(hours=2)) == 2


def test_a_dry_run_counts_but_writes_nothing(
    tmp_path: Path, engine: Engine, run_import: Callable[..., ImportReport]
) -> None:
    path = write(tmp_path, "email\na@example.com\nb@example.com\na@example.com\nbad\n")
    report = run_import(path, dry_run=True, confirmed=True)
    assert (report.dry_run, report.imported, len(report.merged), len(report.invalid)) == (
        True,
        2,
        1,
        1,
    )
    assert rows(engine) == {}


def add_existing(engine: Engine, *, pending: tuple[str, ...], active: tuple[str, ...]) -> None:
    with Session(engine) as session:
        for email in (*pending, *active):
            store.add_subscriber(
                session,
                course_id=COURSE,
                email=email,
                name=None,
                timezone="Europe/London",
                now=T0 - timedelta(days=1),
                consent_source="form",
                confirmed=email in active,
                first_lesson="welcome",
                first_send_at=T0 - timedelta(days=1) if email in active else None,
            )
        session.commit()


def test_every_batch_is_counted_and_only_a_confirmed_import_confirms(
    tmp_path: Path, engine: Engine, run_import: Callable[..., ImportReport]
) -> None:
    add_existing(engine, pending=("p1@example.com", "p2@example.com"), active=("a@example.com",))
    path = write(
        tmp_path,
        "email\np1@example.com\nn1@example.com\np2@example.com\na@example.com\nn2@example.com\n",
    )

    def counts(report: ImportReport) -> tuple[int, int, int]:
        return report.imported, report.confirmed, report.present

    # Not confirmed (first_send_at given all the same): pending readers stay pending.
    assert counts(run_import(path, dry_run=True, batch_size=1)) == (2, 0, 3)
    assert counts(run_import(path, dry_run=True, batch_size=1, confirmed=True)) == (2, 2, 1)
    assert set(rows(engine)) == {"p1@example.com", "p2@example.com", "a@example.com"}
    assert counts(run_import(path, batch_size=1, confirmed=True)) == (2, 2, 1)
    stored = rows(engine)
    for email in ("p1@example.com", "p2@example.com"):
        assert (stored[email].status, stored[email].next_lesson) == ("active", "welcome")


def test_an_unconfirmed_import_leaves_pending_readers_pending(
    tmp_path: Path, engine: Engine, run_import: Callable[..., ImportReport]
) -> None:
    add_existing(engine, pending=("p1@example.com",), active=())
    report = run_import(write(tmp_path, "email\np1@example.com\nn1@example.com\n"))
    assert (report.imported, report.confirmed, report.present) == (1, 0, 1)
    stored = rows(engine)
    assert stored["p1@example.com"].status == "pending"
    assert stored["n1@example.com"].status == "pending"
    assert stored["n1@example.com"].next_send_at is None


def test_rows_written_by_someone_else_after_the_look_up_count_as_present(
    tmp_path: Path,
    engine: Engine,
    run_import: Callable[..., ImportReport],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The look-up misses rows another session adds or confirms before the import writes (here
    the look-up is blinded): they are neither imported nor confirmed, but present."""
    add_existing(engine, pending=(), active=("a@example.com", "b@example.com"))
    monkeypatch.setattr(store, "existing_subscribers", lambda session, course_id, emails: {})
    path = write(tmp_path, "email\na@example.com\nnew@example.com\nb@example.com\n")
    report = run_import(path, batch_size=2, confirmed=True)
    assert (report.imported, report.confirmed, report.present) == (1, 0, 2)


def test_a_confirmed_import_without_first_send_at_is_a_programming_error(
    tmp_path: Path, run_import: Callable[..., ImportReport]
) -> None:
    with pytest.raises(ValueError) as raised:
        run_import(write(tmp_path, "email\n"), confirmed=True, first_send_at=None)
    assert str(raised.value) == "a confirmed import needs first_send_at"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no header row"),
        ("name,timezone\nx,Asia/Tokyo\n", "no 'email' column"),
        ("mail,phone\nx,y\n", "no 'email' column (the header names 'mail', 'phone')"),
        ("email,Email\n", "more than once"),
    ],
)
def test_a_bad_header_is_a_usage_error(
    tmp_path: Path, run_import: Callable[..., ImportReport], text: str, message: str
) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run_import(write(tmp_path, text))


def test_a_missing_file_is_a_usage_error(
    tmp_path: Path, run_import: Callable[..., ImportReport]
) -> None:
    with pytest.raises(UsageError, match="no such file"):
        run_import(tmp_path / "nowhere.csv")


@pytest.mark.slow
def test_a_hundred_thousand_rows_import_on_sqlite(tmp_path: Path) -> None:
    from drip.db import make_engine, upgrade

    url = f"sqlite:///{tmp_path / 'big.db'}"
    upgrade(url)
    path = tmp_path / "big.csv"
    with path.open("w", encoding="utf-8") as handle:
        handle.write("email,name,timezone\n")
        for number in range(100_000):
            zone = "Europe/London" if number % 10 == 0 else ""
            handle.write(f"user{number}@example.com,利用者{number},{zone}\n")
        handle.write("user5@example.com,dup,\nbroken,x,\n")
    engine = make_engine(url)
    try:
        report = import_subscribers(
            sessionmaker(engine),
            path,
            course_id=COURSE,
            default_timezone="Asia/Tokyo",
            first_lesson="welcome",
            now=T0,
            confirmed=True,
            first_send_at=first_send_at,
        )
        assert (report.imported, report.merged, report.invalid[0][0]) == (
            100_000,
            [(100_002, 7)],
            100_003,
        )
        with Session(engine) as session:
            count = session.connection().execute(select(func.count()).select_from(subscribers))
            assert count.scalar_one() == 100_000
            assert store.count_due(session, COURSE, T0 + timedelta(hours=2)) == 100_000
    finally:
        engine.dispose()


# --- the command line ---------------------------------------------------------------------


def invoke(database_url: str, *args: str) -> tuple[int, str, str]:
    runner = CliRunner()
    result = runner.invoke(
        main,
        list(args),
        env={
            "DRIP_DATABASE_URL": database_url,
            "DRIP_COURSE_DIR": str(COURSE_DIR),
            "DRIP_TRANSPORT": "outbox",
        },
        catch_exceptions=False,
    )
    return result.exit_code, result.stdout, result.stderr


def test_cli_import_reports_and_exits_1_when_rows_were_invalid(
    tmp_path: Path, database_url: str, engine: Engine
) -> None:
    path = write(tmp_path, "email,name\nok@example.com,OK\nbroken,B\nok@example.com,again\n")
    code, out, err = invoke(
        database_url, "subscribers", "import", str(path), "--now", "2026-04-01T09:00+09:00"
    )
    assert code == 1
    assert "imported: 1 (pending)" in out
    assert "merged duplicates: 1 (line 4 = line 2)" in out
    assert "invalid: 1" in out
    assert f"{path}:3:" in err
    assert "no confirmation email" in err
    stored = rows(engine, "jinmyaku-40s")["ok@example.com"]
    assert stored.created_at == T0 and stored.status == "pending"


def test_cli_confirmed_import_schedules_the_first_lesson(
    tmp_path: Path, database_url: str, engine: Engine
) -> None:
    path = write(tmp_path, "email\nstart@example.com\n")
    code, out, err = invoke(
        database_url,
        "subscribers",
        "import",
        str(path),
        "--confirmed",
        "--now",
        "2026-04-01T00:00Z",
    )
    assert code == 0, err
    assert "imported: 1 (active, first lesson scheduled)" in out
    with Session(engine) as session:
        found = store.get_subscriber(session, "jinmyaku-40s", "start@example.com")
    assert found is not None and found.status == "active"
    assert found.next_lesson == "welcome" and found.next_send_at is not None
    assert found.next_send_at >= T0


def test_cli_dry_run_and_errors(tmp_path: Path, database_url: str, engine: Engine) -> None:
    path = write(tmp_path, "email\na@example.com\n")
    code, out, _ = invoke(database_url, "subscribers", "import", str(path), "--dry-run")
    assert code == 0 and "dry run, nothing written" in out and "would be pending" in out
    assert rows(engine) == {}
    code, _, err = invoke(
        database_url, "subscribers", "import", str(path), "--now", "2026-04-01T09:00"
    )
    assert code == 2 and "+09:00" in err
    code, _, err = invoke(database_url, "subscribers", "import", str(tmp_path / "none.csv"))
    assert code == 2 and "no such file" in err
    code, _, err = invoke(database_url, "subscribers", "import", str(write(tmp_path, "mail\nx\n")))
    assert code == 2 and "no 'email' column" in err
    code, _, err = invoke(database_url, "subscribers", "import", str(tmp_path))
    assert code == 2 and "is a directory" in err
    extra = write(tmp_path, "email,phone,company\nx@example.com,090,ACME\n")
    code, out, err = invoke(database_url, "subscribers", "import", str(extra), "--dry-run")
    assert code == 0 and "would be pending" in out
    assert "ignored column(s) 'phone', 'company'" in err


def test_cli_db_upgrade(empty_database_url: str) -> None:
    code, out, err = invoke(empty_database_url, "db", "upgrade")
    assert code == 0, err
    assert out.strip().endswith(f"is at revision {head_revision()}")
    code, _, err = invoke(
        empty_database_url, "subscribers", "import", str(COURSE_DIR / "course.toml")
    )
    assert code == 2 and "no 'email' column" in err  # the schema is there now: only the file fails


def test_cli_refuses_a_database_that_was_not_upgraded(tmp_path: Path) -> None:
    path = write(tmp_path, "email\na@example.com\n")
    code, _, err = invoke(f"sqlite:///{tmp_path / 'fresh.db'}", "subscribers", "import", str(path))
    assert code == 2 and "drip db upgrade" in err


def test_full_width_idn_and_unsafe_names_are_handled_row_by_row(
    tmp_path: Path, engine: Engine, run_import: Callable[..., ImportReport]
) -> None:
    path = write(
        tmp_path,
        "email,name\n"
        "ｙａｍａｄａ@example.com,山田\n"  # the IME was left on: converted
        "taro@例え.jp,太郎\n"  # stored with the ASCII (IDNA) domain
        "講座@example.jp,講座\n"  # non-ASCII before the @: refused
        "spam@example.com,【当選】受取はこちら https://evil.example/win\n"
        "ctrl@example.com,a\x1bb\n"
        "emoji@example.com,👨\u200d👩\u200d👧\n",
    )
    report = run_import(path)
    assert [line for line, _ in report.invalid] == [4, 5, 6]
    reasons = dict(report.invalid)
    assert "only ASCII" in reasons[4]
    assert "web address" in reasons[5]
    assert "control character" in reasons[6]
    stored = rows(engine)
    assert set(stored) == {"yamada@example.com", "taro@xn--r8jz45g.jp", "emoji@example.com"}
    assert stored["emoji@example.com"].name == "👨\u200d👩\u200d👧"
