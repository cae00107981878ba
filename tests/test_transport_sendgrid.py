"""The official-library SendGrid client against the loopback fake, scripted per request."""

from __future__ import annotations

import json
import logging
import time
import urllib.request
from pathlib import Path

import pytest
from tests.fakes.sendgrid_server import FakeSendGrid
from tests.transport_support import (
    API_KEY,
    NOW,
    SENDGRID_CLIENTS,
    bulk_email,
    free_port,
    make_email,
    sendgrid_client,
    sendgrid_transport,
    start_process,
    stop_process,
)

from drip.errors import ConfigError
from drip.transports import FatalTransportError, Outcome
from drip.transports.sendgrid.official import SendGridTransport


def test_sendgrid_request_is_checked_by_the_fake(sendgrid: FakeSendGrid) -> None:
    with sendgrid_transport(sendgrid) as transport:
        [result] = transport.send([make_email(1)])
    assert result.outcome is Outcome.SENT
    assert result.provider_id == "fake-1"
    [request] = sendgrid.requests
    assert request.problems == [] and request.authorization == "Bearer [key]"
    assert request.payload["custom_args"] == {
        "drip_delivery_id": "d1",
        "drip_lesson": "01-intro",
        "drip_subscriber": "101",
    }


def test_sendgrid_wrong_key_is_fatal_and_secret_free(sendgrid: FakeSendGrid) -> None:
    other = "SG.another-sentinel-key"
    with pytest.raises(FatalTransportError) as info:
        sendgrid_transport(sendgrid, key=other).send([make_email(1), make_email(2)])
    assert "SENDGRID_API_KEY" in str(info.value)
    assert info.value.results == ()
    assert other not in str(info.value) and len(sendgrid.requests) == 1


@pytest.mark.parametrize(
    ("step", "outcome", "retry_after"),
    [
        ("400", Outcome.FAILED, None),
        ("413", Outcome.FAILED, None),
        ("422", Outcome.FAILED, None),
        ("429:7", Outcome.RETRY, 7.0),
        ("429", Outcome.RETRY, 1.0),
        (f"429@{int(NOW.timestamp()) + 90}", Outcome.RETRY, 90.0),
        ("500", Outcome.RETRY, None),
        ("502", Outcome.RETRY, None),
        ("503", Outcome.RETRY, None),
    ],
)
def test_sendgrid_status_mapping(
    sendgrid: FakeSendGrid, step: str, outcome: Outcome, retry_after: float | None
) -> None:
    sendgrid.add_script(step)
    [result] = sendgrid_transport(sendgrid).send([make_email(1)])
    assert (result.outcome, result.retry_after) == (outcome, retry_after)
    assert result.detail.startswith(f"HTTP {step[:3]}: scripted")


@pytest.mark.parametrize("step", ["401", "403", "404"])
def test_sendgrid_fatal_statuses(sendgrid: FakeSendGrid, step: str) -> None:
    sendgrid.add_script("202", step)
    with pytest.raises(FatalTransportError) as info:
        sendgrid_transport(sendgrid).send([make_email(1), make_email(2), make_email(3)])
    assert [r.outcome for r in info.value.results] == [Outcome.SENT]
    assert len(sendgrid.requests) == 2  # the third email was never tried


def test_sendgrid_rate_limit_stops_the_batch(sendgrid: FakeSendGrid) -> None:
    sendgrid.add_script("202", "429:30")
    results = sendgrid_transport(sendgrid).send([make_email(n) for n in (1, 2, 3, 4)])
    assert [r.outcome for r in results] == [Outcome.SENT] + [Outcome.RETRY] * 3
    assert [r.retry_after for r in results[1:]] == [30.0] * 3
    assert results[2].detail.startswith("not attempted")
    assert len(sendgrid.requests) == 2  # no hammering a throttling API


