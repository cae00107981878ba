"""The web figures while a `drip send` of 100,000 runs on the same database (issue 11, target 6).

    .venv/bin/python bench/under_send.py                  # SQLite, then PostgreSQL
    .venv/bin/python bench/under_send.py --only sqlite --readers 20000 --seconds 5
    .venv/bin/python bench/under_send.py --send-nice 10   # the send under `nice -n 10`

For each database (a SQLite file in a temporary directory; a throw-away PostgreSQL database
`drip_bench_under_send` on 127.0.0.1:5432, dropped at the end): fills `--readers` readers due
(bench/run.py's fill) and 20,000 readers with a sent delivery each for the webhook's events,
starts the fake SendGrid API (bench/fake_provider.py, 50 ms latency), a signup server (`drip
serve --workers 2`, as bench/signup.py) and a webhook server (`drip serve --workers 1 --threads
1`, as bench/webhook.py), both on that database (--web-sends: the signup server's
DRIP_WEB_SENDS). It measures the signups (wrk and
bench/signup.lua through bench/signup.py's functions) and the webhook ingestion (signed 1,000-event
batches made by bench/webhook.py's functions) first with nothing else running, then again once
`drip send` is sending (the provider has accepted its first emails). It prints both side by side,
each against its target, the servers' CPU per request or per 1,000 events, and the send's
emails/s, duplicates and losses (as the fake provider counts them; 0 and 0 expected). A web
measurement that ended after the send finished is flagged: it did not overlap entirely.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import signup
import webhook
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from run import NOW, Provider, environment, fill

from drip.course import load_course
from drip.db import upgrade

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_NAME = "drip_bench_under_send"
PG_URL = f"postgresql+psycopg://postgres@127.0.0.1:5432/{PG_NAME}"
TARGET_EVENTS = 20_000.0
WEBHOOK_READERS = 20_000


def seed_webhook_targets(url: str, course_id: str, count: int) -> list[tuple[int, str]]:
    """`count` readers (not due) with one sent delivery each: [(delivery id, email)], the
    events' targets. Addresses of their own: the due readers are reader<i>@example.com."""
    return webhook.seed(url, course_id, count, prefix="hook")


