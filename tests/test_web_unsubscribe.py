"""Unsubscribe links: GET/HEAD change nothing, RFC 8058 one-click POST without cookies, the
page's own button with CSRF, repeats, and "a 200 means no further lesson", also for a reader a
running `drip send` has already claimed (RELIABILITY.md, "Confirm and unsubscribe")."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import select
from tests.web_signup_support import (
    Db,
    confirmations,
    csrf_of,
    drain,
    signup,
    stop_sender,
)
from tests.web_support import TEST_KEY, AppFactory, Clock

from drip import delivery, lifecycle
from drip.links import LinkBuilder
from drip.message import OutgoingEmail
from drip.models import Delivery
from drip.statuses import SubscriberStatus
from drip.transports.base import SendResult
from drip.transports.memory import MemoryTransport
from drip.web import unsubscribe as unsubscribe_view
from drip.web.context import WebContext

NOW = datetime(2026, 12, 1, 1, 0, tzinfo=UTC)  # 10:00 in Tokyo


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
def app(make_app: AppFactory, database_url: str, tmp_path: Path, clock: Clock) -> Iterator[Flask]:
    built = make_app(database_url, tmp_path, clock=clock, trusted_proxies=1)
    yield built
    stop_sender(built)


@pytest.fixture
def db(database_url: str) -> Iterator[Db]:
    found = Db(database_url)
    yield found
    found.close()


def context_of(app: Flask) -> WebContext:
    context = app.extensions["drip"]
    assert isinstance(context, WebContext)
    return context


def reader(app: Flask, address: str) -> int:
    """An active reader whose lesson 1 is due now; its id."""
    context = context_of(app)
    result = lifecycle.subscribe(
        context.sessions,
        context.mailer,
        email=address,
        name=None,
        timezone="Asia/Tokyo",
        confirmed=True,
        now=context.now(),
        consent_source="test",
    )
    return result.subscriber_id


def path_of(url: str) -> str:
    return url.replace("https://drip.example.jp", "")


def unsubscribe_path(app: Flask, subscriber_id: int) -> str:
    return path_of(context_of(app).mailer.links.unsubscribe_url(subscriber_id))


def one_click(app: Flask, path: str) -> object:
    # A mailbox provider's POST: no cookies, no CSRF token, the RFC 8058 body only.
    return app.test_client(use_cookies=False).post(path, data={"List-Unsubscribe": "One-Click"})


def test_get_and_head_show_a_button_and_change_nothing(app: Flask, db: Db) -> None:
    path = unsubscribe_path(app, reader(app, "look@example.com"))
    client = app.test_client()
    for _ in range(3):
        page = client.get(path)
        assert page.status_code == 200
        text = page.get_data(as_text=True)
        assert "配信を停止する" in text and 'name="csrf_token"' in text
        head = client.head(path)
        assert head.status_code == 200 and head.get_data() == b""
    row = db.subscriber("look@example.com")
    assert row is not None and row.status is SubscriberStatus.ACTIVE


@pytest.mark.parametrize("encoding", ["urlencoded", "multipart"])
def test_one_click_post_without_cookies_unsubscribes_with_200_and_no_redirect(
    app: Flask, db: Db, encoding: str
) -> None:
    path = unsubscribe_path(app, reader(app, "oneclick@example.com"))
    client = app.test_client(use_cookies=False)
    for _ in range(2):  # repeats are harmless
        if encoding == "multipart":
            response = client.post(
                path, data={"List-Unsubscribe": "One-Click"}, content_type="multipart/form-data"
            )
        else:
            response = client.post(
                path,
                data="List-Unsubscribe=One-Click",
                content_type="application/x-www-form-urlencoded",
            )
        assert response.status_code == 200
        assert "Location" not in response.headers
        assert "配信を停止しました" in response.get_data(as_text=True)
    row = db.subscriber("oneclick@example.com")
    assert row is not None and row.status is SubscriberStatus.UNSUBSCRIBED
    assert row.next_send_at is None


def test_the_pages_button_works_with_csrf_and_not_without(app: Flask, db: Db) -> None:
    path = unsubscribe_path(app, reader(app, "button@example.com"))
    client = app.test_client()
    refused = client.post(path, data={"List-Unsubscribe": "Yes"})
    assert refused.status_code == 400
    assert client.post(path).status_code == 400
    row = db.subscriber("button@example.com")
    assert row is not None and row.status is SubscriberStatus.ACTIVE
    page = client.get(path).get_data(as_text=True)
    done = client.post(path, data={"csrf_token": csrf_of(page)})
    assert done.status_code == 200
    row = db.subscriber("button@example.com")
    assert row is not None and row.status is SubscriberStatus.UNSUBSCRIBED


def test_the_result_page_offers_pause_and_resubscribe(
    app: Flask, db: Db, tmp_path: Path, clock: Clock
) -> None:
    client = app.test_client()
    assert signup(client, "undo@example.com").status_code == 200
    drain(app)
    row = db.subscriber("undo@example.com")
    assert row is not None
    links = context_of(app).mailer.links
    path = unsubscribe_path(app, row.id)
    page = client.post(path, data={"csrf_token": csrf_of(client.get(path).get_data(as_text=True))})
    text = page.get_data(as_text=True)
    assert f'href="{links.manage_url(row.id)}"' in text  # "pause instead"
    assert f'action="{path}/resubscribe"' in text
    csrf = csrf_of(text)
    # Within 24 h of the last confirmation email: the same page, no new email.
    first = client.post(f"{path}/resubscribe", data={"csrf_token": csrf})
    assert first.status_code == 200 and "確認メールをお送りしました" in first.get_data(as_text=True)
    drain(app)
    assert len(confirmations(tmp_path / "outbox", "undo@example.com")) == 1
    clock.advance(hours=25)
    second = client.post(f"{path}/resubscribe", data={"csrf_token": csrf})
    assert second.get_data() == first.get_data()
    drain(app)
    assert len(confirmations(tmp_path / "outbox", "undo@example.com")) == 2
    row = db.subscriber("undo@example.com")
    assert row is not None and row.status is SubscriberStatus.UNSUBSCRIBED  # until confirmed
    assert client.post(f"{path}/resubscribe").status_code == 400  # CSRF


def test_unsubscribing_a_pending_reader_drops_its_queued_confirmation(app: Flask, db: Db) -> None:
    context = context_of(app)
    request = lifecycle.request_signup(
        context.sessions,
        context.course,
        email="queued@example.com",
        name=None,
        timezone=None,
        now=context.now(),
        consent_source="test",
    )
    assert one_click(app, unsubscribe_path(app, request.subscriber_id)).status_code == 200  # type: ignore[attr-defined]
    row = db.subscriber("queued@example.com")
    assert row is not None and row.confirmation_wanted_at is None
    assert delivery.send_owed_confirmations(context.sessions, context.mailer, now=NOW) == 0


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("MQ.tampered-signature", id="tampered"),
        pytest.param("MQ", id="truncated"),
        pytest.param(
            LinkBuilder("https://drip.example.jp", [TEST_KEY]).manage_url(1).rsplit("/", 1)[1],
            id="wrong purpose (manage)",
        ),
        pytest.param(
            LinkBuilder("https://drip.example.jp", [TEST_KEY])
            .confirm_url(1, now=NOW)
            .rsplit("/", 1)[1],
            id="wrong purpose (confirm)",
        ),
        pytest.param(
            LinkBuilder("https://drip.example.jp", ["another-key-" + "y" * 40])
            .unsubscribe_url(1)
            .rsplit("/", 1)[1],
            id="another key",
        ),
    ],
)
def test_bad_links_get_a_friendly_404_and_change_nothing(app: Flask, db: Db, token: str) -> None:
    assert reader(app, "safe@example.com") == 1
    client = app.test_client(use_cookies=False)
    page = client.get(f"/u/{token}")
    assert page.status_code == 404 and "このリンクは使えません" in page.get_data(as_text=True)
    assert one_click(app, f"/u/{token}").status_code == 404  # type: ignore[attr-defined]
    row = db.subscriber("safe@example.com")
    assert row is not None and row.status is SubscriberStatus.ACTIVE


def test_a_link_of_an_erased_reader_answers_200(app: Flask) -> None:
    assert one_click(app, unsubscribe_path(app, 424242)).status_code == 200  # type: ignore[attr-defined]


# --- a running send ---------------------------------------------------------------------------


class GatedTransport(MemoryTransport):
    """A memory transport that holds each call until `gate` is set; `entered` says a call is
    waiting. Records when each email was handed over."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.handed_at: dict[str, float] = {}

    def send(self, emails: Sequence[OutgoingEmail]) -> list[SendResult]:
        self.entered.set()
        assert self.gate.wait(30), "the test never opened the gate"
        results = super().send(emails)
        for message in emails:
            self.handed_at[message.to_address] = time.monotonic()
        return results


