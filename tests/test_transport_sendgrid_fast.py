"""The aiohttp SendGrid transport with many requests in flight, against the loopback fake.

The ordered contract scenarios run over this transport in test_transport_contract.py (window 1);
here
are the properties that only show with concurrency: requests really overlap, every accepted
message has a result even when a fatal or outage answer arrives mid-call, rate limiting, AIMD.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.fakes.sendgrid_server import FakeSendGrid
from tests.transport_support import API_KEY, NOW, bulk_email, make_email

from drip.errors import ConfigError
from drip.message import BulkParts
from drip.transports import FatalTransportError, Outcome
from drip.transports.sendgrid.bulk import BulkSendGridTransport
from drip.transports.sendgrid.fast import Aimd, FastSendGridTransport, TokenBucket, _email_body
from drip.transports.sendgrid.protocol import (
    build_payload,
    fast_payload,
    fill_parts,
    spliced_body,
)


@pytest.fixture
def fake() -> Iterator[FakeSendGrid]:
    with FakeSendGrid(api_key=API_KEY) as server:
        yield server


@pytest.fixture(params=["off", "on"])
def process(request: pytest.FixtureRequest) -> str:
    """Where the HTTP step runs (DRIP_SENDGRID_PROCESS): the same outcomes either way."""
    return str(request.param)


def fast(fake: FakeSendGrid, **kwargs: object) -> FastSendGridTransport:
    options: dict[str, object] = {"timeout": 0.5, "window": 8, "clock": lambda: NOW}
    options.update(kwargs)
    return FastSendGridTransport(API_KEY, base_url=fake.url, **options)  # type: ignore[arg-type]


def test_requests_overlap_and_payloads_equal_the_official_ones(
    fake: FakeSendGrid, process: str
) -> None:
    fake.latency = 0.1
    emails = [make_email(n) for n in range(1, 25)]
    with fast(fake, process=process, window=8) as transport:
        results = transport.send(emails)
    # Each answer takes 0.1 s: 24 requests sent one at a time never overlap; with a window of 8
    # up to 8 are in flight (fewer only if the client took 0.1 s to start the next ones, which
    # a loaded machine can: a wall-clock bound here failed under load, and timed nothing).
    assert 4 <= fake.most_in_flight <= 8
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


def test_fatal_mid_call_keeps_every_accepted_message(fake: FakeSendGrid, process: str) -> None:
    fake.add_script("202", "202", "202")
    fake.default = type(fake.default).parse("401")
    emails = [make_email(n) for n in range(1, 13)]
    with (
        fast(fake, process=process, window=4) as transport,
        pytest.raises(FatalTransportError) as info,
    ):
        transport.send(emails)
    recorded = {r.delivery_id: r.outcome for r in info.value.results}
    accepted = set(fake.accepted_ids())
    # Whatever the provider took is in the results as SENT (recorded, never released).
    assert accepted and {d for d, o in recorded.items() if o is Outcome.SENT} == accepted
    assert len(fake.requests) <= 3 + 4  # no new request after the fatal answer
    assert API_KEY not in str(info.value)


def test_rate_limit_answer_stops_new_requests_and_halves_the_window(
    fake: FakeSendGrid, process: str
) -> None:
    fake.add_script("429:7")
    emails = [make_email(n) for n in range(1, 21)]
    with fast(fake, process=process, window=1) as transport:
        results = transport.send(emails)
        if process == "off":  # the sending process keeps its own limit
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


def test_answer_after_timeout_is_in_doubt(fake: FakeSendGrid, process: str) -> None:
    fake.add_script("delay:3")
    with fast(fake, process=process, window=1, timeout=0.3) as transport:
        results = transport.send([make_email(1), make_email(2)])
    assert [r.outcome for r in results] == [Outcome.IN_DOUBT, Outcome.RETRY]
    assert "answer lost" in results[0].detail
    assert fake.accepted_ids() == {"d1": 1}


def test_reset_is_in_doubt_and_the_next_call_works(fake: FakeSendGrid, process: str) -> None:
    fake.add_script("reset")
    with fast(fake, process=process, window=1) as transport:
        [lost] = transport.send([make_email(1)])
        [again] = transport.send([make_email(2)])
    assert lost.outcome is Outcome.IN_DOUBT
    assert again.outcome is Outcome.SENT


def test_unreachable_is_retry(process: str) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    transport = FastSendGridTransport(
        API_KEY, base_url=f"http://127.0.0.1:{port}", window=4, process=process
    )
    with transport:
        results = transport.send([make_email(1), make_email(2)])
    assert [r.outcome for r in results] == [Outcome.RETRY, Outcome.RETRY]
    assert "not sent" in results[0].detail


def test_rate_caps_requests_per_second(fake: FakeSendGrid, process: str) -> None:
    with fast(fake, process=process, window=16, rate=40.0) as transport:
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


@pytest.mark.parametrize("bulk", [False, True])
def test_close_lets_the_calls_in_flight_finish(
    fake: FakeSendGrid, bulk: bool, process: str
) -> None:
    # The worker's SIGTERM closes the transport while a send is running: what is in flight ends
    # with its real outcome (not "in doubt", not a future that never completes), and a call
    # submitted after the close fails with FatalTransportError (nothing was handed over).
    fake.latency = 0.3
    inner = fast(fake, process=process, window=4)
    transport = BulkSendGridTransport(inner, per_request=2) if bulk else inner
    make = bulk_email if bulk else make_email
    future = transport.submit([make(n) for n in range(1, 5)])
    time.sleep(0.1)  # the requests are in flight
    transport.close()
    assert future.done()
    assert [r.outcome for r in future.result()] == [Outcome.SENT] * 4
    late = transport.submit([make(5)]).exception(timeout=5)
    assert isinstance(late, FatalTransportError) and late.results == ()
    assert set(fake.accepted_ids()) == {"d1", "d2", "d3", "d4"}


# -- bodies spliced from a lesson's pre-encoded parts --------------------------------------------

_values = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)),  # any character a str can hold
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(
    literals=st.lists(_values, min_size=4, max_size=4),
    head=st.text(min_size=3, max_size=10),
    name=_values,
    url=_values,
    to_name=st.one_of(st.none(), st.text(max_size=12)),
)
def test_a_spliced_body_equals_the_filled_body_encoded(
    literals: list[str], head: str, name: str, url: str, to_name: str | None
) -> None:
    """Whatever the lesson's text and the reader's values (quotes, backslashes, control
    characters, any Unicode), splicing the pre-encoded parts gives the very bytes that filling
    the parts and encoding `fast_payload` gives; or the shortcut declines (None)."""
    parts = BulkParts(
        html=(head + literals[0], "name", literals[1], "unsubscribe_url", "<p>end</p>"),
        text=(head + literals[2], "unsubscribe_url", literals[3], "name", ""),
        values={"name": name, "unsubscribe_url": url, "manage_url": url},
    )
    email = bulk_email(3, name="x", to_name=to_name, bulk=parts)
    expected = orjson.dumps(fast_payload(fill_parts(email)))
    spliced = spliced_body(email)
    if spliced is not None:
        assert spliced == expected
    assert _email_body(email) == expected


def test_the_spliced_shortcut_declines_what_it_cannot_tell() -> None:
    """A part that starts with a slot, or with something like an API key, a filled email, or
    one without parts: None (the body is then made by filling)."""
    email = bulk_email(4)
    assert spliced_body(email) is not None
    assert spliced_body(fill_parts(email)) is None
    assert spliced_body(replace(email, bulk=None)) is None
    starts_with_slot = replace(email.bulk, text=("", "name", " hello") if email.bulk else ("",))
    assert spliced_body(replace(email, bulk=starts_with_slot)) is None
    api_key_like = replace(email.bulk, html=("SG.abc ", "name", "") if email.bulk else ("",))
    assert spliced_body(replace(email, bulk=api_key_like)) is None


def test_unfilled_lesson_emails_reach_the_provider_filled(fake: FakeSendGrid, process: str) -> None:
    """The fast transport fills bulk parts itself: what the provider receives is the email as
    the renderer would have filled it, equal to the official helper's payload."""
    names = ["山田 太郎", "Tom & <Jerry> 'x' \\ \u2028", 'O"Neil', ""]
    emails = [bulk_email(n, name=name) for n, name in enumerate(names, 1)]
    assert [spliced_body(email) is not None for email in emails] == [True, True, False, False]
    with fast(fake, process=process, window=4) as transport:
        assert transport.fills_bulk_parts
        results = transport.send(emails)
    assert [r.outcome for r in results] == [Outcome.SENT] * 4
    assert fake.problems == []
    by_id = {r.delivery_id: r.payload for r in fake.requests}
    for email in emails:
        assert by_id[email.delivery_id] == build_payload(fill_parts(email))
