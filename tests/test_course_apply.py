"""`drip course check` (the readers section) and `drip course apply`: a course changed under
readers, on SQLite and PostgreSQL, through the command line.

The story of every test: three readers (a, b, c) confirm on Wednesday 1 April 2026 at 09:00 in
Tokyo and get lesson 1 then; lesson 2 goes out on Thursday at 07:30; lesson 3 ('events', two days
later) waits for Saturday 4 April 07:30. Then the course on disk changes.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Engine, func, select, update
from tests.support import COURSE_DIR, TEMPLATES

from drip import reschedule, schedule, store
from drip.cli import main
from drip.course import Course, load_course
from drip.db import make_engine
from drip.models import deliveries, subscribers
from drip.store import reschedule as progress

CONFIRMED = "2026-04-01T09:00:00+09:00"
SECOND = "2026-04-02T07:30:00+09:00"
AFTER = "2026-04-02T10:00:00+09:00"
"""The moment of the change: lesson 3 is still to come for a, b and c."""
READERS = ("a@example.com", "b@example.com", "c@example.com")
LESSONS = [path.stem.split("-", 1)[1] for path in sorted((COURSE_DIR / "lessons").glob("*.md"))]


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


@dataclass
class Reader:
    status: str
    next_lesson: str | None
    next_send_at: datetime | None
    held_reason: str | None


class Setup:
    """A copy of the course (without the source check, so lessons can be removed) and a database
    with readers; runs `drip` on both."""

    def __init__(self, tmp_path: Path, database_url: str, engine: Engine) -> None:
        self.course_dir = tmp_path / "course"
        shutil.copytree(COURSE_DIR, self.course_dir)
        toml = self.course_dir / "course.toml"
        text = re.sub(r"(?m)^source = .*\n", "", toml.read_text("utf-8"))
        toml.write_text(re.sub(r"(?ms)^omit = \[.*?\]\n", "", text), encoding="utf-8")
        self.database_url = database_url
        self.engine = engine

    def drip(self, *args: str, **env: str) -> Result:
        base = {
            "DRIP_COURSE_DIR": str(self.course_dir),
            "DRIP_TEMPLATES_DIR": str(TEMPLATES),
            "DRIP_DATABASE_URL": self.database_url,
            "DRIP_SECRET_KEY": "apply-test-key-5mC9Xq3vN8kZ1pL0sT7wR2yB",
        }
        return CliRunner().invoke(main, list(args), env={**base, **env})

    def ok(self, *args: str) -> Result:
        result = self.drip(*args)
        assert result.exit_code == 0, result.output
        return result

    def start(self, readers: tuple[str, ...] = READERS) -> None:
        for email in readers:
            self.ok("subscribe", email, "--confirmed", "--now", CONFIRMED)
        self.ok("send", "--now", CONFIRMED)
        self.ok("send", "--now", SECOND)

    def edit(self, *, lessons: list[str] | None = None, **values: str) -> None:
        """Rewrite course.toml: the lesson order, and `key = value` settings (TOML values)."""
        toml = self.course_dir / "course.toml"
        text = toml.read_text("utf-8")
        if lessons is not None:
            listed = "".join(f'    "{slug}",\n' for slug in lessons)
            text = re.sub(r"(?ms)^lessons = \[.*?\]\n", f"lessons = [\n{listed}]\n", text)
        for key, value in values.items():
            text, found = re.subn(rf"(?m)^#? ?{key} = .*$", f"{key} = {value}", text)
            assert found, key
        toml.write_text(text, encoding="utf-8")

    def add_lesson(self, number: str, slug: str, delay_days: int) -> None:
        """A new lesson file (a copy of lesson 2's body with its own subject)."""
        body = (self.course_dir / "lessons" / "02-rethink.md").read_text("utf-8")
        body = re.sub(r"(?m)^subject: .*$", f"subject: 追加のレッスン {slug}", body, count=1)
        body = re.sub(r"(?m)^delay_days: .*$", f"delay_days: {delay_days}", body, count=1)
        (self.course_dir / "lessons" / f"{number}-{slug}.md").write_text(body, encoding="utf-8")

    def remove_lesson(self, slug: str) -> None:
        order = self.order()
        next((self.course_dir / "lessons").glob(f"*-{slug}.md")).unlink()
        self.edit(lessons=[s for s in order if s != slug])

    def order(self) -> list[str]:
        return [lesson.slug for lesson in self.course().lessons]

    def course(self) -> Course:
        return load_course(self.course_dir)

    def readers(self) -> dict[str, Reader]:
        s = subscribers.c
        stmt = select(s.email, s.status, s.next_lesson, s.next_send_at, s.held_reason)
        with self.engine.connect() as conn:
            return {row.email: Reader(*row[1:]) for row in conn.execute(stmt)}

    def snapshot(self) -> list[Any]:
        with self.engine.connect() as conn:
            rows = list(conn.execute(select(subscribers).order_by(subscribers.c.id)))
            rows += list(conn.execute(select(deliveries).order_by(deliveries.c.id)))
        return rows

    def sent(self, email: str) -> list[str]:
        """The lessons the ledger has as sent to `email`, in the order they went out."""
        d, s = deliveries.c, subscribers.c
        stmt = (
            select(d.lesson)
            .select_from(deliveries.join(subscribers, s.id == d.subscriber_id))
            .where(s.email == email, d.status == "sent")
            .order_by(d.sent_at, d.id)
        )
        with self.engine.connect() as conn:
            return list(conn.scalars(stmt))

    def sent_at(self, email: str, lesson: str) -> datetime:
        d, s = deliveries.c, subscribers.c
        stmt = (
            select(d.sent_at)
            .select_from(deliveries.join(subscribers, s.id == d.subscriber_id))
            .where(s.email == email, d.lesson == lesson)
        )
        with self.engine.connect() as conn:
            moment = conn.scalar(stmt)
        assert moment is not None
        return moment

    def set_reader(self, email: str, **values: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(subscribers).where(subscribers.c.email == email).values(**values))

    def send_until(self, until: str, step_hours: int = 6) -> None:
        """Run `drip send` every `step_hours` from the change up to `until`."""
        moment = at(AFTER)
        end = at(until)
        while moment <= end:
            self.ok("send", "--now", moment.isoformat())
            moment += timedelta(hours=step_hours)


@pytest.fixture
def setup(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Setup]:
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")  # the outbox lands here
    engine = make_engine(database_url)
    try:
        yield Setup(tmp_path, database_url, engine)
    finally:
        engine.dispose()


def rescheduled(setup: Setup, email: str, lesson: str, *, waiting_until: datetime) -> datetime:
    """The schedule's answer for a reader of the story (Asia/Tokyo, the course's send time)."""
    course = setup.course()
    with setup.engine.connect() as conn:
        row = conn.execute(select(subscribers).where(subscribers.c.email == email)).one()
    return schedule.rescheduled_at(
        course,
        row.timezone,
        lesson,
        now=at(AFTER),
        waiting_until=waiting_until,
        last_sent_at=row.last_sent_at,
        confirmed_at=row.confirmed_at,
    )


# --- without readers, check is what it was ------------------------------------------------------


def test_check_without_a_database_or_readers_prints_no_readers_section(setup: Setup) -> None:
    embedded = setup.drip("course", "check", DRIP_DATABASE_URL="")
    assert embedded.exit_code == 0, embedded.output
    assert "readers" not in embedded.output
    assert not Path("drip.db").exists()  # check never creates the embedded database
    empty = setup.ok("course", "check")
    assert "readers" not in empty.output and "apply" not in empty.output


def test_check_with_an_unreachable_database_says_so_and_keeps_its_exit_code(setup: Setup) -> None:
    result = setup.drip(
        "course", "check", DRIP_DATABASE_URL="postgresql+psycopg://drip:pw@127.0.0.1:9/drip"
    )
    assert result.exit_code == 0, result.output
    assert "readers not checked:" in result.stderr


# --- send_time and quiet hours -------------------------------------------------------------------


def test_a_new_send_time_moves_waiting_readers_to_the_schedules_moment(setup: Setup) -> None:
    setup.start()
    setup.ok("subscribe", "d@example.com", "--confirmed", "--now", AFTER)  # lesson 1 due now
    before = setup.readers()
    assert {before[e].next_send_at for e in READERS} == {at("2026-04-04T07:30:00+09:00")}
    setup.edit(send_time='"09:00"')

    checked = setup.ok("course", "check", "--now", AFTER)
    assert "readers: 4 with a next lesson" in checked.output
    assert "due time: 3 reader(s) (events: 3)" in checked.output
    assert (
        "a@example.com (2026-04-04T07:30:00+09:00 -> 2026-04-04T09:00:00+09:00)" in checked.output
    )
    assert "'drip course apply' would change 3 reader(s)" in checked.output

    dry = setup.ok("course", "apply", "--dry-run", "--now", AFTER)
    assert "would change 3 reader(s); nothing written (--dry-run)" in dry.output
    assert setup.readers() == before

    applied = setup.ok("course", "apply", "--now", AFTER)
    assert "moved 3 to the schedule's moment under the current settings" in applied.output
    assert "changed 3 reader(s)" in applied.output
    after = setup.readers()
    for email in READERS:
        expected = rescheduled(setup, email, "events", waiting_until=before[email].next_send_at)
        assert after[email].next_send_at == expected == at("2026-04-04T09:00:00+09:00")
    # Lesson 1 goes at confirmation whatever the send time: d is not touched.
    assert after["d@example.com"] == before["d@example.com"]

    again = setup.ok("course", "apply", "--now", AFTER)
    assert "changed 0 reader(s)" in again.output and setup.readers() == after
    assert "nothing to apply" in setup.ok("course", "check", "--now", AFTER).output

    # The send at the old time sends nothing to them; the one at the new time sends lesson 3.
    setup.ok("send", "--now", "2026-04-04T07:30:00+09:00")
    assert setup.sent("a@example.com") == ["welcome", "rethink"]
    setup.ok("send", "--now", "2026-04-04T09:00:00+09:00")
    setup.ok("send", "--now", "2026-04-04T09:30:00+09:00")
    for email in READERS:
        assert setup.sent(email) == ["welcome", "rethink", "events"]


def test_quiet_hours_over_the_send_time_move_readers_to_their_end(setup: Setup) -> None:
    setup.start()
    setup.edit(quiet_hours='["21:00", "08:15"]')
    checked = setup.ok("course", "check", "--now", AFTER)  # a warning is not an error
    assert "warning" in checked.output and "due time: 3 reader(s)" in checked.output
    setup.ok("course", "apply", "--now", AFTER)
    course = setup.course()
    for email, reader in setup.readers().items():
        assert reader.next_send_at == at("2026-04-04T08:15:00+09:00")
        assert schedule.may_send_at(course.settings, "Asia/Tokyo", reader.next_send_at)
        assert reader.next_send_at == rescheduled(
            setup, email, "events", waiting_until=at("2026-04-04T07:30:00+09:00")
        )


def test_a_delay_shortened_into_the_past_goes_at_the_next_send_time_not_at_once(
    setup: Setup,
) -> None:
    setup.start()
    events = next((setup.course_dir / "lessons").glob("03-*.md"))
    events.write_text(
        events.read_text("utf-8").replace("delay_days: 2", "delay_days: 0", 1), encoding="utf-8"
    )
    setup.ok("course", "apply", "--now", AFTER)
    # Due the day lesson 2 went out, which has passed: the next 07:30 after the change.
    assert setup.readers()["a@example.com"].next_send_at == at("2026-04-03T07:30:00+09:00")


def test_a_late_runs_deferral_to_the_end_of_quiet_hours_is_kept(setup: Setup) -> None:
    setup.start()
    # Cron was down: a run at 23:00 deferred lesson 3 to the end of the quiet hours (07:00).
    late = at("2026-04-04T23:00:00+09:00")
    setup.ok("send", "--now", late.isoformat())
    deferred = setup.readers()["a@example.com"].next_send_at
    assert deferred == at("2026-04-05T07:00:00+09:00")
    checked = setup.ok("course", "check", "--now", late.isoformat())
    assert "nothing to apply" in checked.output, checked.output


# --- lessons removed, inserted, reordered --------------------------------------------------------


def test_a_removed_lesson_moves_waiting_and_held_readers_to_the_next_one(setup: Setup) -> None:
    setup.start()
    setup.remove_lesson("events")
    # A run on Saturday claims c first (--limit 1): the removed lesson holds c, as today.
    setup.ok("send", "--now", "2026-04-04T07:30:00+09:00", "--limit", "1")
    held = [email for email, r in setup.readers().items() if r.held_reason]
    assert len(held) == 1 and "no longer in the course" in (
        setup.readers()[held[0]].held_reason or ""
    )

    checked = setup.ok("course", "check", "--now", AFTER)
    assert "removed lesson: 3 reader(s) (events: 3)" in checked.output
    assert "(events -> side-job)" in checked.output
    assert "apply would move 3 to the next lesson after their last one" in checked.output

    applied = setup.ok("course", "apply", "--now", AFTER)
    assert "changed 3 reader(s)" in applied.output
    after = setup.readers()
    for email in READERS:
        reader = after[email]
        assert (reader.status, reader.next_lesson, reader.held_reason) == (
            "active",
            "side-job",
            None,
        )
        # side-job is due two days after lesson 2 at the send time (as `drip send` would say).
        expected = schedule.after_send(
            setup.course(), "Asia/Tokyo", "rethink", sent_at=setup.sent_at(email, "rethink")
        )
        assert expected.lesson == "side-job"
        assert reader.next_send_at == expected.send_at
    assert "changed 0 reader(s)" in setup.ok("course", "apply", "--now", AFTER).output

    setup.send_until("2026-04-05T00:00:00+09:00")
    for email in READERS:
        assert setup.sent(email) == ["welcome", "rethink", "side-job"]


def test_removing_every_lesson_left_completes_the_readers(setup: Setup) -> None:
    setup.start()
    for slug in LESSONS[2:]:
        setup.remove_lesson(slug)
    applied = setup.ok("course", "apply", "--now", AFTER)
    assert "and completed 3 (no lesson left)" in applied.output
    assert {r.status for r in setup.readers().values()} == {"completed"}
    assert {r.next_lesson for r in setup.readers().values()} == {None}


def test_a_lesson_inserted_before_the_readers_is_reported_and_not_sent_out_of_order(
    setup: Setup,
) -> None:
    setup.start()
    setup.ok("subscribe", "new@example.com", "--now", AFTER)  # pending: not touched
    setup.ok("subscribe", "fresh@example.com", "--confirmed", "--now", "2026-04-02T23:00+09:00")
    setup.add_lesson("09", "prologue", 0)
    setup.add_lesson("10", "interlude", 1)
    setup.edit(lessons=["prologue", "welcome", "rethink", "interlude", *LESSONS[2:]])

    checked = setup.ok("course", "check", "--now", "2026-04-02T23:30:00+09:00")
    assert "lesson inserted before a reader who has not started: 1 reader(s)" in checked.output
    assert "fresh@example.com (welcome -> prologue)" in checked.output
    missed = (
        "lessons before the reader's position never had: 3 reader(s) (interlude: 3, prologue: 3)"
    )
    assert missed in checked.output
    assert "apply changes nothing" in checked.output

    setup.ok("course", "apply", "--now", "2026-04-02T23:30:00+09:00")
    after = setup.readers()
    fresh = after["fresh@example.com"]
    assert fresh.next_lesson == "prologue"
    # Lesson 1 is due at confirmation, moved out of the quiet hours: 07:00.
    assert fresh.next_send_at == at("2026-04-03T07:00:00+09:00")
    assert {after[e].next_lesson for e in READERS} == {"events"}

    setup.send_until("2026-04-05T00:00:00+09:00")
    assert setup.sent("fresh@example.com") == ["prologue", "welcome", "rethink"]
    for email in READERS:
        assert setup.sent(email) == ["welcome", "rethink", "events"]


def test_a_reader_due_for_a_lesson_it_had_moves_on_as_a_send_would(setup: Setup) -> None:
    setup.start()
    # A lesson moved after one not yet sent: a waits for 'rethink', which it had.
    setup.set_reader("a@example.com", next_lesson="rethink")
    checked = setup.ok("course", "check", "--now", AFTER)
    assert "reordered: next lesson already had: 1 reader(s) (rethink: 1)" in checked.output
    setup.ok("course", "apply", "--now", AFTER)
    reader = setup.readers()["a@example.com"]
    expected = schedule.after_send(
        setup.course(),
        "Asia/Tokyo",
        "rethink",
        sent_at=setup.sent_at("a@example.com", "rethink"),
        skip={"welcome", "rethink"},
    )
    assert (reader.next_lesson, reader.next_send_at) == (expected.lesson, expected.send_at)


def test_a_lesson_sent_and_then_removed_is_reported_with_nothing_to_do(setup: Setup) -> None:
    setup.start()
    setup.add_lesson("02", "rethink-again", 1)
    (setup.course_dir / "lessons" / "02-rethink.md").unlink()
    setup.edit(lessons=["welcome", "rethink-again", *LESSONS[2:]])  # a renamed slug
    checked = setup.ok("course", "check", "--now", AFTER)
    assert "no longer in the course (removed or renamed): 'rethink', sent to 3" in checked.output
    assert "rethink-again: 3" in checked.output  # they are past it: they never get it
    assert "nothing to apply" in checked.output
    assert "changed 0 reader(s)" in setup.ok("course", "apply", "--now", AFTER).output


# --- safe while a send runs; hostile input -------------------------------------------------------


def test_claims_in_flight_are_not_touched(setup: Setup) -> None:
    setup.start()
    with store_session(setup) as session, session.begin():
        batch = store.claim_due(
            session,
            course_id=setup.course().id,
            now=at("2026-04-04T07:30:00+09:00"),
            limit=1,
            run_id="running",
            lease=timedelta(minutes=10),
        )
    [claim] = batch.claims
    setup.remove_lesson("events")
    before = setup.readers()
    applied = setup.ok("course", "apply", "--now", AFTER)
    assert "left alone: 1 reader(s): its next lesson is claimed by a running" in applied.output
    assert "changed 2 reader(s)" in applied.output
    after = setup.readers()
    claimed = next(email for email in READERS if after[email].next_lesson == "events")
    assert after[claimed] == before[claimed]
    with setup.engine.connect() as conn:
        status = conn.scalar(
            select(deliveries.c.status).where(deliveries.c.id == claim.delivery_id)
        )
    assert status == "claimed"


def test_a_change_is_not_written_over_a_reader_a_send_moved_meanwhile(setup: Setup) -> None:
    setup.start()
    setup.edit(send_time='"09:00"')
    course = setup.course()
    with store_session(setup) as session, session.begin():
        readers = progress.readers_after(session, course.id, "", 10, lock=False)
    changes = [
        c
        for c in (reschedule.decide(course, r, now=at(AFTER)).change for r in readers)
        if c is not None
    ]
    assert len(changes) == 3
    setup.set_reader("a@example.com", next_send_at=at("2026-04-04T08:00:00+09:00"))
    with store_session(setup) as session, session.begin():
        assert progress.apply_changes(session, changes, at(AFTER)) == 2
    assert setup.readers()["a@example.com"].next_send_at == at("2026-04-04T08:00:00+09:00")


def test_a_reader_whose_timezone_cannot_be_loaded_is_left_alone(setup: Setup) -> None:
    setup.start()
    setup.set_reader("a@example.com", timezone="Mars/Olympus_Mons")
    setup.remove_lesson("events")
    applied = setup.ok("course", "apply", "--now", AFTER)
    assert "left alone: 1 reader(s): its timezone cannot be loaded on this host" in applied.output
    assert "changed 2 reader(s)" in applied.output
    assert setup.readers()["a@example.com"].next_lesson == "events"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--now", "yesterday"], "is not an ISO-8601 date-time"),
        (["--now", "2026-04-01T09:00"], "has no UTC offset"),
        (["--now", "0001-01-01T00:00+00:00"], "outside the years"),
        (["--bogus"], "No such option"),
    ],
)
def test_bad_options_exit_2(setup: Setup, args: list[str], message: str) -> None:
    result = setup.drip("course", "apply", *args)
    assert result.exit_code == 2 and message in result.output


