"""Bulk mode: one request per lesson group with per-subscriber substitutions.

The key property: what a subscriber receives after SendGrid applies the substitutions equals
the email drip renders for that subscriber alone (names with <, &, " and Japanese included).
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import replace

import pytest
from tests.fakes.sendgrid_server import FakeSendGrid
from tests.support import COURSE, ROOT, TEMPLATES

from drip.links import LinkBuilder
from drip.message import OutgoingEmail
from drip.render import Recipient, Renderer
from drip.transports import Outcome
from drip.transports.sendgrid.bulk import BulkSendGridTransport
from drip.transports.sendgrid.fast import FastSendGridTransport
from drip.transports.sendgrid.protocol import (
    KEY_PREFIX,
    apply_substitutions,
    build_payload,
    bulk_payload,
    bulk_safe,
    fill_parts,
    substitution_keys,
)

RENDERER = Renderer(COURSE, TEMPLATES)
LINKS = LinkBuilder("https://drip.example.jp", ["bulk-test-key"])
API_KEY = "SG.bulk-test"
NAMES = ["山田 太郎", "Tom & Jerry <tj>", 'O"Brien', None, "<script>alert(1)</script>", "鈴木"]


def lesson_email(
    n: int, name: str | None, lesson_index: int = 0, *, fill: bool = True
) -> OutgoingEmail:
    lesson = COURSE.lessons[lesson_index]
    recipient = Recipient(
        email=f"reader{n}@example.com",
        name=name,
        unsubscribe_url=LINKS.unsubscribe_url(n),
        manage_url=LINKS.manage_url(n),
    )
    rendered = RENDERER.lesson(lesson, recipient, fill=fill)
    return OutgoingEmail(
        delivery_id=str(1000 + n),
        to_address=recipient.email,
        to_name=name,
        from_address="course@example.org",
        from_name="ドリップ講座",
        subject=rendered.subject,
        html=rendered.html,
        text=rendered.text,
        headers=rendered.headers,
        custom_args={
            "drip_delivery_id": str(1000 + n),
            "drip_lesson": lesson.slug,
            "drip_subscriber": str(n),
        },
        bulk=rendered.bulk,
    )


@pytest.mark.parametrize("name", NAMES)
def test_unfilled_emails_are_filled_exactly_as_the_renderer_fills_them(name: str | None) -> None:
    full = lesson_email(7, name)
    bare = lesson_email(7, name, fill=False)
    assert (bare.html, bare.text) == ("", "")
    assert bulk_safe(bare)
    assert fill_parts(bare) == full
    assert (fill_parts(bare).html, fill_parts(bare).text) == (full.html, full.text)
    assert fill_parts(full) is full
    # The bulk body does not depend on whether the subscriber's parts were filled.
    assert bulk_payload([bare]) == bulk_payload([full])


def test_every_subscriber_sees_the_email_rendered_for_them() -> None:
    for has_name in (True, False):
        emails = [
            lesson_email(n, name) for n, name in enumerate(NAMES) if (name is not None) is has_name
        ]
        payload = bulk_payload(emails)
        assert len(payload["personalizations"]) == len(emails)
        for index, email in enumerate(emails):
            text, html = apply_substitutions(payload, index)
            assert (text, html) == (email.text, email.html)
            single = build_payload(email)
            mine = payload["personalizations"][index]
            assert mine["to"] == single["personalizations"][0]["to"]
            assert mine["headers"] == single["headers"]
            assert mine["custom_args"] == single["custom_args"]
        assert payload["subject"] == emails[0].subject
        assert payload["from"] == build_payload(emails[0])["from"]


def test_html_gets_escaped_values_and_text_raw_ones() -> None:
    email = lesson_email(1, "Tom & Jerry <tj>")
    payload = bulk_payload([email])
    subs = payload["personalizations"][0]["substitutions"]
    html_values = [v for k, v in subs.items() if k.endswith("hname%")]
    text_values = [v for k, v in subs.items() if k.endswith("tname%")]
    assert html_values == ["Tom &amp; Jerry &lt;tj&gt;"]
    assert text_values == ["Tom & Jerry <tj>"]
    content = {c["type"]: c["value"] for c in payload["content"]}
    assert "Tom" not in content["text/html"] and "reader1" not in content["text/plain"]


def test_keys_never_collide_with_lesson_text() -> None:
    parts = (("before ", "name", " after"),)
    prefix, _ = substitution_keys(parts)
    clashing = ((f"text with {prefix} inside ", "name", ""),)
    other, key = substitution_keys(clashing)
    assert other != prefix and other not in clashing[0][0]
    assert key("h", "name").startswith(other)


def test_unsafe_values_and_other_headers_are_not_bulk() -> None:
    email = lesson_email(1, "山田")
    assert bulk_safe(email)
    assert not bulk_safe(lesson_email(2, f"evil {KEY_PREFIX}x"))
    assert not bulk_safe(replace(email, headers={**email.headers, "X-Other": "1"}))
    assert not bulk_safe(replace(email, bulk=None))


def test_mixed_groups_are_refused_by_bulk_payload() -> None:
    with pytest.raises(ValueError):
        bulk_payload([lesson_email(1, "a"), lesson_email(2, "b", lesson_index=1)])
    with pytest.raises(ValueError):
        bulk_payload([])


@pytest.fixture(scope="module")
def provider() -> Iterator[str]:
    """The benchmark's fake provider (validates each personalization, counts delivery ids)."""
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "fake_provider.py"), "--latency", "0.01"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    url = f"http://127.0.0.1:{int(process.stdout.readline())}"
    yield url
    process.terminate()
    process.wait(timeout=10)
    process.stdout.close()


