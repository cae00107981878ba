"""The pieces under the web's signup, confirm and unsubscribe, on a real SQLite file and a real
PostgreSQL: `links.confirm_token`, the confirmation queue (`store.optin`,
`delivery.send_owed_confirmations`), and `claim_due` / `send_due` restricted to some readers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy.exc
from sqlalchemy import Engine, Pool, event, make_url, update
from sqlalchemy.orm import Session, sessionmaker
from tests.support import COURSE, POSTGRESQL_ONLY, make_mailer

from drip import delivery, lifecycle, store
from drip.db import make_engine
from drip.errors import FatalTransportError, InvalidTokenError
from drip.links import LinkBuilder
from drip.models import Subscriber
from drip.store import optin, privacy
from drip.transports.base import Outcome
from drip.transports.memory import MemoryTransport

NOW = datetime(2026, 12, 1, 1, 0, tzinfo=UTC)  # 10:00 in Tokyo
LINKS = LinkBuilder("https://drip.example.jp", ["test-key"])


def test_confirm_token_reads_any_age_but_only_confirm_tokens() -> None:
    token = LINKS.confirm_url(7, now=NOW).rsplit("/", 1)[1]
    assert LINKS.confirm_token(token) == (7, NOW)
    late = NOW + timedelta(days=30)
    with pytest.raises(InvalidTokenError):
        LINKS.read("confirm", token, now=late)  # expired for confirming...
    assert LINKS.confirm_token(token) == (7, NOW)  # ...still readable for "a new link"
    for bad in (
        token[:-2],
        token + "x",
        LINKS.unsubscribe_url(7).rsplit("/", 1)[1],
        LinkBuilder("https://drip.example.jp", ["other-key"])
        .confirm_url(7, now=NOW)
        .rsplit("/", 1)[1],
    ):
        with pytest.raises(InvalidTokenError):
            LINKS.confirm_token(bad)


def _pending(sessions: sessionmaker[Session], *addresses: str) -> list[int]:
    ids = []
    for address in addresses:
        result = lifecycle.request_signup(
            sessions,
            COURSE,
            email=address,
            name="名前",
            timezone=None,
            now=NOW,
            consent_source="test",
        )
        assert result.created and result.queued
        ids.append(result.subscriber_id)
    return ids


def _view(sessions: sessionmaker[Session], subscriber_id: int) -> store.SubscriberView:
    with sessions() as session:
        view = store.get_subscriber_by_id(session, subscriber_id)
    assert view is not None
    return view


def test_owed_confirmations_are_settled_by_outcome(sessions: sessionmaker[Session]) -> None:
    sent, retry, failed, doubt = _pending(
        sessions, "s@example.com", "r@example.com", "f@example.com", "d@example.com"
    )
    transport = MemoryTransport([Outcome.SENT, Outcome.RETRY, Outcome.FAILED, Outcome.IN_DOUBT])
    mailer = make_mailer(transport)
    assert delivery.send_owed_confirmations(sessions, mailer, now=NOW) == 1
    assert [email.to_address for email in transport.attempts] == [
        "s@example.com",
        "r@example.com",
        "f@example.com",
        "d@example.com",
    ]
    assert all(email.to_name is None for email in transport.attempts)  # never the name
    assert _view(sessions, sent).confirmation_sent_at == NOW
    assert _view(sessions, sent).confirmation_wanted_at is None
    assert _view(sessions, doubt).confirmation_wanted_at is None  # never sent twice on purpose
    assert _view(sessions, failed).confirmation_wanted_at is None  # dropped
    assert _view(sessions, failed).confirmation_sent_at is None
    later = _view(sessions, retry)
    assert later.confirmation_sent_at is None
    assert later.confirmation_wanted_at == NOW + delivery.CONFIRMATION_RETRY_DELAY
    # Not before the retry moment; then once.
    assert delivery.send_owed_confirmations(sessions, mailer, now=NOW + timedelta(minutes=1)) == 0
    after = NOW + delivery.CONFIRMATION_RETRY_DELAY
    assert delivery.send_owed_confirmations(sessions, mailer, now=after) == 1
    assert delivery.send_owed_confirmations(sessions, mailer, now=after) == 0


def test_a_fatal_answer_keeps_the_rest_owed(sessions: sessionmaker[Session]) -> None:
    first, second = _pending(sessions, "a@example.com", "b@example.com")
    transport = MemoryTransport([Outcome.SENT, FatalTransportError("401 bad key")])
    with pytest.raises(FatalTransportError):
        delivery.send_owed_confirmations(sessions, make_mailer(transport), now=NOW)
    assert _view(sessions, first).confirmation_sent_at == NOW
    assert _view(sessions, second).confirmation_wanted_at is not None
    # Owed again a little later; then `drip send` sends it.
    later = NOW + delivery.CONFIRMATION_RETRY_DELAY
    assert _view(sessions, second).confirmation_wanted_at == later
    report = delivery.send_due(sessions, make_mailer(MemoryTransport()), now=later)
    assert report.confirmations == 1


def test_entries_no_longer_owed_are_dropped_unsent(sessions: sessionmaker[Session]) -> None:
    ids = _pending(sessions, "c@example.com", "b@example.com", "u@example.com", "r@example.com")
    with sessions() as session, session.begin():
        for subscriber_id, values in zip(
            ids,
            [
                {"status": "active"},
                {"status": "bounced"},
                {"status": "unsubscribed"},
                {"confirmation_sent_at": NOW - timedelta(hours=1)},
            ],
            strict=True,
        ):
            session.execute(update(Subscriber).where(Subscriber.id == subscriber_id).values(values))
    transport = MemoryTransport()
    assert delivery.send_owed_confirmations(sessions, make_mailer(transport), now=NOW) == 1
    assert [email.to_address for email in transport.attempts] == ["u@example.com"]
    with sessions() as session:
        assert optin.count_owed_confirmations(session, COURSE.id) == 0


def test_a_taken_entry_is_left_alone_until_its_lease_ends(sessions: sessionmaker[Session]) -> None:
    _pending(sessions, "lease@example.com")
    with sessions() as session, session.begin():
        taken = optin.take_owed_confirmations(
            session,
            COURSE.id,
            now=NOW,
            limit=10,
            lease=timedelta(minutes=10),
            interval=timedelta(hours=24),
        )
    assert [item.email for item in taken] == ["lease@example.com"]
    transport = MemoryTransport()
    mailer = make_mailer(transport)
    assert delivery.send_owed_confirmations(sessions, mailer, now=NOW + timedelta(minutes=9)) == 0
    # The process that took it died: after the lease another sends it.
    assert delivery.send_owed_confirmations(sessions, mailer, now=NOW + timedelta(minutes=10)) == 1


def test_a_limit_and_batches(
    sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(delivery, "CONFIRMATION_BATCH", 2)
    _pending(sessions, *(f"n{n}@example.com" for n in range(5)))
    transport = MemoryTransport()
    mailer = make_mailer(transport)
    assert delivery.send_owed_confirmations(sessions, mailer, now=NOW, limit=3) == 3
    assert delivery.send_owed_confirmations(sessions, mailer, now=NOW) == 2
    assert len({email.to_address for email in transport.attempts}) == 5


def _active(sessions: sessionmaker[Session], address: str) -> int:
    return lifecycle.subscribe(
        sessions,
        make_mailer(MemoryTransport()),
        email=address,
        name=None,
        timezone="Asia/Tokyo",
        confirmed=True,
        now=NOW,
        consent_source="test",
    ).subscriber_id


def test_claim_due_and_send_due_can_be_restricted_to_some_readers(
    sessions: sessionmaker[Session],
) -> None:
    first = _active(sessions, "first@example.com")
    second = _active(sessions, "second@example.com")
    _pending(sessions, "pending@example.com")
    with sessions() as session, session.begin():
        batch = store.claim_due(
            session,
            course_id=COURSE.id,
            now=NOW,
            limit=10,
            run_id="r1",
            lease=timedelta(minutes=15),
            only=[second],
        )
    assert [claim.subscriber_id for claim in batch.claims] == [second]
    with sessions() as session, session.begin():
        store.release_claims(session, "r1", NOW)
    transport = MemoryTransport()
    report = delivery.send_due(sessions, make_mailer(transport), now=NOW, only=[first])
    assert report.sent == 1 and report.confirmations == 0  # the queue is left to the web
    assert [email.to_address for email in transport.sent] == ["first@example.com"]
    full = delivery.send_due(sessions, make_mailer(transport), now=NOW)
    assert full.sent == 1 and full.confirmations == 1
    assert _view(sessions, second).next_lesson == COURSE.lessons[1].slug


def test_a_new_request_is_queued_only_when_no_confirmation_went_out_lately(
    sessions: sessionmaker[Session],
) -> None:
    [subscriber_id] = _pending(sessions, "again@example.com")
    assert delivery.send_owed_confirmations(sessions, make_mailer(MemoryTransport()), now=NOW) == 1

    def request(at: datetime) -> optin.OptinRequest:
        return lifecycle.request_signup(
            sessions,
            COURSE,
            email="again@example.com",
            name=None,
            timezone=None,
            now=at,
            consent_source="test",
        )

    soon = request(NOW + timedelta(hours=23))
    assert not soon.created and not soon.queued
    assert _view(sessions, subscriber_id).confirmation_wanted_at is None
    later = request(NOW + timedelta(hours=24))
    assert later.queued
    assert _view(sessions, subscriber_id).confirmation_wanted_at == NOW + timedelta(hours=24)
    assert not request(NOW + timedelta(hours=24, minutes=1)).queued  # already owed


def _optin(session: Session, address: str, *, at: datetime = NOW) -> optin.OptinRequest:
    return optin.request_optin(
        session,
        optin.Signup(COURSE.id, address, None, "Asia/Tokyo", "test"),
        now=at,
        interval=lifecycle.CONFIRMATION_INTERVAL,
    )


def test_request_optin_stores_nothing_for_an_erased_address(
    sessions: sessionmaker[Session],
) -> None:
    """The store refuses an erased address itself (in the INSERT), not only its callers."""
    with sessions() as session, session.begin():
        privacy.suppress(session, ["erased@example.com"], reason=privacy.ERASED, now=NOW)
    with sessions() as session, session.begin():
        answer = _optin(session, "erased@example.com")
    assert answer == optin.OptinRequest(
        0, store.SubscriberStatus.UNSUBSCRIBED, created=False, queued=False
    )
    with sessions() as session:
        assert store.get_subscriber(session, COURSE.id, "erased@example.com") is None
        assert optin.count_owed_confirmations(session, COURSE.id) == 0
    # Another address is stored as before, with a confirmation owed.
    with sessions() as session, session.begin():
        kept = _optin(session, "kept@example.com")
    assert kept.created and kept.queued and kept.status is store.SubscriberStatus.PENDING
    view = _view(sessions, kept.subscriber_id)
    assert (view.email, view.name, view.timezone, view.status) == (
        "kept@example.com",
        None,
        "Asia/Tokyo",
        store.SubscriberStatus.PENDING,
    )
    assert view.confirmation_wanted_at == NOW and view.consent_source == "test"


def test_a_new_address_costs_one_statement(sessions: sessionmaker[Session], engine: Engine) -> None:
    """The signup's hot path (`lifecycle.store_signup`): one statement (the INSERT checks the
    suppression list and returns the id). A known address costs more, and is rarer."""
    statements: list[str] = []

    def count(conn: object, cursor: object, text: str, *args: object) -> None:
        if not text.startswith("BEGIN"):  # SQLite's BEGIN IMMEDIATE: the transaction's own
            statements.append(text)

    event.listen(engine, "before_cursor_execute", count)
    try:
        first = _store_signup(sessions, "one@example.com", NOW)
        if engine.dialect.name == "sqlite":  # PostgreSQL: the next test counts round trips
            assert len(statements) == 1, statements
        again = _store_signup(sessions, "one@example.com", NOW + timedelta(minutes=1))
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert first.created and first.queued
    assert again == optin.OptinRequest(
        first.subscriber_id, store.SubscriberStatus.PENDING, created=False, queued=False
    )


@POSTGRESQL_ONLY
def test_a_new_address_costs_one_round_trip_on_postgresql(
    sessions: sessionmaker[Session], engine: Engine, tmp_path: Path
) -> None:
    """On PostgreSQL a new address costs one round trip to the server, out of any transaction:
    libpq's protocol trace of every connection opened meanwhile, from any pool and from its
    first message, shows one ReadyForQuery per signup, each 'I' (idle: no BEGIN nor COMMIT,
    no pre-ping)."""
    _store_signup(sessions, "warm@example.com", NOW)
    engine.dispose()  # and the signup's own pool with it: every connection is opened below
    trace = (tmp_path / "libpq.trace").open("w")
    traced: list[Any] = []

    def connect(dbapi_connection: Any, record: object) -> None:
        dbapi_connection.pgconn.trace(trace.fileno())
        dbapi_connection.pgconn.set_trace_flags(
            psycopg.pq.Trace.SUPPRESS_TIMESTAMPS | psycopg.pq.Trace.REGRESS_MODE
        )
        traced.append(dbapi_connection)

    event.listen(Pool, "connect", connect)
    try:
        answers = [_store_signup(sessions, f"new{n}@example.com", NOW) for n in range(5)]
    finally:
        event.remove(Pool, "connect", connect)
        for dbapi_connection in traced:
            dbapi_connection.pgconn.untrace()
        trace.close()
    assert all(answer.created and answer.queued for answer in answers)
    lines = (tmp_path / "libpq.trace").read_text().splitlines()
    ready = [line.split()[-1] for line in lines if "\tReadyForQuery" in line]
    assert traced and ready == ["I"] * 5, lines


def _store_signup(
    sessions: sessionmaker[Session], address: str, at: datetime
) -> optin.OptinRequest:
    fields = lifecycle.check_signup(COURSE, email=address, name=None, timezone=None)
    return lifecycle.store_signup(sessions, COURSE, fields, now=at, consent_source="test")


@POSTGRESQL_ONLY
def test_a_signup_survives_a_dropped_database_connection(
    sessions: sessionmaker[Session], engine: Engine
) -> None:
    """The signup's INSERT runs on connections that are not pinged before use (PostgreSQL): one
    found dead (the server restarted, an idle link was cut) is replaced and the INSERT runs
    again, once; the signup succeeds."""
    assert _store_signup(
        sessions, "before@example.com", NOW
    ).created  # a pooled connection now exists
    database = engine.url.database
    with psycopg.connect(
        engine.url.set(drivername="postgresql", database="postgres").render_as_string(False),
        autocommit=True,
    ) as admin:
        ended = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        ).fetchall()
    assert ended, "no connection to end"
    after = _store_signup(sessions, "after@example.com", NOW)
    assert after.created and after.queued
    assert _view(sessions, after.subscriber_id).email == "after@example.com"


@POSTGRESQL_ONLY
def test_a_database_error_on_the_signup_insert_is_raised_as_sqlalchemy_raises_it(
    database_url: str,
) -> None:
    """The PostgreSQL INSERT runs on psycopg directly; its errors still reach the web as
    SQLAlchemy's (an OperationalError gets the 503 page): here a lock not granted in time."""
    url = make_url(database_url).update_query_dict({"options": "-c lock_timeout=200"})
    engine = make_engine(url.render_as_string(hide_password=False))
    sessions = sessionmaker(engine, expire_on_commit=False)
    try:
        with engine.connect() as holder:
            holder.exec_driver_sql("LOCK TABLE subscribers IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(sqlalchemy.exc.OperationalError) as raised:
                _store_signup(sessions, "locked@example.com", NOW)
            assert isinstance(raised.value.orig, psycopg.errors.LockNotAvailable)
            holder.rollback()
        assert _store_signup(sessions, "locked@example.com", NOW).created  # the pool still works
    finally:
        engine.dispose()
