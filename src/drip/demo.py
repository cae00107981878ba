"""`drip demo`: the whole pipeline in a few seconds, in a folder of its own.

Sample readers in several timezones sign up through the web app's own code path (Flask's test
client on `drip.web.create_app`, as a browser would: the form and its token, the confirmation
email read from the outbox, the confirm page and its button). Then the course is replayed over
its whole length: the clock jumps from one moment something is due to the next (a reader's next
lesson, the end of a pause, a reader's scripted action) and at each one `delivery.send_due` runs
as `drip send --now` would, on the same wiring, so every email lands when the schedule says.
Along the way one reader pauses for a week on the manage page a lesson links to, and another
unsubscribes with the lesson's one-click `List-Unsubscribe` POST.

What it leaves in the folder: `drip.db` (its own SQLite file), `outbox/` (every email sent, as
`.eml`, with its HTML part beside it as `.html`), `stats.html` (the `drip stats --html` page) and
`index.html` (a gallery of the emails, grouped by reader). The folder gets its own signing key;
the operator's database, outbox and key file are never opened.
"""

from __future__ import annotations

import email
import email.policy
import html
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.test import TestResponse

from drip import db, insight, lifecycle, stats, wiring
from drip.config import Settings
from drip.course import Course, load_course
from drip.delivery import Mailer, send_due
from drip.errors import DripError, UsageError
from drip.plan import Step
from drip.statuses import SubscriberStatus
from drip.web import check_pages, close, create_app
from drip.web.outbound import outbound

MARKER = ".drip-demo"
"""The file that makes a folder a demo's: a second run there replaces the demo's own files."""
DATABASE = "drip.db"
OUTBOX = "outbox"
STATS_PAGE = "stats.html"
GALLERY = "index.html"
OWN_FILES = (
    MARKER,
    DATABASE,
    f"{DATABASE}-wal",
    f"{DATABASE}-shm",
    f"{DATABASE}-journal",
    OUTBOX,
    STATS_PAGE,
    GALLERY,
)
"""Everything a demo writes in its folder: a second run removes these and nothing else."""


@dataclass(frozen=True)
class SampleReader:
    email: str
    name: str
    timezone: str


READERS = (
    SampleReader("yamada@example.com", "山田", "Asia/Tokyo"),
    SampleReader("sato@example.com", "佐藤", "America/New_York"),
    SampleReader("suzuki@example.com", "鈴木", "Europe/London"),
    SampleReader("tanaka@example.com", "田中", "Australia/Sydney"),
    SampleReader("takahashi@example.com", "高橋", "America/Los_Angeles"),
    SampleReader("ito@example.com", "伊藤", "Asia/Kolkata"),
)


@dataclass(frozen=True)
class ReaderAction:
    """Something a reader does with the links of a lesson email, `delay` after it arrived."""

    email: str
    kind: Literal["pause", "unsubscribe"]
    after_lesson: int
    delay: timedelta


PAUSE_WEEKS = 1
ACTIONS = (
    ReaderAction("suzuki@example.com", "pause", after_lesson=2, delay=timedelta(hours=2)),
    ReaderAction("tanaka@example.com", "unsubscribe", after_lesson=3, delay=timedelta(hours=1)),
)
SIGNUP_GAP = timedelta(minutes=1)
"""The readers sign up one after another, this far apart."""
CONFIRM_AFTER = timedelta(minutes=10)
"""Each reader opens the confirmation email and confirms this long after signing up."""
MAX_REPLAY = timedelta(days=366)
"""The replay stops with an error if the course has not ended by then (a schedule bug)."""
LATEST_START = datetime(9998, 1, 1, tzinfo=UTC)
"""A later start would replay past the last year a datetime can hold."""
IDLE_TIMEOUT = 30.0
"""Seconds to wait for the web app's background sender after a request."""

_FORM_TOKEN = re.compile(r'name="form_token" value="([^"]+)"')
_CSRF_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')
_HTTP_IN_ANGLES = re.compile(r"<(https?://[^>]+)>")


class DemoError(DripError):
    """The pipeline did not behave as a reader would expect (a page refused a step, an email
    did not arrive): the demo stops, exit code 1."""


