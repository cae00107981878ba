"""The signup form: GET /, POST /subscribe and POST /api/subscribe, on a real SQLite file and a
real PostgreSQL, through Flask's test client (RELIABILITY.md, "Signup")."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from flask import Flask
from tests.fakes.sendgrid_server import FakeSendGrid
from tests.support import COURSE
from tests.transport_support import API_KEY
from tests.web_signup_support import (
    Db,
    clock_of,
    confirmations,
    drain,
    emails,
    form_token,
    signup,
    stop_sender,
    text_of,
)
from tests.web_support import AppFactory, Clock

from drip import delivery
from drip.statuses import SubscriberStatus
from drip.wiring import make_mailer

ALLOWED = "https://blog.example.com"


@pytest.fixture
def app(make_app: AppFactory, database_url: str, tmp_path: Path) -> Iterator[Flask]:
    built = make_app(
        database_url, tmp_path, clock=Clock(), trusted_proxies=1, allowed_origins=(ALLOWED,)
    )
    yield built
    stop_sender(built)


@pytest.fixture
def db(database_url: str) -> Iterator[Db]:
    found = Db(database_url)
    yield found
    found.close()


def outbox(tmp_path: Path) -> Path:
    return tmp_path / "outbox"


# --- the form ---------------------------------------------------------------------------------


def test_the_form_describes_the_course_from_its_settings(app: Flask) -> None:
    response = app.test_client().get("/")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert COURSE.settings.title in page
    assert f"全 {len(COURSE.lessons)} 回" in page
    assert "朝 7:30（お住まいの地域の時刻）" in page
    assert "1〜2日ごと" in page  # delay_days 1 then 2 in the committed course
    assert "21:00〜7:00" in page
    assert "第三者には渡しません" in page  # the privacy line
    # Every field has a label; the timezone defaults to the course's; no inline script.
    for field in ("email", "name", "timezone"):
        assert f'<label for="{field}"' in page
    assert re.search(r'<option value="Asia/Tokyo" selected>', page)
    assert '<script src="/static/signup.js" defer></script>' in page
    assert "<script>" not in page
    assert 'name="homepage"' in page and 'tabindex="-1"' in page
    csp = response.headers["Content-Security-Policy"]
    assert f"frame-ancestors {ALLOWED}" in csp and "X-Frame-Options" not in response.headers


def test_the_timezone_script_and_stylesheet_are_served(app: Flask) -> None:
    client = app.test_client()
    with client.get("/static/signup.js") as script:
        assert script.status_code == 200
        assert "resolvedOptions().timeZone" in script.get_data(as_text=True)
    with client.get("/static/drip.css") as css:
        assert css.status_code == 200


# --- POST /subscribe --------------------------------------------------------------------------


def test_a_new_address_gets_one_confirmation_email_off_the_request_path(
    app: Flask, db: Db, tmp_path: Path
) -> None:
    response = signup(app.test_client(), "Yamada@Example.com", name="山田 太郎")
    assert response.status_code == 200
    assert "確認メールをお送りしました" in response.get_data(as_text=True)
    row = db.subscriber("yamada@example.com")
    assert row is not None and row.status is SubscriberStatus.PENDING
    assert row.name == "山田 太郎" and row.timezone == "Asia/Tokyo"
    assert row.consent_source == "web form"
    drain(app)
    [message] = confirmations(outbox(tmp_path))
    assert str(message["To"]) == "yamada@example.com"  # no display name
    assert "山田" not in message.as_string() and "山田" not in text_of(message)
    row = db.subscriber("yamada@example.com")
    assert row is not None and row.confirmation_wanted_at is None
    assert row.confirmation_sent_at == clock_of(app)()


def test_the_request_never_waits_for_the_transport(
    make_app: AppFactory, database_url: str, tmp_path: Path, db: Db
) -> None:
    with FakeSendGrid(api_key=API_KEY, latency=3.0) as fake:
        app = make_app(
            database_url,
            tmp_path,
            transport="sendgrid",
            sendgrid_api_key=API_KEY,
            sendgrid_api_url=fake.url,
            sendgrid_client="official",
        )
        try:
            client = app.test_client()
            token = form_token(client)
            started = time.monotonic()
            assert signup(client, "slow@example.com", token=token).status_code == 200
            assert time.monotonic() - started < 1.0  # the provider takes 3 s to answer
            drain(app)
            assert len(fake.accepted) == 1
        finally:
            stop_sender(app)
    row = db.subscriber("slow@example.com")
    assert row is not None and row.confirmation_sent_at is not None


@pytest.mark.parametrize(
    ("state", "confirmation_expected"),
    [
        ("new", True),
        ("pending, sent 1 h ago", False),
        ("pending, sent 25 h ago", True),
        ("active", False),
        ("paused", False),
        ("completed", False),
        ("unsubscribed, sent 25 h ago", True),
        ("unsubscribed, sent 1 h ago", False),
        ("bounced", False),
        ("complained", False),
    ],
)
def test_every_state_gets_the_same_page_and_only_the_right_ones_an_email(
    app: Flask, db: Db, tmp_path: Path, state: str, confirmation_expected: bool
) -> None:
    client = app.test_client()
    token = form_token(client)
    reference = signup(client, "reference@example.com", token=token, ip="10.0.0.1")
    address = "reader@example.com"
    if state != "new":
        assert signup(client, address, token=token, ip="10.0.0.2").status_code == 200
        drain(app)
        db.set(address, status=state.split(",")[0])
        clock_of(app).advance(hours=25 if "25 h" in state else 1)
    before = len(confirmations(outbox(tmp_path), address))
    response = signup(client, address, token=token, ip="10.0.0.3")
    drain(app)
    assert response.status_code == 200
    assert response.get_data() == reference.get_data()  # no enumeration
    assert _headers(response) == _headers(reference)
    sent = len(confirmations(outbox(tmp_path), address)) - before
    assert sent == (1 if confirmation_expected else 0)
    row = db.subscriber(address)
    assert row is not None
    if state.startswith("unsubscribed"):
        assert row.status is SubscriberStatus.UNSUBSCRIBED  # until the new link is confirmed


def _headers(response: object) -> dict[str, str]:
    """The response's headers but the per-IP rate-limit ones (they count the client, and move
    with the clock)."""
    headers = dict(response.headers)  # type: ignore[attr-defined]
    return {k: v for k, v in headers.items() if not k.startswith(("X-RateLimit", "Retry-After"))}


def test_a_filled_honeypot_gets_the_same_page_and_nothing_is_stored(
    app: Flask, db: Db, tmp_path: Path
) -> None:
    client = app.test_client()
    token = form_token(client)
    real = signup(client, "human@example.com", token=token, ip="10.0.0.1")
    bot = signup(client, "bot@example.com", token=token, ip="10.0.0.2", homepage="http://x.y")
    drain(app)
    assert bot.status_code == 200 and bot.get_data() == real.get_data()
    assert db.subscriber("bot@example.com") is None
    assert confirmations(outbox(tmp_path), "bot@example.com") == []


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("山田\x00", "制御文字"),
        ("山田\x1b[31m", "制御文字"),
        ("山田 http://spam.example/win", "URL"),
        ("激安 www.spam.example", "URL"),
        ("spam.example/win", "URL"),
        ("ｗｗｗ．ｓｐａｍ．ｅｘａｍｐｌｅ", "URL"),
        ("山" * 101, "100 文字以内"),
    ],
)
def test_unsafe_names_are_refused_in_japanese_keeping_what_was_typed(
    app: Flask, db: Db, name: str, says: str
) -> None:
    response = signup(app.test_client(), "typed@example.com", name=name)
    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert says in page and 'role="alert"' in page
    assert 'value="typed@example.com"' in page
    assert 'aria-invalid="true"' in page
    assert db.subscriber("typed@example.com") is None


def test_line_breaks_in_a_name_become_spaces_and_never_a_header(
    app: Flask, db: Db, tmp_path: Path
) -> None:
    response = signup(app.test_client(), "crlf@example.com", name="山田\r\nBcc: v@example.test")
    assert response.status_code == 200
    row = db.subscriber("crlf@example.com")
    assert row is not None and row.name == "山田 Bcc: v@example.test"
    drain(app)
    [message] = confirmations(outbox(tmp_path), "crlf@example.com")
    assert message["Bcc"] is None
    assert "v@example.test" not in message.as_string()


def test_an_encoded_word_name_never_becomes_a_header(app: Flask, tmp_path: Path) -> None:
    response = signup(app.test_client(), "encoded@example.com", name="=?UTF-8?Q?=0ABcc:_x@y.z?=")
    assert response.status_code == 200
    drain(app)
    [message] = confirmations(outbox(tmp_path), "encoded@example.com")
    assert message["Bcc"] is None and message["Cc"] is None
    assert "=?UTF-8?Q?=0A" not in message.as_string()  # the name is never in the email


def test_a_megabyte_of_name_is_refused_before_it_is_read(app: Flask, db: Db) -> None:
    response = signup(app.test_client(), "big@example.com", name="あ" * (1024 * 1024))
    assert response.status_code == 413
    assert db.count() == 0


@pytest.mark.parametrize(
    "address",
    [
        "a@evil.com@good.com",
        "alice@x.org(<bob@y.org>",
        "no-at-sign",
        "やまだ@example.com",
        "yamada@example.com\r\nBcc: x@y.z",
        " ",
    ],
)
def test_malformed_addresses_are_refused_with_a_japanese_message(
    app: Flask, db: Db, address: str
) -> None:
    response = signup(app.test_client(), address)
    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert "メールアドレス" in page and 'role="alert"' in page
    assert db.count() == 0


def test_a_full_width_address_is_stored_in_ascii(app: Flask, db: Db) -> None:
    assert signup(app.test_client(), "ｙａｍａｄａ＠ｅｘａｍｐｌｅ．ｃｏｍ").status_code == 200
    assert db.subscriber("yamada@example.com") is not None


def test_an_unknown_timezone_is_refused_and_a_browser_zone_is_kept(app: Flask, db: Db) -> None:
    client = app.test_client()
    refused = signup(client, "zone@example.com", timezone="localtime")
    assert refused.status_code == 400 and "タイムゾーン" in refused.get_data(as_text=True)
    assert signup(client, "zone@example.com", timezone="Asia/Kathmandu").status_code == 200
    row = db.subscriber("zone@example.com")
    assert row is not None and row.timezone == "Asia/Kathmandu"
    # A zone outside the short list stays selected when the form comes back with an error.
    page = signup(client, "bad", timezone="America/Argentina/Ushuaia").get_data(as_text=True)
    assert '<option value="America/Argentina/Ushuaia" selected>' in page


def test_a_blank_timezone_is_the_course_timezone(app: Flask, db: Db) -> None:
    assert signup(app.test_client(), "blank@example.com", timezone="").status_code == 200
    row = db.subscriber("blank@example.com")
    assert row is not None and row.timezone == COURSE.settings.timezone


# --- at most one confirmation a day, rate limits ---------------------------------------------


def test_one_confirmation_per_address_per_day_however_often_it_is_submitted(
    app: Flask, db: Db, tmp_path: Path
) -> None:
    client = app.test_client()
    token = form_token(client)
    clock = clock_of(app)
    for attempt in range(4):  # subscription bombing from rotating IPs
        assert (
            signup(client, "bombed@example.com", token=token, ip=f"10.1.0.{attempt}").status_code
            == 200
        )
        drain(app)
        clock.advance(hours=1)
    assert len(confirmations(outbox(tmp_path), "bombed@example.com")) == 1
    assert db.count() == 1
    clock.advance(hours=21)
    assert signup(client, "bombed@example.com", token=token, ip="10.1.1.1").status_code == 200
    drain(app)
    assert len(confirmations(outbox(tmp_path), "bombed@example.com")) == 2


def test_one_ip_submitting_many_addresses_gets_a_429_page(app: Flask, db: Db) -> None:
    client = app.test_client()
    token = form_token(client)
    answers = [
        signup(client, f"many{n}@example.com", token=token, ip="10.2.0.1").status_code
        for n in range(12)
    ]
    assert answers == [200] * 10 + [429] * 2
    limited = signup(client, "many99@example.com", token=token, ip="10.2.0.1")
    page = limited.get_data(as_text=True)
    assert "しばらくお待ちください" in page and "分たってから" in page
    assert int(limited.headers["Retry-After"]) > 0
    assert db.count() == 10
    # Another IP is not affected.
    assert signup(client, "other@example.com", token=token, ip="10.2.0.2").status_code == 200


def test_refused_posts_are_limited_per_ip_by_the_view_not_flask_limiter(app: Flask, db: Db) -> None:
    """POST /subscribe counts every limit in its view (Flask-Limiter skips it: its per-request
    work was a sixth of a signup's CPU): posts refused for their origin get the app's default
    300 per minute per IP, then the signup's 429 page."""
    client = app.test_client()
    forbidden = {"Origin": "https://evil.example", "X-Forwarded-For": "10.9.0.1"}
    answers = [
        client.post("/subscribe", data={"email": f"x{n}@example.com"}, headers=forbidden)
        for n in range(301)
    ]
    assert [a.status_code for a in answers] == [403] * 300 + [429]
    assert "しばらくお待ちください" in answers[-1].get_data(as_text=True)
    assert int(answers[-1].headers["Retry-After"]) > 0
    assert not any("X-RateLimit-Limit" in a.headers for a in answers)
    assert db.count() == 0
    # The same IP's own-form signups have their own count; other endpoints keep the default
    # limit with its headers.
    token = form_token(client)
    assert signup(client, "fine@example.com", token=token, ip="10.9.0.1").status_code == 200
    assert client.get("/", headers={"X-Forwarded-For": "10.9.0.1"}).headers["X-RateLimit-Limit"]


def test_one_address_from_rotating_ips_is_limited_too(app: Flask) -> None:
    client = app.test_client()
    token = form_token(client)
    answers = [
        signup(client, "target@example.com", token=token, ip=f"10.3.0.{n}").status_code
        for n in range(7)
    ]
    assert answers == [200] * 5 + [429] * 2


def test_the_global_hourly_cap_answers_429_for_every_address(
    make_app: AppFactory, database_url: str, tmp_path: Path, db: Db
) -> None:
    app = make_app(database_url, tmp_path, trusted_proxies=1, confirmations_per_hour=3)
    try:
        client = app.test_client()
        token = form_token(client)
        answers = [
            signup(client, f"cap{n}@example.com", token=token, ip=f"10.4.0.{n}").status_code
            for n in range(5)
        ]
        assert answers == [200, 200, 200, 429, 429]
        assert db.count() == 3
        drain(app)
        assert len(confirmations(outbox(tmp_path))) == 3
    finally:
        stop_sender(app)


# --- where the POST may come from -------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "with_token", "expected"),
    [
        ({"Origin": ALLOWED}, False, 200),  # the blog's copy-paste form
        ({"Origin": "https://drip.example.jp"}, False, 200),  # our base URL
        ({"Referer": f"{ALLOWED}/2026/12/post.html"}, False, 200),
        ({}, False, 200),  # not a browser form post from another page
        ({"Origin": "https://evil.example"}, False, 403),
        ({"Origin": "https://evil.example"}, True, 200),  # our own form, framed elsewhere
        ({"Referer": "https://evil.example/"}, False, 403),
        ({"Origin": "null"}, False, 403),
        ({"Origin": "null"}, True, 200),  # our own form (every page here is no-referrer)
        ({"Origin": "https://blog.example.com.evil.example"}, False, 403),
    ],
)
def test_the_origin_check_of_the_cross_site_form(
    app: Flask, db: Db, headers: dict[str, str], with_token: bool, expected: int
) -> None:
    client = app.test_client()
    data = {"email": "origin@example.com"}
    if with_token:
        data["form_token"] = form_token(client)
    response = client.post("/subscribe", data=data, headers=headers)
    assert response.status_code == expected
    assert (db.subscriber("origin@example.com") is not None) == (expected == 200)
    assert "Location" not in response.headers


