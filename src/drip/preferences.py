"""What a reader can do from the manage page (`/m/<token>`): pause (for 1, 2 or 4 weeks, or
until resumed), resume, change timezone and send time, see their progress, have everything
stored about them emailed to themselves (GDPR export), and erase themselves (GDPR erase).

Service functions like `drip.lifecycle`'s: each takes a session factory, the course (or a
`Mailer` when it sends), the subscriber id the signed link carries, and `now`; each opens its own
short transaction and asks `drip.schedule` when the next lesson goes out. None of them reads the
clock or the environment.
"""

from __future__ import annotations

import enum
import html
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy.orm import Session, sessionmaker

from drip import schedule, store
from drip.addresses import check_timezone
from drip.course import Course
from drip.db import reading
from drip.delivery import Mailer, reader_send_time
from drip.errors import InvalidAddressError, UnknownTimezoneError, UsageError
from drip.message import OutgoingEmail
from drip.statuses import DeliveryStatus, SubscriberStatus
from drip.transports.base import Outcome

PAUSE_WEEKS = (1, 2, 4)
"""The pause lengths offered, in weeks (None: until resumed)."""


class ScheduleProblem(enum.Enum):
    """Why a timezone / send time change is refused (the web page words each one)."""

    BAD_TIMEZONE = "bad_timezone"
    BAD_SEND_TIME = "bad_send_time"
    QUIET_SEND_TIME = "quiet_send_time"


def schedule_problem(
    course: Course, timezone: str, send_time: str | None
) -> ScheduleProblem | None:
    """None when `timezone` (an IANA zone) and `send_time` ("HH:MM", None: the course's) are
    acceptable for `course`; else what is wrong. A send time inside the quiet hours is refused: a
    lesson due then would always wait for them to end."""
    try:
        check_timezone(timezone)
    except InvalidAddressError:
        return ScheduleProblem.BAD_TIMEZONE
    try:
        at = schedule.parse_send_time(send_time)
    except ValueError:
        return ScheduleProblem.BAD_SEND_TIME
    if at is not None and schedule.quiet_send_time(course.settings, at):
        return ScheduleProblem.QUIET_SEND_TIME
    return None


