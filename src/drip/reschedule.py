"""Who a change of the course on disk affects, and moving them to it: the readers section of
`drip course check` and `drip course apply`.

The database keeps no copy of the course it scheduled under; a change shows in what it does
keep. A reader's progress is its next lesson (a slug), its stored moment (`next_send_at`) and the
lessons the ledger has as sent, so, per reader with a next lesson:

- REMOVED: the next lesson is not in the course any more. Apply moves the reader to the first
  lesson after the last lesson it had (in the course's order), skipping any it had, or completes
  it when none is left; a reader a removed lesson held is released.
- ALREADY_HAD: the next lesson is one the ledger has as sent (the course was reordered). Apply
  moves the reader on as `drip send` would (`schedule.after_send` with the lessons sent skipped).
- NOT_STARTED: the reader has had no lesson yet and waits for one that is no longer the first (a
  lesson was inserted before it). Apply moves it to the first lesson.
- MISSED: the course has lessons before the reader's next one that it never got (inserted or
  moved before its position). Apply changes nothing: a reader goes on from where it is, and a
  lesson is never sent out of order (a renamed slug looks like a new lesson: resending every
  reader past it would send it twice).
- DUE_TIME: the reader waits for a lesson with no ledger row yet, and its stored moment is not
  what the schedule gives under the current settings (send_time, quiet_hours, send_days,
  skip_holidays, delay_days). Apply stores the schedule's moment.

Every new moment is `schedule.rescheduled_at` (the rule for a waiting reader whose settings
changed: the lesson's normal due time, but a lesson still to come never jumps to a moment already
past). A stored moment is kept when the current settings still produce it, when the reader is
due already and stays due, or when a late run deferred it to the start of a sending window (the
end of quiet hours, the start of a send day) that the settings still allow.

Never touched: readers whose next lesson is claimed by a run or in doubt (the ledger row
decides), readers held for another reason (a failed delivery, an unknown timezone), paused
readers' moments (set on resume). The course's default timezone is not compared: each reader
stores its own zone at subscription, and drip cannot tell a default from a choice.
"""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from drip import schedule
from drip.check import check_course
from drip.course import Course
from drip.delivery import reader_send_time
from drip.errors import CourseError, UnknownTimezoneError
from drip.statuses import SubscriberStatus
from drip.store import reschedule as progress
from drip.store.reschedule import ProgressChange, ReaderProgress

BATCH = 1_000
"""Readers per transaction: memory stays flat and a concurrent `drip send` waits at most one
batch for the SQLite write lock."""
EXAMPLES = 3
"""Example addresses shown per kind of change."""
_ONE_SECOND = timedelta(seconds=1)


class Kind(enum.Enum):
    """How a change of the course affects a reader (see the module docstring)."""

    REMOVED = "removed lesson"
    ALREADY_HAD = "reordered: next lesson already had"
    NOT_STARTED = "lesson inserted before a reader who has not started"
    MISSED = "lessons before the reader's position never had"
    DUE_TIME = "due time"


class Left(enum.Enum):
    """Why a reader a change may affect is left alone."""

    IN_FLIGHT = "its next lesson is claimed by a running 'drip send' or in doubt"
    UNKNOWN_ZONE = "its timezone cannot be loaded on this host"


@dataclass
class Tally:
    """Readers of one kind: how many, a few addresses, the lessons involved, and what apply
    does (`moved` to another lesson, `completed`, `rescheduled` to a new moment)."""

    readers: int = 0
    examples: list[str] = field(default_factory=list)
    lessons: Counter[str] = field(default_factory=Counter)
    moved: int = 0
    completed: int = 0
    rescheduled: int = 0