def _run_send(app: Flask, transport: GatedTransport) -> tuple[threading.Thread, list[object]]:
    import dataclasses

    context = context_of(app)
    mailer = dataclasses.replace(context.mailer, transport=transport)
    reports: list[object] = []
    thread = threading.Thread(
        target=lambda: reports.append(delivery.send_due(context.sessions, mailer, now=NOW)),
        daemon=True,
    )
    thread.start()
    assert transport.entered.wait(30), "the run never reached the transport"
    return thread, reports


def test_an_unsubscribe_while_a_run_holds_the_readers_claim_wins(
    app: Flask, db: Db, database_url: str
) -> None:
    first = reader(app, "first@example.com")
    claimed = reader(app, "claimed@example.com")
    transport = GatedTransport()  # window 1: the run claims both, then hands over one at a time
    thread, reports = _run_send(app, transport)
    # The run is handing "first" over; "claimed" is claimed by it but not handed over yet.
    with db.engine.connect() as conn:
        statuses = dict(
            conn.execute(select(Delivery.subscriber_id, Delivery.status)).all()  # type: ignore[arg-type]
        )
    assert statuses == {first: "sending", claimed: "claimed"}
    started = time.monotonic()
    response = one_click(app, unsubscribe_path(app, claimed))
    assert response.status_code == 200  # type: ignore[attr-defined]
    assert time.monotonic() - started < 2  # nothing of its own was being handed over
    # The claim is given back at once (on PostgreSQL a run marking it 'sending' right now then
    # finds it no longer 'claimed'), not only when the run reaches it.
    assert db.deliveries("claimed@example.com") == [("welcome", "retry")]
    transport.gate.set()
    thread.join(30)
    [report] = reports
    assert report.sent == 1 and report.skipped == 1  # type: ignore[attr-defined]
    assert [m.to_address for m in transport.sent] == ["first@example.com"]
    assert db.deliveries("claimed@example.com") == [("welcome", "retry")]
    row = db.subscriber("claimed@example.com")
    assert row is not None and row.status is SubscriberStatus.UNSUBSCRIBED
    assert row.next_send_at is None
    # No later run sends it either.
    context = context_of(app)
    later = delivery.send_due(context.sessions, context.mailer, now=NOW)
    assert later.sent == 0


