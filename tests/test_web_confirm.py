"""Confirm links: GET shows a button and changes nothing, POST confirms and lesson 1 goes out
through the claims; expired, tampered and wrong-purpose links; a reader who had unsubscribed
comes back only through a new, confirmed opt-in (RELIABILITY.md, "Confirm and unsubscribe")."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from tests.support import COURSE
from tests.web_signup_support import (
    Db,
    clock_of,
    confirm_token,
    confirmations,
    csrf_of,
    drain,
    lessons,
    signup,
    stop_sender,
)
from tests.web_support import TEST_KEY, AppFactory, Clock

from drip import delivery
from drip.links import CONFIRM_MAX_AGE_SECONDS, LinkBuilder
from drip.statuses import SubscriberStatus

TOKYO_DAY = datetime(2026, 12, 1, 1, 0, tzinfo=UTC)  # 10:00 in Tokyo, a Tuesday
TOKYO_NIGHT = datetime(2026, 12, 1, 14, 30, tzinfo=UTC)  # 23:30 in Tokyo


@pytest.fixture
def clock() -> Clock:
    return Clock(TOKYO_DAY)


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


def outbox(tmp_path: Path) -> Path:
    return tmp_path / "outbox"


def signed_up(app: Flask, tmp_path: Path, address: str, **fields: str) -> str:
    """Sign `address` up through the form; the token of its confirmation email."""
    assert signup(app.test_client(), address, **fields).status_code == 200
    drain(app)
    return confirm_token(confirmations(outbox(tmp_path), address)[-1])


def press(client: FlaskClient, path: str) -> object:
    """Open the page at `path` and press its button (with the page's CSRF token)."""
    page = client.get(path)
    assert page.status_code == 200, page.status_code
    form_path = path
    return client.post(form_path, data={"csrf_token": csrf_of(page.get_data(as_text=True))})


def test_get_and_head_show_a_button_and_change_nothing(app: Flask, db: Db, tmp_path: Path) -> None:
    token = signed_up(app, tmp_path, "scan@example.com")
    client = app.test_client()
    for _ in range(3):  # a mail scanner follows every link, more than once
        page = client.get(f"/c/{token}")
        assert page.status_code == 200
        assert "登録を完了する" in page.get_data(as_text=True)
        assert client.head(f"/c/{token}").status_code == 200
    row = db.subscriber("scan@example.com")
    assert row is not None and row.status is SubscriberStatus.PENDING
    assert lessons(outbox(tmp_path), "scan@example.com") == []


def test_post_confirms_and_lesson_one_goes_out_at_once(app: Flask, db: Db, tmp_path: Path) -> None:
    token = signed_up(app, tmp_path, "yes@example.com", name="山田")
    response = press(app.test_client(), f"/c/{token}")
    assert response.status_code == 200  # type: ignore[attr-defined]
    page = response.get_data(as_text=True)  # type: ignore[attr-defined]
    assert "登録が完了しました" in page and "いまお送りしています" in page
    drain(app)
    assert lessons(outbox(tmp_path), "yes@example.com") == [COURSE.lessons[0].slug]
    row = db.subscriber("yes@example.com")
    assert row is not None and row.status is SubscriberStatus.ACTIVE
    assert row.next_lesson == COURSE.lessons[1].slug
    assert db.deliveries("yes@example.com") == [(COURSE.lessons[0].slug, "sent")]


def test_confirming_twice_and_a_send_run_never_send_lesson_one_twice(
    app: Flask, db: Db, tmp_path: Path
) -> None:
    token = signed_up(app, tmp_path, "twice@example.com")
    client = app.test_client()
    press(client, f"/c/{token}")
    again = press(client, f"/c/{token}")
    assert "すでに登録済みです" in again.get_data(as_text=True)  # type: ignore[attr-defined]
    context = app.extensions["drip"]
    delivery.send_due(context.sessions, context.mailer, now=clock_of(app)())
    drain(app)
    assert lessons(outbox(tmp_path), "twice@example.com") == [COURSE.lessons[0].slug]


def test_a_confirmation_in_quiet_hours_says_when_lesson_one_will_come(
    app: Flask, db: Db, tmp_path: Path, clock: Clock
) -> None:
    clock.moment = TOKYO_NIGHT
    token = signed_up(app, tmp_path, "night@example.com")
    page = press(app.test_client(), f"/c/{token}").get_data(as_text=True)  # type: ignore[attr-defined]
    assert "12月2日(水) 7:00" in page and "Asia/Tokyo" in page
    drain(app)
    assert lessons(outbox(tmp_path), "night@example.com") == []
    row = db.subscriber("night@example.com")
    assert row is not None and row.next_send_at == datetime(2026, 12, 1, 22, 0, tzinfo=UTC)


def test_the_page_speaks_the_readers_own_time(app: Flask, tmp_path: Path, clock: Clock) -> None:
    clock.moment = datetime(2026, 12, 1, 5, 0, tzinfo=UTC)  # 00:00 in New York: quiet
    token = signed_up(app, tmp_path, "ny@example.com", timezone="America/New_York")
    page = press(app.test_client(), f"/c/{token}").get_data(as_text=True)  # type: ignore[attr-defined]
    assert "12月1日(火) 7:00" in page and "America/New_York" in page


@pytest.mark.parametrize(("age", "works"), [(300, True), (CONFIRM_MAX_AGE_SECONDS, True)])
def test_a_link_works_until_seven_days(
    app: Flask, db: Db, tmp_path: Path, clock: Clock, age: int, works: bool
) -> None:
    token = signed_up(app, tmp_path, "age@example.com")
    clock.advance(seconds=age)
    response = press(app.test_client(), f"/c/{token}")
    assert "登録が完了しました" in response.get_data(as_text=True)  # type: ignore[attr-defined]


def test_an_expired_link_offers_a_new_one_under_the_same_rules(
    app: Flask, db: Db, tmp_path: Path, clock: Clock
) -> None:
    token = signed_up(app, tmp_path, "late@example.com")
    clock.advance(seconds=CONFIRM_MAX_AGE_SECONDS + 1)
    client = app.test_client()
    page = client.get(f"/c/{token}")
    assert page.status_code == 410
    text = page.get_data(as_text=True)
    assert "有効期限が切れています" in text and "新しいリンクを送る" in text
    # Pressing "confirm" on an expired link (a stale tab) confirms nothing.
    stale = client.post(f"/c/{token}", data={"csrf_token": csrf_of(text)})
    assert stale.status_code == 410
    row = db.subscriber("late@example.com")
    assert row is not None and row.status is SubscriberStatus.PENDING
    renewed = client.post(f"/c/{token}/renew", data={"csrf_token": csrf_of(text)})
    assert renewed.status_code == 200
    assert "新しい確認メールをお送りしました" in renewed.get_data(as_text=True)
    drain(app)
    mails = confirmations(outbox(tmp_path), "late@example.com")
    assert len(mails) == 2
    new_token = confirm_token(mails[-1])
    assert new_token != token
    assert "登録が完了しました" in press(client, f"/c/{new_token}").get_data(as_text=True)  # type: ignore[attr-defined]
    # Renewing again (confirmed now) answers the same page and sends nothing.
    again = client.post(f"/c/{token}/renew", data={"csrf_token": csrf_of(text)})
    assert again.get_data() == renewed.get_data()
    drain(app)
    assert len(confirmations(outbox(tmp_path), "late@example.com")) == 2


def test_renew_without_csrf_is_refused(app: Flask, tmp_path: Path, clock: Clock) -> None:
    token = signed_up(app, tmp_path, "csrf@example.com")
    clock.advance(days=8)
    response = app.test_client().post(f"/c/{token}/renew")
    assert response.status_code == 400


def _tampered(token: str) -> str:
    last = token[-1]
    return token[:-1] + ("A" if last != "A" else "B")


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(_tampered, id="tampered"),
        pytest.param(lambda t: t[: len(t) // 2], id="truncated"),
        pytest.param(lambda t: t + "x", id="extended"),
        pytest.param(lambda t: "not-a-token", id="garbage"),
        pytest.param(
            lambda t: (
                LinkBuilder("https://drip.example.jp", [TEST_KEY])
                .unsubscribe_url(1)
                .rsplit("/", 1)[1]
            ),
            id="wrong purpose (unsubscribe)",
        ),
        pytest.param(
            lambda t: (
                LinkBuilder("https://drip.example.jp", [TEST_KEY]).manage_url(1).rsplit("/", 1)[1]
            ),
            id="wrong purpose (manage)",
        ),
        pytest.param(
            lambda t: (
                LinkBuilder("https://drip.example.jp", ["another-key-" + "x" * 40])
                .confirm_url(1, now=TOKYO_DAY)
                .rsplit("/", 1)[1]
            ),
            id="another key",
        ),
        pytest.param(
            lambda t: (
                LinkBuilder("https://drip.example.jp", [TEST_KEY])
                .confirm_url(1, now=TOKYO_DAY + timedelta(hours=1))
                .rsplit("/", 1)[1]
            ),
            id="signed in the future",
        ),
    ],
)
def test_bad_links_get_a_friendly_404_and_change_nothing(
    app: Flask, db: Db, tmp_path: Path, make: object
) -> None:
    token = signed_up(app, tmp_path, "bad@example.com")
    bad = make(token)  # type: ignore[operator]
    client = app.test_client()
    page = client.get(f"/c/{bad}")
    assert page.status_code == 404
    text = page.get_data(as_text=True)
    assert "このリンクは使えません" in text
    assert "Signature" not in text and "itsdangerous" not in text and "BadSignature" not in text
    csrf = csrf_of(press_page(client, token))
    assert client.post(f"/c/{bad}", data={"csrf_token": csrf}).status_code == 404
    assert client.post(f"/c/{bad}/renew", data={"csrf_token": csrf}).status_code == 404
    row = db.subscriber("bad@example.com")
    assert row is not None and row.status is SubscriberStatus.PENDING


def press_page(client: FlaskClient, token: str) -> str:
    return client.get(f"/c/{token}").get_data(as_text=True)


def test_post_without_csrf_is_refused(app: Flask, db: Db, tmp_path: Path) -> None:
    token = signed_up(app, tmp_path, "nocsrf@example.com")
    response = app.test_client().post(f"/c/{token}")
    assert response.status_code == 400
    row = db.subscriber("nocsrf@example.com")
    assert row is not None and row.status is SubscriberStatus.PENDING


# --- coming back after an unsubscribe -------------------------------------------------------


def _one_click(client: FlaskClient, url: str) -> None:
    path = url.replace("https://drip.example.jp", "")
    response = client.post(path, data={"List-Unsubscribe": "One-Click"})
    assert response.status_code == 200


def test_an_unsubscribed_reader_resumes_where_it_stopped_after_a_new_confirmed_opt_in(
    app: Flask, db: Db, tmp_path: Path, clock: Clock
) -> None:
    address = "back@example.com"
    old_token = signed_up(app, tmp_path, address)
    client = app.test_client()
    press(client, f"/c/{old_token}")
    drain(app)
    assert lessons(outbox(tmp_path), address) == ["welcome"]
    context = app.extensions["drip"]
    row = db.subscriber(address)
    assert row is not None
    _one_click(client, context.mailer.links.unsubscribe_url(row.id))
    clock.advance(days=1, hours=1)
    # The old link (signed before the unsubscribe) does not bring the reader back.
    refused = press(client, f"/c/{old_token}").get_data(as_text=True)  # type: ignore[attr-defined]
    assert "配信は停止中です" in refused
    row = db.subscriber(address)
    assert row is not None and row.status is SubscriberStatus.UNSUBSCRIBED
    # A new signup is a fresh double opt-in; confirming it resumes at lesson 2.
    new_token = signed_up(app, tmp_path, address)
    row = db.subscriber(address)
    assert row is not None and row.status is SubscriberStatus.UNSUBSCRIBED
    page = press(client, f"/c/{new_token}").get_data(as_text=True)  # type: ignore[attr-defined]
    assert "配信を再開しました" in page and "続きのレッスン" in page
    row = db.subscriber(address)
    assert row is not None and row.status is SubscriberStatus.ACTIVE
    assert row.next_lesson == "rethink" and row.held_reason is None
    # At the next send time (07:30 Tokyo), never earlier: then the next run sends lesson 2 only.
    assert row.next_send_at == datetime(2026, 12, 2, 22, 30, tzinfo=UTC)
    report = delivery.send_due(context.sessions, context.mailer, now=row.next_send_at)
    assert report.sent == 1
    assert lessons(outbox(tmp_path), address) == ["welcome", "rethink"]


def test_bounced_and_complained_readers_are_never_reactivated(
    app: Flask, db: Db, tmp_path: Path, clock: Clock
) -> None:
    token = signed_up(app, tmp_path, "gone@example.com")
    client = app.test_client()
    press(client, f"/c/{token}")
    drain(app)
    db.set("gone@example.com", status="bounced", next_send_at=None)
    clock.advance(days=2)
    assert signup(client, "gone@example.com").status_code == 200
    drain(app)
    assert len(confirmations(outbox(tmp_path), "gone@example.com")) == 1
    page = press(client, f"/c/{token}").get_data(as_text=True)  # type: ignore[attr-defined]
    assert "配信できません" in page
    row = db.subscriber("gone@example.com")
    assert row is not None and row.status is SubscriberStatus.BOUNCED