def test_apply_on_an_empty_database_changes_nothing(setup: Setup) -> None:
    result = setup.ok("course", "apply", "--now", AFTER)
    assert "readers: 0 with a next lesson" in result.output
    assert "changed 0 reader(s)" in result.output


def test_apply_with_a_course_that_does_not_load_exits_2_and_writes_nothing(setup: Setup) -> None:
    setup.start()
    before = setup.snapshot()
    (setup.course_dir / "lessons" / "03-events.md").unlink()  # still listed in course.toml
    result = setup.drip("course", "apply", "--now", AFTER)
    assert result.exit_code == 2 and "lesson 'events' is listed" in result.output
    assert setup.snapshot() == before


def test_a_dry_run_writes_nothing(setup: Setup) -> None:
    setup.start()
    setup.remove_lesson("events")
    setup.edit(send_time='"09:00"')
    before = setup.snapshot()
    result = setup.ok("course", "apply", "--dry-run", "--now", AFTER)
    assert "would move 3 to the next lesson after their last one" in result.output
    assert setup.snapshot() == before


def test_batches_cover_every_reader_once(setup: Setup) -> None:
    setup.start()
    setup.edit(send_time='"09:00"')
    sessions = store_sessions(setup)
    report = reschedule.survey(sessions, setup.course(), now=at(AFTER), apply=True, batch_size=2)
    assert (report.readers, report.changes, report.written) == (3, 3, 3)
    with setup.engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(subscribers)) == 3


