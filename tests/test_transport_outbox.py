"""The outbox transport: one .eml file per email, written atomically."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.transport_support import NOW, clock, expected, make_email, seen_in_mime

from drip.errors import MimeError
from drip.message import OutgoingEmail
from drip.mime import MimeWriter, build_mime, to_bytes
from drip.transports import FatalTransportError, Outcome, SendResult
from drip.transports.outbox import OutboxTransport


def test_outbox_file_reparses_as_the_same_message(tmp_path: Path) -> None:
    outbox = OutboxTransport(tmp_path / "out", message_id_domain="drip.test", clock=clock)
    [result] = outbox.send([make_email(1)])
    path = tmp_path / "out" / "d1.eml"
    assert result == SendResult("d1", Outcome.SENT, provider_id="d1.eml", detail=f"wrote {path}")
    seen = seen_in_mime(path.read_bytes())
    assert seen == expected(make_email(1))
    assert parsedate_to_datetime(seen.extra["Date"]) == NOW
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["d1.eml"]  # no temp files left


def test_outbox_rewrite_replaces_whole_file(tmp_path: Path) -> None:
    outbox = OutboxTransport(tmp_path, clock=clock)
    outbox.send([make_email(1)])
    outbox.send([make_email(1, subject="改訂版")])
    assert seen_in_mime((tmp_path / "d1.eml").read_bytes()).subject == "改訂版"


@pytest.mark.parametrize("bad_id", ["../escape", ".hidden", "a/b", "", "x" * 300])
def test_outbox_refuses_unsafe_file_names(tmp_path: Path, bad_id: str) -> None:
    outbox = OutboxTransport(tmp_path / "out", clock=clock)
    [result] = outbox.send([make_email(1, delivery_id=bad_id)])
    assert result.outcome is Outcome.FAILED
    assert list((tmp_path / "out").iterdir()) == []
    assert not (tmp_path / "escape.eml").exists()


def test_outbox_crash_before_rename_leaves_no_partial_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outbox = OutboxTransport(tmp_path, clock=clock)
    outbox.send([make_email(1)])
    before = (tmp_path / "d1.eml").read_bytes()

    def crash(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    results = outbox.send([make_email(1, subject="新"), make_email(2)])
    assert [r.outcome for r in results] == [Outcome.RETRY, Outcome.RETRY]
    assert (tmp_path / "d1.eml").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d1.eml"]


def test_outbox_unusable_directory_is_fatal(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(FatalTransportError, match="DRIP_OUTBOX_DIR"):
        OutboxTransport(blocker / "out").send([make_email(1)])


def test_outbox_date_is_the_moment_the_email_carries(tmp_path: Path) -> None:
    # `drip send --now T` composes emails dated T: the Date header says T, not the wall clock.
    moment = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)
    outbox = OutboxTransport(tmp_path, message_id_domain="drip.test", clock=clock)
    outbox.send([make_email(1, date=moment), make_email(2)])
    dates = [seen_in_mime((tmp_path / f"d{n}.eml").read_bytes()).extra["Date"] for n in (1, 2)]
    assert [parsedate_to_datetime(d) for d in dates] == [moment, NOW]


# --- the outbox's own MIME writer against build_mime + to_bytes ------------------------------

_VARYING = re.compile(rb"(Message-ID: <)[^>]*(>)|(={15})\d+(==)")


def _same_but_ids(data: bytes) -> bytes:
    """The message with its random Message-ID and MIME boundary blanked (they differ per call)."""
    return _VARYING.sub(lambda m: b"".join(g or b"" for g in m.groups()), data)


def _both(email: OutgoingEmail, date: datetime, domain: str) -> tuple[bytes | str, bytes | str]:
    def attempt(make: Callable[[], bytes]) -> bytes | str:
        try:
            return _same_but_ids(make())
        except MimeError as exc:
            return f"MimeError: {exc}"

    slow = attempt(lambda: to_bytes(build_mime(email, date=date, message_id_domain=domain)))
    fast = attempt(lambda: MimeWriter().mime_bytes(email, date=date, message_id_domain=domain))
    return fast, slow


_texts = st.lists(
    st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=20)
    | st.sampled_from(["\r", "\n", "\r\n", "=?", "?=", " ", "\t", ",", '"', "é", "講座", "\x00"])
    | st.just("x" * 100),
    max_size=12,
).map("".join)
_names = st.none() | _texts
_urls = st.builds(
    lambda path, size: f"<https://drip.example.org/u/{path}{'x' * size}>",
    st.from_regex(r"[A-Za-z0-9._~-]{0,40}", fullmatch=True),
    st.sampled_from([0, 10, 60, 900, 1000]),
)
_addresses = st.sampled_from(
    [
        "reader@example.com",
        "a.b+tag@sub.example.co.jp",
        "x" * 60 + "@" + "d" * 60 + ".example",
        "読者@例え.jp",
        "user@bücher.example",
        "not an address",
        "@example.com",
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    to_address=_addresses,
    to_name=_names,
    from_name=_names,
    subject=_texts,
    text=_texts,
    html=_texts,
    unsubscribe=_urls | _texts,
    delivery_id=st.sampled_from(["confirm-1-1796048811", "d1", "", "a b", "x" * 990]),
    domain=st.sampled_from(["drip.test", "example.com", "bad domain", "-x", "a" * 63 + ".jp"]),
    zone=st.sampled_from([UTC, timezone(timedelta(hours=9)), None]),
)
def test_outbox_bytes_equal_build_mime_to_bytes(
    to_address: str,
    to_name: str | None,
    from_name: str | None,
    subject: str,
    text: str,
    html: str,
    unsubscribe: str,
    delivery_id: str,
    domain: str,
    zone: tzinfo | None,
) -> None:
    email = make_email(
        1,
        to_address=to_address,
        to_name=to_name,
        from_name=from_name,
        subject=subject,
        text=text,
        html=html,
        delivery_id=delivery_id,
        headers={
            "List-Unsubscribe": unsubscribe,
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
    )
    date = datetime(2031, 5, 6, 7, 8, 9, tzinfo=zone)
    fast, slow = _both(email, date, domain)
    assert fast == slow


@pytest.mark.parametrize(
    "headers",
    [
        {"Subject": "again"},
        {"list-unsubscribe": "<a>", "List-Unsubscribe": "<b>"},
        {"X-Fine": "ok", "Drip-Delivery-Id": "other"},
        {"Bad Name": "x"},
        {"X-Multi": "a\r\nBcc: victim@example.com"},
    ],
)
def test_outbox_writer_refuses_what_build_mime_refuses(headers: dict[str, str]) -> None:
    fast, slow = _both(make_email(1, headers=headers), NOW, "drip.test")
    assert isinstance(slow, str) and slow.startswith("MimeError")
    assert fast == slow


def test_outbox_writer_reuses_the_folded_sender_and_subject() -> None:
    writer = MimeWriter()
    first = writer.mime_bytes(make_email(1), date=NOW, message_id_domain="drip.test")
    second = writer.mime_bytes(
        make_email(2, subject=make_email(1).subject), date=NOW, message_id_domain="drip.test"
    )
    assert first.split(b"\r\nTo:")[0] == second.split(b"\r\nTo:")[0]
    assert b"To: =?utf-8?b?" in second and b"reader2@example.com" in second
    again = MimeWriter().mime_bytes(
        make_email(2, subject=make_email(1).subject), date=NOW, message_id_domain="drip.test"
    )
    assert _same_but_ids(second) == _same_but_ids(again)


def test_outbox_writer_dates_the_same_moment_in_its_own_zone() -> None:
    # Equal datetimes in two zones are one dict key: the Date header must follow the zone given.
    writer = MimeWriter()
    tokyo = NOW.astimezone(timezone(timedelta(hours=9)))
    for moment in (NOW, tokyo):
        data = writer.mime_bytes(make_email(1), date=moment, message_id_domain="drip.test")
        assert f"\r\nDate: {format_datetime(moment)}\r\n".encode() in data
