"""Run the `drip` command line in a process that stops at one step of a send, so a test can kill
(SIGKILL) or signal (SIGTERM) it exactly there.

    PAUSE_AT=render:6 PAUSE_FILE=/tmp/x python -m tests.pause_points send --now ...

`PAUSE_AT` is `STEP:N`: the N-th time the process reaches STEP it writes STEP to `PAUSE_FILE`
and waits (until the file `PAUSE_RELEASE` exists, or for `PAUSE_SECONDS`, default 120). Steps:

    claim      inside `store.claim_due`'s transaction, after its statements ran, before the
               commit (the claim is made but not yet visible to anyone)
    render     just before `delivery.compose` (or `compose_reader`, for a transport that fills
               bulk parts) renders the N-th claimed email of the run
    hand-over  just before `transport.submit` gets the N-th window: the window is committed
               'sending', not one byte of it was sent
    record     inside the transaction recording the N-th accepted window, after
               `store.record_sent` ran, before the commit

Without `PAUSE_AT` this is `python -m drip`. The pause wraps drip's own functions and changes
nothing else: the process is stopped exactly where a crash could stop it.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

STEPS = ("claim", "render", "hand-over", "record")


def pause(step: str) -> None:
    """Say where we are (PAUSE_FILE), then wait for PAUSE_RELEASE or PAUSE_SECONDS."""
    Path(os.environ["PAUSE_FILE"]).write_text(step, encoding="utf-8")
    release = os.environ.get("PAUSE_RELEASE")
    deadline = time.monotonic() + float(os.environ.get("PAUSE_SECONDS", "120"))
    while time.monotonic() < deadline:
        if release and Path(release).exists():
            return
        time.sleep(0.01)


def counted(
    step: str, target: int, function: Callable[..., Any], *, after: bool
) -> Callable[..., Any]:
    """`function`, pausing at its `target`-th call, before it runs or (`after`) once it ran."""
    calls = 0

    @wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == target and not after:
            pause(step)
        result = function(*args, **kwargs)
        if calls == target and after:
            pause(step)
        return result

    return wrapper


def install(spec: str) -> None:
    """Wrap the function of the step `spec` ('STEP:N') names."""
    import drip.cli
    import drip.delivery
    import drip.store
    import drip.transports

    step, _, number = spec.partition(":")
    target = int(number or "1")
    if step == "claim":
        drip.store.claim_due = counted(step, target, drip.store.claim_due, after=True)
    elif step == "render":
        drip.delivery.compose = counted(step, target, drip.delivery.compose, after=False)
        # A transport that fills bulk parts gets its window composed reader by reader.
        drip.delivery.compose_reader = counted(
            step, target, drip.delivery.compose_reader, after=False
        )
    elif step == "record":
        drip.store.record_sent = counted(step, target, drip.store.record_sent, after=True)
    elif step == "hand-over":
        make = drip.transports.make_transport

        def make_transport(*args: Any, **kwargs: Any) -> Any:
            transport = make(*args, **kwargs)
            transport.submit = counted(step, target, transport.submit, after=False)
            return transport

        drip.transports.make_transport = make_transport
    else:
        raise SystemExit(f"PAUSE_AT: unknown step {step!r}; one of {', '.join(STEPS)}")


def main() -> None:
    from drip.cli import main as drip_main

    spec = os.environ.get("PAUSE_AT")
    if spec:
        install(spec)
    drip_main(sys.argv[1:], prog_name="drip")


if __name__ == "__main__":
    main()
