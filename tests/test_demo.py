"""`drip demo` through click's runner: the readers get exactly what the schedule says, the
pause and the unsubscribe hold, the pages link only to files that exist, a second run in the
same folder replaces the first, and the operator's own database and outbox are never touched.

The demo always runs on its own SQLite file (that is its contract), so these tests have no
PostgreSQL variant.
"""

from __future__ import annotations

import email
import email.policy
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import holidays
import pytest
from click.testing import CliRunner, Result
from sqlalchemy.orm import sessionmaker
from tests.support import COURSE, COURSE_DIR, ROOT, TEMPLATES
from tests.web_support import WEB_TEMPLATES

from drip import demo, plan, store
from drip.cli import main
from drip.course import load_course
from drip.db import make_engine
from drip.statuses import SubscriberStatus

START = "2026-04-01T09:00+09:00"
ENV = {
    "DRIP_COURSE_DIR": str(COURSE_DIR),
    "DRIP_TEMPLATES_DIR": str(TEMPLATES),
    "DRIP_WEB_TEMPLATES_DIR": str(WEB_TEMPLATES),
}
SEND_TIME = COURSE.settings.send_time  # 07:30
assert COURSE.settings.quiet_hours is not None
QUIET_START, QUIET_END = COURSE.settings.quiet_hours  # 21:00, 07:00
PAUSER = next(action for action in demo.ACTIONS if action.kind == "pause")
LEAVER = next(action for action in demo.ACTIONS if action.kind == "unsubscribe")


def run(*args: str, **env: str) -> Result:
    return CliRunner().invoke(main, ["demo", *args], env={**ENV, **env})


@dataclass(frozen=True)
class Ledger:
    """What the demo's own database says about one reader."""

    subscriber: store.SubscriberView
    sent: dict[str, datetime]
    """lesson slug -> sent at (UTC)"""


@dataclass(frozen=True)
class Demo:
    folder: Path
    result: Result
    ledgers: dict[str, Ledger]
    emails: dict[str, list[tuple[Path, EmailMessage]]]
    """address -> the .eml files of the outbox sent to it, oldest first"""


def read_demo(folder: Path, result: Result) -> Demo:
    engine = make_engine(f"sqlite:///{folder / 'drip.db'}")
    sessions = sessionmaker(engine)
    ledgers = {}
    try:
        with sessions() as session:
            for reader in demo.READERS:
                view = store.get_subscriber(session, COURSE.id, reader.email)
                assert view is not None, reader.email
                ledgers[reader.email] = Ledger(view, store.lessons_sent(session, view.id))
    finally:
        engine.dispose()
    emails: dict[str, list[tuple[Path, EmailMessage]]] = {}
    for path in (folder / "outbox").glob("*.eml"):
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        emails.setdefault(message["To"].addresses[0].addr_spec, []).append((path, message))
    for found in emails.values():
        found.sort(key=lambda item: sent_at(item[1]))
    return Demo(folder, result, ledgers, emails)


def sent_at(message: EmailMessage) -> datetime:
    return parsedate_to_datetime(str(message["Date"]))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A current directory holding an operator's own drip.db, outbox and key file."""
    cwd = tmp_path_factory.mktemp("operator")
    (cwd / "drip.db").write_bytes(b"the operator's database")
    (cwd / "outbox").mkdir()
    (cwd / "outbox" / "7.eml").write_bytes(b"the operator's email")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        yield cwd


@pytest.fixture(scope="module")
def ran(workdir: Path, tmp_path_factory: pytest.TempPathFactory) -> Demo:
    folder = tmp_path_factory.mktemp("demo") / "run"
    result = run(str(folder), "--now", START)
    assert result.exit_code == 0, result.output
    return read_demo(folder, result)


def expected_plan(ledger: Ledger) -> list[datetime]:
    """The schedule of a reader confirming when this one did, in their timezone, sent on time."""
    confirmed = ledger.subscriber.confirmed_at
    assert confirmed is not None
    steps = plan.course_plan(COURSE, ledger.subscriber.timezone, start=confirmed)
    return [step.at for step in steps if step.at is not None]


