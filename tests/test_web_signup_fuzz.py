"""Hypothesis fuzzing of the signup form (RELIABILITY.md, "Test techniques" 6): whatever is
typed, no 500 and no injected header; a known address and a new one get identical answers."""

from __future__ import annotations

import itertools
import unicodedata
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.web_signup_support import Db, form_token, stop_sender, use_transport
from tests.web_support import AppFactory, Clock

from drip.transports.memory import MemoryTransport

NASTY = [
    "\r\n",
    "\n",
    "\x00",
    "=?UTF-8?Q?=0A?=",
    "Bcc: x@evil.example",
    "<script>alert(1)</script>",
    "http://spam.example/",
    "\u202e",
    "\ue000",
    "ｙａｍａｄａ＠ｅｘａｍｐｌｅ．ｃｏｍ",
    "a@evil.com@good.com",
    "alice@x.org(<bob@y.org>",
    "%0d%0aSet-Cookie: x=1",
]
texts = st.one_of(
    st.text(max_size=120),
    st.sampled_from(NASTY),
    st.lists(st.sampled_from(NASTY) | st.text(max_size=10), max_size=4).map("".join),
)
zones = st.one_of(
    st.sampled_from(["", "Asia/Tokyo", "Europe/London", "localtime", "Factory", "../etc/passwd"]),
    st.text(max_size=40),
)
ALLOWED_STATUSES = {200, 400, 429}


def _headers_clean(response: object) -> None:
    for name, value in response.headers.items():  # type: ignore[attr-defined]
        assert "\r" not in value and "\n" not in value, (name, value)
        assert name.lower() not in ("set-cookie", "location", "bcc"), name


def _without_limits(response: object) -> dict[str, str]:
    headers = dict(response.headers)  # type: ignore[attr-defined]
    return {k: v for k, v in headers.items() if not k.startswith(("X-RateLimit", "Retry-After"))}


def _post(client: FlaskClient, token: str, ip: str, **data: str) -> object:
    return client.post(
        "/subscribe",
        data={"form_token": token, **data},
        headers={"Origin": "null", "X-Forwarded-For": ip},
    )


@pytest.mark.slow
def test_fuzzed_signups_never_fail_nor_inject_and_never_tell_addresses_apart(
    make_app: AppFactory, database_url: str, tmp_path: Path
) -> None:
    app = make_app(
        database_url, tmp_path, clock=Clock(), trusted_proxies=1, confirmations_per_hour=10**6
    )
    # The background sender keeps sending meanwhile; to memory, because building a MIME message
    # draws a Message-ID from the global `random`, which hypothesis forbids while it generates.
    use_transport(app, MemoryTransport())
    db = Db(database_url)
    client = app.test_client()
    token = form_token(client)
    ips = (f"10.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}" for n in itertools.count(1))
    reference = _post(client, token, next(ips), email="reference@example.com")
    assert reference.status_code == 200  # type: ignore[attr-defined]

    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(email=texts, name=texts, timezone=zones, honeypot=st.sampled_from(["", "", "x"]))
    def fuzz_anything(email: str, name: str, timezone: str, honeypot: str) -> None:
        response = _post(
            client, token, next(ips), email=email, name=name, timezone=timezone, homepage=honeypot
        )
        assert response.status_code in ALLOWED_STATUSES  # type: ignore[attr-defined]
        _headers_clean(response)
        if response.status_code == 200:  # type: ignore[attr-defined]
            assert response.get_data() == reference.get_data()  # type: ignore[attr-defined]

    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        address=st.builds(
            "{}@{}".format,
            st.from_regex(r"[a-z0-9][a-z0-9._+-]{0,15}", fullmatch=True),
            st.sampled_from(["example.com", "example.jp", "mail.example.org", "例え.jp"]),
        ),
        state=st.sampled_from(["pending", "active", "paused", "unsubscribed", "bounced"]),
        name=st.text(max_size=30),
    )
    def known_and_new_look_alike(address: str, state: str, name: str) -> None:
        first = _post(client, token, next(ips), email=address, name=name)
        if first.status_code != 200:  # type: ignore[attr-defined]
            return  # refused as invalid (then both are refused alike) or limited
        stored = db.subscriber(address)
        if stored is not None:
            db.set(stored.email, status=state)
            assert stored.name is None or all(
                unicodedata.category(ch) != "Cc" for ch in stored.name
            )
        again = _post(client, token, next(ips), email=address, name=name)
        if again.status_code == 429:  # type: ignore[attr-defined]
            return  # the per-address limit (same for every state)
        assert again.status_code == 200  # type: ignore[attr-defined]
        assert again.get_data() == first.get_data() == reference.get_data()  # type: ignore[attr-defined]
        assert _without_limits(again) == _without_limits(first)

    try:
        fuzz_anything()
        known_and_new_look_alike()
    finally:
        stop_sender(app)
        db.close()
