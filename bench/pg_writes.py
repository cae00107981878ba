"""What PostgreSQL's server spends per email on drip's ledger writes, today and with a narrow
scheduling table (issue 11, targets 1-3): an experiment to size a redesign before making it.

    .venv/bin/python bench/pg_writes.py                  # 30,000 due among 100,000, 3 rounds
    .venv/bin/python bench/pg_writes.py --window 4000 --due 60000   # bulk mode's batches

No transport and no drip code on the hot path: the statements `drip send` makes per window
(claim, hand over, record 'sent'), written out in SQL with psycopg, in the variants of
`VARIANTS`, alternately, each on a fresh database (`drip_bench_writes`, dropped at the end):

- schema `today`: drip's (its migrations). A window's claim picks the due readers (FOR UPDATE
  SKIP LOCKED), inserts their deliveries and writes the lease into each subscriber's
  next_send_at; the hand-over marks the deliveries 'sending' (per-reader sends only); the record
  locks the deliveries and their subscribers, marks the deliveries 'sent' and writes each
  subscriber's progress. Each subscriber write is a new row version with an entry in each of
  its live indexes (next_send_at is indexed: no HOT update).
- schema `narrow`: the same, but the schedule (next lesson, next send, last sent) lives in a
  table of its own, `schedules`, with two indexes (its key and the due index): the lease and the
  progress are written there, and the subscriber row (email, name, status; read by the pick) is
  never written on the hot path.
- `-lean`: claims inserted 'sending' (no hand-over) and a record without its lock pass.

It prints, per variant, the CPU of every PostgreSQL process (the backend and the background
writers: /proc/<pid>/stat) and the WAL written, per email, and the medians of the rounds. Run
it on an otherwise idle machine: the figures are the server's own CPU, but a busy machine slows
it too.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, NamedTuple

import psycopg
from run import COURSE, NOW, fill, postgres_database

NAME = "drip_bench_writes"
WINDOW = 256
"""Readers per window (the per-reader send's); bulk mode claims 4,000 at a time (--window)."""
LEASE = timedelta(minutes=10)
RUN_ID = "bench-run"
SECOND = COURSE.lessons[1].slug
NEXT_AT = (NOW + timedelta(days=1)).replace(tzinfo=None)
NOW_NAIVE = NOW.replace(tzinfo=None)
TICKS = os.sysconf("SC_CLK_TCK")

NARROW_SCHEMA = """
CREATE TABLE schedules (
    subscriber_id bigint PRIMARY KEY REFERENCES subscribers (id) ON DELETE CASCADE,
    course_id varchar(100) NOT NULL,
    next_lesson varchar(100),
    next_send_at timestamp,
    last_sent_at timestamp
);
INSERT INTO schedules SELECT id, course_id, next_lesson, next_send_at, last_sent_at
    FROM subscribers;
UPDATE subscribers SET next_send_at = NULL;
CREATE INDEX ix_schedules_due ON schedules (course_id, next_send_at, subscriber_id)
    INCLUDE (next_lesson) WHERE next_send_at IS NOT NULL;
"""

# --- the statements of one window, per schema -------------------------------------------------

PICK = {
    "today": """
        SELECT s.id, s.email, s.name, s.timezone, s.next_lesson, s.send_time,
               d.id, d.status, d.attempts, d.lease_until
        FROM subscribers s LEFT JOIN deliveries d
            ON d.subscriber_id = s.id AND d.lesson = s.next_lesson
        WHERE s.course_id = %(course)s AND s.next_send_at IS NOT NULL
            AND s.next_send_at <= %(now)s AND s.status = 'active'
        ORDER BY s.next_send_at, s.id LIMIT %(limit)s
        FOR UPDATE OF s SKIP LOCKED""",
    "narrow": """
        SELECT c.subscriber_id, s.email, s.name, s.timezone, c.next_lesson, s.send_time,
               d.id, d.status, d.attempts, d.lease_until
        FROM schedules c JOIN subscribers s ON s.id = c.subscriber_id
            LEFT JOIN deliveries d ON d.subscriber_id = c.subscriber_id
                AND d.lesson = c.next_lesson
        WHERE c.course_id = %(course)s AND c.next_send_at IS NOT NULL
            AND c.next_send_at <= %(now)s
        ORDER BY c.next_send_at, c.subscriber_id LIMIT %(limit)s
        FOR UPDATE OF c SKIP LOCKED""",
}
INSERT_CLAIMS = {
    schema: f"""
        INSERT INTO deliveries (subscriber_id, course_id, lesson, status, run_id, attempts,
            claimed_at, lease_until, updated_at, event_flags)
        SELECT {key}, %(course)s, next_lesson, 'claimed', %(run)s, 1, %(now)s, %(lease)s,
            %(now)s, 0
        FROM {table} WHERE {key} = ANY(%(ids)s)
        RETURNING subscriber_id, id"""
    for schema, table, key in (
        ("today", "subscribers", "id"),
        ("narrow", "schedules", "subscriber_id"),
    )
}
LEASE_WRITE = {
    "today": "UPDATE subscribers SET next_send_at = %(lease)s WHERE id = ANY(%(ids)s)",
    "narrow": "UPDATE schedules SET next_send_at = %(lease)s WHERE subscriber_id = ANY(%(ids)s)",
}
MARK_SENDING = """
    UPDATE deliveries d SET status = 'sending', updated_at = %(now)s
    WHERE d.id = ANY(%(ids)s) AND d.status = 'claimed'
        AND EXISTS (SELECT 1 FROM subscribers s WHERE s.id = d.subscriber_id
                    AND s.status = 'active')
    RETURNING d.id"""
LOCK_DELIVERIES = """
    SELECT id, status, run_id, lesson, subscriber_id FROM deliveries
    WHERE id = ANY(%(ids)s) ORDER BY id FOR UPDATE"""
LOCK_READERS = {
    "today": """
        SELECT id, status, next_lesson FROM subscribers
        WHERE id = ANY(%(ids)s) ORDER BY id FOR UPDATE""",
    # The subscriber's status is read, its schedule row locked: an unsubscribe would lock
    # and clear the schedule row too, so it is seen here or applied after this transaction.
    "narrow": """
        SELECT c.subscriber_id, s.status, c.next_lesson
        FROM schedules c JOIN subscribers s ON s.id = c.subscriber_id
        WHERE c.subscriber_id = ANY(%(ids)s) ORDER BY c.subscriber_id FOR UPDATE OF c""",
}
RECORD_SENT = """
    UPDATE deliveries t SET status = 'sent', sent_at = %(now)s, updated_at = %(now)s,
        provider_id = v.provider_id
    FROM unnest(%(ids)s::bigint[], %(provider_ids)s::text[]) AS v(id, provider_id)
    WHERE t.id = v.id AND t.id = ANY(%(ids)s)"""
PROGRESS = {
    schema: f"""
        UPDATE {table} t SET next_lesson = %(next)s, next_send_at = %(next_at)s,
            last_sent_at = %(now)s
        FROM unnest(%(ids)s::bigint[]) AS v(id)
        WHERE t.{key} = v.id AND t.{key} = ANY(%(ids)s){active}"""
    for schema, table, key, active in (
        ("today", "subscribers", "id", " AND t.status = 'active'"),
        ("narrow", "schedules", "subscriber_id", ""),
    )
}


def send_window(conn: psycopg.Connection[Any], variant: Variant, window: int) -> int:
    """One window: claim (commit), hand over (commit), record (commit). Returns the readers."""
    schema = variant.schema
    base = {"course": COURSE.id, "now": NOW_NAIVE, "run": RUN_ID, "lease": NOW_NAIVE + LEASE}
    with conn.transaction():
        picked = conn.execute(PICK[schema], {**base, "limit": window}).fetchall()
        if not picked:
            return 0
        ids = [row[0] for row in picked]
        insert = INSERT_CLAIMS[schema]
        if not variant.hand_over:
            insert = insert.replace("'claimed'", "'sending'")
        claims = conn.execute(insert, {**base, "ids": ids}).fetchall()
        conn.execute(LEASE_WRITE[schema], {**base, "ids": ids})
    sending, readers = [row[1] for row in claims], sorted(row[0] for row in claims)
    if variant.hand_over:
        with conn.transaction():
            marked = conn.execute(MARK_SENDING, {**base, "ids": sending})
            sending = [row[0] for row in marked]
    with conn.transaction():
        if variant.lock_pass:
            locked = conn.execute(LOCK_DELIVERIES, {"ids": sending}).fetchall()
            readers = sorted({row[4] for row in locked})
            conn.execute(LOCK_READERS[schema], {"ids": readers}).fetchall()
        conn.execute(
            RECORD_SENT,
            {**base, "ids": sending, "provider_ids": [f"msg-{i}" for i in sending]},
        )
        conn.execute(PROGRESS[schema], {**base, "ids": readers, "next": SECOND, "next_at": NEXT_AT})
    return len(picked)


class Variant(NamedTuple):
    schema: str
    """today or narrow."""
    hand_over: bool
    """Claims inserted 'claimed', then marked 'sending' in a transaction of their own (the
    per-reader send); else inserted 'sending' (bulk mode)."""
    lock_pass: bool
    """The record first locks the deliveries and their subscribers (schedules) with SELECT ...
    FOR UPDATE, as drip does; else its UPDATEs lock what they write."""


VARIANTS = {
    "today": Variant("today", hand_over=True, lock_pass=True),
    "today-bulk": Variant("today", hand_over=False, lock_pass=True),
    "today-lean": Variant("today", hand_over=False, lock_pass=False),
    "narrow": Variant("narrow", hand_over=True, lock_pass=True),
    "narrow-lean": Variant("narrow", hand_over=False, lock_pass=False),
}
"""What drip does today per reader (today) and in bulk mode (today-bulk), and what each change
would save: the record without its lock pass, the narrow scheduling table, both."""


# --- measuring --------------------------------------------------------------------------------


def postgres_cpu() -> float:
    """CPU seconds (user + system) of every process named postgres on this machine, with those
    of the ones that ended (the postmaster's reaped children: an autovacuum worker, a backend)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        if name.startswith("postgres"):
            fields = stat[stat.rindex(")") + 2 :].split()
            total += sum(int(field) for field in fields[11:15])  # utime, stime, cutime, cstime
    return total / TICKS


def measure(variant: str, total: int, due: int, window: int) -> dict[str, float]:
    """One variant's send of `due` readers among `total`, on a fresh database."""
    chosen = VARIANTS[variant]
    with postgres_database(NAME) as url:
        fill(url, total, due)
        with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
            if chosen.schema == "narrow":
                with conn.transaction():
                    conn.execute(NARROW_SCHEMA)  # type: ignore[arg-type]
            conn.execute("VACUUM ANALYZE")
            conn.execute("CHECKPOINT")
            return measure_send(conn, variant, due, window)


def measure_send(
    conn: psycopg.Connection[Any], variant: str, due: int, window: int
) -> dict[str, float]:
    """Send every due reader window by window; the server's CPU and WAL per email."""

    def scalar(sql: str, *params: Any) -> Any:
        row = conn.execute(sql, params).fetchone()  # type: ignore[arg-type]
        assert row is not None
        return row[0]

    start_lsn = scalar("SELECT pg_current_wal_lsn()")
    cpu = postgres_cpu()
    began = time.perf_counter()
    sent = 0
    while count := send_window(conn, VARIANTS[variant], window):
        sent += count
    wall = time.perf_counter() - began
    cpu = postgres_cpu() - cpu
    wal = scalar("SELECT pg_current_wal_lsn() - %s::pg_lsn", start_lsn)
    left = scalar("SELECT count(*) FROM deliveries WHERE status <> 'sent'")
    if sent != due or left:
        raise SystemExit(f"{variant}: {sent} sent of {due}, {left} deliveries not 'sent'")
    return {
        "server_us_per_email": cpu / sent * 1e6,
        "wal_bytes_per_email": float(wal) / sent,
        "emails_per_s": sent / wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--total", type=int, default=100_000, help="subscribers")
    parser.add_argument("--due", type=int, default=30_000, help="of them due")
    parser.add_argument("--rounds", type=int, default=3, help="each schema this many times")
    parser.add_argument("--window", type=int, default=WINDOW, help="readers per window")
    args = parser.parse_args()
    figures: dict[str, list[dict[str, float]]] = {variant: [] for variant in VARIANTS}

    def show(variant: str, f: dict[str, float]) -> None:
        print(
            f"{variant:<11} server {f['server_us_per_email']:6.1f} us/email  WAL"
            f" {f['wal_bytes_per_email']:6.0f} B/email  {f['emails_per_s']:7,.0f} emails/s",
            flush=True,
        )

    for _ in range(args.rounds):
        for variant in figures:  # alternately: the machine's speed drifts
            figures[variant].append(measure(variant, args.total, args.due, args.window))
            show(variant, figures[variant][-1])
    print(
        f"medians of {args.rounds} ({args.due:,} due among {args.total:,},"
        f" windows of {args.window:,}):"
    )
    medians = {
        schema: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        for schema, runs in figures.items()
    }
    for schema, median in medians.items():
        show(schema, median)
    today = medians["today"]
    for variant, median in medians.items():
        cpu = median["server_us_per_email"] / today["server_us_per_email"]
        wal = median["wal_bytes_per_email"] / today["wal_bytes_per_email"]
        print(f"{variant} / today: server CPU {cpu:.2f}, WAL {wal:.2f}")


if __name__ == "__main__":
    main()