def test_sendgrid_answer_after_timeout_is_in_doubt(sendgrid: FakeSendGrid) -> None:
    sendgrid.add_script("delay:5")
    started = time.monotonic()
    results = sendgrid_transport(sendgrid).send([make_email(1), make_email(2)])
    assert time.monotonic() - started < 3
    assert [r.outcome for r in results] == [Outcome.IN_DOUBT, Outcome.RETRY]
    # The provider did take it: exactly why it must not be retried silently.
    assert sendgrid.accepted_ids() == {"d1": 1}


def test_sendgrid_reset_after_body_is_in_doubt(sendgrid: FakeSendGrid) -> None:
    sendgrid.add_script("reset")
    [result] = sendgrid_transport(sendgrid).send([make_email(1)])
    assert result.outcome is Outcome.IN_DOUBT
    assert "answer lost" in result.detail


def test_sendgrid_unreachable_is_retry_before_sending() -> None:
    transport = SendGridTransport(API_KEY, base_url=f"http://127.0.0.1:{free_port()}", timeout=1)
    results = transport.send([make_email(1), make_email(2)])
    assert [r.outcome for r in results] == [Outcome.RETRY, Outcome.RETRY]
    assert "not sent" in results[0].detail


def test_sendgrid_needs_a_key() -> None:
    with pytest.raises(ConfigError, match="SENDGRID_API_KEY"):
        SendGridTransport("")


def test_sendgrid_debug_logs_never_show_the_key(
    sendgrid: FakeSendGrid, caplog: pytest.LogCaptureFixture
) -> None:
    sendgrid.add_script("202", "500", "401")
    with caplog.at_level(logging.DEBUG):
        transport = sendgrid_transport(sendgrid)
        transport.send([make_email(1)])
        transport.send([make_email(2)])
        with pytest.raises(FatalTransportError):
            transport.send([make_email(3)])
    assert "Bearer [redacted]" in caplog.text  # the library did log its headers
    assert API_KEY not in caplog.text
    assert API_KEY not in repr(transport)


def test_sendgrid_fake_as_a_process(tmp_path: Path) -> None:
    record = tmp_path / "requests.jsonl"
    proc, port = start_process(
        "tests.fakes.sendgrid_server",
        "--api-key",
        API_KEY,
        "--script",
        "503",
        "--record",
        str(record),
    )
    try:
        transport = SendGridTransport(API_KEY, base_url=f"http://127.0.0.1:{port}", timeout=5)
        assert transport.send([make_email(1)])[0].outcome is Outcome.RETRY
        assert transport.send([make_email(1)])[0].outcome is Outcome.SENT
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_fake/stats", timeout=5) as answer:
            stats = json.load(answer)
    finally:
        stop_process(proc)
    assert stats["requests"] == 2 and stats["accepted_ids"] == {"d1": 1}
    assert stats["problems"] == []
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    assert [(r["status"], r["accepted"]) for r in lines] == [(503, False), (202, True)]


@pytest.mark.parametrize("client", SENDGRID_CLIENTS)
def test_names_with_comma_or_semicolon_are_sent_quoted(sendgrid: FakeSendGrid, client: str) -> None:
    # SendGrid may drop, after its 202, a message whose to.name holds an unquoted ',' or ';'.
    # The fake refuses such a request (400) as the validator says; quoted, it is accepted.
    names = ["Yamada, Taro", "山田;太郎", 'O"Brien, Jr.']
    make = bulk_email if client == "bulk" else make_email
    emails = [make(n, to_name=name) for n, name in enumerate(names, start=1)]
    with sendgrid_client(client, sendgrid) as transport:
        results = transport.send(emails)
    assert [r.outcome for r in results] == [Outcome.SENT] * 3
    assert sendgrid.problems == []
    sent = [
        to["name"]
        for r in sendgrid.requests
        for p in r.payload["personalizations"]
        for to in p["to"]
    ]
    assert sent == ['"Yamada, Taro"', '"山田;太郎"', '"O\\"Brien, Jr."']