def test_an_unsubscribe_during_the_readers_hand_over_answers_after_it(
    app: Flask, db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    reader(app, "inflight@example.com")
    transport = GatedTransport()
    thread, _reports = _run_send(app, transport)
    path = unsubscribe_path(app, 1)
    answered: list[float] = []

    def post() -> None:
        response = one_click(app, path)
        assert response.status_code == 200  # type: ignore[attr-defined]
        answered.append(time.monotonic())

    poster = threading.Thread(target=post, daemon=True)
    poster.start()
    time.sleep(0.5)
    assert answered == []  # waiting: the lesson is being handed over right now
    transport.gate.set()
    poster.join(30)
    thread.join(30)
    assert answered and answered[0] >= transport.handed_at["inflight@example.com"]
    row = db.subscriber("inflight@example.com")
    assert row is not None and row.status is SubscriberStatus.UNSUBSCRIBED
    assert row.next_send_at is None  # the recorded send did not re-schedule the reader


def test_the_wait_for_a_hand_over_is_bounded(
    app: Flask, db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(unsubscribe_view, "HAND_OVER_WAIT_SECONDS", 0.3)
    reader(app, "stuck@example.com")
    transport = GatedTransport()
    thread, _reports = _run_send(app, transport)
    started = time.monotonic()
    assert one_click(app, unsubscribe_path(app, 1)).status_code == 200  # type: ignore[attr-defined]
    assert 0.3 <= time.monotonic() - started < 3
    transport.gate.set()
    thread.join(30)


def test_one_click_unsubscribes_are_never_rate_limited(
    make_app: AppFactory, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mailbox providers post RFC 8058 unsubscribes from a few addresses of their own, in bursts
    after a send: a 429 would leave a reader subscribed. The per-IP default limit (lowered here
    to 3 a minute) applies to other pages, never to the unsubscribe links."""
    from drip.web import security

    monkeypatch.setattr(security, "DEFAULT_LIMITS", ["3 per minute"])
    app = make_app(database_url, tmp_path, clock=Clock(NOW))
    try:
        paths = [unsubscribe_path(app, reader(app, f"burst{i}@example.com")) for i in range(6)]
        client = app.test_client(use_cookies=False)
        answers = [
            client.post(
                path,
                data="List-Unsubscribe=One-Click",
                content_type="application/x-www-form-urlencoded",
            ).status_code
            for path in paths
        ]
        assert answers == [200] * 6
        assert [client.get("/healthz").status_code for _ in range(2)] == [200, 200]  # exempt too
        pages = [client.get("/").status_code for _ in range(4)]
        assert pages[-1] == 429  # the default limit is live for the rest
    finally:
        stop_sender(app)
