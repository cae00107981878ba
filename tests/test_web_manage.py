"""The manage page `/m/<token>` through Flask's test client, on a real SQLite file and a real
PostgreSQL: every action, CSRF, bad and erased links, timed pauses ending in `drip send`, the send
time, GDPR export (emailed, never shown) and erase (two steps, then refused by import and
signup), and a Hypothesis fuzz of the POST endpoints."""

from __future__ import annotations

import email
import email.policy
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from tests.web_support import AppFactory, Clock

from drip import lifecycle, store
from drip.delivery import send_due
from drip.models import subscribers, suppressions
from drip.web.context import EXTENSION, WebContext

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')
START = datetime(2026, 12, 1, 1, 0, tzinfo=UTC)  # Tuesday 10:00 in Tokyo


def context(app: Flask) -> WebContext:
    found = app.extensions[EXTENSION]
    assert isinstance(found, WebContext)
    return found


def subscribe(app: Flask, address: str = "yamada@example.com", *, now: datetime = START) -> int:
    ctx = context(app)
    return lifecycle.subscribe(
        ctx.sessions,
        ctx.mailer,
        email=address,
        name="山田",
        timezone=None,
        confirmed=True,
        now=now,
        consent_source="test",
    ).subscriber_id


def manage_path(app: Flask, subscriber_id: int) -> str:
    url = context(app).mailer.links.manage_url(subscriber_id)
    return url.removeprefix("https://drip.example.jp")


def csrf(client: FlaskClient, path: str) -> str:
    page = client.get(path)
    found = CSRF_RE.search(page.get_data(as_text=True))
    assert found, page.get_data(as_text=True)
    return found.group(1)


def reader(app: Flask, subscriber_id: int) -> store.SubscriberView | None:
    with context(app).sessions() as session:
        return store.get_subscriber_by_id(session, subscriber_id)


def send(app: Flask, now: datetime) -> int:
    ctx = context(app)
    return send_due(ctx.sessions, ctx.mailer, now=now).sent


def outbox(tmp_path: Path) -> list[email.message.EmailMessage]:
    folder = tmp_path / "outbox"
    return (
        [
            email.message_from_bytes(path.read_bytes(), policy=email.policy.default)  # type: ignore[misc]
            for path in sorted(folder.glob("*.eml"))
        ]
        if folder.exists()
        else []
    )


@pytest.fixture
def app(make_app: AppFactory, database_url: str, tmp_path: Path) -> Flask:
    return make_app(database_url, tmp_path, clock=Clock(START))


def clock_of(app: Flask) -> Clock:
    found = context(app).clock
    assert isinstance(found, Clock)
    return found


# --- the page -----------------------------------------------------------------------------------


def test_the_page_shows_status_progress_and_forms_in_japanese(app: Flask) -> None:
    sid = subscribe(app)
    send(app, START)  # welcome
    client = app.test_client()
    response = client.get(manage_path(app, sid))
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert '<html lang="ja">' in page
    assert "配信の管理" in page and "配信中" in page
    assert "ya***@example.com" in page and "yamada@example.com" not in page
    assert "受信済み" in page and "次回:2026年12月2日(水) 7:30ごろ" in page
    assert "manage.css" in page
    assert page.count('name="csrf_token"') == 3  # pause, schedule, export
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Referrer-Policy"] == "no-referrer"


def test_get_never_changes_anything(app: Flask) -> None:
    sid = subscribe(app)
    before = reader(app, sid)
    client = app.test_client()
    path = manage_path(app, sid)
    for suffix in ("", "/erase", "/pause", "/resume", "/schedule", "/export"):
        client.get(path + suffix)
        client.head(path + suffix)
    assert reader(app, sid) == before


@pytest.mark.parametrize("action", ["pause", "resume", "schedule", "export", "erase"])
def test_a_post_without_the_csrf_token_is_refused(app: Flask, action: str) -> None:
    sid = subscribe(app)
    before = reader(app, sid)
    client = app.test_client()
    client.get(manage_path(app, sid))  # a session exists, the form token is missing
    response = client.post(
        f"{manage_path(app, sid)}/{action}",
        data={"weeks": "1", "confirm": "yes", "timezone": "Asia/Tokyo", "send_time": ""},
    )
    assert response.status_code == 400
    assert "フォームの有効期限が切れました" in response.get_data(as_text=True)
    assert reader(app, sid) == before