def test_a_tampered_or_old_form_token_is_not_our_form(app: Flask) -> None:
    client = app.test_client()
    token = form_token(client)
    tampered = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    assert signup(client, "t@example.com", token=tampered).status_code == 403
    assert signup(client, "t@example.com", token="").status_code == 403


def test_get_on_subscribe_changes_nothing(app: Flask, db: Db) -> None:
    assert app.test_client().get("/subscribe?email=get@example.com").status_code == 405
    assert db.count() == 0


# --- the JSON variant -------------------------------------------------------------------------


def test_the_api_answers_cors_preflight_for_allowed_origins_only(app: Flask) -> None:
    client = app.test_client()
    preflight = {"Origin": ALLOWED, "Access-Control-Request-Method": "POST"}
    allowed = client.options("/api/subscribe", headers=preflight)
    assert allowed.status_code == 204
    assert allowed.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert allowed.headers["Access-Control-Allow-Methods"] == "POST"
    assert "Content-Type" in allowed.headers["Access-Control-Allow-Headers"]
    assert "Origin" in allowed.headers["Vary"]
    other = client.options(
        "/api/subscribe",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert other.status_code == 403
    assert "Access-Control-Allow-Origin" not in other.headers


def test_the_api_subscribes_with_json(app: Flask, db: Db, tmp_path: Path) -> None:
    client = app.test_client()
    response = client.post(
        "/api/subscribe",
        json={"email": "api@example.com", "name": "API", "timezone": "Europe/London"},
        headers={"Origin": ALLOWED},
    )
    assert response.status_code == 202
    assert response.get_json()["status"] == "check_inbox"
    assert response.headers["Access-Control-Allow-Origin"] == ALLOWED
    row = db.subscriber("api@example.com")
    assert row is not None and row.timezone == "Europe/London" and row.consent_source == "web api"
    drain(app)
    assert len(confirmations(outbox(tmp_path), "api@example.com")) == 1


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"email": "not an address"}, 400, "email"),
        ({"email": "a@example.com", "name": "x\x07"}, 400, "name"),
        ({"email": "a@example.com", "timezone": "Mars/Base"}, 400, "timezone"),
        (["a@example.com"], 400, None),
        ("just text", 400, None),
    ],
)
def test_the_api_refuses_bad_input_with_json(
    app: Flask, db: Db, body: object, status: int, field: str | None
) -> None:
    response = app.test_client().post("/api/subscribe", json=body, headers={"Origin": ALLOWED})
    assert response.status_code == status
    answer = response.get_json()
    assert answer["error"] == "invalid" and answer.get("field") == field
    assert answer["message"]
    assert db.count() == 0