@dataclass
class Survey:
    """What a change of the course does to the readers, at `now`; after `apply`, what was
    written. Counts only, plus EXAMPLES addresses per kind: constant size at any number of
    readers."""

    now: datetime
    readers: int = 0
    """Readers with a next lesson (active or paused) looked at."""
    kinds: dict[Kind, Tally] = field(default_factory=dict)
    left: Counter[Left] = field(default_factory=Counter)
    changes: int = 0
    """Readers whose progress changes (or would)."""
    written: int = 0
    """Readers changed in the database (apply only)."""
    unknown_sent: dict[str, int] = field(default_factory=dict)
    """Lessons the ledger has as sent that the course no longer has: slug -> readers."""
    interrupted: bool = False

    @property
    def raced(self) -> int:
        """Changes not written because a `drip send` moved the reader meanwhile."""
        return self.changes - self.written

    def tally(self, kind: Kind) -> Tally:
        return self.kinds.setdefault(kind, Tally())


@dataclass(frozen=True)
class Decision:
    """What apply does with one reader: the kinds of change it shows, the change (None: none),
    the lessons it will not get, or why it is left alone."""

    kinds: tuple[Kind, ...] = ()
    change: ProgressChange | None = None
    missed: tuple[str, ...] = ()
    left: Left | None = None


NOTHING = Decision()


def decide(
    course: Course, reader: ReaderProgress, *, now: datetime, moments: Moments | None = None
) -> Decision:
    """The decision for `reader` under `course` at `now` (pure: no database). `moments`: the
    survey's memo of the schedule's answers (one is made when None)."""
    if moments is None:
        moments = Moments(course, now)
    if reader.ledger_status in progress.UNTOUCHABLE:
        affected = not course.has_lesson(reader.next_lesson) or reader.next_lesson in reader.sent
        return Decision(left=Left.IN_FLIGHT) if affected else NOTHING
    kind, target = _position(course, reader)
    missed = _missed(course, reader, target)
    kinds = (*((kind,) if kind else ()), *((Kind.MISSED,) if missed else ()))
    moved = target != reader.next_lesson
    if target is None:
        return Decision(kinds, _change(reader, None, None, completed=True), missed)
    if reader.status != SubscriberStatus.ACTIVE.value:  # paused: its moment comes on resume
        return Decision(kinds, _change(reader, target, None) if moved else None, missed)
    held_or_in_ledger = reader.next_send_at is None or reader.ledger_status is not None
    if not moved and held_or_in_ledger:
        # Held for another reason, or retrying: that lesson keeps its own moment.
        return Decision(kinds, None, missed)
    try:
        at = moments.rescheduled(reader, target)
    except UnknownTimezoneError:
        return Decision(kinds, None, missed, Left.UNKNOWN_ZONE)
    if moved:
        return Decision(kinds, _change(reader, target, at), missed)
    if _keeps(moments, reader, at):
        return Decision(kinds, None, missed)
    return Decision((*kinds, Kind.DUE_TIME), _change(reader, target, at), missed)


def _position(course: Course, reader: ReaderProgress) -> tuple[Kind | None, str | None]:
    """The kind of lesson change and the reader's next lesson under `course` (None: done)."""
    lesson = reader.next_lesson
    if not course.has_lesson(lesson):
        return Kind.REMOVED, _after_last_had(course, reader)
    if lesson in reader.sent:
        return Kind.ALREADY_HAD, _following(course, reader, lesson)
    first = course.lessons[0].slug
    if not reader.sent and lesson != first and reader.ledger_status is None:
        return Kind.NOT_STARTED, first
    return None, lesson


def _after_last_had(course: Course, reader: ReaderProgress) -> str | None:
    """The first lesson after the last one (in the course's order) the reader had, skipping
    lessons it had; the first lesson when it had none of the course's."""
    had = [lesson.slug for lesson in course.lessons if lesson.slug in reader.sent]
    if not had:
        return course.lessons[0].slug
    return _following(course, reader, had[-1])


def _following(course: Course, reader: ReaderProgress, lesson: str) -> str | None:
    """The lesson `drip send` moves the reader on to after `lesson` (the lessons it had
    skipped): `schedule.after_send`'s choice, so apply and a send never disagree."""
    following = course.next_lesson(lesson)
    while following is not None and following.slug in reader.sent:
        following = course.next_lesson(following.slug)
    return None if following is None else following.slug