def test_a_tampered_or_foreign_token_shows_the_friendly_page(app: Flask) -> None:
    sid = subscribe(app)
    client = app.test_client()
    token = csrf(client, manage_path(app, sid))
    good = manage_path(app, sid)
    unsubscribe_token = context(app).mailer.links.unsubscribe_url(sid).rsplit("/", 1)[1]
    for path in (good[:-2] + "xx", good.replace("/m/", "/m/A"), f"/m/{unsubscribe_token}"):
        page = client.get(path)
        assert page.status_code == 404
        assert "このリンクは使えません" in page.get_data(as_text=True)
        posted = client.post(path + "/pause", data={"csrf_token": token, "weeks": "1"})
        assert posted.status_code == 404
    view = reader(app, sid)
    assert view is not None and view.status is store.SubscriberStatus.ACTIVE


# --- pause and resume ---------------------------------------------------------------------------


def test_pause_for_two_weeks_then_send_resumes_and_sends_exactly_once(
    app: Flask, tmp_path: Path
) -> None:
    sid = subscribe(app)
    assert send(app, START) == 1
    client = app.test_client()
    path = manage_path(app, sid)
    response = client.post(path + "/pause", data={"csrf_token": csrf(client, path), "weeks": "2"})
    assert response.status_code == 303
    assert response.headers["Location"].endswith("?done=paused")
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "配信を一時停止しました。" in page and "一時停止中" in page
    assert "2026年12月15日(火) 10:00まで" in page
    view = reader(app, sid)
    assert view is not None and view.paused_until == START + timedelta(weeks=2)
    for day in range(14):
        assert send(app, START + timedelta(days=day, hours=21, minutes=30)) == 0
    ended = START + timedelta(weeks=2)
    assert send(app, ended + timedelta(minutes=1)) == 0  # resumed; due at the next 07:30
    next_morning = datetime(2026, 12, 15, 22, 30, tzinfo=UTC)  # 12-16 07:30 Tokyo
    assert send(app, next_morning) == 1
    assert send(app, next_morning + timedelta(minutes=5)) == 0
    lessons = [m["Subject"] for m in outbox(tmp_path)]
    assert len(lessons) == 2


def test_pause_until_resumed_and_resume(app: Flask) -> None:
    sid = subscribe(app)
    send(app, START)
    client = app.test_client()
    path = manage_path(app, sid)
    client.post(path + "/pause", data={"csrf_token": csrf(client, path), "weeks": "0"})
    view = reader(app, sid)
    assert view is not None
    assert view.status is store.SubscriberStatus.PAUSED and view.paused_until is None
    assert "再開の操作をするまで" in client.get(path).get_data(as_text=True)
    clock_of(app).advance(days=30)
    response = client.post(path + "/resume", data={"csrf_token": csrf(client, path)})
    assert response.headers["Location"].endswith("?done=resumed")
    view = reader(app, sid)
    assert view is not None and view.status is store.SubscriberStatus.ACTIVE
    # Resumed 12-31 10:00 Tokyo: the next lesson at the next 07:30, 01-01.
    assert view.next_send_at == datetime(2026, 12, 31, 22, 30, tzinfo=UTC)
    again = client.post(path + "/resume", data={"csrf_token": csrf(client, path)})
    assert again.headers["Location"].endswith("?done=not_paused")


@pytest.mark.parametrize("weeks", ["3", "", "-1", "１", "2.0"])
def test_an_unknown_pause_length_is_refused(app: Flask, weeks: str) -> None:
    sid = subscribe(app)
    client = app.test_client()
    path = manage_path(app, sid)
    response = client.post(path + "/pause", data={"csrf_token": csrf(client, path), "weeks": weeks})
    assert response.status_code == 400
    assert "一時停止の期間を選んでください。" in response.get_data(as_text=True)
    view = reader(app, sid)
    assert view is not None and view.status is store.SubscriberStatus.ACTIVE


# --- timezone and send time ---------------------------------------------------------------------