def store_sessions(setup: Setup) -> Any:
    from sqlalchemy.orm import sessionmaker

    return sessionmaker(setup.engine, expire_on_commit=False)


def store_session(setup: Setup) -> Any:
    return store_sessions(setup)()


def test_a_paused_reader_gets_its_new_next_lesson_and_its_moment_on_resume(setup: Setup) -> None:
    setup.start()
    setup.ok("subscribers", "pause", "b@example.com", "--now", AFTER)
    setup.remove_lesson("events")
    setup.ok("course", "apply", "--now", AFTER)
    paused = setup.readers()["b@example.com"]
    assert (paused.status, paused.next_lesson, paused.next_send_at) == ("paused", "side-job", None)
    setup.ok("subscribers", "resume", "b@example.com", "--now", "2026-04-03T12:00:00+09:00")
    resumed = setup.readers()["b@example.com"]
    assert (resumed.status, resumed.next_lesson) == ("active", "side-job")
    assert resumed.next_send_at == at("2026-04-04T07:30:00+09:00")


def test_a_claim_made_between_reading_and_writing_wins(setup: Setup) -> None:
    setup.start()
    setup.remove_lesson("events")
    course = setup.course()
    with store_session(setup) as session, session.begin():
        readers = progress.readers_after(session, course.id, "", 10, lock=False)
    changes = [reschedule.decide(course, r, now=at(AFTER)).change for r in readers]
    with store_session(setup) as session, session.begin():
        [claim] = store.claim_due(
            session,
            course_id=course.id,
            now=at("2026-04-04T07:30:00+09:00"),
            limit=1,
            run_id="running",
            lease=timedelta(minutes=10),
        ).claims
    with store_session(setup) as session, session.begin():
        written = progress.apply_changes(session, [c for c in changes if c is not None], at(AFTER))
    assert written == 2
    with setup.engine.connect() as conn:
        row = conn.execute(
            select(subscribers.c.next_lesson).where(subscribers.c.id == claim.subscriber_id)
        ).one()
    assert row.next_lesson == "events"