@dataclass(frozen=True)
class Event:
    at: datetime
    email: str
    what: str
    by_reader: bool = True
    """Something the reader did (before its emails at the same moment), or something a send
    did to the reader (after them)."""


@dataclass(frozen=True)
class ReaderOutcome:
    reader: SampleReader
    status: SubscriberStatus
    sent: tuple[Step, ...]
    """The lessons the ledger has as sent, in course order (`Step.at`: when, UTC)."""


@dataclass(frozen=True)
class SentEmail:
    """One `.eml` file of the outbox and what the gallery shows of it."""

    path: Path
    html_path: Path | None
    to: str
    subject: str
    at: datetime


@dataclass(frozen=True)
class DemoResult:
    folder: Path
    start: datetime
    end: datetime
    readers: tuple[ReaderOutcome, ...]
    events: tuple[Event, ...]
    emails: tuple[SentEmail, ...]
    send_runs: int
    stats_page: Path
    gallery: Path

    @property
    def lessons_sent(self) -> int:
        return sum(len(outcome.sent) for outcome in self.readers)


# --- the folder and the settings --------------------------------------------------------------


def prepare_folder(folder: Path | None) -> Path:
    """The demo's folder, marked as such and resolved: a new temporary folder when `folder` is
    None; else `folder`, created if missing. A previous demo's folder has that demo's files
    (`OWN_FILES`) removed and nothing else. Raises `UsageError` for a file, or for a folder that
    is not empty and not a previous demo's (so nobody's files are ever overwritten)."""
    if folder is None:
        made = Path(tempfile.mkdtemp(prefix="drip-demo-"))
        (made / MARKER).write_text("a drip demo folder: `drip demo` may replace it\n")
        return made.resolve()
    if folder.exists() and not folder.is_dir():
        raise UsageError(
            f"{folder} is a file; give a new or empty folder for the demo (or none: a new"
            " temporary folder)"
        )
    if folder.is_dir() and any(folder.iterdir()):
        if not (folder / MARKER).is_file():
            raise UsageError(
                f"{folder} is not empty and holds no previous demo; give a new or empty folder"
                " (or none: a new temporary folder)"
            )
        _remove_own_files(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / MARKER).write_text("a drip demo folder: `drip demo` may replace it\n")
    except OSError as exc:
        raise UsageError(
            f"cannot use {folder} for the demo: {exc.strerror}; give a folder you can write to"
        ) from exc
    return folder.resolve()


def _remove_own_files(folder: Path) -> None:
    for name in OWN_FILES:
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def demo_settings(configured: Settings, folder: Path) -> Settings:
    """The demo's settings: the configured course, templates, pages and sender; everything else
    its own (a SQLite file and an outbox in `folder`, a fresh signing key, the default links,
    nothing sent anywhere but the outbox)."""
    return Settings(
        database_url=f"sqlite:///{folder / DATABASE}",
        outbox_dir=folder / OUTBOX,
        transport="outbox",
        secret_keys=(secrets.token_urlsafe(32),),
        course_dir=configured.course_dir,
        templates_dir=configured.templates_dir,
        web_templates_dir=configured.web_templates_dir,
        from_address=configured.from_address,
    )


def check_inputs(settings: Settings, *, start: datetime) -> Course:
    """The course, loaded, the web pages found and `start` early enough to replay a course
    after it, before any folder is made (run from the wrong directory, the error says so).
    Raises `CourseError`, `ConfigError` or `UsageError` (exit 2)."""
    if start >= LATEST_START:
        raise UsageError(
            f"--now {start.isoformat()} leaves no room to replay the course; start before"
            f" {LATEST_START.date().isoformat()}"
        )
    course = load_course(settings.course_dir)
    check_pages(settings)
    return course


# --- the run ----------------------------------------------------------------------------------


