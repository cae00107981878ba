"""A 30-day simulation: 200 subscribers confirmed at random moments across timezones, `drip send`
run every 15 simulated minutes. Every subscriber gets every lesson once, in order, per the rules.

The checks are independent of `drip.schedule`: they restate the rules in local wall-clock terms.
"""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import sessionmaker
from tests.support import COURSE, make_mailer

from drip.delivery import send_due
from drip.lifecycle import subscribe
from drip.transports.memory import MemoryTransport

ZONES = ["Asia/Tokyo", "America/New_York", "Europe/London", "Australia/Lord_Howe", "Asia/Kathmandu"]
# Spans the March DST changes in New York (03-08) and London (03-29), and April in Lord Howe.
START = datetime(2026, 3, 5, 0, 0, tzinfo=UTC)
STEP = timedelta(minutes=15)


@pytest.mark.slow
def test_thirty_days_every_fifteen_minutes(engine: Engine) -> None:
    course = COURSE
    transport = MemoryTransport()
    mailer = make_mailer(transport, course)
    sessions = sessionmaker(engine, expire_on_commit=False)
    rng = random.Random(20261125)
    signups = sorted(
        (
            START + timedelta(seconds=rng.randrange(0, 10 * 24 * 3600)),
            f"s{index}@example.com",
            rng.choice(ZONES),
        )
        for index in range(200)
    )
    confirmed_at: dict[str, tuple[datetime, ZoneInfo]] = {}
    sends: dict[str, list[tuple[str, datetime]]] = defaultdict(list)
    now, pending = START, list(signups)
    seen = 0
    while now <= START + timedelta(days=30):
        while pending and pending[0][0] <= now:
            moment, email, zone = pending.pop(0)
            subscribe(
                sessions,
                mailer,
                email=email,
                name=None,
                timezone=zone,
                confirmed=True,
                now=moment,
                consent_source="sim",
            )
            confirmed_at[email] = (moment, ZoneInfo(zone))
        send_due(sessions, mailer, now=now)
        for message in transport.sent[seen:]:
            sends[message.to_address].append((message.custom_args["drip_lesson"], now))
        run_emails = [m.to_address for m in transport.sent[seen:]]
        assert len(run_emails) == len(set(run_emails)), "two lessons to one subscriber in a run"
        seen = len(transport.sent)
        now += STEP

    slugs = [lesson.slug for lesson in course.lessons]
    send_time = time(7, 30)

    def is_quiet(wall: time) -> bool:
        return wall >= time(21, 0) or wall < time(7, 0)

    assert len(sends) == 200
    for email, got in sends.items():
        assert [slug for slug, _ in got] == slugs, email
        confirmed, zone = confirmed_at[email]
        local = [moment.astimezone(zone) for _, moment in got]
        for moment in local:
            assert not is_quiet(moment.time()), (email, moment)
        # Lesson 1: at the first run at or after confirmation that is outside quiet hours.
        expected = START + STEP * -(-(confirmed - START) // STEP)
        while is_quiet(expected.astimezone(zone).time()):
            expected += STEP
        assert got[0][1] == expected, (email, confirmed, got[0][1])
        # Later lessons: at send time, local date = previous local date + delay_days.
        for index in range(1, len(slugs)):
            lesson = course.lessons[index]
            assert local[index].date() == local[index - 1].date() + timedelta(
                days=lesson.delay_days
            ), (email, lesson.slug, local)
            # Every zone's offset is a multiple of 15 minutes, so a run falls on 07:30 exactly.
            assert local[index].time() == send_time, (email, lesson.slug, local[index])
