"""`drip subscribers show|forget|pause --until|confirm|resend-confirmation|list --lesson` end to
end through click, on a real SQLite file and a real PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker
from tests.support import COURSE, Drip, ok

from drip import store
from drip.errors import UsageError
from drip.lifecycle import pause_end, request_signup
from drip.models import deliveries, subscribers

MORNING = "2026-04-01T09:00:00+09:00"
T_MORNING = datetime(2026, 4, 1, 0, 0, tzinfo=UTC)


def row(sessions: sessionmaker[Session], email: str) -> store.SubscriberView:
    with sessions() as session:
        found = store.get_subscriber(session, COURSE.id, email)
    assert found is not None, email
    return found


# --- show -------------------------------------------------------------------------------------


def test_show_gives_state_lessons_with_events_and_the_next_lesson_local_and_utc(
    drip: Drip, sessions: sessionmaker[Session]
) -> None:
    ok(drip("subscribe", "yamada@example.com", "--name", "山田", "--confirmed", "--now", MORNING))
    ok(drip("send", "--now", MORNING))
    with sessions() as session, session.begin():
        delivery_id = session.connection().execute(select(deliveries.c.id)).scalar_one()
        for kind, minutes in (("delivered", 1), ("open", 7)):
            store.add_event(
                session,
                provider="sendgrid",
                provider_event_id=f"ev-{kind}",
                type=kind,
                occurred_at=T_MORNING + timedelta(minutes=minutes),
                received_at=T_MORNING + timedelta(minutes=minutes),
                payload={"email": "yamada@example.com", "event": kind},
                delivery_id=delivery_id,
            )

    shown = ok(drip("subscribers", "show", "Yamada@Example.com", "--now", MORNING))
    out = shown.output
    assert out.startswith("yamada@example.com (山田)\n")
    assert "state:     active since 2026-04-01 00:00 UTC" in out
    assert "consent:   cli, 2026-04-01 00:00 UTC" in out
    assert "timezone:  Asia/Tokyo; lessons after the first at 07:30 (the course's)" in out
    # Lesson 2 the next morning at 07:30 Tokyo: both clocks.
    assert "next:      2 rethink, 2026-04-02 Thu 07:30 Asia/Tokyo (2026-04-01 22:30 UTC)" in out
    assert (
        "  1 welcome              sent     2026-04-01 Wed 09:00 local  2026-04-01 00:00 UTC" in out
    )
    assert "      events: delivered 2026-04-01 00:01 UTC, open 2026-04-01 00:07 UTC" in out
    assert out.count("events:") == 1  # the events belong to lesson 1 only

    as_json = json.loads(ok(drip("subscribers", "show", "yamada@example.com", "--json")).output)
    assert as_json["email"] == "yamada@example.com" and as_json["consent_source"] == "cli"
    first, second = as_json["lessons"][:2]
    assert first["state"] == "sent"
    assert [e["type"] for e in first["events"]] == ["delivered", "open"]
    assert second["at_local"] == "2026-04-02T07:30:00+09:00" and second["events"] == []


def test_show_of_a_pending_and_an_unknown_reader(drip: Drip) -> None:
    ok(drip("subscribe", "p@example.com", "--now", MORNING))
    out = ok(drip("subscribers", "show", "p@example.com", "--now", MORNING)).output
    assert "state:     pending" in out and "confirmed: not yet" in out
    assert "waiting for the reader to confirm" in out
    unknown = drip("subscribers", "show", "nobody@example.com")
    assert unknown.exit_code == 2
    assert "nobody@example.com is not subscribed" in unknown.stderr


# --- forget -----------------------------------------------------------------------------------


def test_forget_erases_keeps_the_hash_and_refuses_the_address_afterwards(
    drip: Drip, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    ok(drip("subscribe", "gone@example.com", "--confirmed", "--now", MORNING))
    ok(drip("send", "--now", MORNING))

    refused = drip("subscribers", "forget", "gone@example.com")  # not a terminal, no --yes
    assert refused.exit_code == 2 and "--yes" in refused.stderr
    assert row(sessions, "gone@example.com").status is store.SubscriberStatus.ACTIVE

    erased = ok(drip("subscribers", "forget", "ｇｏｎｅ@example.com", "--yes"))
    assert "erased" in erased.output
    with sessions() as session:
        assert store.get_subscriber(session, COURSE.id, "gone@example.com") is None
        assert session.connection().execute(select(deliveries.c.id)).first() is None
        assert store.is_suppressed(session, "gone@example.com")

    again = ok(drip("subscribers", "forget", "gone@example.com", "--yes"))
    assert "already erased" in again.output
    assert drip("subscribe", "gone@example.com", "--confirmed").exit_code == 2
    csv_file = tmp_path / "back.csv"
    csv_file.write_text("email\ngone@example.com\n", encoding="utf-8")
    imported = drip("subscribers", "import", str(csv_file), "--confirmed")
    assert imported.exit_code == 1
    assert "erased at the person's request" in imported.stderr

    unknown = drip("subscribers", "forget", "never@example.com", "--yes")
    assert unknown.exit_code == 2 and "nothing to erase" in unknown.stderr


# --- pause --until ----------------------------------------------------------------------------


def test_pause_until_a_date_ends_at_the_readers_midnight_and_send_resumes_it(
    drip: Drip, sessions: sessionmaker[Session]
) -> None:
    ok(drip("subscribe", "p@example.com", "--confirmed", "--now", MORNING))
    ok(drip("send", "--now", MORNING))
    paused = ok(
        drip("subscribers", "pause", "p@example.com", "--until", "2026-04-10", "--now", MORNING)
    )
    assert "until 2026-04-10 Fri 00:00 Asia/Tokyo (2026-04-09 15:00 UTC)" in paused.output
    view = row(sessions, "p@example.com")
    assert view.status is store.SubscriberStatus.PAUSED
    assert view.paused_until == datetime(2026, 4, 9, 15, 0, tzinfo=UTC)

    ok(drip("send", "--now", "2026-04-09T23:00:00+09:00"))  # before the end: still paused
    assert row(sessions, "p@example.com").status is store.SubscriberStatus.PAUSED
    ok(drip("send", "--now", "2026-04-10T07:30:00+09:00"))
    assert row(sessions, "p@example.com").status is store.SubscriberStatus.ACTIVE


@pytest.mark.parametrize(
    ("until", "message"),
    [
        ("2026-03-31", "not in the future"),
        ("2026-04-01T08:59+09:00", "not in the future"),
        ("2026-04-10T12:00", "has no UTC offset"),
        ("2026-02-30", "is not a date"),
        ("next week", "is not a date"),
        ("9999-12-31T00:00Z", "outside the years"),
    ],
)
def test_pause_until_refuses_past_bad_and_naive_moments(
    drip: Drip, sessions: sessionmaker[Session], until: str, message: str
) -> None:
    ok(drip("subscribe", "p@example.com", "--confirmed", "--now", MORNING))
    result = drip("subscribers", "pause", "p@example.com", "--until", until, "--now", MORNING)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert row(sessions, "p@example.com").status is store.SubscriberStatus.ACTIVE


def test_pause_until_with_an_offset_and_plain_pause_still_work(
    drip: Drip, sessions: sessionmaker[Session]
) -> None:
    ok(drip("subscribe", "p@example.com", "--confirmed", "--now", MORNING))
    ok(
        drip(
            "subscribers",
            "pause",
            "p@example.com",
            "--until",
            "2026-05-01T12:00Z",
            "--now",
            MORNING,
        )
    )
    assert row(sessions, "p@example.com").paused_until == datetime(2026, 5, 1, 12, tzinfo=UTC)
    ok(drip("subscribers", "resume", "p@example.com", "--now", MORNING))
    plain = ok(drip("subscribers", "pause", "p@example.com", "--now", MORNING))
    assert plain.output.strip() == "p@example.com: paused"
    assert row(sessions, "p@example.com").paused_until is None
    assert drip("subscribers", "pause", "nobody@example.com").exit_code == 2


# --- confirm ----------------------------------------------------------------------------------


def _signed_up_on_the_web(sessions: sessionmaker[Session], email: str) -> None:
    """A pending signup from the web form two days before MORNING, its consent record 'web
    form'."""
    request_signup(
        sessions,
        COURSE,
        email=email,
        name=None,
        timezone=None,
        now=T_MORNING - timedelta(days=2),
        consent_source="web form",
    )


