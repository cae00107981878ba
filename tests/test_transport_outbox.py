"""The outbox transport: one .eml file per email, written atomically."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest
from tests.transport_support import NOW, clock, expected, make_email, seen_in_mime

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