def test_ctrl_c_keeps_the_batches_committed_and_a_second_run_finishes(setup: Setup) -> None:
    setup.start()
    setup.edit(send_time='"09:00"')
    factory = store_sessions(setup)
    opened = 0

    def sessions() -> Any:
        nonlocal opened
        opened += 1
        if opened == 3:  # the ledger read, the first batch, then Ctrl-C
            raise KeyboardInterrupt
        return factory()

    course = setup.course()
    first = reschedule.survey(sessions, course, now=at(AFTER), apply=True, batch_size=2)  # type: ignore[arg-type]
    assert first.interrupted and first.written == 2
    assert (
        "interrupted: 2 reader(s) changed"
        in reschedule.report_lines(first, reschedule.Mode.APPLY)[-1]
    )
    second = reschedule.survey(factory, course, now=at(AFTER), apply=True)
    assert not second.interrupted and second.written == 1


def test_apply_with_an_unreachable_database_exits_1(setup: Setup) -> None:
    result = setup.drip(
        "course",
        "apply",
        "--now",
        AFTER,
        DRIP_DATABASE_URL="postgresql+psycopg://drip:pw@127.0.0.1:9/drip",
    )
    assert result.exit_code == 1 and "error:" in result.output


def test_a_course_check_finds_errors_in_is_not_applied(setup: Setup) -> None:
    setup.start()
    setup.edit(lessons=[slug for slug in LESSONS if slug != "events"])  # the file is still there
    before = setup.snapshot()
    refused = setup.drip("course", "apply", "--now", AFTER)
    assert refused.exit_code == 2, refused.output
    assert "'events' is not in course.toml's lessons list" in refused.output
    assert "nothing was changed" in refused.output
    assert setup.snapshot() == before
    dry = setup.ok("course", "apply", "--dry-run", "--now", AFTER)  # shows what it would do
    assert "removed lesson: 3 reader(s)" in dry.output


