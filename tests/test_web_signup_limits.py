"""The rate limits' in-memory storage (`security.SweptMemoryStorage`, DRIP_RATELIMIT_STORAGE_URL
=memory://): counts as limits' own does, drops expired counters without a thread per count."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from limits import parse
from limits.storage import MemoryStorage, storage_from_string
from limits.strategies import FixedWindowRateLimiter
from tests.web_support import AppFactory

from drip.web.security import SweptMemoryStorage

PER_SECOND = parse("1 per second")
PER_HOUR = parse("2 per hour")


def test_the_default_storage_of_an_app_is_the_swept_one(
    make_app: AppFactory, database_url: str, tmp_path: Path
) -> None:
    app = make_app(database_url, tmp_path)
    assert isinstance(app.extensions["drip.limiter"].limiter.storage, SweptMemoryStorage)
    other = make_app(database_url, tmp_path, ratelimit_storage_url="memory://?x=1")
    assert isinstance(other.extensions["drip.limiter"].limiter.storage, SweptMemoryStorage)


def test_limits_hold_and_windows_reopen_as_with_the_stock_storage() -> None:
    storage = storage_from_string("drip-memory://")
    assert isinstance(storage, SweptMemoryStorage)
    rates = FixedWindowRateLimiter(storage)
    assert [rates.hit(PER_HOUR, "ip", "10.0.0.1") for _ in range(3)] == [True, True, False]
    assert rates.hit(PER_HOUR, "ip", "10.0.0.2")  # another key has its own count
    assert rates.hit(PER_SECOND, "ip", "10.0.0.1")
    assert not rates.hit(PER_SECOND, "ip", "10.0.0.1")
    time.sleep(1.1)
    assert rates.hit(PER_SECOND, "ip", "10.0.0.1")  # a new window
    assert not rates.hit(PER_HOUR, "ip", "10.0.0.1")  # the hourly one still counts


def test_expired_counters_are_dropped_and_live_ones_kept() -> None:
    storage = SweptMemoryStorage("drip-memory://")
    storage.SWEEP_SECONDS = 0.0  # sweep at every count
    rates = FixedWindowRateLimiter(storage)
    for n in range(50):
        rates.hit(PER_SECOND, "short", str(n))
        rates.hit(PER_HOUR, "long", str(n))
    assert len(storage.expirations) == 100
    time.sleep(1.1)
    rates.hit(PER_HOUR, "long", "new")  # the count that finds the sweep due
    kept = set(storage.expirations)
    assert not any("short" in key for key in kept)
    assert len(kept) == 51 and len(storage.storage) == 51
    assert rates.hit(PER_HOUR, "long", "7")
    assert not rates.hit(PER_HOUR, "long", "7")  # its first count survived the sweep


def test_the_stock_storage_starts_a_thread_per_burst_of_counts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What SweptMemoryStorage replaces (if limits changes this, the class may go)."""
    assert _timers_started(monkeypatch, MemoryStorage) > 0


def test_the_swept_storage_starts_no_thread_when_counting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert _timers_started(monkeypatch, SweptMemoryStorage) == 0


def _timers_started(monkeypatch: pytest.MonkeyPatch, storage_class: type[MemoryStorage]) -> int:
    storage = storage_class("memory://")
    time.sleep(0.05)  # the timer every MemoryStorage starts when built
    started: list[object] = []
    real_start = threading.Timer.start

    def counting_start(timer: Any) -> None:
        started.append(timer)
        real_start(timer)

    monkeypatch.setattr(threading.Timer, "start", counting_start)
    rates = FixedWindowRateLimiter(storage)
    for n in range(200):
        rates.hit(PER_HOUR, "ip", str(n))
        if n % 50 == 0:
            time.sleep(0.03)  # the stock timer has fired: the next count starts another
    return len(started)