def test_confirm_records_consent_obtained_elsewhere_and_starts_the_course(
    drip: Drip, sessions: sessionmaker[Session]
) -> None:
    _signed_up_on_the_web(sessions, "w@example.com")
    result = ok(drip("subscribers", "confirm", "w@example.com", "--now", MORNING))
    assert "consent obtained elsewhere is recorded (source 'cli'" in result.output
    assert "no confirmation email is sent" in result.output
    view = row(sessions, "w@example.com")
    assert view.status is store.SubscriberStatus.ACTIVE and view.next_lesson == "welcome"
    assert (view.consent_source, view.consent_at, view.confirmed_at) == (
        "cli",
        T_MORNING,
        T_MORNING,
    )
    assert not list(Path().glob("outbox/*.eml"))  # no email: the operator vouched
    again = ok(drip("subscribers", "confirm", "w@example.com", "--now", MORNING))
    assert "already confirmed, nothing changed" in again.output
    assert drip("subscribers", "confirm", "nobody@example.com").exit_code == 2


def test_confirm_never_reactivates_an_unsubscribed_reader(
    drip: Drip, sessions: sessionmaker[Session]
) -> None:
    ok(drip("subscribe", "u@example.com", "--confirmed", "--now", MORNING))
    ok(drip("subscribers", "unsubscribe", "u@example.com", "--now", MORNING))
    result = drip("subscribers", "confirm", "u@example.com", "--now", MORNING)
    assert result.exit_code == 2 and "unsubscribed" in result.stderr
    assert row(sessions, "u@example.com").status is store.SubscriberStatus.UNSUBSCRIBED