def _missed(course: Course, reader: ReaderProgress, target: str | None) -> tuple[str, ...]:
    """Lessons before `target` (all of them when done) the reader never had, if it had any."""
    if not reader.sent:
        return ()
    missed = []
    for lesson in course.lessons:
        if lesson.slug == target:
            break
        if lesson.slug not in reader.sent:
            missed.append(lesson.slug)
    return tuple(missed)


class Moments:
    """The schedule's answers for one survey, memoised: the readers of one `drip send` run
    share their last send time, so most readers ask the same question. The key holds every
    input the answer depends on (the confirmation only for a reader with no lesson yet, the
    stored moment only as "still to come or not", as `schedule.rescheduled_at` reads them)."""

    MAX = 65_536

    def __init__(self, course: Course, now: datetime) -> None:
        self.course = course
        self.now = now
        self._rescheduled: dict[tuple[object, ...], datetime] = {}
        self._normal: dict[tuple[object, ...], datetime] = {}

    def _key(self, reader: ReaderProgress, lesson: str) -> tuple[object, ...]:
        confirmed = reader.confirmed_at if reader.last_sent_at is None else None
        return (reader.timezone, lesson, reader.last_sent_at, confirmed, reader.send_time)

    def rescheduled(self, reader: ReaderProgress, lesson: str) -> datetime:
        """When `lesson` goes out for `reader` (`schedule.rescheduled_at`)."""
        now = self.now
        to_come = reader.next_send_at is not None and reader.next_send_at > now
        key = (*self._key(reader, lesson), to_come)
        found = self._rescheduled.get(key)
        if found is None:
            found = schedule.rescheduled_at(
                self.course,
                reader.timezone,
                lesson,
                now=now,
                waiting_until=reader.next_send_at or now,
                last_sent_at=reader.last_sent_at,
                confirmed_at=reader.confirmed_at,
                send_time=reader_send_time(reader.send_time),
            )
            _remember(self._rescheduled, key, found)
        return found

    def normal(self, reader: ReaderProgress, lesson: str) -> datetime:
        """`lesson`'s normal moment for `reader` (`schedule.next_send_at`)."""
        key = self._key(reader, lesson)
        found = self._normal.get(key)
        if found is None:
            found = schedule.next_send_at(
                self.course.settings,
                reader.timezone,
                self.course.lesson(lesson),
                previous_sent_at=reader.last_sent_at,
                confirmed_at=reader.confirmed_at or self.now,
                send_time=reader_send_time(reader.send_time),
            )
            _remember(self._normal, key, found)
        return found


def _remember(
    cache: dict[tuple[object, ...], datetime], key: tuple[object, ...], value: datetime
) -> None:
    if len(cache) >= Moments.MAX:
        cache.clear()  # bounded: memory stays flat whatever the number of readers
    cache[key] = value


def _keeps(moments: Moments, reader: ReaderProgress, at: datetime) -> bool:
    """True when the reader's stored moment stands under the current settings (see the module
    docstring): it is `at`; or it and `at` are both due; or a late run deferred it to the start
    of a sending window the settings still allow, after the lesson's normal due time."""
    stored = reader.next_send_at
    assert stored is not None
    now = moments.now
    if stored == at or (stored <= now and at <= now):
        return True
    settings = moments.course.settings
    first = reader.last_sent_at is None
    zone = reader.timezone
    return (
        stored > moments.normal(reader, reader.next_lesson)
        and schedule.may_send_at(settings, zone, stored, first_lesson=first)
        and not schedule.may_send_at(settings, zone, stored - _ONE_SECOND, first_lesson=first)
    )


