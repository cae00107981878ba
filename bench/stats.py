"""`drip stats` at scale: a million subscribers and about ten million provider events.

    .venv/bin/python bench/stats.py [--subscribers N] [--repeat R] [--postgres URL] [--skip-sqlite]

Fills a SQLite file in a temporary directory (and, with --postgres, a throw-away database on
that server) with set-based INSERT ... SELECT statements: N subscribers signed up over a year
in 8-lesson funnel shapes (every reader gets lesson 1, fewer get each later one), one ledger
row per lesson sent (with its event_flags, as the webhook sets them), and per delivery a
'processed' and a 'delivered' event plus opens (a third machine opens), clicks, bounces and
spam reports: 2.76 events per delivery, about 10.5 million for N = 1,000,000. Then runs
`drip stats --format json` and `drip stats --since 2026-07-01 --format json` as real
processes R times each and prints the median and the slowest wall time, and checks lesson 1's
figures against counts taken directly from the events with SQL.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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
# Of every 100 readers, how many got lesson 1..8 (the funnel): 3.81 lessons a reader, so
# 3.8 million deliveries and about 10.5 million events for a million readers.
FUNNEL = (100, 75, 58, 45, 35, 28, 22, 18)
T0 = "2026-01-01 00:00:00"
SINCE = "2026-07-01"
# Events per delivery (SQL over the delivery id `did` = subscriber id * 10 + lesson number):
# processed and delivered for all, an open for 60 % (a third of them machine opens), a click
# for 15 %, a bounce for 1 %, a spam report for 0.1 %, spread over every lesson. The same
# rules give each delivery's event_flags (DeliveryOutcome bits).
KINDS = (
    ("processed", "1 = 1", 0),
    ("delivered", "1 = 1", 1),
    ("open", "(did / 10 + did % 10) % 10 < 6 AND (did / 10) % 3 <> 0", 2),
    ("open", "(did / 10 + did % 10) % 10 < 6 AND (did / 10) % 3 = 0", 4),
    ("click", "(did / 10 * 7 + did % 10 * 13) % 100 < 15", 8),
    ("bounce", "(did / 10 + did % 10 * 37) % 100 = 99", 16),
    ("spamreport", "(did / 10 + did % 10 * 101) % 1000 = 998", 32),
)


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all cores, /proc/stat: not idle, iowait):
    the benchmark shares the machine, so each figure says how busy it was."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy = sum(ticks[:8]) - ticks[3] - ticks[4]  # guest time is already counted in user time
    return busy / os.sysconf("SC_CLK_TCK")


def _series(dialect: str, n: int) -> str:
    """A one-column relation `i` of 1..n."""
    if dialect == "postgresql":
        return f"(SELECT generate_series(1::bigint, {n}) AS i) AS n"
    return (
        f"(WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {n})"
        " SELECT i FROM s) AS n"
    )


def _at(dialect: str, seconds: str) -> str:
    """T0 plus `seconds` (an SQL expression) as a stored timestamp."""
    if dialect == "postgresql":
        return f"(TIMESTAMP '{T0}' + ({seconds}) * INTERVAL '1 second')"
    # SQLite: drip's fixed format, microseconds included (models.SQLITE_DATETIME_FORMAT).
    return f"(strftime('%Y-%m-%d %H:%M:%S', '{T0}', '+' || ({seconds}) || ' seconds') || '.000000')"


def fill(engine: Engine, subscribers: int) -> None:
    """Subscribers signed up over a year, confirmed within two hours (5 % never), 3 %
    unsubscribed; lesson k sent 3k days after signup; events by `KINDS`."""
    dialect = engine.dialect.name
    course = COURSE.id
    signed = "((i % 365) * 86400 + (i * 7919) % 86400)"
    if dialect == "sqlite":
        # A throw-away file: no journal while filling (WAL would write every page twice).
        with engine.connect() as conn:
            driver = conn.connection.driver_connection
            assert driver is not None
            driver.execute("PRAGMA journal_mode = OFF")
            driver.execute("PRAGMA synchronous = OFF")
    with engine.begin() as conn:
        if dialect == "postgresql":
            # The rows are consistent by construction: skip the per-row foreign key triggers
            # (ten million on events), as a restore does.
            conn.execute(text("SET LOCAL session_replication_role = replica"))
        conn.execute(
            text(
                "INSERT INTO subscribers (id, course_id, email, name, timezone, status,"
                " created_at, consent_at, consent_source, confirmed_at, paused_at,"
                " status_changed_at, confirmation_sent_at, next_lesson, next_send_at,"
                " last_sent_at) SELECT i, :course, 'r' || i || '@example.com', NULL,"
                " 'Asia/Tokyo', CASE WHEN i % 100 < 3 THEN 'unsubscribed'"
                " WHEN i % 100 < 5 THEN 'pending' ELSE 'active' END,"
                f" {_at(dialect, signed)}, {_at(dialect, signed)}, 'bench',"
                " CASE WHEN i % 100 < 5 AND i % 100 >= 3 THEN NULL"
                f" ELSE {_at(dialect, f'{signed} + (i * 31) % 7200')} END, NULL,"
                f" {_at(dialect, f'{signed} + 86400 * 30')}, {_at(dialect, signed)},"
                " CASE WHEN i % 100 < 3 THEN 'rethink' ELSE 'welcome' END, NULL, NULL"
                f" FROM {_series(dialect, subscribers)}"
            ),
            {"course": course},
        )
        flags = " + ".join(f"CASE WHEN {rule} THEN {bit} ELSE 0 END" for _, rule, bit in KINDS)
        for number, (lesson, share) in enumerate(zip(COURSE.lessons, FUNNEL, strict=True)):
            sent = _at(dialect, f"{signed.replace('i', 'id')} + {number * 3 * 86400 + 3600}")
            conn.execute(
                text(
                    "INSERT INTO deliveries (id, subscriber_id, course_id, lesson, status, run_id,"
                    " attempts, claimed_at, lease_until, sent_at, provider_id, detail, updated_at,"
                    " event_flags)"
                    f" SELECT id * 10 + {number}, id, :course, :lesson, 'sent', 'bench', 1,"
                    f" {sent}, {sent}, {sent}, NULL, NULL, {sent},"
                    f" {flags.replace('did', f'(id * 10 + {number})')}"
                    f" FROM subscribers WHERE id % 100 < {share}"
                ),
                {"course": course, "lesson": lesson.slug},
            )
        for kind, rule, bit in KINDS:
            if dialect == "postgresql":
                payload = "jsonb_build_object('sg_machine_open', true)" if bit == 4 else "'{}'"
            else:
                payload = "json_object('sg_machine_open', json('true'))" if bit == 4 else "'{}'"
            conn.execute(
                text(
                    "INSERT INTO events (provider, provider_event_id, delivery_id, subscriber_id,"
                    " type, occurred_at, received_at, payload)"
                    f" SELECT 'sendgrid', '{kind}{bit}-' || d.id, d.id, d.subscriber_id, '{kind}',"
                    f" d.sent_at, d.sent_at, {payload} FROM deliveries d"
                    f" WHERE {rule.replace('did', 'd.id')}"
                )
            )
    if dialect == "postgresql":
        with engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE"))
    else:
        with engine.begin() as conn:
            conn.execute(text("ANALYZE"))


def direct_counts(engine: Engine) -> dict[str, dict[str, int]]:
    """Lesson 1's figures counted from the events themselves (distinct deliveries per type),
    for the whole time and for the cohort sent since SINCE: what drip stats must print."""
    since = f"'{SINCE} 00:00:00.000000'" if engine.dialect.name == "sqlite" else f"'{SINCE}'"
    machine = (
        "coalesce(json_type(e.payload, '$.sg_machine_open') = 'true', 0)"
        if engine.dialect.name == "sqlite"
        else "coalesce((e.payload -> 'sg_machine_open')::jsonb = 'true'::jsonb, false)"
    )
    counts: dict[str, dict[str, int]] = {}
    with engine.connect() as conn:
        for label, cohort in (("all", ""), ("since", f" AND d.sent_at >= {since}")):
            where = f"d.lesson = 'welcome' AND d.status = 'sent'{cohort}"
            sent = conn.execute(text(f"SELECT count(*) FROM deliveries d WHERE {where}"))
            counts[label] = {"sent": sent.scalar_one()}
            for field, condition in (
                ("delivered", "e.type = 'delivered'"),
                ("opened", f"e.type = 'open' AND NOT {machine}"),
                ("machine_opened", f"e.type = 'open' AND {machine}"),
                ("clicked", "e.type = 'click'"),
                ("bounced", "e.type IN ('bounce', 'dropped')"),
                ("complained", "e.type = 'spamreport'"),
            ):
                counts[label][field] = conn.execute(
                    text(
                        "SELECT count(DISTINCT e.delivery_id) FROM events e JOIN deliveries d"
                        f" ON d.id = e.delivery_id WHERE {where} AND {condition}"
                    )
                ).scalar_one()
        counts["all"]["events"] = conn.execute(text("SELECT count(*) FROM events")).scalar_one()
        counts["all"]["deliveries"] = conn.execute(
            text("SELECT count(*) FROM deliveries")
        ).scalar_one()
    return counts


def time_stats(url: str, repeat: int, extra: list[str]) -> tuple[list[float], dict[str, object]]:
    """`drip stats --format json [extra]` as a real process, `repeat` times: wall times and
    the last report."""
    env = {
        **os.environ,
        "DRIP_DATABASE_URL": url,
        "DRIP_COURSE_DIR": str(ROOT / "course"),
        "DRIP_TEMPLATES_DIR": str(ROOT / "templates" / "email"),
    }
    times = []
    cpu = []
    report: dict[str, object] = {}
    for _ in range(repeat):
        used = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "drip", "stats", "--format", "json", *extra],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        times.append(time.perf_counter() - started)
        now_used = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(now_used.ru_utime + now_used.ru_stime - used.ru_utime - used.ru_stime)
        report = json.loads(done.stdout)
    return times, cpu, report


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
    backend = url.split(":", 1)[0]
    for label, extra in (("all", []), ("since", ["--since", SINCE])):
        busy_before, wall_before = machine_busy_seconds(), time.perf_counter()
        times, cpu, report = time_stats(url, repeat, extra)
        busy = (machine_busy_seconds() - busy_before) / (time.perf_counter() - wall_before)
        lessons = report["lessons"]
        assert isinstance(lessons, list)
        shown = {field: lessons[0][field] for field in counts[label] if field in lessons[0]}
        expected = {field: counts[label][field] for field in shown}
        assert shown == expected, (label, shown, expected)
        print(
            f"{backend}: {subscribers:,} subscribers, {counts['all']['deliveries']:,}"
            f" deliveries, {counts['all']['events']:,} events (filled in {filled:.0f} s);"
            f" drip stats {' '.join(extra)}: median {statistics.median(times):.2f} s, slowest"
            f" {max(times):.2f} s over {repeat} runs ({', '.join(f'{t:.2f}' for t in times)}),"
            f" CPU of the drip process {statistics.median(cpu):.2f} s;"
            f" lesson 1 matches the events counted directly: {shown}; machine busy"
            f" {busy:.2f} cores of {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--postgres",
        help="an admin URL, e.g. postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
    )
    parser.add_argument("--skip-sqlite", action="store_true", help="only PostgreSQL")
    args = parser.parse_args()
    if not args.skip_sqlite:
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
