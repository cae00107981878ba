"""A reader's timezone is loaded in one place, `drip.schedule.zone_named`, and every reader of it
copes with a name this host cannot load: not an IANA zone, a path outside the zone database, a
file of it that is not a zone. The year bounds of a moment given by hand are defined once too."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker
from tests.support import COURSE, Drip, ok

from drip import schedule
from drip.errors import UnknownTimezoneError, UsageError
from drip.lifecycle import pause_end
from drip.models import subscribers
from drip.preferences import manage_view
from drip.reschedule import _local
from drip.store.reschedule import ReaderProgress
from drip.web.pages import local_moment

NOW = datetime(2026, 4, 1, 0, 0, tzinfo=UTC)
# Each way ZoneInfo refuses a name: ZoneInfoNotFoundError (a KeyError) for an unknown one,
# ValueError for an absolute or escaping path, for an empty name and for a non-zone file.
BAD_ZONES = ["Mars/Base", "", "../etc/passwd", "/etc/localtime", "zone.tab", "Asia/Tokyo "]


@pytest.mark.parametrize("name", BAD_ZONES)
def test_zone_named_turns_every_refusal_into_one_error(name: str) -> None:
    with pytest.raises(UnknownTimezoneError) as caught:
        schedule.zone_named(name)
    assert caught.value.key == name and caught.value.exit_code == 2


@pytest.mark.parametrize("name", BAD_ZONES)
def test_pause_end_of_a_date_in_a_zone_it_cannot_load_asks_for_an_offset(name: str) -> None:
    with pytest.raises(UsageError, match="cannot be loaded here; give a date-time with a UTC"):
        pause_end("2026-05-01", name, now=NOW)
    assert pause_end("2026-05-01T00:00+09:00", name, now=NOW) == datetime(
        2026, 4, 30, 15, tzinfo=UTC
    )


@pytest.mark.parametrize("name", BAD_ZONES)
def test_a_survey_line_shows_utc_for_a_zone_it_cannot_load(name: str) -> None:
    reader = ReaderProgress(
        id=1,
        email="r@example.com",
        status="active",
        timezone=name,
        next_lesson="welcome",
        next_send_at=None,
        last_sent_at=None,
        confirmed_at=None,
        send_time=None,
        held_reason=None,
        ledger_status=None,
        sent=frozenset(),
    )
    assert _local(reader, NOW) == "2026-04-01T00:00:00+00:00"
    assert _local(replace(reader, timezone="Asia/Tokyo"), NOW) == "2026-04-01T09:00:00+09:00"


def test_the_confirm_pages_moment_names_the_zone_it_cannot_load() -> None:
    assert local_moment(NOW, "Asia/Tokyo") == "4月1日(水) 9:00"
    # Before, a bare KeyError or ValueError depending on the name; now the one DripError.
    for name in BAD_ZONES:
        with pytest.raises(UnknownTimezoneError):
            local_moment(NOW, name)


@pytest.mark.parametrize("name", ["Mars/Base", "zone.tab"])
def test_the_manage_page_of_a_zone_it_cannot_load_shows_utc(
    drip: Drip, sessions: sessionmaker[Session], name: str
) -> None:
    ok(drip("subscribe", "z@example.com", "--confirmed", "--now", "2026-04-01T09:00+09:00"))
    with sessions() as session, session.begin():
        session.connection().execute(
            update(subscribers).where(subscribers.c.email == "z@example.com").values(timezone=name)
        )
        sid = session.connection().execute(subscribers.select()).one().id
    view = manage_view(sessions, COURSE, sid)
    assert view is not None and view.zone is None and view.subscriber.timezone == name


def test_the_year_bounds_of_now_and_of_a_pause_are_the_schedules(drip: Drip) -> None:
    low, high = schedule.MIN_YEAR, schedule.MAX_YEAR
    result = drip("plan", "--course", "--now", f"{low - 1}-12-31T00:00Z")
    assert result.exit_code == 2 and f"outside the years {low}-{high}" in result.output
    with pytest.raises(UsageError, match=f"outside the years {low}-{high}"):
        pause_end(f"{high + 1}-01-01T00:00Z", "Asia/Tokyo", now=NOW)
    assert pause_end(f"{high}-01-01T00:00Z", "Asia/Tokyo", now=NOW).year == high