def _change(
    reader: ReaderProgress, lesson: str | None, at: datetime | None, *, completed: bool = False
) -> ProgressChange:
    return ProgressChange(
        reader.id, reader.next_lesson, reader.next_send_at, lesson, at, completed=completed
    )


def apply_course(
    sessions: sessionmaker[Session],
    course: Course,
    templates_dir: Path,
    *,
    now: datetime,
    dry_run: bool = False,
) -> Survey:
    """`drip course apply`: move the readers to `course` (`survey` with `apply`), or with
    `dry_run` only count what would change.

    A course `drip course check` finds errors in is refused (`CourseError`, nothing written),
    as `drip send` refuses it: a half-edited course (a lesson dropped from the list by mistake)
    must not move readers past lessons they would then never get.
    """
    if not dry_run:
        errors = [
            problem for problem in check_course(course.directory, templates_dir) if problem.error
        ]
        if errors:
            raise CourseError(
                f"the course has {len(errors)} error(s), the first: {errors[0]}; fix them"
                " ('drip course check' lists them all) before moving readers to it; nothing was"
                " changed"
            )
    return survey(sessions, course, now=now, apply=not dry_run)


def survey(
    sessions: sessionmaker[Session],
    course: Course,
    *,
    now: datetime,
    apply: bool = False,
    batch_size: int = BATCH,
) -> Survey:
    """Look at every reader of `course` with a next lesson, a batch at a time in address order
    (one transaction each), and count what the course on disk changes for them; with `apply`, also
    write the changes. Idempotent: a second apply at the same `now` changes nothing.

    Safe while a `drip send` runs: a claim in flight or in doubt is never touched, PostgreSQL
    skips rows being claimed (FOR UPDATE SKIP LOCKED), and each write is a compare-and-set on
    the values read. A Ctrl-C ends the run after the batches already committed
    (`Survey.interrupted`); running it again finishes the job.
    """
    report = Survey(now=now)
    with sessions() as session:
        sent = progress.ledger_slugs(session, course.id)
    report.unknown_sent = {
        slug: count for slug, count in sorted(sent.items()) if not course.has_lesson(slug)
    }
    moments = Moments(course, now)
    after = ""
    try:
        while True:
            with sessions() as session, session.begin():
                readers = progress.readers_after(session, course.id, after, batch_size, lock=apply)
                if not readers:
                    break
                changes = _count(report, moments, readers)
                if apply:
                    report.written += progress.apply_changes(session, changes, now)
            after = readers[-1].email
    except KeyboardInterrupt:
        report.interrupted = True
    return report


def _count(report: Survey, moments: Moments, readers: list[ReaderProgress]) -> list[ProgressChange]:
    """Add one batch's decisions to `report`; returns its changes."""
    changes: list[ProgressChange] = []
    for reader in readers:
        report.readers += 1
        decision = decide(moments.course, reader, now=moments.now, moments=moments)
        if decision.left is not None:
            report.left[decision.left] += 1
        change = decision.change
        if change is not None:
            changes.append(change)
        for kind in decision.kinds:
            _tally(report.tally(kind), kind, reader, decision)
    report.changes += len(changes)
    return changes


def _tally(tally: Tally, kind: Kind, reader: ReaderProgress, decision: Decision) -> None:
    tally.readers += 1
    change = decision.change
    if kind is Kind.MISSED:
        tally.lessons.update(decision.missed)
    else:
        tally.lessons[reader.next_lesson] += 1
        if change is not None and change.completed:
            tally.completed += 1
        elif change is not None and change.next_lesson != reader.next_lesson:
            tally.moved += 1
        elif change is not None:
            tally.rescheduled += 1
    if len(tally.examples) < EXAMPLES:
        tally.examples.append(_example(kind, reader, decision))