def test_subscribe_confirmed_of_a_pending_signup_records_the_cli_consent(
    drip: Drip, sessions: sessionmaker[Session]
) -> None:
    # Was a bug: the web form's consent record stayed, as if the reader had confirmed there.
    _signed_up_on_the_web(sessions, "w@example.com")
    ok(drip("subscribe", "w@example.com", "--confirmed", "--now", MORNING))
    view = row(sessions, "w@example.com")
    assert (view.consent_source, view.consent_at) == ("cli", T_MORNING)


# --- resend-confirmation ----------------------------------------------------------------------


def test_resend_confirmation_goes_through_the_queue_once_a_day(
    drip: Drip, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    ok(drip("subscribe", "p@example.com", "--now", MORNING))  # first confirmation email
    assert len(list((tmp_path / "outbox").glob("*.eml"))) == 1

    soon = drip(
        "subscribers", "resend-confirmation", "p@example.com", "--now", "2026-04-01T20:00+09:00"
    )
    assert soon.exit_code == 2 and "less than 24 h ago" in soon.stderr
    assert len(list((tmp_path / "outbox").glob("*.eml"))) == 1

    later = ok(
        drip(
            "subscribers", "resend-confirmation", "p@example.com", "--now", "2026-04-02T10:00+09:00"
        )
    )
    assert "confirmation email sent (outbox)" in later.output
    emails = list((tmp_path / "outbox").glob("*.eml"))
    assert len(emails) == 2
    view = row(sessions, "p@example.com")
    assert view.confirmation_sent_at == datetime(2026, 4, 2, 1, 0, tzinfo=UTC)
    assert view.confirmation_wanted_at is None  # the queue entry is settled


def test_resend_confirmation_only_for_pending_readers(drip: Drip) -> None:
    ok(drip("subscribe", "a@example.com", "--confirmed", "--now", MORNING))
    active = drip("subscribers", "resend-confirmation", "a@example.com", "--now", MORNING)
    assert active.exit_code == 2 and "not pending" in active.stderr
    ok(drip("subscribers", "unsubscribe", "a@example.com", "--now", MORNING))
    gone = drip("subscribers", "resend-confirmation", "a@example.com", "--now", MORNING)
    assert gone.exit_code == 2 and "only the person can sign up again" in gone.stderr
    unknown = drip("subscribers", "resend-confirmation", "nobody@example.com")
    assert unknown.exit_code == 2 and "not subscribed" in unknown.stderr


# --- list --lesson ----------------------------------------------------------------------------


def test_list_by_next_lesson_slug_or_number(drip: Drip) -> None:
    ok(drip("subscribe", "a@example.com", "--confirmed", "--now", MORNING))
    ok(drip("subscribe", "b@example.com", "--confirmed", "--now", MORNING))
    ok(drip("send", "--now", MORNING, "--limit", "1"))
    by_slug = ok(drip("subscribers", "list", "--lesson", "rethink")).output.splitlines()
    by_number = ok(drip("subscribers", "list", "--lesson", "2")).output.splitlines()
    assert by_slug == by_number and len(by_slug) == 1
    assert by_slug[0].split("\t")[:3] == ["a@example.com", "active", "rethink"]
    welcome = ok(drip("subscribers", "list", "--lesson", "welcome", "--json")).output
    assert [json.loads(line)["email"] for line in welcome.splitlines()] == ["b@example.com"]
    unknown = drip("subscribers", "list", "--lesson", "nope")
    assert unknown.exit_code == 2 and "no lesson 'nope'" in unknown.stderr


# --- list --held: everyone waiting on the operator ----------------------------------------------


def _claim_all(sessions: sessionmaker[Session]) -> dict[str, int]:
    """Claim every due lesson as `drip send` would; email -> its delivery id."""
    with sessions() as session, session.begin():
        batch = store.claim_due(
            session,
            course_id=COURSE.id,
            now=T_MORNING,
            limit=100,
            run_id="run-held",
            lease=timedelta(minutes=15),
        )
    return {claim.email: claim.delivery_id for claim in batch.claims}


def test_list_held_shows_paused_readers_whose_delivery_failed_or_is_in_doubt(
    drip: Drip, sessions: sessionmaker[Session]
) -> None:
    """Held means waiting on the operator (README: --held shows "the readers who wait on the
    operator — a failed or in-doubt delivery ..."; a hold "stays held through a pause and
    resume"). A pause does not end that wait: only retry or resolve does."""
    for name in ("failed", "doubt", "claimed", "plain", "due"):
        ok(drip("subscribe", f"{name}@example.com", "--confirmed", "--now", MORNING))
    claimed = _claim_all(sessions)
    with sessions() as session, session.begin():
        store.record_failed(session, [(claimed["failed@example.com"], "550 no such user")])
        store.record_in_doubt(session, [(claimed["doubt@example.com"], "timeout after send")])
    # Held, then paused; paused while its lesson is in flight, then found in doubt; just paused.
    ok(drip("subscribers", "pause", "failed@example.com", "--now", MORNING))
    ok(drip("subscribers", "pause", "claimed@example.com", "--now", MORNING))
    with sessions() as session, session.begin():
        store.record_in_doubt(session, [(claimed["claimed@example.com"], "reset after send")])
    ok(drip("subscribers", "pause", "plain@example.com", "--now", MORNING))
    with sessions() as session, session.begin():  # only retried: due again, not held
        store.record_retry(session, [(claimed["due@example.com"], T_MORNING, "429")])

    lines = ok(drip("subscribers", "list", "--held")).output.splitlines()
    held = {line.split("\t")[0]: line.split("\t") for line in lines}
    assert sorted(held) == ["claimed@example.com", "doubt@example.com", "failed@example.com"]
    assert held["failed@example.com"][1] == "paused"
    assert "failed (550 no such user)" in held["failed@example.com"][4]
    assert held["claimed@example.com"][1] == "paused"
    assert "in doubt (reset after send)" in held["claimed@example.com"][4]
    assert held["doubt@example.com"][1] == "active"

    # Everything else says the same: the full list, --json, and show.
    every = ok(drip("subscribers", "list", "--json")).output.splitlines()
    flags = {document["email"]: document["held"] for document in map(json.loads, every)}
    assert {email for email, flag in flags.items() if flag} == set(held)
    shown = ok(drip("subscribers", "show", "claimed@example.com", "--now", MORNING)).output
    assert "state:     paused (held)" in shown and "in doubt (reset after send)" in shown
    plain = ok(drip("subscribers", "show", "plain@example.com", "--now", MORNING)).output
    assert "(held)" not in plain and "held:" not in plain

    # Settling the delivery ends the wait: the reader is just paused again.
    resolve = ("deliveries", "resolve", str(claimed["claimed@example.com"]), "--not-sent")
    ok(drip(*resolve, "--now", MORNING))
    again = ok(drip("subscribers", "list", "--held")).output
    assert "claimed@example.com" not in again and "failed@example.com" in again


def test_every_new_command_on_an_empty_database(drip: Drip) -> None:
    assert ok(drip("subscribers", "list", "--lesson", "1")).output.strip() == "none"
    export = ok(drip("subscribers", "export"))
    assert export.output.lstrip("\ufeff").strip() == (
        "email,name,timezone,status,created_at,confirmed_at,consent_at,consent_source"
    )
    for command in ("show", "confirm", "resend-confirmation", "pause"):
        assert drip("subscribers", command, "x@example.com").exit_code == 2, command
    assert drip("subscribers", "show", "not-an-address").exit_code == 2


def test_show_of_a_reader_whose_timezone_this_host_cannot_load(
    drip: Drip, sessions: sessionmaker[Session]
) -> None:
    ok(drip("subscribe", "mars@example.com", "--confirmed", "--now", MORNING))
    with sessions() as session, session.begin():
        session.connection().execute(
            update(subscribers)
            .where(subscribers.c.email == "mars@example.com")
            .values(timezone="Mars/Base")
        )
    out = ok(drip("subscribers", "show", "mars@example.com", "--now", MORNING)).output
    assert "timezone:  Mars/Base" in out
    assert "lessons:   not planned: timezone 'Mars/Base' cannot be loaded here" in out
    document = json.loads(ok(drip("subscribers", "show", "mars@example.com", "--json")).output)
    assert document["timezone"] == "Mars/Base" and document["lessons"] == []


# --- pause_end (pure) ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("until", "zone", "expected"),
    [
        ("2026-05-01", "Asia/Tokyo", datetime(2026, 4, 30, 15, 0, tzinfo=UTC)),
        # Santiago skips 00:00 on 2026-09-06 (DST): the pause ends at the first instant after.
        ("2026-09-06", "America/Santiago", datetime(2026, 9, 6, 4, 0, tzinfo=UTC)),
        (" 2026-05-01T07:30+09:00 ", "America/New_York", datetime(2026, 4, 30, 22, 30, tzinfo=UTC)),
    ],
)
def test_pause_end_reads_a_date_in_the_readers_zone_or_an_instant(
    until: str, zone: str, expected: datetime
) -> None:
    assert pause_end(until, zone, now=T_MORNING) == expected


def test_pause_end_of_a_date_needs_a_zone_this_host_can_load() -> None:
    with pytest.raises(UsageError, match="'Mars/Base' cannot be loaded"):
        pause_end("2026-05-01", "Mars/Base", now=T_MORNING)
    assert pause_end("2026-05-01T00:00Z", "Mars/Base", now=T_MORNING) == datetime(
        2026, 5, 1, tzinfo=UTC
    )