def in_course_order(ledger: Ledger) -> list[datetime]:
    return [ledger.sent[lesson.slug] for lesson in COURSE.lessons if lesson.slug in ledger.sent]


UNDISTURBED = [
    reader.email for reader in demo.READERS if reader.email not in {PAUSER.email, LEAVER.email}
]


@pytest.mark.parametrize("address", UNDISTURBED)
def test_an_undisturbed_reader_gets_every_lesson_when_the_schedule_says(
    ran: Demo, address: str
) -> None:
    ledger = ran.ledgers[address]
    assert ledger.subscriber.status is SubscriberStatus.COMPLETED
    assert in_course_order(ledger) == expected_plan(ledger)
    zone = ZoneInfo(ledger.subscriber.timezone)
    for lesson in COURSE.lessons[1:]:
        assert ledger.sent[lesson.slug].astimezone(zone).time() == SEND_TIME, lesson.slug
    # The outbox holds exactly what the ledger says: one confirmation, then each lesson once,
    # in order, each dated when the ledger has it sent.
    received = ran.emails[address]
    assert received[0][0].name.startswith("confirm-")
    lessons = received[1:]
    assert [message["Subject"] for _, message in lessons] == [
        lesson.subject for lesson in COURSE.lessons
    ]
    assert [sent_at(message) for _, message in lessons] == in_course_order(ledger)


def test_lesson_one_waits_for_the_end_of_quiet_hours_and_comes_at_once_otherwise(
    ran: Demo,
) -> None:
    waited = at_once = 0
    for address, ledger in ran.ledgers.items():
        confirmed = ledger.subscriber.confirmed_at
        assert confirmed is not None
        zone = ZoneInfo(ledger.subscriber.timezone)
        local = confirmed.astimezone(zone)
        first = ledger.sent[COURSE.lessons[0].slug]
        if QUIET_END <= local.time() < QUIET_START:
            assert first == confirmed, address
            at_once += 1
        else:
            assert first.astimezone(zone).time() == QUIET_END, address
            assert timedelta(0) < first - confirmed < timedelta(hours=10), address
            waited += 1
    assert waited and at_once  # the sample readers show both


def test_the_paused_reader_gets_nothing_during_the_pause_and_the_rest_after(ran: Demo) -> None:
    ledger = ran.ledgers[PAUSER.email]
    assert ledger.subscriber.status is SubscriberStatus.COMPLETED
    before = COURSE.lessons[PAUSER.after_lesson - 1]
    paused = ledger.sent[before.slug] + PAUSER.delay
    ended = paused + timedelta(weeks=demo.PAUSE_WEEKS)
    times = in_course_order(ledger)
    assert len(times) == len(COURSE.lessons)
    assert not [moment for moment in times if paused <= moment < ended]
    dated = [sent_at(message) for _, message in ran.emails[PAUSER.email]]
    assert not [moment for moment in dated if paused <= moment < ended]
    # Resumed at the end of the pause: the next lesson at the next 07:30, reader-local.
    zone = ZoneInfo(ledger.subscriber.timezone)
    after = ledger.sent[COURSE.lessons[PAUSER.after_lesson].slug]
    assert after.astimezone(zone).time() == SEND_TIME
    assert ended < after <= ended + timedelta(days=1)
    assert times[: PAUSER.after_lesson] == expected_plan(ledger)[: PAUSER.after_lesson]


def test_the_unsubscribed_reader_gets_nothing_after_the_one_click(ran: Demo) -> None:
    ledger = ran.ledgers[LEAVER.email]
    assert ledger.subscriber.status is SubscriberStatus.UNSUBSCRIBED
    assert set(ledger.sent) == {lesson.slug for lesson in COURSE.lessons[: LEAVER.after_lesson]}
    assert in_course_order(ledger) == expected_plan(ledger)[: LEAVER.after_lesson]
    left = ledger.sent[COURSE.lessons[LEAVER.after_lesson - 1].slug] + LEAVER.delay
    assert ledger.subscriber.status_changed_at == left
    dated = [sent_at(message) for _, message in ran.emails[LEAVER.email]]
    assert max(dated) < left
    assert len(dated) == 1 + LEAVER.after_lesson