class _Clock:
    """The moment the web app and the sends see; the replay moves it."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


def run_demo(configured: Settings, folder: Path, *, start: datetime) -> DemoResult:
    """Run the scenario in `folder` (from `prepare_folder`) on the demo's settings
    (`demo_settings`), from `start` to the end of the course, then write the stats page and the
    gallery. Raises `DemoError` when a step a reader takes is refused, and the usual
    `DripError`s for the course and the templates."""
    settings = demo_settings(configured, folder)
    db.upgrade(settings.database_url)
    clock = _Clock(start)
    with ExitStack() as cleanup:
        app = create_app(settings, clock=clock)
        cleanup.callback(close, app)  # stops its background sender too (Ctrl-C included)
        engine, sessions, course = wiring.open_ledger(settings)
        cleanup.callback(engine.dispose)
        mailer = wiring.make_mailer(settings, course)
        with mailer.transport:
            outbox = _Outbox(settings.outbox_dir)
            scenario = _Scenario(app, sessions, course, mailer, clock, settings, outbox)
            for index, reader in enumerate(READERS):
                clock.now = start + index * SIGNUP_GAP
                scenario.sign_up(reader)
            for index, reader in enumerate(READERS):
                clock.now = start + index * SIGNUP_GAP + CONFIRM_AFTER
                scenario.confirm(reader)
            scenario.replay()
        outcomes = tuple(_outcome(sessions, course, reader, clock.now) for reader in READERS)
        stats_page = folder / STATS_PAGE
        report = insight.course_stats(sessions, course, since=None)
        stats_page.write_text(stats.as_html(report), encoding="utf-8")
    emails = tuple(_with_html_parts(scenario.outbox))
    gallery = folder / GALLERY
    events = tuple(sorted(scenario.events, key=lambda event: (event.at, not event.by_reader)))
    result = DemoResult(
        folder=folder,
        start=start,
        end=clock.now,
        readers=outcomes,
        events=events,
        emails=emails,
        send_runs=scenario.send_runs,
        stats_page=stats_page,
        gallery=gallery,
    )
    gallery.write_text(gallery_html(result, course), encoding="utf-8")
    return result


def _outcome(
    sessions: sessionmaker[Session], course: Course, reader: SampleReader, now: datetime
) -> ReaderOutcome:
    view, steps = insight.subscriber_timeline(sessions, course, reader.email, now=now)
    sent = tuple(step for step in steps if step.state == "sent")
    return ReaderOutcome(reader, view.status, sent)


@dataclass
class _Scenario:
    app: Flask
    sessions: sessionmaker[Session]
    course: Course
    mailer: Mailer
    clock: _Clock
    settings: Settings
    outbox: _Outbox
    events: list[Event] = field(default_factory=list)
    send_runs: int = 0
    browsers: dict[str, FlaskClient] = field(default_factory=dict)
    """One test client (one cookie jar) per reader: each reads mail in their own browser."""

    # --- what readers do, through the web app ---

    def sign_up(self, reader: SampleReader) -> None:
        browser = self.browsers.setdefault(reader.email, self.app.test_client())
        form = _page(browser.get("/"), 200, "the signup form")
        answer = browser.post(
            "/subscribe",
            data={
                "email": reader.email,
                "name": reader.name,
                "timezone": reader.timezone,
                "form_token": _token(_FORM_TOKEN, form, "the signup form (GET /)"),
            },
            headers={"Origin": "null"},  # our own no-referrer page posts so
        )
        _page(answer, 200, f"the signup of {reader.email}")
        self._settle()
        self._note(reader.email, f"signed up on the form ({reader.timezone})")

    def confirm(self, reader: SampleReader) -> None:
        browser = self.browsers[reader.email]
        message = self._latest_email(
            reader.email, "the confirmation email", lambda found: "/c/" in _text(found)
        )
        path = self._link(message, "/c/", "the confirmation email")
        page = _page(browser.get(path), 200, f"the confirm page of {reader.email}")
        answer = browser.post(
            path, data={"csrf_token": _token(_CSRF_TOKEN, page, "the confirm page")}
        )
        _page(answer, 200, f"the confirmation of {reader.email}")
        self._settle()
        self._note(reader.email, "confirmed with the link in the confirmation email")

    def act(self, action: ReaderAction) -> None:
        lesson = self.course.lessons[action.after_lesson - 1]
        message = self._latest_email(
            action.email,
            f"lesson {lesson.number}",
            lambda found: found["Subject"] == lesson.subject,
        )
        if action.kind == "pause":
            browser = self.browsers[action.email]
            path = self._link(message, "/m/", f"lesson {lesson.number}")
            page = _page(browser.get(path), 200, f"the manage page of {action.email}")
            answer = browser.post(
                f"{path}/pause",
                data={
                    "csrf_token": _token(_CSRF_TOKEN, page, "the manage page"),
                    "weeks": str(PAUSE_WEEKS),
                },
            )
            _page(answer, 303, f"the pause of {action.email}")
            what = (
                f"paused for {PAUSE_WEEKS} week on the manage page (link in lesson {lesson.number})"
            )
        else:
            found = _HTTP_IN_ANGLES.search(str(message["List-Unsubscribe"] or ""))
            if found is None:
                raise DemoError(f"lesson {lesson.number} has no List-Unsubscribe URL")
            # The mailbox provider's one-click button: no cookies, RFC 8058's body.
            answer = self.app.test_client().post(
                urlsplit(found.group(1)).path, data={"List-Unsubscribe": "One-Click"}
            )
            _page(answer, 200, f"the one-click unsubscribe of {action.email}")
            what = f"unsubscribed with one click (List-Unsubscribe of lesson {lesson.number})"
        self._settle()
        self._note(action.email, what)

    # --- the replay, as cron would run `drip send` ---

    def replay(self) -> None:
        """Run `send_due` at each moment something is due, until no reader has anything left
        (completed, unsubscribed) or nothing more can happen."""
        horizon = self.clock.now + MAX_REPLAY
        waiting = list(ACTIONS)
        agenda: list[tuple[datetime, ReaderAction]] = []
        statuses = self._statuses()
        while True:
            now = self.clock.now
            for entry in [entry for entry in agenda if entry[0] <= now]:
                agenda.remove(entry)
                self.act(entry[1])
            self._send(now)
            for action in list(waiting):
                arrived = self._arrived(action)
                if arrived is not None:
                    waiting.remove(action)
                    agenda.append((max(arrived + action.delay, now), action))
            statuses = self._note_changes(statuses)
            upcoming = self._next_moment(now, [at for at, _ in agenda])
            if upcoming is None:
                return
            if upcoming > horizon:
                raise DemoError(
                    f"the course did not end within {MAX_REPLAY.days} days of replay; run"
                    " 'drip plan --course' to see its schedule"
                )
            self.clock.now = upcoming

    def _send(self, now: datetime) -> None:
        report = send_due(self.sessions, self.mailer, now=now)
        self.send_runs += 1
        if report.stopped or report.warning:
            raise DemoError(
                f"the send at {now.isoformat()} stopped: {report.stopped or report.warning}"
            )

    def _arrived(self, action: ReaderAction) -> datetime | None:
        """When the lesson `action` waits for reached the reader; None if not yet."""
        _, steps = insight.subscriber_timeline(
            self.sessions, self.course, action.email, now=self.clock.now
        )
        for step in steps:
            if step.number == action.after_lesson and step.state == "sent":
                return step.at
        return None

    def _statuses(self) -> dict[str, SubscriberStatus]:
        return {
            view.email: view.status
            for view in list(lifecycle.list_subscribers(self.sessions, self.course))
        }

    def _note_changes(self, before: dict[str, SubscriberStatus]) -> dict[str, SubscriberStatus]:
        """Note what the send runs did to readers (a pause ended, the course completed)."""
        after = self._statuses()
        for address, status in after.items():
            was = before.get(address)
            if was is SubscriberStatus.PAUSED and status is SubscriberStatus.ACTIVE:
                self._note(
                    address, "the pause ended: drip send resumed the reader", by_reader=False
                )
            elif status is SubscriberStatus.COMPLETED and was is not status:
                self._note(address, "received the last lesson: course completed", by_reader=False)
        return after

    def _next_moment(self, now: datetime, planned: list[datetime]) -> datetime | None:
        """The first moment after `now` at which something can happen: a reader's next lesson
        is due, a timed pause ends, or a reader acts."""
        moments = list(planned)
        for view in list(lifecycle.list_subscribers(self.sessions, self.course)):
            if view.status is SubscriberStatus.ACTIVE and view.next_send_at is not None:
                moments.append(view.next_send_at)
            elif view.status is SubscriberStatus.PAUSED and view.paused_until is not None:
                moments.append(view.paused_until)
        return min((moment for moment in moments if moment > now), default=None)

    # --- helpers ---

    def _settle(self) -> None:
        """Wait for the app's background sender (the confirmation email, lesson 1)."""
        if not outbound(self.app).wait_idle(IDLE_TIMEOUT):
            raise DemoError(f"the web app's sender did not finish within {IDLE_TIMEOUT:.0f} s")

    def _note(self, address: str, what: str, *, by_reader: bool = True) -> None:
        self.events.append(Event(self.clock.now, address, what, by_reader))

    def _latest_email(
        self, address: str, what: str, wanted: Callable[[EmailMessage], bool]
    ) -> EmailMessage:
        """The newest email to `address` that is `wanted` (a reader opens the latest one)."""
        found = [
            message
            for _, message in self.outbox.messages()
            if _address(message) == address and wanted(message)
        ]
        if not found:
            raise DemoError(f"{what} to {address} is not in {self.settings.outbox_dir}")
        return max(found, key=_date)

    def _link(self, message: EmailMessage, prefix: str, what: str) -> str:
        """The path of the first link in `message` whose path starts with `prefix`."""
        base = re.escape(self.settings.base_url)
        pattern = re.compile(base + re.escape(prefix) + r"[A-Za-z0-9_\-.]+")
        match = pattern.search(_text(message))
        if match is None:
            raise DemoError(f"{what} to {_address(message)} has no {prefix} link")
        return urlsplit(match.group(0)).path