def stats(url: str) -> dict[str, object]:
    with urllib.request.urlopen(f"{url}/_stats?ids=1", timeout=10) as response:
        data: dict[str, object] = json.loads(response.read())
        return data


def test_bulk_transport_sends_groups_of_up_to_1000(provider: str) -> None:
    urllib.request.urlopen(urllib.request.Request(f"{provider}/_reset", method="POST"), timeout=10)
    emails = [lesson_email(n, NAMES[n % len(NAMES)]) for n in range(2300)]
    emails.append(lesson_email(9999, f"{KEY_PREFIX} unsafe"))  # goes on its own
    inner = FastSendGridTransport(API_KEY, base_url=provider, window=8)
    with BulkSendGridTransport(inner) as transport:
        assert transport.window == 4000
        results = transport.send(emails)
    assert [r.delivery_id for r in results] == [e.delivery_id for e in emails]
    assert all(r.outcome is Outcome.SENT for r in results)
    seen = stats(provider)
    assert seen["invalid"] == 0 and seen["duplicates"] == 0
    assert seen["distinct"] == len(emails)
    # Two name variants: ceil(1917/1000) + ceil(383/1000) bulk requests, plus the single one.
    assert seen["requests"] == 2 + 1 + 1


def test_a_refused_bulk_request_falls_back_to_single_sends() -> None:
    # The provider refuses the bulk body with 400: the subscribers are then sent one by one and
    # all arrive, once.
    with FakeSendGrid(api_key=API_KEY, script=["400"]) as fake:
        inner = FastSendGridTransport(API_KEY, base_url=fake.url, window=4)
        with BulkSendGridTransport(inner) as transport:
            # As delivery composes them for a transport that fills bulk parts: html/text empty.
            emails = [lesson_email(n, "山田", fill=False) for n in range(5)]
            results = transport.send(emails)
        assert [r.outcome for r in results] == [Outcome.SENT] * 5
        assert fake.accepted_ids() == {e.delivery_id: 1 for e in emails}
        by_id = {r.delivery_id: r.payload for r in fake.accepted}
        for n, email in enumerate(emails):
            assert by_id[email.delivery_id] == build_payload(lesson_email(n, "山田"))
        assert next(r.status for r in fake.requests) == 400


def test_the_contract_fake_accepts_a_bulk_request_and_counts_every_subscriber() -> None:
    with FakeSendGrid(api_key=API_KEY) as fake:
        inner = FastSendGridTransport(API_KEY, base_url=fake.url, window=4)
        with BulkSendGridTransport(inner) as transport:
            emails = [lesson_email(n, "山田", fill=False) for n in range(5)]
            results = transport.send(emails)
        assert [r.outcome for r in results] == [Outcome.SENT] * 5
        assert fake.problems == []
        assert len(fake.requests) == 1
        assert fake.accepted_ids() == {e.delivery_id: 1 for e in emails}
