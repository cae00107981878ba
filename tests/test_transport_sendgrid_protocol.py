"""The pure SendGrid core: request bodies, the request check, Retry-After (no network).

The request bodies are compared with what the official library's helper objects build, on
generated emails: same values, same key order, same refusals.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from email.utils import format_datetime
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sendgrid.helpers.mail import (  # type: ignore[import-untyped]
    CustomArg,
    From,
    Header,
    HtmlContent,
    Mail,
    PlainTextContent,
    Subject,
    To,
)
from tests.transport_support import NOW, make_email

from drip.errors import FatalTransportError
from drip.message import OutgoingEmail
from drip.transports.base import MAX_DETAIL, MAX_PROVIDER_ID, Outcome, SendResult
from drip.transports.sendgrid.protocol import (
    build_payload,
    classify_status,
    fast_payload,
    retry_after_seconds,
)
from drip.transports.sendgrid.validate import validate_request_payload


def test_build_payload_is_the_v3_shape() -> None:
    email = make_email(1, custom_args={"drip_delivery_id": "stale", "drip_lesson": "01-intro"})
    payload = build_payload(email)
    assert payload["personalizations"] == [
        {"to": [{"email": "reader1@example.com", "name": "山田 太郎"}]}
    ]
    assert payload["from"] == {"email": "course@example.org", "name": "ドリップ講座"}
    assert [c["type"] for c in payload["content"]] == ["text/plain", "text/html"]
    assert payload["headers"] == dict(email.headers)
    # The ledger id wins over a stale custom arg: webhook events must find their row.
    assert payload["custom_args"] == {"drip_delivery_id": "d1", "drip_lesson": "01-intro"}
    json.dumps(payload)  # serialisable as it is


def test_fake_sendgrid_rejects_what_sendgrid_would() -> None:
    good = build_payload(make_email(1))
    assert validate_request_payload(good) == []
    swapped = {**good, "content": list(reversed(good["content"]))}
    assert any("content types" in p for p in validate_request_payload(swapped))
    no_args = {k: v for k, v in good.items() if k != "custom_args"}
    assert validate_request_payload(no_args)


def test_retry_after_forms() -> None:
    later = NOW + timedelta(seconds=120)
    assert retry_after_seconds({"Retry-After": format_datetime(later, usegmt=True)}, NOW) == 120
    assert retry_after_seconds({"Retry-After": "2.5"}, NOW) == 2.5
    assert retry_after_seconds({"X-RateLimit-Reset": str(int(NOW.timestamp()) - 5)}, NOW) == 0
    assert retry_after_seconds({"Retry-After": "soon"}, NOW) is None
    assert retry_after_seconds({}, NOW) is None


DAY = 24 * 3600.0


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "inf"}, DAY),
        ({"Retry-After": "Infinity"}, DAY),
        ({"Retry-After": "1e15"}, DAY),
        ({"Retry-After": "1e400"}, DAY),
        ({"Retry-After": "-inf"}, 0.0),
        ({"Retry-After": "-5"}, 0.0),
        ({"Retry-After": "nan"}, None),
        ({"Retry-After": "Fri, 31 Dec 9999 23:59:59 GMT"}, DAY),
        ({"Retry-After": "Mon, 01 Jan 0001 00:00:00 GMT"}, 0.0),
        ({"Retry-After": "Mon, 01 Jan 99999999999999999999 00:00:00 GMT"}, None),
        ({"X-RateLimit-Reset": "1e300"}, DAY),
        ({"X-RateLimit-Reset": "inf"}, DAY),
        ({"X-RateLimit-Reset": "nan"}, None),
        ({"Retry-After": "nan", "X-RateLimit-Reset": str(NOW.timestamp() + 30)}, 30.0),
    ],
)
def test_absurd_retry_after_is_finite_and_clamped(
    headers: dict[str, str], expected: float | None
) -> None:
    assert retry_after_seconds(headers, NOW) == expected


_texts = st.text(min_size=0, max_size=12)
_addresses = st.one_of(
    st.from_regex(r"[a-z0-9.+_-]{1,8}@[a-z0-9-]{1,6}\.(jp|com)", fullmatch=True),
    st.sampled_from(["名前 <a@b.jp>", "a@b", "x..y@example.jp", '"q"@example.jp', "", "a @b.jp"]),
    st.sampled_from(["no-at-sign", "Name <no-at>", "<a@b.jp>", "@", "a@b@c.jp"]),
)
_names = st.one_of(
    st.none(),
    st.just(""),
    _texts,
    st.sampled_from(["Yamada, Taro", "a;b", 'O"Brien', 'x\\"y, z', '"quoted"', "a\\b"]),
)
_parts = st.one_of(_texts, st.sampled_from(["SG.abc.def", "SG.x", "<p>本文</p>", "x SG.a.b"]))


def sdk_payload(email: OutgoingEmail) -> dict[str, Any]:
    """The body the official library's helper objects build for `email` (the reference)."""
    mail = Mail()
    mail.from_email = From(email.from_address, email.from_name)
    mail.to = To(email.to_address, email.to_name)
    mail.subject = Subject(email.subject)
    mail.content = PlainTextContent(email.text)
    mail.content = HtmlContent(email.html)
    for key, value in email.headers.items():
        mail.header = Header(key, value)
    custom_args = {**email.custom_args, "drip_delivery_id": email.delivery_id}
    for key, value in custom_args.items():
        mail.custom_arg = CustomArg(key, value)
    payload: dict[str, Any] = mail.get()
    # The one deliberate difference: SendGrid drops messages whose to.name holds ',' or ';'
    # unquoted (its documented limitation); drip quotes such names as SendGrid's own PHP library
    # does, escaping '"' and '\\' (and names with a '"' too, which would otherwise unbalance).
    to = payload["personalizations"][0]["to"][0]
    if "name" in to and any(c in to["name"] for c in ',;"'):
        escaped = to["name"].replace("\\", "\\\\").replace('"', '\\"')
        to["name"] = f'"{escaped}"'
    return payload