def test_the_output_lists_each_lesson_with_local_and_utc_times_and_the_paths(ran: Demo) -> None:
    output = ran.result.output
    for ledger in ran.ledgers.values():
        zone = ZoneInfo(ledger.subscriber.timezone)
        for lesson in COURSE.lessons:
            if lesson.slug in ledger.sent:
                at = ledger.sent[lesson.slug]
                row = (
                    rf"{lesson.number} {lesson.slug} +{at.astimezone(zone):%Y-%m-%d %a %H:%M}"
                    rf" {at:%Y-%m-%d %H:%M}\b"
                )
                assert len(re.findall(row, output)) >= 1, row
    assert len(re.findall(r" \d [a-z-]+ +\d{4}-\d\d-\d\d \w{3} \d\d:\d\d ", output)) == sum(
        len(ledger.sent) for ledger in ran.ledgers.values()
    )
    for reader in demo.READERS:
        assert f"{reader.email}" in output and reader.timezone in output
    assert "paused for 1 week" in output and "unsubscribed with one click" in output
    folder = ran.folder.resolve()
    assert f"stats page: {folder / 'stats.html'}" in output
    assert f"gallery:    {folder / 'index.html'}" in output
    assert f"folder:     {folder}" in output
    assert re.search(r"^finished in \d+\.\d s$", output, re.MULTILINE)


HREF = re.compile(r'(?:href|src)="([^"]+)"')


def test_the_gallery_and_the_stats_page_link_only_to_files_that_exist(ran: Demo) -> None:
    gallery = (ran.folder / "index.html").read_text(encoding="utf-8")
    stats = (ran.folder / "stats.html").read_text(encoding="utf-8")
    links = HREF.findall(gallery)
    assert links, "the gallery links to nothing"
    for link in links + HREF.findall(stats):
        assert not re.match(r"[a-z]+:", link), f"not a local file: {link}"
        assert (ran.folder / link).is_file(), f"links to a missing file: {link}"
    # Every email the outbox holds is listed, with its HTML part beside it.
    emls = {path.relative_to(ran.folder).as_posix() for path in ran.folder.rglob("*.eml")}
    assert {link for link in links if link.endswith(".eml")} == emls
    assert len(emls) == sum(len(found) for found in ran.emails.values()) == 6 + 8 * 4 + 8 + 3
    for eml in emls:
        part = (ran.folder / eml).with_suffix(".html").read_text(encoding="utf-8")
        assert "<html" in part and f'href="{eml[:-4]}.html"' in gallery
    # Grouped by reader: each reader's section lists that reader's emails only.
    sections = re.split(r"<h2 id=", gallery)[1:]  # [0]: the header and the events
    assert len(sections) == len(demo.READERS)
    for reader, section in zip(demo.READERS, sections, strict=True):
        assert section.startswith(f'"{reader.email}"')
        assert section.count(".eml</a>") == len(ran.emails[reader.email])


def test_the_demo_leaves_the_current_directory_alone(ran: Demo, workdir: Path) -> None:
    assert (workdir / "drip.db").read_bytes() == b"the operator's database"
    assert [path.name for path in (workdir / "outbox").iterdir()] == ["7.eml"]
    assert sorted(path.name for path in workdir.iterdir()) == ["drip.db", "outbox"]


def test_a_second_run_in_the_same_folder_replaces_the_first(
    ran: Demo, tmp_path: Path, workdir: Path
) -> None:
    folder = tmp_path / "again"
    assert run(str(folder), "--now", START).exit_code == 0
    (folder / "notes.txt").write_text("mine")
    elsewhere = tmp_path / "elsewhere.html"
    elsewhere.write_text("not the demo's")
    (folder / "stats.html").unlink()
    (folder / "stats.html").symlink_to(elsewhere)  # removed as a link, never followed
    first = len(list((folder / "outbox").glob("*.eml")))
    second = run(str(folder), "--now", "2026-06-01T12:00+00:00")
    assert second.exit_code == 0, second.output
    again = read_demo(folder, second)
    assert (folder / "notes.txt").read_text() == "mine"  # not the demo's: left alone
    assert elsewhere.read_text() == "not the demo's"
    assert not (folder / "stats.html").is_symlink()
    assert sum(len(found) for found in again.emails.values()) == first
    assert all(
        sent_at(message) >= datetime.fromisoformat("2026-06-01T12:00+00:00")
        for found in again.emails.values()
        for _, message in found
    )


