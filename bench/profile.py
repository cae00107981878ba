"""Profile one `drip send` against the fake provider: where the CPU of each thread goes.

    .venv/bin/python bench/profile.py --due 20000            # per-recipient, SQLite
    .venv/bin/python bench/profile.py --due 50000 --bulk     # DRIP_BULK=auto
    .venv/bin/python bench/profile.py --postgres             # the drip_bench database

Fills a SQLite database in a temporary directory (or PostgreSQL, as bench/run.py does), starts
bench/fake_provider.py (50 ms) and runs `drip send` under `py-spy record` (all threads of it and
of its sending process, native frames off) when py-spy is installed (`pip install py-spy`), else
under cProfile (main thread). Prints the top functions by own time and the emails/s of the
profiled run (slower than unprofiled).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

# bench/run.py: this script's directory is on sys.path when it runs as `python bench/profile.py`.
from run import (
    NOW,
    ROOT,
    Provider,
    environment,
    fill,
    postgres_database,
    sqlite_template,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--due", type=int, default=20_000)
    parser.add_argument("--bulk", action="store_true")
    parser.add_argument("--postgres", action="store_true")
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--output", default="", help="also keep the raw profile here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="drip-profile-") as tmp, ExitStack() as stack:
        directory = Path(tmp)
        if args.postgres:
            url = stack.enter_context(postgres_database())
            fill(url, args.due, args.due)
        else:
            url = f"sqlite:///{sqlite_template(directory, 'profile', args.due, args.due)}"
        provider = Provider(args.latency)
        try:
            extra = {"DRIP_BULK": "auto"} if args.bulk else {}
            env = environment(url, provider, **extra)
            send = [sys.executable, "-m", "drip", "send", "--json", "--now", NOW.isoformat()]
            raw = Path(args.output) if args.output else directory / "profile.txt"
            spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
            if Path(spy).exists():
                threads = ["--threads", "--subprocesses"]  # its sending process too
                command = [spy, "record", "-f", "raw", "-o", str(raw), *threads, "--"]
            else:
                raw = raw.with_suffix(".pstats")
                command = [sys.executable, "-m", "cProfile", "-o", str(raw), "-m", "drip"]
                send = send[2:]
            started = time.perf_counter()
            subprocess.run([*command, *send], env=env, cwd=ROOT, check=True, capture_output=True)
            wall = time.perf_counter() - started
            print(f"{provider.stats()['emails']:,} emails in {wall:.2f} s (profiled)")
        finally:
            provider.stop()
        if raw.suffix == ".pstats":
            import pstats

            pstats.Stats(str(raw)).sort_stats("tottime").print_stats(args.top)
        else:
            print_top(raw, args.top)


def print_top(raw: Path, top: int) -> None:
    """Own samples per (thread, function) from py-spy's collapsed-stack output."""
    own: dict[tuple[str, str], int] = {}
    total: dict[str, int] = {}
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        # "function (file:line)" -> "function (file)": own time per function, not per line.
        thread, leaf = frames[0], re.sub(r":\d+\)$", ")", frames[-1])
        if thread.startswith("process") and len(frames) > 1:
            # --subprocesses: the sending process's threads apart from drip send's own.
            thread = f"{thread.split(':', 1)[0]} {frames[1]}"
        own[thread, leaf] = own.get((thread, leaf), 0) + int(count)
        total[thread] = total.get(thread, 0) + int(count)
    for thread, samples in sorted(total.items(), key=lambda item: -item[1]):
        print(f"\n{thread}: {samples} samples")
        mine = sorted(((n, f) for (t, f), n in own.items() if t == thread), reverse=True)
        for n, function in mine[:top]:
            print(f"  {100 * n / samples:5.1f}%  {function}")


if __name__ == "__main__":
    main()