def test_a_send_time_change_moves_the_next_send(app: Flask) -> None:
    sid = subscribe(app)
    send(app, START)  # welcome; the next lesson is due 12-02 07:30 Tokyo
    client = app.test_client()
    path = manage_path(app, sid)
    response = client.post(
        path + "/schedule",
        data={"csrf_token": csrf(client, path), "timezone": "Asia/Tokyo", "send_time": "12:00"},
    )
    assert response.status_code == 303
    view = reader(app, sid)
    assert view is not None and view.send_time == "12:00"
    noon = datetime(2026, 12, 2, 3, 0, tzinfo=UTC)
    assert view.next_send_at == noon
    assert send(app, datetime(2026, 12, 1, 22, 30, tzinfo=UTC)) == 0
    assert send(app, noon) == 1
    page = client.get(path).get_data(as_text=True)
    assert '<option value="12:00" selected>' in page


def test_a_timezone_change_is_saved_and_reschedules(app: Flask) -> None:
    sid = subscribe(app)
    send(app, START)
    client = app.test_client()
    path = manage_path(app, sid)
    client.post(
        path + "/schedule",
        data={"csrf_token": csrf(client, path), "timezone": "Europe/London", "send_time": ""},
    )
    view = reader(app, sid)
    assert view is not None and view.timezone == "Europe/London"
    assert view.next_send_at == datetime(2026, 12, 2, 7, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("timezone", "send_time", "says"),
    [
        ("Asia/Tokyo", "23:00", "配信しない時間帯"),
        ("Asia/Tokyo", "7:30", "配信時刻を一覧から選んでください。"),
        ("Mars/Base", "", "タイムゾーンを一覧から選んでください。"),
        ("localtime", "", "タイムゾーンを一覧から選んでください。"),
    ],
)
def test_a_refused_schedule_says_why_and_changes_nothing(
    app: Flask, timezone: str, send_time: str, says: str
) -> None:
    sid = subscribe(app)
    before = reader(app, sid)
    client = app.test_client()
    path = manage_path(app, sid)
    response = client.post(
        path + "/schedule",
        data={"csrf_token": csrf(client, path), "timezone": timezone, "send_time": send_time},
    )
    assert response.status_code == 400
    assert says in response.get_data(as_text=True)
    assert reader(app, sid) == before


# --- export -------------------------------------------------------------------------------------


def test_export_is_emailed_to_the_reader_and_never_shown(app: Flask, tmp_path: Path) -> None:
    sid = subscribe(app)
    send(app, START)
    client = app.test_client()
    path = manage_path(app, sid)
    response = client.post(path + "/export", data={"csrf_token": csrf(client, path)})
    assert response.status_code == 303
    assert response.headers["Location"].endswith("?done=exported")
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "yamada@example.com" not in page and "enrolments" not in page
    [export] = [m for m in outbox(tmp_path) if "ご登録データ" in str(m["Subject"])]
    assert export["To"] == "yamada@example.com"
    text = export.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    document = json.loads(text[text.index("{") :])
    assert document["email"] == "yamada@example.com"
    [enrolment] = document["enrolments"]
    assert enrolment["subscriber"]["name"] == "山田"
    assert [d["lesson"] for d in enrolment["deliveries"]] == ["welcome"]


def test_export_is_rate_limited_per_reader(app: Flask, tmp_path: Path) -> None:
    sid = subscribe(app)
    client = app.test_client()
    path = manage_path(app, sid)
    token = csrf(client, path)
    codes = [
        client.post(path + "/export", data={"csrf_token": token}).status_code for _ in range(4)
    ]
    assert codes == [303, 303, 303, 429]
    assert len(outbox(tmp_path)) == 3


# --- erase --------------------------------------------------------------------------------------