def send_time_choices(course: Course, step_minutes: int = 30) -> list[str]:
    """The send times a reader may pick ("HH:MM" every `step_minutes`), outside quiet hours."""
    choices = []
    for minute in range(0, 24 * 60, step_minutes):
        at = time(minute // 60, minute % 60)
        if not schedule.quiet_send_time(course.settings, at):
            choices.append(at.strftime("%H:%M"))
    return choices


# --- pause, resume, schedule ------------------------------------------------------------------


def pause(
    sessions: sessionmaker[Session], subscriber_id: int, *, weeks: int | None, now: datetime
) -> bool:
    """Pause an active reader for `weeks` (one of PAUSE_WEEKS; `drip send` resumes them when it
    has passed) or, with None, until resumed. False if the reader was not active. Raises
    `ValueError` for another length and `NotFoundError` for an unknown id."""
    if weeks is not None and weeks not in PAUSE_WEEKS:
        raise ValueError(f"weeks must be one of {PAUSE_WEEKS} or None, not {weeks!r}")
    until = None if weeks is None else now + timedelta(weeks=weeks)
    with sessions() as session, session.begin():
        return store.pause(session, subscriber_id, now, until=until)


def resume(
    sessions: sessionmaker[Session], course: Course, subscriber_id: int, *, now: datetime
) -> bool:
    """Resume a paused reader: the next lesson goes out at the reader's next send time, never
    earlier than its normal due time (`schedule.after_resume`); a reader held for a failed or
    in-doubt delivery stays held. False if the reader was not paused; `NotFoundError` for an
    unknown id."""
    with sessions() as session, session.begin():
        view = store.get_subscriber_by_id(session, subscriber_id)
        if view is None:
            raise store.NotFoundError(f"no subscriber with id {subscriber_id}")
        if view.status is not SubscriberStatus.PAUSED:
            return False
        try:
            at = schedule.after_resume(
                course,
                view.timezone,
                view.next_lesson,
                resumed_at=now,
                last_sent_at=view.last_sent_at,
                confirmed_at=view.confirmed_at,
                send_time=reader_send_time(view.send_time),
            )
        except UnknownTimezoneError:
            reason = store.unknown_zone_reason(view.timezone)
            return store.resume(
                session, subscriber_id, now=now, next_send_at=None, hold_reason=reason
            )
        return store.resume(session, subscriber_id, now=now, next_send_at=at)


def change_schedule(
    sessions: sessionmaker[Session],
    course: Course,
    subscriber_id: int,
    *,
    timezone: str,
    send_time: str | None,
    now: datetime,
) -> bool:
    """Set the reader's timezone and send time ("HH:MM"; None: the course's). A lesson the
    reader is waiting for is rescheduled by the same rules in the new setting
    (`schedule.rescheduled_at`); one already in the ledger (being sent, retrying, failed, in
    doubt) keeps its moment. Returns whether the next lesson moved. Raises `UsageError` for a
    value `schedule_problem` refuses and `NotFoundError` for an unknown id."""
    problem = schedule_problem(course, timezone, send_time)
    if problem is not None:
        raise UsageError(
            f"timezone {timezone!r} / send time {send_time!r} refused: {problem.value}"
        )
    zone = check_timezone(timezone)
    at = schedule.parse_send_time(send_time)

    def moment(row: Any) -> datetime | None:
        if not course.has_lesson(row.next_lesson):
            return None
        return schedule.rescheduled_at(
            course,
            zone,
            row.next_lesson,
            now=now,
            waiting_until=row.next_send_at,
            last_sent_at=row.last_sent_at,
            confirmed_at=row.confirmed_at,
            send_time=at,
        )

    with sessions() as session, session.begin():
        return store.set_schedule(
            session, subscriber_id, timezone=zone, send_time=send_time, next_send_at=moment
        )


# --- what the manage page shows -----------------------------------------------------------------


class LessonState(enum.Enum):
    SENT = "sent"
    """It reached the provider (sent_at says when)."""
    NEXT = "next"
    """The lesson the reader waits for (`ManageView.next_at` says when, if known)."""
    WAITING = "waiting"
    """Being sent, retrying, failed or in doubt: with the operator or the provider."""
    LATER = "later"
    """Comes after the next one."""


@dataclass(frozen=True)
class LessonLine:
    number: int
    subject: str
    state: LessonState
    sent_at: datetime | None
    """Reader-local, when sent."""


@dataclass(frozen=True)
class ManageView:
    """One reader's page: status, settings and progress, moments in the reader's zone."""

    subscriber: store.SubscriberView
    lessons: list[LessonLine]
    next_at: datetime | None
    """When the next lesson goes out, reader-local; None when not scheduled (paused, held,
    finished)."""
    paused_until: datetime | None
    """Reader-local end of a timed pause."""
    send_time: time
    """The reader's send time, else the course's."""
    custom_send_time: bool
    zone: ZoneInfo | None
    """None when this host cannot load the reader's zone (moments are then shown in UTC)."""


def manage_view(
    sessions: sessionmaker[Session], course: Course, subscriber_id: int
) -> ManageView | None:
    """The manage page's content for `subscriber_id`; None for an unknown (or erased) reader."""
    with reading(sessions) as session:
        view = store.get_subscriber_by_id(session, subscriber_id)
        if view is None:
            return None
        ledger = {row.lesson: row for row in store.reader_deliveries(session, subscriber_id)}
    try:
        zone: ZoneInfo | None = schedule.zone_named(view.timezone)
    except UnknownTimezoneError:
        zone = None

    def local(moment: datetime | None) -> datetime | None:
        if moment is None:
            return None
        return moment.astimezone(zone) if zone is not None else moment

    lines: list[LessonLine] = []
    for lesson in course.lessons:
        row = ledger.get(lesson.slug)
        still_coming = view.status in _WAITING_STATUSES
        if row is not None and row.status is DeliveryStatus.SENT:
            state = LessonState.SENT
        elif row is not None and still_coming:
            state = LessonState.WAITING
        elif lesson.slug == view.next_lesson and still_coming:
            state = LessonState.NEXT
        else:
            state = LessonState.LATER
        lines.append(
            LessonLine(lesson.number, lesson.subject, state, local(row.sent_at if row else None))
        )
    own = reader_send_time(view.send_time)
    return ManageView(
        subscriber=view,
        lessons=lines,
        next_at=local(view.next_send_at) if view.status is SubscriberStatus.ACTIVE else None,
        paused_until=local(view.paused_until),
        send_time=own or course.settings.send_time,
        custom_send_time=own is not None,
        zone=zone,
    )


_WAITING_STATUSES = frozenset({SubscriberStatus.ACTIVE, SubscriberStatus.PAUSED})


# --- GDPR -------------------------------------------------------------------------------------

EXPORT_SUBJECT = "【{title}】ご登録データのコピー"
EXPORT_INTRO = (
    "{title} の配信管理ページからのご依頼により、このメールアドレスについて保存している"
    "すべてのデータ(登録情報・配信記録・配信事業者からの通知)をお送りします。\n"
    "内容は JSON 形式です。お心当たりがない場合は、このメールを破棄してください。\n\n"
)


def export_document(sessions: sessionmaker[Session], subscriber_id: int) -> dict[str, Any] | None:
    """Everything stored about the reader, JSON-ready (see `store.export_subscriber`)."""
    with sessions() as session:
        return store.export_subscriber(session, subscriber_id)


def send_export(
    sessions: sessionmaker[Session], mailer: Mailer, subscriber_id: int, *, now: datetime
) -> bool | None:
    """Email everything stored about the reader (a JSON document, in the body of a plain email)
    to the reader's own address through the configured transport: never shown on a page (a
    manage link can be forwarded). True when the transport accepted it, False when it did not
    (try later), None for an unknown reader. Raises `FatalTransportError` on bad credentials.
    """
    document = export_document(sessions, subscriber_id)
    if document is None:
        return None
    email = str(document["email"])
    exported = {"exported_at": now.isoformat(), "course_id": mailer.course.id, **document}
    body = json.dumps(exported, ensure_ascii=False, indent=2, sort_keys=True)
    title = mailer.course.settings.title
    intro = EXPORT_INTRO.format(title=title)
    from_address, from_name = mailer.sender
    message = OutgoingEmail(
        delivery_id=f"export-{subscriber_id}-{int(now.timestamp())}-{uuid.uuid4().hex[:8]}",
        to_address=email,
        to_name=None,
        from_address=from_address,
        from_name=from_name,
        subject=EXPORT_SUBJECT.format(title=title),
        text=intro + body + "\n",
        html=(
            '<!doctype html><html lang="ja"><meta charset="utf-8"><body>'
            f"<p>{html.escape(intro).replace(chr(10), '<br>')}</p>"
            f"<pre>{html.escape(body)}</pre></body></html>"
        ),
        custom_args={"drip_subscriber": str(subscriber_id), "drip_kind": "export"},
        date=now,
    )
    [result] = mailer.transport.send([message])
    return result.outcome is Outcome.SENT


def erase(sessions: sessionmaker[Session], subscriber_id: int, *, now: datetime) -> bool:
    """Erase the reader (every enrolment of the address, its deliveries and provider events)
    and keep only the address's hash on the suppression list, so no import or signup brings it
    back. False when there was nothing to erase (unknown or already erased). Idempotent."""
    with sessions() as session, session.begin():
        return store.erase_subscriber(session, subscriber_id, now)
