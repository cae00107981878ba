"""Benchmark of the SendGrid Event Webhook: signed 1,000-event batches posted to a real server.

    .venv/bin/python bench/webhook.py [--database-url URL] [--batches 20] [--repeats 5]
        [--clients 1] [--workers 1 --threads 1]

Starts `drip serve --workers 1 --threads 1` (gunicorn, one process, one thread: the target is
per process; `--workers`/`--threads` change it) on loopback against a SQLite file in a
temporary directory (or `--database-url`, e.g. an empty PostgreSQL database: it is upgraded
and filled), with `subscribers` readers and
one sent delivery each. Then, `repeats` times, posts `batches` batches of `events` events one
after another over HTTP, each signed just before it is sent (ECDSA P-256 with a key made here),
and prints the events per second of each repeat and their median (wall time of the whole
repeat: signing, HTTP, verification, parsing, storing and applying). With `--clients N` the
batches are posted from N connections at once (SendGrid posts concurrently too), each signing
its own. It also prints the CPU time `drip serve` (and, on PostgreSQL, the database's server
processes) spent per 1,000 events (in total and each part), which the other jobs on the machine
change less than the wall time. Every event is new (unique sg_event_id); per 1,000: 400
processed, 350 delivered, 150 open, 80 click, 10 bounce, 10 spamreport, all naming real
deliveries. A last pass posts one batch again to show the redelivery path, and the script
checks the events table holds exactly what was posted.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import func, insert, select, text

from drip.course import load_course
from drip.db import make_engine, upgrade
from drip.models import deliveries, events, subscribers
from drip.transports.sendgrid.events import SIGNATURE_HEADER, TIMESTAMP_HEADER

ROOT = Path(__file__).resolve().parents[1]
BOUNCE = {"type": "bounce", "reason": "550 5.1.1 no such user"}
MIX = [
    ("processed", 400),
    ("delivered", 350),
    ("open", 150),
    ("click", 80),
    ("bounce", 10),
    ("spamreport", 10),
]


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all cores, /proc/stat: not idle, iowait):
    the benchmark shares the machine, so each figure says how busy it was."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy = sum(ticks[:8]) - ticks[3] - ticks[4]  # guest time is already counted in user time
    return busy / os.sysconf("SC_CLK_TCK")


def _process_cpu(pid: int) -> float:
    """utime + stime of one process (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_cpu_seconds(server_pid: int, database_url: str) -> tuple[float, float]:
    """CPU seconds used so far by `drip serve` (gunicorn's master and workers) and, for
    PostgreSQL, by the server processes of its database (else 0): the work per event whatever
    else the machine is doing."""
    pids = [server_pid]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == server_pid:
                pids.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    backends: list[int] = []
    if database_url.startswith("postgresql"):
        engine = make_engine(database_url)
        try:
            with engine.connect() as conn:
                backends += conn.execute(
                    text(
                        "SELECT pid FROM pg_stat_activity"
                        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                ).scalars()
        finally:
            engine.dispose()
    return sum(map(_process_cpu, pids)), sum(map(_process_cpu, backends))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def seed(url: str, course_id: str, readers: int, prefix: str = "reader") -> list[tuple[int, str]]:
    """`readers` active subscribers (`prefix`<i>@example.com) with one sent delivery each, on a
    database without other deliveries: [(delivery id, email)]."""
    upgrade(url)
    engine = make_engine(url)
    now = datetime.now(UTC)
    rows = [
        {
            "course_id": course_id,
            "email": f"{prefix}{i}@example.com",
            "timezone": "Asia/Tokyo",
            "status": "active",
            "created_at": now,
            "consent_at": now,
            "consent_source": "bench",
            "status_changed_at": now,
            "next_lesson": "rethink",
        }
        for i in range(readers)
    ]
    with engine.begin() as conn:
        conn.execute(insert(subscribers), rows)
        ids = dict(
            conn.execute(
                select(subscribers.c.email, subscribers.c.id).where(
                    subscribers.c.email.like(f"{prefix}%")
                )
            ).all()
        )
        conn.execute(
            insert(deliveries),
            [
                {
                    "subscriber_id": ids[row["email"]],
                    "course_id": course_id,
                    "lesson": "welcome",
                    "status": "sent",
                    "run_id": "bench",
                    "attempts": 1,
                    "claimed_at": now,
                    "lease_until": now,
                    "sent_at": now,
                    "updated_at": now,
                }
                for row in rows
            ],
        )
        found = conn.execute(
            select(deliveries.c.id, subscribers.c.email).join(
                subscribers, subscribers.c.id == deliveries.c.subscriber_id
            )
        ).all()
    engine.dispose()
    return [(int(delivery_id), str(email)) for delivery_id, email in found]


def make_batches(targets: list[tuple[int, str]], count: int, size: int, prefix: str) -> list[bytes]:
    kinds = [kind for kind, share in MIX for _ in range(share * size // 1000)]
    kinds += ["delivered"] * (size - len(kinds))
    stamp = int(time.time())
    batches = []
    cursor = 0
    for number in range(count):
        items = []
        for index, kind in enumerate(kinds):
            delivery_id, email = targets[cursor % len(targets)]
            cursor += 1
            items.append(
                {
                    "email": email,
                    "timestamp": stamp,
                    "event": kind,
                    "sg_event_id": f"{prefix}-{number}-{index}",
                    "sg_message_id": f"msg{delivery_id}.filter0001.16648.5515E0B88.0",
                    "smtp-id": f"<{delivery_id}@ismtpd-555>",
                    "category": ["drip"],
                    "drip_delivery_id": str(delivery_id),
                    "drip_lesson": "welcome",
                    "drip_subscriber": str(delivery_id),
                    **({"useragent": "Mozilla/5.0", "ip": "192.0.2.1"} if kind == "open" else {}),
                    **({"url": "https://drip.example.jp/m/x"} if kind == "click" else {}),
                    **(BOUNCE if kind == "bounce" else {}),
                }
            )
        batches.append(orjson.dumps(items))
    return batches


class Poster:
    def __init__(self, port: int, key: ec.EllipticCurvePrivateKey) -> None:
        self.port = port
        self.key = key
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def post(self, body: bytes) -> dict[str, object]:
        timestamp = str(int(time.time()))
        signature = self.key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        headers = {
            SIGNATURE_HEADER: base64.b64encode(signature).decode(),
            TIMESTAMP_HEADER: timestamp,
            "Content-Type": "application/json",
        }
        for attempt in range(2):
            try:
                self.connection.request("POST", "/webhooks/sendgrid", body=body, headers=headers)
                response = self.connection.getresponse()
                answer = response.read()
                break
            except (ConnectionError, http.client.HTTPException):
                # gunicorn may close a kept-alive connection between requests: reconnect once.
                self.connection.close()
                self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                if attempt:
                    raise
        if response.status != 200:
            raise SystemExit(f"webhook answered {response.status}: {answer[:200]!r}")
        result: dict[str, object] = json.loads(answer)
        return result


def post_all(posters: list[Poster], batches: list[bytes], size: int) -> None:
    """Post every batch, each poster its share on its own connection, all at once."""
    failures: list[BaseException] = []

    def share(poster: Poster, mine: list[bytes]) -> None:
        try:
            for body in mine:
                answer = poster.post(body)
                assert answer["stored"] == size, answer
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    if len(posters) == 1:
        share(posters[0], batches)
    else:
        threads = [
            threading.Thread(target=share, args=(poster, batches[index :: len(posters)]))
            for index, poster in enumerate(posters)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    if failures:
        raise failures[0]


def wait_ready(port: int, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"drip serve exited with {server.returncode}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/healthz")
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit("drip serve did not become ready in 60 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", help="an empty database (default: a SQLite file)")
    parser.add_argument("--batches", type=int, default=20, help="batches per repeat")
    parser.add_argument("--events", type=int, default=1000, help="events per batch")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--subscribers", type=int, default=20_000)
    parser.add_argument("--clients", type=int, default=1, help="connections posting at once")
    parser.add_argument("--workers", type=int, default=1, help="drip serve --workers")
    parser.add_argument("--threads", type=int, default=1, help="drip serve --threads")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="drip-webhook-bench-"))
    url = args.database_url or f"sqlite:///{work / 'bench.db'}"
    course = load_course(ROOT / "course")
    targets = seed(url, course.id, args.subscribers)
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIP_")}
    env.update(
        DRIP_DATABASE_URL=url,
        DRIP_SECRET_KEY=secrets.token_urlsafe(32),
        DRIP_SENDGRID_WEBHOOK_KEY=base64.b64encode(public).decode(),
        DRIP_COURSE_DIR=str(ROOT / "course"),
        DRIP_TEMPLATES_DIR=str(ROOT / "templates" / "email"),
        DRIP_WEB_TEMPLATES_DIR=str(ROOT / "templates" / "web"),
        DRIP_OUTBOX_DIR=str(work / "outbox"),
        DRIP_TRANSPORT="outbox",
    )
    drip = Path(sys.executable).with_name("drip")
    command = [str(drip), "serve", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--workers", str(args.workers), "--threads", str(args.threads)]
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_ready(port, server)
        posters = [Poster(port, key) for _ in range(args.clients)]
        poster = posters[0]
        rates = []
        posted = 0
        busy_before, wall_before = machine_busy_seconds(), time.perf_counter()
        serve_before, database_before = server_cpu_seconds(server.pid, url)
        for repeat in range(args.repeats):
            batches = make_batches(targets, args.batches, args.events, f"r{repeat}")
            started = time.perf_counter()
            post_all(posters, batches, args.events)
            elapsed = time.perf_counter() - started
            posted += args.batches * args.events
            rates.append(args.batches * args.events / elapsed)
            print(f"repeat {repeat + 1}: {rates[-1]:,.0f} events/s ({elapsed:.2f} s)", flush=True)
        serve_after, database_after = server_cpu_seconds(server.pid, url)
        serve_cpu, database_cpu = serve_after - serve_before, database_after - database_before
        busy = (machine_busy_seconds() - busy_before) / (time.perf_counter() - wall_before)
        started = time.perf_counter()
        again = poster.post(batches[0])
        redelivery = time.perf_counter() - started
        assert again["stored"] == 0, again
        engine = make_engine(url)
        with engine.connect() as conn:
            stored = conn.execute(select(func.count()).select_from(events)).scalar_one()
        engine.dispose()
        assert stored == posted, (stored, posted)
        summary = {
            "database": url.split(":", 1)[0],
            "clients": args.clients,
            "serve": f"--workers {args.workers} --threads {args.threads}",
            "events_per_batch": args.events,
            "batches_per_repeat": args.batches,
            "events_per_second": [round(rate) for rate in rates],
            "median_events_per_second": round(statistics.median(rates)),
            "redelivered_batch_seconds": round(redelivery, 3),
            "stored": stored,
            "server_cpu_ms_per_1000_events": round((serve_cpu + database_cpu) * 1e6 / posted, 1),
            "serve_cpu_ms_per_1000_events": round(serve_cpu * 1e6 / posted, 1),
            "database_cpu_ms_per_1000_events": round(database_cpu * 1e6 / posted, 1),
            "machine_busy_cores": round(busy, 2),
            "load_average_1min": round(os.getloadavg()[0], 2),
        }
        print(json.dumps(summary))
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(work, ignore_errors=True)  # the SQLite file and the outbox


if __name__ == "__main__":
    main()