@given(
    to_address=_addresses,
    to_name=_names,
    from_address=_addresses,
    from_name=_names,
    subject=_texts,
    text=_parts,
    html=_parts,
    headers=st.dictionaries(st.sampled_from(["List-Unsubscribe", "X-A", "X-B"]), _texts),
    custom_args=st.dictionaries(st.sampled_from(["drip_lesson", "drip_delivery_id", "k"]), _texts),
)
def test_fast_payload_equals_the_official_helper_in_value_and_key_order(
    to_address: str,
    to_name: str | None,
    from_address: str,
    from_name: str | None,
    subject: str,
    text: str,
    html: str,
    headers: dict[str, str],
    custom_args: dict[str, str],
) -> None:
    email = OutgoingEmail(
        "17",
        to_address,
        to_name,
        from_address,
        from_name,
        subject,
        html,
        text,
        headers,
        custom_args,
    )
    try:
        expected = orjson.dumps(sdk_payload(email))
    except Exception as exc:  # the helper refuses (an API key in a part): so must drip's builders
        for builder in (build_payload, fast_payload):
            with pytest.raises(Exception) as refused:
                builder(email)
            # The same refusal by name and text (drip's builders do not import the library).
            assert (type(refused.value).__name__, str(refused.value)) == (
                type(exc).__name__,
                str(exc),
            )
        return
    # Byte-equal JSON: same values and the same key order as the official helper's payload.
    assert orjson.dumps(build_payload(email)) == expected
    assert orjson.dumps(fast_payload(email)) == expected


@pytest.mark.parametrize(
    ("name", "sent"),
    [
        ("山田 太郎", "山田 太郎"),
        ("Yamada, Taro", '"Yamada, Taro"'),
        ("A;B", '"A;B"'),
        ('O"Brien', '"O\\"Brien"'),
        ('Smith, "Bob" \\ Jr.', '"Smith, \\"Bob\\" \\\\ Jr."'),
        ("Tom & Jerry <tj>", "Tom & Jerry <tj>"),
    ],
)
def test_recipient_names_with_comma_semicolon_or_quote_are_quoted(name: str, sent: str) -> None:
    email = make_email(1, to_name=name)
    for payload in (build_payload(email), fast_payload(email), sdk_payload(email)):
        assert payload["personalizations"][0]["to"] == [{"name": sent, "email": email.to_address}]
        assert validate_request_payload(payload) == []
    assert payload["from"]["name"] == email.from_name  # the sender's name is left as it is
    # The validator (the test fake's and the benchmark's) refuses what SendGrid documents it
    # may drop: ',' or ';' outside double quotes.
    raw = {
        **build_payload(email),
        "personalizations": [{"to": [{"name": name, "email": "a@b.jp"}]}],
    }
    refused = any("to[0].name" in p for p in validate_request_payload(raw))
    assert refused == ("," in name or ";" in name)


def test_fast_payload_of_a_lesson_email_skips_the_helper() -> None:
    email = make_email(3)
    assert fast_payload(email) == build_payload(email)
    assert orjson.dumps(fast_payload(email)) == orjson.dumps(build_payload(email))
    assert orjson.dumps(build_payload(email)) == orjson.dumps(sdk_payload(email))