class Webhook:
    """A webhook server (bench/webhook.py's configuration) and the posters that feed it."""

    def __init__(self, url: str, work: Path, targets: list[tuple[int, str]]) -> None:
        self.url = url
        self.targets = targets
        self.key = ec.generate_private_key(ec.SECP256R1())
        public = self.key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        self.port = webhook.free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("DRIP_")}
        env.update(
            DRIP_DATABASE_URL=url,
            DRIP_SECRET_KEY="bench-under-send-webhook-key-0123456789abcdef",
            DRIP_SENDGRID_WEBHOOK_KEY=base64.b64encode(public).decode(),
            DRIP_COURSE_DIR=str(ROOT / "course"),
            DRIP_TEMPLATES_DIR=str(ROOT / "templates" / "email"),
            DRIP_WEB_TEMPLATES_DIR=str(ROOT / "templates" / "web"),
            DRIP_OUTBOX_DIR=str(work / "webhook-outbox"),
            DRIP_TRANSPORT="outbox",
            PYTHONPATH=str(ROOT / "src"),
        )
        self.log = (work / "webhook.log").open("w")
        command = [sys.executable, "-m", "drip", "serve", "--port", str(self.port)]
        self.server = subprocess.Popen(
            [*command, "--workers", "1", "--threads", "1"],
            env=env,
            cwd=work,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        webhook.wait_ready(self.port, self.server)
        self.rounds = 0

    def measure(self, repeats: int, batches: int) -> dict[str, Any]:
        """`repeats` x `batches` signed 1,000-event batches, one connection: the median
        events/s of the repeats and the server's CPU per 1,000 events."""
        poster = webhook.Poster(self.port, self.key)
        rates = []
        cpu_before = signup._cpu(self.server.pid)
        for _ in range(repeats):
            self.rounds += 1
            bodies = webhook.make_batches(self.targets, batches, 1000, f"u{self.rounds}")
            started = time.perf_counter()
            webhook.post_all([poster], bodies, 1000)
            rates.append(batches * 1000 / (time.perf_counter() - started))
        # The server's own processes only: on PostgreSQL, webhook.server_cpu_seconds would add
        # every backend of the database, the send's and the signups' included.
        cpu = signup._cpu(self.server.pid) - cpu_before
        rates.sort()
        return {
            "events_per_s": round(rates[len(rates) // 2]),
            "events_per_s_runs": [round(rate) for rate in rates],
            "server_cpu_ms_per_1000_events": round(cpu * 1000 / (repeats * batches), 1),
        }

    def stop(self) -> str:
        self.server.terminate()
        self.server.wait(30)
        self.log.close()
        return Path(self.log.name).read_text()


class Signups:
    """A signup server (bench/signup.py's configuration: 2 sync workers)."""

    def __init__(self, url: str, work: Path, clients: int, web_sends: str) -> None:
        self.work = work / "signup"
        self.work.mkdir()
        env = signup._env(self.work, url, web_sends, ROOT)
        self.server, self.port = signup._serve(self.work, env, 2, 1)
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=10) as page:
            match = re.search(r'name="form_token" value="([^"]+)"', page.read().decode())
        assert match, "no form token on the signup page"
        self.token = match.group(1)
        self.clients = clients
        self.rounds = 0

    def measure(self, seconds: float) -> dict[str, Any]:
        """A 2-second warm-up, then `seconds` of wrk: requests/s, p50/p99/max in ms, the
        server's CPU per request."""
        self.rounds += 1
        signup._wrk(self.port, self.token, signup.WARM_UP, self.clients, f"w{self.rounds}", False)
        cpu_before = signup._cpu(self.server.pid)
        stats = signup._wrk(self.port, self.token, seconds, self.clients, f"m{self.rounds}", False)
        cpu = signup._cpu(self.server.pid) - cpu_before
        window = stats["duration_us"] / 1e6
        return {
            "requests_per_s": round(stats["requests"] / window, 1),
            "p50_ms": round(stats["p50_us"] / 1000, 1),
            "p99_ms": round(stats["p99_us"] / 1000, 1),
            "max_ms": round(stats["max_us"] / 1000, 1),
            "server_cpu_ms_per_request": round(cpu * 1000 / max(1, stats["requests"]), 2),
        }

    def stop(self) -> str:
        self.server.send_signal(signal.SIGTERM)
        self.server.wait(60)
        return (self.work / "serve.log").read_text()


def web_figures(
    signups: Signups, hooks: Webhook, args: argparse.Namespace, send: subprocess.Popen[bytes] | None
) -> dict[str, Any]:
    """The signup and webhook figures, one after the other; with `send`, whether it was still
    running at the end of each (else that figure overlapped the send only in part)."""
    figures: dict[str, Any] = {"load_average_before": round(os.getloadavg()[0], 2)}
    figures["signup"] = signups.measure(args.seconds)
    figures["signup"]["overlapped"] = send is None or send.poll() is None
    figures["webhook"] = hooks.measure(args.repeats, args.batches)
    figures["webhook"]["overlapped"] = send is None or send.poll() is None
    figures["load_average_after"] = round(os.getloadavg()[0], 2)
    return figures


def wait_for_first_emails(provider: Provider, send: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while provider.stats()["emails"] == 0:
        if send.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("drip send sent nothing")
        time.sleep(0.1)


def run_database(name: str, url: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    course = load_course(ROOT / "course")
    upgrade(url)
    started = time.perf_counter()
    fill(url, args.readers, args.readers)
    targets = seed_webhook_targets(url, course.id, WEBHOOK_READERS)
    print(f"{name}: filled in {time.perf_counter() - started:.0f} s", flush=True)
    provider = Provider(args.latency)
    signups = hooks = None
    try:
        signups = Signups(url, work, args.clients, args.web_sends)
        hooks = Webhook(url, work, targets)
        quiet = web_figures(signups, hooks, args, None)
        provider.reset()
        send_log = (work / f"send-{name}.log").open("w")
        began = time.perf_counter()
        drip_send = [sys.executable, "-m", "drip", "send", "--json", "--now", NOW.isoformat()]
        send = subprocess.Popen(
            [*nice(args.send_nice), *drip_send],
            env=environment(url, provider),
            cwd=work,
            stdout=subprocess.PIPE,
            stderr=send_log,
        )
        wait_for_first_emails(provider, send)
        during = web_figures(signups, hooks, args, send)
        out, _ = send.communicate(timeout=3600)
        wall = time.perf_counter() - began
        if send.returncode != 0:
            raise SystemExit(f"drip send failed ({send.returncode}); see {send_log.name}")
        report = json.loads(out)
        stats = provider.stats()
    finally:
        logs = [part.stop() for part in (signups, hooks) if part is not None]
        provider.stop()
    errors = sum(log.count("Traceback") + log.count("database is locked") for log in logs)
    return {
        "database": name,
        "readers_due": args.readers,
        "web_sends": args.web_sends,
        "without_send": quiet,
        "with_send": during,
        "send": {
            "nice": args.send_nice,
            "wall_s": round(wall, 1),
            "emails": stats["emails"],
            "emails_per_s": round(stats["emails"] / wall, 1),
            "sent_reported": report["sent"],
            "duplicates": stats["duplicates"],
            "losses": args.readers - stats["distinct"],
            "invalid": stats["invalid"],
            "in_doubt": report["in_doubt"],
        },
        "server_log_errors": errors,
    }


def nice(niceness: int) -> list[str]:
    """The command prefix that runs the send at `niceness` (none for 0)."""
    return ["nice", "-n", str(niceness)] if niceness else []


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def print_result(result: dict[str, Any]) -> None:
    quiet, during, send = result["without_send"], result["with_send"], result["send"]
    print(
        f"\n{result['database']}: {result['readers_due']:,} readers due,"
        f" signup server DRIP_WEB_SENDS={result['web_sends']}"
    )
    print(f"{'':38} {'without the send':>22} {'during the send':>22}")
    rows = [
        ("signup requests/s (>= 500)", "signup", "requests_per_s"),
        ("signup p99 ms (< 100)", "signup", "p99_ms"),
        ("signup median ms", "signup", "p50_ms"),
        ("signup server CPU ms/request", "signup", "server_cpu_ms_per_request"),
        ("webhook events/s (>= 20,000)", "webhook", "events_per_s"),
        ("webhook server CPU ms/1,000 events", "webhook", "server_cpu_ms_per_1000_events"),
    ]
    for label, part, key in rows:
        print(f"{label:38} {quiet[part][key]:>22} {during[part][key]:>22}")
    for label, figures in (("without", quiet), ("during", during)):
        signup_met = (
            figures["signup"]["requests_per_s"] >= signup.TARGET_RATE
            and figures["signup"]["p99_ms"] < signup.TARGET_P99_MS
        )
        hook_met = figures["webhook"]["events_per_s"] >= TARGET_EVENTS
        overlap = (
            ""
            if figures["signup"]["overlapped"] and figures["webhook"]["overlapped"]
            else (" (the send ended before a measurement did: partial overlap)")
        )
        print(
            f"  {label} the send: signup target {verdict(signup_met)}, webhook target"
            f" {verdict(hook_met)}; load average {figures['load_average_before']}"
            f" -> {figures['load_average_after']}{overlap}"
        )
    print(
        f"  the send: {send['emails']:,} emails in {send['wall_s']} s, {send['emails_per_s']:,}"
        f" emails/s, duplicates {send['duplicates']}, losses {send['losses']}, in doubt"
        f" {send['in_doubt']}, invalid {send['invalid']}; server log errors"
        f" {result['server_log_errors']}"
    )


def _postgres(create: bool) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {PG_NAME} WITH (FORCE)")
        if create:
            conn.execute(f"CREATE DATABASE {PG_NAME}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--readers", type=int, default=100_000, help="readers due for the send")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds of wrk")
    parser.add_argument("--clients", type=int, default=16, help="wrk connections")
    parser.add_argument("--repeats", type=int, default=3, help="webhook repeats")
    parser.add_argument("--batches", type=int, default=10, help="1,000-event batches per repeat")
    parser.add_argument("--latency", type=float, default=0.05, help="the fake provider's")
    parser.add_argument(
        "--web-sends",
        choices=["now", "queue"],
        default="now",
        help="DRIP_WEB_SENDS of the signup server (now: the default setting, it sends the"
        " confirmation emails itself; queue: the next drip send does)",
    )
    parser.add_argument(
        "--send-nice",
        type=int,
        default=0,
        help="run the send under `nice -n N` (the web servers keep nice 0), as the README advises"
        " for a host that serves the web app too",
    )
    parser.add_argument("--only", choices=["sqlite", "postgresql"])
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    results = []
    for name in ("sqlite", "postgresql"):
        if args.only not in (None, name):
            continue
        work = Path(tempfile.mkdtemp(prefix=f"drip-bench-under-send-{name}-"))
        try:
            if name == "sqlite":
                result = run_database(name, f"sqlite:///{work / 'drip.db'}", work, args)
            else:
                _postgres(create=True)
                try:
                    result = run_database(name, PG_URL, work, args)
                finally:
                    _postgres(create=False)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print_result(result)
        results.append(result)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