def test_a_folder_that_is_not_a_previous_demo_is_refused_untouched(
    tmp_path: Path, workdir: Path
) -> None:
    (tmp_path / "drip.db").write_bytes(b"precious")
    refused = run(str(tmp_path), "--now", START)
    assert refused.exit_code == 2
    assert refused.output.strip().splitlines() == [
        f"error: {tmp_path} is not empty and holds no previous demo; give a new or empty folder"
        " (or none: a new temporary folder)"
    ]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["drip.db"]
    assert (tmp_path / "drip.db").read_bytes() == b"precious"
    a_file = tmp_path / "drip.db"
    as_file = run(str(a_file), "--now", START)
    assert as_file.exit_code == 2 and "is a file" in as_file.output
    beneath = run(str(a_file / "demo"), "--now", START)
    assert beneath.exit_code == 2
    assert f"error: cannot use {a_file / 'demo'} for the demo: Not a directory" in beneath.output
    assert (tmp_path / "drip.db").read_bytes() == b"precious"


def test_without_a_folder_it_makes_a_temporary_one_and_names_it(
    tmp_path: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    result = run("--now", START)
    assert result.exit_code == 0, result.output
    [made] = tmp_path.iterdir()
    assert made.name.startswith("drip-demo-")
    assert f"folder:     {made.resolve()}" in result.output
    assert (made / "index.html").is_file() and (made / ".drip-demo").is_file()


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--now", "2026-04-01T09:00"], {}, "has no UTC offset"),
        (["--now", "yesterday"], {}, "is not an ISO-8601 date-time"),
        (["--now", START], {"DRIP_COURSE_DIR": "/nonexistent/course"}, "/nonexistent/course"),
        (
            ["--now", START],
            {"DRIP_WEB_TEMPLATES_DIR": "/nonexistent/web"},
            "error: DRIP_WEB_TEMPLATES_DIR=/nonexistent/web: there is no"
            " /nonexistent/web/signup.html",
        ),
        (["--now", START], {"DRIP_TRANSPORT": "carrier-pigeon"}, "DRIP_TRANSPORT="),
        (
            ["--now", "9998-12-31T12:00+00:00"],
            {},
            "error: --now 9998-12-31T12:00:00+00:00 leaves no room to replay the course;"
            " start before 9998-01-01",
        ),
    ],
)
def test_bad_input_is_a_usage_error_and_makes_no_folder(
    tmp_path: Path,
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    env: dict[str, str],
    message: str,
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    result = run(*args, **env)
    assert result.exit_code == 2
    assert message in result.output
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_stops_the_web_sender_and_the_folder_can_be_used_again(
    tmp_path: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = 0
    real = demo.send_due

    def interrupted(*args: object, **kwargs: object) -> object:
        nonlocal runs
        runs += 1
        if runs == 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(demo, "send_due", interrupted)
    folder = tmp_path / "stopped"
    result = run(str(folder), "--now", START)
    assert result.exit_code == 130 and result.stderr == "error: interrupted (Ctrl-C)\n"
    assert not [thread for thread in threading.enumerate() if thread.name == "drip-outbound"]
    monkeypatch.setattr(demo, "send_due", real)
    assert run(str(folder), "--now", START).exit_code == 0


def test_the_operators_database_outbox_and_transport_are_never_used(
    tmp_path: Path, workdir: Path
) -> None:
    """Settings that point elsewhere (another database, another outbox, SendGrid at a port
    where nothing listens) change nothing: the demo uses its own folder only."""
    folder = tmp_path / "demo"
    result = run(
        str(folder),
        "--now",
        START,
        DRIP_DATABASE_URL=f"sqlite:///{tmp_path / 'operator.db'}",
        DRIP_OUTBOX_DIR=str(tmp_path / "operator-outbox"),
        SENDGRID_API_KEY="SG.not-a-real-key",
        DRIP_SENDGRID_API_URL="http://127.0.0.1:9",
        DRIP_SECRET_KEY="operator-key-0123456789-abcdefghijklmnopqrstuvwxyz",
    )
    assert result.exit_code == 0, result.output
    assert sorted(path.name for path in tmp_path.iterdir()) == ["demo"]
    assert len(list((folder / "outbox").glob("*.eml"))) == 49


def test_a_step_the_web_app_refuses_stops_the_demo_with_exit_1_naming_it(
    tmp_path: Path, workdir: Path
) -> None:
    pages = tmp_path / "web"
    shutil.copytree(WEB_TEMPLATES, pages)
    form = pages / "signup.html"
    form.write_text(
        re.sub(r'<input[^>]*name="form_token"[^>]*>', "", form.read_text(encoding="utf-8")),
        encoding="utf-8",
    )
    result = run(str(tmp_path / "demo"), "--now", START, DRIP_WEB_TEMPLATES_DIR=str(pages))
    assert result.exit_code == 1
    assert result.output.strip() == "error: the signup form (GET /) has no form token"


def test_the_readmes_sample_output_is_what_the_demo_prints(ran: Demo) -> None:
    """The README shows lines of `drip demo --now 2026-04-01T09:00+09:00`: each must be a line
    the demo prints (less the folder's name and the time taken, which vary)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "--now 2026-04-01T09:00+09:00" in readme and START == "2026-04-01T09:00+09:00"
    sample = readme.split("```\nreader", 1)[1].split("```", 1)[0]
    printed = ran.result.output.splitlines()
    shown = [
        line
        for line in ("reader" + sample).splitlines()
        if line != "…" and "drip-demo-" not in line and not line.startswith("finished in")
    ]
    assert len(shown) >= 10
    assert [line for line in shown if line not in printed] == []


def test_a_course_sent_on_weekdays_only_skipping_holidays_is_replayed_as_its_schedule_says(
    tmp_path: Path, workdir: Path
) -> None:
    """Golden Week on a weekdays-only course that skips Japanese holidays: the replay still
    sends each lesson exactly when the schedule says, never on a weekend or holiday."""
    course_dir = tmp_path / "course"
    shutil.copytree(COURSE_DIR, course_dir)
    toml = course_dir / "course.toml"
    text = toml.read_text(encoding="utf-8")
    text = text.replace(
        '# send_days = ["mon", "tue", "wed", "thu", "fri"]',
        'send_days = ["mon", "tue", "wed", "thu", "fri"]',
    )
    text = text.replace('# skip_holidays = "JP"', 'skip_holidays = "JP"')
    assert 'send_days = ["mon"' in text and '\nskip_holidays = "JP"' in text
    toml.write_text(text, encoding="utf-8")
    weekdays = load_course(course_dir)
    folder = tmp_path / "demo"
    result = run(str(folder), "--now", "2026-04-28T09:00+09:00", DRIP_COURSE_DIR=str(course_dir))
    assert result.exit_code == 0, result.output
    ran = read_demo(folder, result)
    japanese = holidays.country_holidays("JP", years=2026)
    for address in UNDISTURBED:
        ledger = ran.ledgers[address]
        confirmed = ledger.subscriber.confirmed_at
        assert confirmed is not None
        planned = plan.course_plan(weekdays, ledger.subscriber.timezone, start=confirmed)
        sent = [ledger.sent[lesson.slug] for lesson in weekdays.lessons]
        assert sent == [step.at for step in planned], address
        zone = ZoneInfo(ledger.subscriber.timezone)
        for moment in sent[1:]:
            local = moment.astimezone(zone).date()
            assert local.weekday() < 5 and local not in japanese, (address, local)