def _page(response: TestResponse, status: int, what: str) -> str:
    if response.status_code != status:
        raise DemoError(f"{what} was answered {response.status_code}, not {status}")
    return response.get_data(as_text=True)


def _token(pattern: re.Pattern[str], page: str, what: str) -> str:
    match = pattern.search(page)
    if match is None:
        raise DemoError(f"{what} has no form token")
    return match.group(1)


# --- reading the outbox -----------------------------------------------------------------------


class _Outbox:
    """The `.eml` files of the demo's outbox, each parsed once (a delivery's file is written
    once, atomically, and never changes)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._parsed: dict[Path, EmailMessage] = {}

    def messages(self) -> list[tuple[Path, EmailMessage]]:
        for path in sorted(self.directory.glob("*.eml")):
            if path not in self._parsed:
                message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
                assert isinstance(message, EmailMessage)
                self._parsed[path] = message
        return sorted(self._parsed.items())


def _address(message: EmailMessage) -> str:
    to = message["To"]
    addresses = getattr(to, "addresses", ())
    return str(addresses[0].addr_spec) if addresses else str(to or "")


def _date(message: EmailMessage) -> datetime:
    return parsedate_to_datetime(str(message["Date"]))


def _text(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain", "html"))
    return "" if part is None else str(part.get_content())


def _with_html_parts(outbox: _Outbox) -> Iterator[SentEmail]:
    """Every email in the outbox, its HTML part written beside it (`N.eml` -> `N.html`)."""
    for path, message in outbox.messages():
        part = message.get_body(preferencelist=("html",))
        html_path = None
        if part is not None:
            html_path = path.with_suffix(".html")
            html_path.write_text(str(part.get_content()), encoding="utf-8")
        yield SentEmail(path, html_path, _address(message), str(message["Subject"]), _date(message))


# --- what it shows ----------------------------------------------------------------------------


def _local(moment: datetime, zone: str) -> str:
    return f"{moment.astimezone(ZoneInfo(zone)):%Y-%m-%d %a %H:%M}"


def _utc(moment: datetime) -> str:
    return f"{moment.astimezone(ZoneInfo('UTC')):%Y-%m-%d %H:%M}"


def summary(result: DemoResult) -> str:
    """What `drip demo` prints: each reader's lessons with their send times (reader-local and
    UTC), what the readers did, and where the pages are."""
    lines = [
        f"{'reader':<22} {'timezone':<20} {'lesson':<16} {'sent (reader-local)':<20}"
        f" {'sent (UTC)':<16}"
    ]
    for outcome in result.readers:
        reader = outcome.reader
        first = True
        for step in outcome.sent:
            assert step.at is not None
            who = (reader.email, reader.timezone) if first else ("", "")
            lines.append(
                f"{who[0]:<22} {who[1]:<20} {f'{step.number} {step.lesson}':<16}"
                f" {_local(step.at, reader.timezone):<20} {_utc(step.at):<16}"
            )
            first = False
        lines.append(f"{'':<22} {'':<20} {outcome.status.value}")
    lines.append("")
    lines.append("what the readers did (UTC):")
    for event in result.events:
        lines.append(f"  {_utc(event.at)}  {event.email:<22} {event.what}")
    lines.append("")
    confirmations = len(result.emails) - result.lessons_sent
    lines += [
        f"sent {confirmations} confirmation emails and {result.lessons_sent} lessons in"
        f" {result.send_runs} send runs, {_utc(result.start)} to {_utc(result.end)} UTC",
        f"stats page: {result.stats_page}",
        f"gallery:    {result.gallery}",
        f"folder:     {result.folder}",
    ]
    return "\n".join(line.rstrip() for line in lines)


_GALLERY_STYLE = """
body{font-family:system-ui,-apple-system,"Hiragino Sans","Noto Sans CJK JP",sans-serif;
margin:0 auto;max-width:60rem;padding:1rem;color:#222;line-height:1.5}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:2rem;border-bottom:1px solid #ccc}
table{border-collapse:collapse;width:100%;font-size:.9rem}
th,td{text-align:left;padding:.3rem .5rem;border-bottom:1px solid #eee;vertical-align:top}
.when{white-space:nowrap}.muted{color:#666}ul{padding-left:1.2rem}
@media (max-width:40rem){.utc{display:none}.when{white-space:normal;width:6.5rem}}
@media (prefers-color-scheme:dark){body{background:#111;color:#ddd}
th,td{border-color:#333}a{color:#8ab4f8}}
"""


def gallery_html(result: DemoResult, course: Course) -> str:
    """`index.html`: every email the outbox received, grouped by reader, each linking to its
    HTML part and its `.eml` file (relative links, so the folder can be moved)."""
    esc = html.escape
    parts = [
        '<!doctype html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>drip demo: {esc(course.settings.title)}</title>",
        f"<style>{_GALLERY_STYLE}</style></head><body>",
        f'<h1>drip demo: <span lang="ja">{esc(course.settings.title)}</span></h1>',
        f"<p>{len(result.emails)} emails sent to {len(result.readers)} readers,"
        f" {_utc(result.start)} to {_utc(result.end)} UTC."
        f' The funnel: <a href="{STATS_PAGE}">{STATS_PAGE}</a>.'
        " The links inside the emails point at <code>drip serve</code>'s address;"
        " this folder's readers exist only in its own database.</p>",
    ]
    for outcome in result.readers:
        parts += _reader_section(result, outcome)
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _reader_section(result: DemoResult, outcome: ReaderOutcome) -> list[str]:
    """One reader's heading and table: the emails they were sent, and what they did, in time
    order, each moment reader-local and UTC."""
    esc = html.escape
    address, zone = outcome.reader.email, outcome.reader.timezone
    mine = [sent for sent in result.emails if sent.to == address]
    rows: list[tuple[datetime, int, str]] = []  # at the same moment: the reader, emails, sends
    for sent in mine:
        subject = f'<span lang="ja">{esc(sent.subject)}</span>'
        if sent.html_path is not None:  # the subject opens the email as the reader sees it
            view = sent.html_path.relative_to(result.folder).as_posix()
            subject = f'<a href="{esc(view)}">{subject}</a>'
        raw = sent.path.relative_to(result.folder).as_posix()
        rows.append((sent.at, 1, f'<td>{subject}</td><td><a href="{esc(raw)}">.eml</a></td>'))
    for event in result.events:
        if event.email == address:
            order = 0 if event.by_reader else 2
            rows.append((event.at, order, f'<td class="muted" colspan="2">{esc(event.what)}</td>'))
    return [
        f'<h2 id="{esc(address)}"><span lang="ja">{esc(outcome.reader.name)}</span>'
        f' &lt;{esc(address)}&gt; <span class="muted">{esc(zone)},'
        f" {esc(outcome.status.value)}, {len(mine)} emails</span></h2>",
        '<table><tr><th>reader-local</th><th class="utc">UTC</th>'
        "<th>email (opens it as sent) or what the reader did</th><th>file</th></tr>",
        *(
            f'<tr><td class="when">{_local(at, zone)}</td><td class="when utc">{_utc(at)}</td>'
            f"{cells}</tr>"
            for at, _, cells in sorted(rows, key=lambda row: row[:2])
        ),
        "</table>",
    ]
