"""The aiohttp SendGrid transport with many requests in flight, against the loopback fake.

The ordered contract scenarios run over this transport in test_transports.py (window 1); here
are the properties that only show with concurrency: requests really overlap, every accepted
message has a result even when a fatal or outage answer arrives mid-call, rate limiting, AIMD.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
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
from tests.fakes.sendgrid_server import FakeSendGrid
from tests.test_transports import API_KEY, make_email

from drip.config import Settings, load_settings
from drip.errors import ConfigError
from drip.message import OutgoingEmail
from drip.transports import FatalTransportError, Outcome, make_transport
from drip.transports.sendgrid.fast import Aimd, FastSendGridTransport, TokenBucket
from drip.transports.sendgrid.official import SendGridTransport
from drip.transports.sendgrid.protocol import build_payload, fast_payload

NOW = datetime(2025, 3, 1, 7, 30, tzinfo=UTC)


@pytest.fixture
def fake() -> Iterator[FakeSendGrid]:
    with FakeSendGrid(api_key=API_KEY) as server:
        yield server


def fast(fake: FakeSendGrid, **kwargs: object) -> FastSendGridTransport:
    options: dict[str, object] = {"timeout": 0.5, "window": 8, "clock": lambda: NOW}
    options.update(kwargs)
    return FastSendGridTransport(API_KEY, base_url=fake.url, **options)  # type: ignore[arg-type]


def test_requests_overlap_and_payloads_equal_the_official_ones(fake: FakeSendGrid) -> None:
    fake.latency = 0.1
    emails = [make_email(n) for n in range(1, 25)]
    with fast(fake, window=8) as transport:
        started = time.monotonic()
        results = transport.send(emails)
        elapsed = time.monotonic() - started
    # 24 requests x 0.1 s one at a time would take 2.4 s; 8 in flight about 0.3 s.
    assert elapsed < 1.2
    assert [r.delivery_id for r in results] == [e.delivery_id for e in emails]
    assert [r.outcome for r in results] == [Outcome.SENT] * 24
    # (The threaded fake numbers concurrent requests racily, so ids are not checked unique.)
    assert all((r.provider_id or "").startswith("fake-") for r in results)
    assert fake.problems == []
    by_id = {r.delivery_id: r.payload for r in fake.requests}
    for email in emails:
        assert by_id[email.delivery_id] == build_payload(email)


def test_connections_are_kept_across_calls(fake: FakeSendGrid) -> None:
    with fast(fake, window=2) as transport:
        for n in range(5):
            transport.send([make_email(2 * n + 1), make_email(2 * n + 2)])
        connector = transport._session.connector if transport._session else None
        assert connector is not None
        # At most `window` connections were ever opened for 10 requests.
        assert len(connector._conns) <= 1  # one pooled key (host, port)
        assert sum(len(v) for v in connector._conns.values()) <= 2
    assert len(fake.accepted) == 10


def test_fatal_mid_call_keeps_every_accepted_message(fake: FakeSendGrid) -> None:
    fake.add_script("202", "202", "202")
    fake.default = type(fake.default).parse("401")
    emails = [make_email(n) for n in range(1, 13)]
    with fast(fake, window=4) as transport, pytest.raises(FatalTransportError) as info:
        transport.send(emails)
    recorded = {r.delivery_id: r.outcome for r in info.value.results}
    accepted = set(fake.accepted_ids())
    # Whatever the provider took is in the results as SENT (recorded, never released).
    assert accepted and {d for d, o in recorded.items() if o is Outcome.SENT} == accepted
    assert len(fake.requests) <= 3 + 4  # no new request after the fatal answer
    assert API_KEY not in str(info.value)


def test_rate_limit_answer_stops_new_requests_and_halves_the_window(fake: FakeSendGrid) -> None:
    fake.add_script("429:7")
    emails = [make_email(n) for n in range(1, 21)]
    with fast(fake, window=1) as transport:
        results = transport.send(emails)
        assert transport.aimd.allowed == 1
    assert results[0].outcome is Outcome.RETRY and results[0].retry_after == 7.0
    assert all(r.outcome is Outcome.RETRY for r in results[1:])
    assert results[1].detail.startswith("not attempted") and results[1].retry_after == 7.0
    assert len(fake.requests) == 1


def test_server_error_is_retry_and_aimd_recovers(fake: FakeSendGrid) -> None:
    fake.add_script("503")
    with fast(fake, window=16) as transport:
        [first] = transport.send([make_email(1)])
        assert first.outcome is Outcome.RETRY
        assert transport.aimd.allowed == 8
        transport.send([make_email(n) for n in range(2, 200)])
        assert transport.aimd.allowed > 8


def test_answer_after_timeout_is_in_doubt(fake: FakeSendGrid) -> None:
    fake.add_script("delay:3")
    with fast(fake, window=1, timeout=0.3) as transport:
        results = transport.send([make_email(1), make_email(2)])
    assert [r.outcome for r in results] == [Outcome.IN_DOUBT, Outcome.RETRY]
    assert "answer lost" in results[0].detail
    assert fake.accepted_ids() == {"d1": 1}


def test_reset_is_in_doubt_and_the_next_call_works(fake: FakeSendGrid) -> None:
    fake.add_script("reset")
    with fast(fake, window=1) as transport:
        [lost] = transport.send([make_email(1)])
        [again] = transport.send([make_email(2)])
    assert lost.outcome is Outcome.IN_DOUBT
    assert again.outcome is Outcome.SENT


def test_unreachable_is_retry() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    transport = FastSendGridTransport(API_KEY, base_url=f"http://127.0.0.1:{port}", window=4)
    with transport:
        results = transport.send([make_email(1), make_email(2)])
    assert [r.outcome for r in results] == [Outcome.RETRY, Outcome.RETRY]
    assert "not sent" in results[0].detail


def test_rate_caps_requests_per_second(fake: FakeSendGrid) -> None:
    with fast(fake, window=16, rate=40.0) as transport:
        started = time.monotonic()
        results = transport.send([make_email(n) for n in range(1, 25)])
        elapsed = time.monotonic() - started
    assert all(r.outcome is Outcome.SENT for r in results)
    # Burst of 4 (rate/10), then 20 more at 40/s: at least 0.5 s.
    assert elapsed >= 0.45


def test_token_bucket_arithmetic() -> None:
    clock = [0.0]
    bucket = TokenBucket(10.0, capacity=2, monotonic=lambda: clock[0])
    assert [bucket.delay_for() for _ in range(3)] == [0.0, 0.0, pytest.approx(0.1)]
    clock[0] = 1.0  # refilled to capacity, minus the debt
    assert bucket.delay_for() == 0.0
    with pytest.raises(ConfigError):
        TokenBucket(0)


def test_aimd_halves_and_grows_back() -> None:
    aimd = Aimd(64)
    aimd.decrease()
    aimd.decrease()
    assert aimd.allowed == 16
    for _ in range(18):  # +1/limit each: about one per window of successes
        aimd.increase()
    assert aimd.allowed == 17
    for _ in range(10):
        aimd.decrease()
    assert aimd.allowed == 1


def test_close_stops_the_thread_and_is_idempotent(fake: FakeSendGrid) -> None:
    transport = fast(fake)
    transport.send([make_email(1)])
    assert any(t.name == "drip-sendgrid" for t in threading.enumerate())
    transport.close()
    transport.close()
    assert transport._thread is not None and not transport._thread.is_alive()


def test_selection_fast_by_default_official_on_request() -> None:
    env = {"SENDGRID_API_KEY": "SG.k", "DRIP_SENDGRID_RATE": "100", "DRIP_SENDGRID_WINDOW": "32"}
    chosen = make_transport(load_settings(env))
    assert isinstance(chosen, FastSendGridTransport) and chosen.window == 32
    chosen.close()
    official = make_transport(load_settings({**env, "DRIP_SENDGRID_CLIENT": "official"}))
    assert isinstance(official, SendGridTransport)
    with pytest.raises(ConfigError, match="DRIP_SENDGRID_RATE"):
        load_settings({**env, "DRIP_SENDGRID_RATE": "-1"})
    with pytest.raises(ConfigError, match="DRIP_SENDGRID_CLIENT"):
        load_settings({**env, "DRIP_SENDGRID_CLIENT": "curl"})
    assert Settings().sendgrid_client == "fast"


_texts = st.text(min_size=0, max_size=12)
_addresses = st.one_of(
    st.from_regex(r"[a-z0-9.+_-]{1,8}@[a-z0-9-]{1,6}\.(jp|com)", fullmatch=True),
    st.sampled_from(["名前 <a@b.jp>", "a@b", "x..y@example.jp", '"q"@example.jp', "", "a @b.jp"]),
    st.sampled_from(["no-at-sign", "Name <no-at>", "<a@b.jp>", "@", "a@b@c.jp"]),
)
_names = st.one_of(st.none(), st.just(""), _texts)
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


def test_fast_payload_of_a_lesson_email_skips_the_helper() -> None:
    email = make_email(3)
    assert fast_payload(email) == build_payload(email)
    assert orjson.dumps(fast_payload(email)) == orjson.dumps(build_payload(email))
    assert orjson.dumps(build_payload(email)) == orjson.dumps(sdk_payload(email))
