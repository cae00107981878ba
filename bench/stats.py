"""`drip stats` at scale: a million subscribers and about ten million provider events.

    .venv/bin/python bench/stats.py [--subscribers N] [--repeat R] [--postgres URL]

Fills a SQLite file in a temporary directory (and, with --postgres, a throw-away database on
that server) with set-based INSERT ... SELECT statements: N subscribers in 8-lesson funnel
shapes (every reader gets lesson 1, fewer get each later one), one ledger row per lesson sent,
and per delivery a 'processed' and a 'delivered' event plus opens (some machine opens), clicks,
bounces and spam reports: about 2.4 events per delivery, 10 million for N = 1,000,000. Then
runs `drip stats --format json` as a real process R times and prints the median and the
slowest wall time, and checks the figures against counts taken directly with SQL.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import Engine, text

from drip.course import load_course
from drip.db import make_engine, upgrade

ROOT = Path(__file__).resolve().parent.parent
COURSE = load_course(ROOT / "course")
# Of every 100 readers, how many got lesson 1..8 (the funnel).
FUNNEL = (100, 92, 81, 70, 60, 49, 40, 33)
T0 = "2026-06-01 00:00:00.000000"


def _series(conn_dialect: str, n: int) -> str:
    """A one-column relation `i` of 1..n."""
    if conn_dialect == "postgresql":
        return f"(SELECT generate_series(1, {n}) AS i) AS n"
    return (
        f"(WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {n})"
        " SELECT i FROM s) AS n"
    )


def fill(engine: Engine, subscribers: int) -> None:
    dialect = engine.dialect.name
    course = COURSE.id
    json_of = "jsonb_build_object" if dialect == "postgresql" else "json_object"
    ts = (lambda s: f"TIMESTAMP '{s}'") if dialect == "postgresql" else (lambda s: f"'{s}'")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO subscribers (id, course_id, email, name, timezone, status,"
                " created_at, consent_at, consent_source, confirmed_at, paused_at,"
                " status_changed_at, confirmation_sent_at, next_lesson, next_send_at,"
                " last_sent_at) SELECT i, :course, 'r' || i || '@example.com', NULL,"
                " 'Asia/Tokyo', CASE WHEN i % 100 < 3 THEN 'unsubscribed'"
                " WHEN i % 100 < 5 THEN 'pending' ELSE 'active' END,"
                f" {ts(T0)}, {ts(T0)}, 'bench', CASE WHEN i % 100 < 5 AND i % 100 >= 3 THEN NULL"
                f" ELSE {ts(T0)} END, NULL, {ts(T0)}, {ts(T0)}, 'rethink', NULL, NULL"
                f" FROM {_series(dialect, subscribers)}"
            ),
            {"course": course},
        )
        for number, (lesson, share) in enumerate(zip(COURSE.lessons, FUNNEL, strict=True)):
            conn.execute(
                text(
                    "INSERT INTO deliveries (id, subscriber_id, course_id, lesson, status, run_id,"
                    " attempts, claimed_at, lease_until, sent_at, provider_id, detail, updated_at)"
                    f" SELECT id * 10 + {number}, id, :course, :lesson, 'sent', 'bench', 1,"
                    f" {ts(T0)}, {ts(T0)}, {ts(T0)}, NULL, NULL, {ts(T0)}"
                    f" FROM subscribers WHERE id % 100 < {share}"
                ),
                {"course": course, "lesson": lesson.slug},
            )
        # Events per delivery: processed and delivered for all; opens for 60 % (a third of
        # them machine opens), clicks for 15 %, a bounce for 1 %, a spam report for 0.2 %.
        kinds = [
            ("processed", "1 = 1", "'{}'"),
            ("delivered", "1 = 1", "'{}'"),
            ("open", "d.id % 10 < 6", f"{json_of}('sg_machine_open', d.id % 3 = 0)"),
            ("click", "d.id % 100 < 15", "'{}'"),
            ("bounce", "d.id % 100 = 99", "'{}'"),
            ("spamreport", "d.id % 1000 = 998", "'{}'"),
        ]
        for kind, where, payload in kinds:
            cast = "::jsonb" if dialect == "postgresql" and payload == "'{}'" else ""
            conn.execute(
                text(
                    "INSERT INTO events (provider, provider_event_id, delivery_id, subscriber_id,"
                    " type, occurred_at, received_at, payload)"
                    f" SELECT 'sendgrid', '{kind}-' || d.id, d.id, d.subscriber_id, '{kind}',"
                    f" {ts(T0)}, {ts(T0)}, {payload}{cast} FROM deliveries d WHERE {where}"
                )
            )
    if dialect == "postgresql":
        with engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE"))
    else:
        with engine.begin() as conn:
            conn.execute(text("ANALYZE"))


def direct_counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            "events": conn.execute(text("SELECT count(*) FROM events")).scalar_one(),
            "sent_welcome": conn.execute(
                text("SELECT count(*) FROM deliveries WHERE lesson = 'welcome'")
            ).scalar_one(),
            "clicked_welcome": conn.execute(
                text(
                    "SELECT count(DISTINCT e.delivery_id) FROM events e JOIN deliveries d"
                    " ON d.id = e.delivery_id WHERE d.lesson = 'welcome' AND e.type = 'click'"
                )
            ).scalar_one(),
        }


def time_stats(url: str, repeat: int) -> tuple[list[float], dict[str, object]]:
    env = {
        **os.environ,
        "DRIP_DATABASE_URL": url,
        "DRIP_COURSE_DIR": str(ROOT / "course"),
        "DRIP_TEMPLATES_DIR": str(ROOT / "templates" / "email"),
    }
    times = []
    report: dict[str, object] = {}
    for _ in range(repeat):
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "drip", "stats", "--format", "json"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        times.append(time.perf_counter() - started)
        report = json.loads(done.stdout)
    return times, report


def run(url: str, subscribers: int, repeat: int) -> None:
    upgrade(url)
    engine = make_engine(url)
    try:
        started = time.perf_counter()
        fill(engine, subscribers)
        filled = time.perf_counter() - started
        counts = direct_counts(engine)
    finally:
        engine.dispose()
    times, report = time_stats(url, repeat)
    lessons = report["lessons"]
    assert isinstance(lessons, list)
    assert lessons[0]["sent"] == counts["sent_welcome"], (lessons[0], counts)
    assert lessons[0]["clicked"] == counts["clicked_welcome"], (lessons[0], counts)
    backend = url.split(":", 1)[0]
    print(
        f"{backend}: {subscribers:,} subscribers, {counts['events']:,} events (filled in"
        f" {filled:.0f} s); drip stats median {statistics.median(times):.2f} s, slowest"
        f" {max(times):.2f} s over {repeat} runs; figures match direct SQL counts"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--postgres",
        help="an admin URL, e.g. postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        run(f"sqlite:///{Path(directory) / 'stats.db'}", args.subscribers, args.repeat)
    if args.postgres:
        import psycopg

        admin = args.postgres.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("DROP DATABASE IF EXISTS drip_bench_stats")
            conn.execute("CREATE DATABASE drip_bench_stats")
        try:
            url = args.postgres.rsplit("/", 1)[0] + "/drip_bench_stats"
            run(url, args.subscribers, args.repeat)
        finally:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute("DROP DATABASE IF EXISTS drip_bench_stats WITH (FORCE)")


if __name__ == "__main__":
    main()