def test_the_protocol_module_imports_neither_the_library_nor_aiohttp() -> None:
    code = (
        "import sys, drip.transports.sendgrid.protocol, drip.transports.sendgrid.validate\n"
        "loaded = sorted({m.split('.')[0] for m in sys.modules})\n"
        "print([m for m in ('sendgrid', 'python_http_client', 'aiohttp') if m in loaded])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


ERROR_BODY = b'{"errors": [{"message": "bad from"}, {"message": "no content"}]}'


@pytest.mark.parametrize(
    ("status", "headers", "body", "expected"),
    [
        (
            202,
            {"X-Message-Id": "m-1"},
            b"",
            SendResult("d1", Outcome.SENT, "m-1", None, "HTTP 202"),
        ),
        (200, None, b"accepted", SendResult("d1", Outcome.SENT, None, None, "HTTP 200: accepted")),
        (299, {}, None, SendResult("d1", Outcome.SENT, None, None, "HTTP 299")),
        (
            202,
            {"X-Message-Id": "\x00\x01"},
            b"",
            SendResult("d1", Outcome.SENT, None, None, "HTTP 202"),
        ),
        (
            429,
            {"Retry-After": "120"},
            b"",
            SendResult("d1", Outcome.RETRY, None, 120.0, "HTTP 429"),
        ),
        (500, None, "oops", SendResult("d1", Outcome.RETRY, None, None, "HTTP 500: oops")),
        (503, {}, b"", SendResult("d1", Outcome.RETRY, None, None, "HTTP 503")),
        (
            503,
            {"Retry-After": format_datetime(NOW + timedelta(seconds=90), usegmt=True)},
            b"",
            SendResult("d1", Outcome.RETRY, None, 90.0, "HTTP 503"),
        ),
        (
            400,
            {},
            ERROR_BODY,
            SendResult("d1", Outcome.FAILED, None, None, "HTTP 400: bad from; no content"),
        ),
        (428, {"Retry-After": "5"}, b"", SendResult("d1", Outcome.FAILED, None, None, "HTTP 428")),
        (499, {}, b"", SendResult("d1", Outcome.FAILED, None, None, "HTTP 499")),
        (
            100,
            {"Retry-After": "5"},
            b"",
            SendResult("d1", Outcome.RETRY, None, None, "unexpected answer HTTP 100"),
        ),
        (
            199,
            {},
            b"",
            SendResult("d1", Outcome.RETRY, None, None, "unexpected answer HTTP 199"),
        ),
    ],
)
def test_classify_status_maps_each_answer_to_its_outcome(
    status: int, headers: dict[str, str] | None, body: bytes | str | None, expected: SendResult
) -> None:
    assert classify_status("d1", status, headers, body, NOW) == expected


def test_classify_status_cuts_the_detail_and_the_provider_id() -> None:
    result = classify_status("d1", 202, {"X-Message-Id": "i" * 500}, "r" * 1000, NOW)
    assert result.provider_id == "i" * MAX_PROVIDER_ID
    assert result.detail == ("HTTP 202: " + "r" * 1000)[:MAX_DETAIL]


@pytest.mark.parametrize(
    ("status", "headers", "message"),
    [
        *(
            (
                status,
                {},
                f"SendGrid refused the API key (HTTP {status}: bad from; no content); check"
                " SENDGRID_API_KEY and that the key has the Mail Send permission. Nothing more"
                " was sent in this run.",
            )
            for status in (401, 403)
        ),
        *(
            (
                status,
                {},
                f"SendGrid API URL does not serve /v3/mail/send (HTTP {status}: bad from; no"
                " content); check DRIP_SENDGRID_API_URL. Nothing more was sent in this run.",
            )
            for status in (404, 405)
        ),
        *(
            (
                status,
                {"Location": "https://elsewhere.example/v3/mail/send"},
                "the SendGrid API URL answered with a redirect to"
                " https://elsewhere.example/v3/mail/send; set DRIP_SENDGRID_API_URL to the API"
                " itself",
            )
            for status in (300, 301, 399)
        ),
        *(
            (
                302,
                headers,
                "the SendGrid API URL answered with a redirect to nowhere (no Location); set"
                " DRIP_SENDGRID_API_URL to the API itself",
            )
            for headers in (None, {}, {"Location": "  "})
        ),
    ],
)
def test_classify_status_stops_the_run_on_a_bad_key_url_or_redirect(
    status: int, headers: dict[str, str] | None, message: str
) -> None:
    with pytest.raises(FatalTransportError) as raised:
        classify_status("d1", status, headers, ERROR_BODY, NOW)
    assert str(raised.value) == message