def _example(kind: Kind, reader: ReaderProgress, decision: Decision) -> str:
    """One reader as an example of `kind`: the address and what changes for it."""
    change = decision.change
    if kind is Kind.MISSED:
        return f"{reader.email} (never got {', '.join(decision.missed)})"
    if change is None:
        return f"{reader.email} ({reader.next_lesson})"
    if kind is Kind.DUE_TIME:
        before, after = change.before_send_at, change.next_send_at
        return f"{reader.email} ({_local(reader, before)} -> {_local(reader, after)})"
    target = "completed" if change.completed else change.next_lesson
    return f"{reader.email} ({reader.next_lesson} -> {target})"


def _local(reader: ReaderProgress, moment: datetime | None) -> str:
    """`moment` on the reader's wall clock, ISO 8601 with its offset."""
    if moment is None:
        return "none"
    try:
        return moment.astimezone(schedule.zone_named(reader.timezone)).isoformat()
    except UnknownTimezoneError:
        return moment.isoformat()


class Mode(enum.Enum):
    """Who shows a survey: `drip course check`, `drip course apply --dry-run`, or apply."""

    CHECK = "check"
    DRY_RUN = "dry-run"
    APPLY = "apply"


_DOES = {
    Kind.REMOVED: "{moved} to the next lesson after their last one{completed}",
    Kind.ALREADY_HAD: "{moved} on to the next lesson they have not had{completed}",
    Kind.NOT_STARTED: "{moved} to the first lesson",
    Kind.DUE_TIME: "{rescheduled} to the schedule's moment under the current settings",
}


def report_lines(report: Survey, mode: Mode) -> list[str]:
    """The survey as the lines the CLI prints: per kind, the readers, the lessons, a few
    examples and what apply does (would do, with `mode` CHECK or DRY_RUN)."""
    verb = {Mode.CHECK: "apply would move", Mode.DRY_RUN: "would move", Mode.APPLY: "moved"}[mode]
    when = report.now.isoformat(timespec="seconds")
    lines = [f"readers: {report.readers} with a next lesson, at {when}"]
    for kind in Kind:
        tally = report.kinds.get(kind)
        if tally is None:
            continue
        lessons = ", ".join(f"{slug}: {count}" for slug, count in sorted(tally.lessons.items()))
        lines.append(
            f"{kind.value}: {tally.readers} reader(s) ({lessons}); e.g. {'; '.join(tally.examples)}"
        )
        if kind is Kind.MISSED:
            lines.append(
                "  apply changes nothing: they go on from where they are (a lesson is never sent"
                " out of order, and a renamed lesson would be sent twice)"
            )
        else:
            completed = (
                f" and completed {tally.completed} (no lesson left)" if tally.completed else ""
            )
            does = _DOES[kind].format(
                moved=tally.moved, completed=completed, rescheduled=tally.rescheduled
            )
            lines.append(f"  {verb} {does}")
    for slug, count in report.unknown_sent.items():
        lines.append(
            f"no longer in the course (removed or renamed): {slug!r}, sent to {count} reader(s);"
            " nothing to do (a lesson is tracked by its slug and never sent twice under it)"
        )
    for left, count in sorted(report.left.items(), key=lambda item: item[0].name):
        lines.append(f"left alone: {count} reader(s): {left.value}")
    lines.append(_summary(report, mode))
    return lines


def _summary(report: Survey, mode: Mode) -> str:
    if report.interrupted and mode is Mode.APPLY:
        return (
            f"interrupted: {report.written} reader(s) changed in the batches committed; run"
            " 'drip course apply' again to finish"
        )
    if report.interrupted:
        return f"interrupted after {report.readers} reader(s): the counts above are partial"
    if mode is Mode.APPLY:
        line = f"changed {report.written} reader(s)"
        if report.raced:
            line += (
                f"; {report.raced} left alone because a 'drip send' moved them meanwhile (run"
                " 'drip course apply' again)"
            )
        return line
    if not report.changes:
        return "no reader's progress changes: nothing to apply"
    if mode is Mode.DRY_RUN:
        return f"would change {report.changes} reader(s); nothing written (--dry-run)"
    return f"'drip course apply' would change {report.changes} reader(s)"