def test_the_api_refuses_other_origins(app: Flask, db: Db) -> None:
    response = app.test_client().post(
        "/api/subscribe",
        json={"email": "x@example.com"},
        headers={"Origin": "https://evil.example"},
    )
    assert response.status_code == 403
    assert db.count() == 0


def test_the_api_honeypot_and_known_addresses_answer_alike(app: Flask, db: Db) -> None:
    client = app.test_client()
    headers = {"Origin": ALLOWED}
    first = client.post("/api/subscribe", json={"email": "j@example.com"}, headers=headers)
    again = client.post("/api/subscribe", json={"email": "j@example.com"}, headers=headers)
    bot = client.post(
        "/api/subscribe", json={"email": "b@example.com", "homepage": "x"}, headers=headers
    )
    assert first.get_data() == again.get_data() == bot.get_data()
    assert db.subscriber("b@example.com") is None


# --- the queue is durable ---------------------------------------------------------------------


def test_a_confirmation_the_web_could_not_send_is_sent_by_drip_send(
    make_app: AppFactory, database_url: str, tmp_path: Path, db: Db
) -> None:
    with FakeSendGrid(api_key=API_KEY, default="503") as fake:
        app = make_app(
            database_url,
            tmp_path,
            transport="sendgrid",
            sendgrid_api_key=API_KEY,
            sendgrid_api_url=fake.url,
            sendgrid_client="official",
        )
        try:
            assert signup(app.test_client(), "queued@example.com").status_code == 200
            drain(app)
            assert fake.accepted == []
            row = db.subscriber("queued@example.com")
            assert row is not None and row.confirmation_wanted_at is not None
            assert row.confirmation_sent_at is None
            context = app.extensions["drip"]
            fake.default = fake.default.parse("202")
            later = clock_of(app)() + timedelta(minutes=6)
            report = delivery.send_due(context.sessions, context.mailer, now=later)
            assert report.confirmations == 1
            assert len(fake.accepted) == 1
            assert "confirmation emails sent: 1" in report.summary()
            assert report.as_dict()["confirmations"] == 1
            again = delivery.send_due(context.sessions, context.mailer, now=later)
            assert again.confirmations == 0 and len(fake.accepted) == 1
        finally:
            stop_sender(app)
    row = db.subscriber("queued@example.com")
    assert row is not None and row.confirmation_wanted_at is None
    assert row.confirmation_sent_at == later


def test_drip_send_sends_owed_confirmations_once_even_with_two_senders(
    make_app: AppFactory, database_url: str, tmp_path: Path, db: Db
) -> None:
    app = make_app(database_url, tmp_path, trusted_proxies=1)
    context = app.extensions["drip"]
    # Queue 30 signups without starting the app's sender: a process that died after storing.
    from drip import lifecycle

    now = clock_of(app)()
    for n in range(30):
        lifecycle.request_signup(
            context.sessions,
            context.course,
            email=f"q{n}@example.com",
            name=None,
            timezone=None,
            now=now,
            consent_source="test",
        )
    import threading

    from drip.config import Settings

    settings = context.settings
    assert isinstance(settings, Settings)
    mailers = [make_mailer(settings, context.course) for _ in range(2)]
    counts: list[int] = []
    threads = [
        threading.Thread(
            target=lambda m=m: counts.append(
                delivery.send_owed_confirmations(context.sessions, m, now=now)
            )
        )
        for m in mailers
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(counts) == 30
    assert len(confirmations(outbox(tmp_path))) == 30
    assert len({str(m["To"]) for m in emails(outbox(tmp_path))}) == 30