def test_an_interrupted_look_says_its_counts_are_partial(setup: Setup) -> None:
    setup.start()
    factory = store_sessions(setup)
    opened = 0

    def sessions() -> Any:
        nonlocal opened
        opened += 1
        if opened == 3:
            raise KeyboardInterrupt
        return factory()

    report = reschedule.survey(sessions, setup.course(), now=at(AFTER), batch_size=2)  # type: ignore[arg-type]
    last = reschedule.report_lines(report, reschedule.Mode.CHECK)[-1]
    assert last == "interrupted after 2 reader(s): the counts above are partial"


def test_a_lesson_moved_before_the_readers_is_missed_and_reported(setup: Setup) -> None:
    setup.start()
    setup.edit(lessons=["welcome", "rethink", "side-job", "events", *LESSONS[4:]])
    checked = setup.ok("course", "check", "--now", AFTER)
    assert "lessons before the reader's position never had: 3 reader(s) (side-job: 3)" in (
        checked.output
    )
    assert "a@example.com (never got side-job)" in checked.output
    assert "nothing to apply" in checked.output
    setup.send_until("2026-04-07T00:00:00+09:00")
    # events, then the lesson after it in the new order: side-job is behind them.
    assert setup.sent("a@example.com") == ["welcome", "rethink", "events", "social-media"]


def test_weekdays_only_moves_a_saturday_lesson_to_monday(setup: Setup) -> None:
    setup.start()
    setup.edit(send_days='["mon", "tue", "wed", "thu", "fri"]')
    checked = setup.ok("course", "check", "--now", AFTER)
    assert "(2026-04-04T07:30:00+09:00 -> 2026-04-06T07:30:00+09:00)" in checked.output
    setup.ok("course", "apply", "--now", AFTER)
    for email, reader in setup.readers().items():
        assert reader.next_send_at == at("2026-04-06T07:30:00+09:00")
        assert reader.next_send_at == rescheduled(
            setup, email, "events", waiting_until=at("2026-04-04T07:30:00+09:00")
        )