def test_erase_asks_first_then_erases_and_the_address_stays_refused(
    app: Flask, tmp_path: Path
) -> None:
    sid = subscribe(app)
    send(app, START)
    client = app.test_client()
    path = manage_path(app, sid)
    form = client.get(path + "/erase")
    assert form.status_code == 200 and "元に戻せません" in form.get_data(as_text=True)
    token = csrf(client, path + "/erase")
    unconfirmed = client.post(path + "/erase", data={"csrf_token": token})
    assert unconfirmed.status_code == 400
    assert reader(app, sid) is not None
    done = client.post(path + "/erase", data={"csrf_token": token, "confirm": "yes"})
    assert done.status_code == 200
    assert "登録データを削除しました" in done.get_data(as_text=True)
    assert reader(app, sid) is None
    ctx = context(app)
    with ctx.sessions() as session:
        conn = session.connection()
        assert conn.execute(select(func.count()).select_from(subscribers)).scalar_one() == 0
        assert conn.execute(select(func.count()).select_from(suppressions)).scalar_one() == 1
    # The link now shows the friendly page; a second erase changes nothing.
    gone = client.get(path)
    assert gone.status_code == 404 and "このリンクは使えません" in gone.get_data(as_text=True)
    again = client.post(path + "/erase", data={"csrf_token": token, "confirm": "yes"})
    assert again.status_code == 404
    # Never again: not by a signup, not by an import.
    with pytest.raises(store.SuppressedAddressError):
        subscribe(app, "Yamada@Example.com")
    csv = tmp_path / "list.csv"
    csv.write_text("email\nyamada@example.com\nsato@example.com\n", encoding="utf-8")
    report = lifecycle.import_subscribers(ctx.sessions, ctx.course, csv, now=START, confirmed=True)
    assert report.imported == 1
    assert [line for line, _ in report.invalid] == [2]
    assert "erased" in report.invalid[0][1]


def test_an_erased_address_signing_up_on_the_form_gets_the_same_page_and_nothing(
    app: Flask, tmp_path: Path
) -> None:
    from tests.web_signup_support import signup

    sid = subscribe(app)
    client = app.test_client()
    path = manage_path(app, sid)
    token = csrf(client, path + "/erase")
    assert (
        client.post(path + "/erase", data={"csrf_token": token, "confirm": "yes"}).status_code
        == 200
    )
    fresh = signup(app.test_client(), "someone-new@example.com")
    erased = signup(app.test_client(), "Yamada@Example.com")
    assert erased.status_code == fresh.status_code == 200
    shown = erased.get_data(as_text=True).replace("Yamada@Example.com", "someone-new@example.com")
    assert shown.replace("yamada@example.com", "someone-new@example.com") == fresh.get_data(
        as_text=True
    )
    ctx = context(app)
    with ctx.sessions() as session:
        emails = session.connection().execute(select(subscribers.c.email)).scalars().all()
    assert emails == ["someone-new@example.com"]  # the erased address was not stored again


# --- fuzz ---------------------------------------------------------------------------------------

TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    action=st.sampled_from(["pause", "resume", "schedule", "export", "erase"]),
    token_kind=st.sampled_from(["good", "tampered", "random"]),
    random_token=st.from_regex(r"[A-Za-z0-9_.\-]{1,60}", fullmatch=True),
    fields=st.dictionaries(
        st.sampled_from(["weeks", "timezone", "send_time", "confirm", "other"]),
        st.one_of(
            TEXT,
            st.sampled_from(
                ["0", "1", "2", "4", "yes", "Asia/Tokyo", "12:00", "23:59", "00:00", ""]
            ),
        ),
    ),
)
def test_fuzzed_posts_never_fail_with_a_server_error(
    fuzz_app: Flask, action: str, token_kind: str, random_token: str, fields: dict[str, Any]
) -> None:
    sid = fuzz_app.config["FUZZ_SUBSCRIBER"]
    good = manage_path(fuzz_app, sid).removeprefix("/m/")
    token = {"good": good, "tampered": good[:-3] + "abc", "random": random_token}[token_kind]
    client = fuzz_app.test_client()
    response = client.post(f"/m/{token}/{action}", data=fields)
    assert response.status_code in (200, 303, 400, 404, 429), response.status_code


@pytest.fixture
def fuzz_app(make_app: AppFactory, database_url: str, tmp_path: Path) -> Flask:
    app = make_app(database_url, tmp_path, clock=Clock(START))
    app.config["WTF_CSRF_ENABLED"] = False  # reach the handlers themselves
    app.config["FUZZ_SUBSCRIBER"] = subscribe(app, "fuzz@example.com")
    return app
