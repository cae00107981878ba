"""The signup benchmark: `POST /subscribe` against a real `drip serve`, on SQLite and PostgreSQL.

    .venv/bin/python bench/signup.py                 # both databases, both modes, 15 s each
    .venv/bin/python bench/signup.py --seconds 5 --only sqlite --web-sends queue
    .venv/bin/python bench/signup.py --code ../main --code . --rounds 3   # side by side
    .venv/bin/python bench/signup.py --in-process 2000    # CPU per signup in Flask, no server

Starts `drip serve` (gunicorn; --workers, --threads) in a temporary directory on the embedded
SQLite file, then on a throw-away PostgreSQL database (`drip_bench_signup` on 127.0.0.1:5432,
dropped at the end), each with DRIP_WEB_SENDS=now (the default: the server's background sender
sends the queued confirmation emails to the outbox meanwhile, as in production; no request
waits for it) and then DRIP_WEB_SENDS=queue (the web only queues them). Posts new addresses as
our own form does (form token, `Origin: null`) over `--clients` keep-alive connections, each
request from its own X-Forwarded-For address (DRIP_TRUSTED_PROXIES=1: the per-IP limit counts
the client, as behind a proxy) and under a global cap set out of the way. The load generator is
`wrk` with bench/signup.lua when installed (apt-get install wrk), else Python client processes
(said on stderr; `--load python` forces them). Prints requests/s, median, p99 and max latency
after a 2-second warm-up, the server's CPU per request, the machine's busy cores and the load
generator's CPU per request, the load average, and whether the target (>= 500 requests/s,
p99 < 100 ms) is met. `--code DIR` (repeatable) runs the server from another checkout's src/
(e.g. a worktree of main), its runs interleaved with ours over `--rounds`; the summary gives
each configuration's medians.

`--in-process N` measures instead the CPU of N signups through Flask's test client in one
thread (no gunicorn, no HTTP, no load generator): the app's own cost per signup, far less
sensitive than requests/s to other work sharing the machine.
"""

from __future__ import annotations

import argparse
import functools
import http.client
import json
import multiprocessing
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_DATABASE = "drip_bench_signup"
PG_URL = f"postgresql+psycopg://postgres@127.0.0.1:5432/{PG_DATABASE}"
KEY = "bench-signup-key-0123456789-abcdefghijklmnopqrstuvwxyz"
TARGET_RATE = 500.0
TARGET_P99_MS = 100.0
WARM_UP = 2.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(work: Path, database_url: str | None, web_sends: str, code: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("DRIP_")}
    env.update(
        DRIP_COURSE_DIR=str(code / "course"),
        DRIP_TEMPLATES_DIR=str(code / "templates" / "email"),
        DRIP_WEB_TEMPLATES_DIR=str(code / "templates" / "web"),
        DRIP_OUTBOX_DIR=str(work / "outbox"),
        DRIP_SECRET_KEY=KEY,
        DRIP_TRUSTED_PROXIES="1",
        DRIP_CONFIRMATIONS_PER_HOUR="100000000",
        DRIP_WEB_SENDS=web_sends,
        PYTHONPATH=str(code / "src"),
    )
    if database_url:
        env["DRIP_DATABASE_URL"] = database_url
    return env


def _client(
    port: int, token: str, seconds: float, connections: int, offset: int, results: Any
) -> None:
    """One client process: `connections` threads, each with a keep-alive connection."""
    import threading

    latencies: list[tuple[float, float]] = []  # (moment sent, seconds)
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def run(index: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine: list[tuple[float, float]] = []
        n = 0
        while True:
            started = time.monotonic()
            if started >= stop_at:
                break
            serial = (offset + index) * 10_000_000 + n
            n += 1
            body = urllib.parse.urlencode(
                {"email": f"b{serial}@example.com", "timezone": "Asia/Tokyo", "form_token": token}
            )
            ip = f"10.{serial % 251}.{serial // 251 % 251}.{serial // 63001 % 251 + 1}"
            conn.request(
                "POST",
                "/subscribe",
                body=body,
                headers={
                    "Content-Type": "application/x-www-form-urlencoded",
                    "Origin": "null",
                    "X-Forwarded-For": ip,
                },
            )
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise SystemExit(f"POST /subscribe answered {response.status}")
            mine.append((started, time.monotonic() - started))
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results.put(latencies)


def _wrk(
    port: int, token: str, seconds: float, connections: int, tag: str, close: bool
) -> dict[str, Any]:
    """One wrk run (2 threads, `connections` keep-alive connections); its `done` JSON line."""
    finished = subprocess.run(
        [
            *("wrk", "-t2", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "30s"),
            *("-s", str(ROOT / "bench" / "signup.lua"), f"http://127.0.0.1:{port}/subscribe"),
        ],
        env={
            **os.environ,
            "DRIP_BENCH_TOKEN": token,
            "DRIP_BENCH_RUN": tag,
            "DRIP_BENCH_CLOSE": "1" if close else "0",
        },
        capture_output=True,
        text=True,
        check=True,
    )
    line = [x for x in finished.stdout.splitlines() if x.startswith("{")][-1]
    stats: dict[str, Any] = json.loads(line)
    if stats["status_errors"] or stats["socket_errors"]:
        raise SystemExit(f"wrk: not every POST /subscribe answered 200:\n{finished.stdout}")
    return stats


def _serve(work: Path, env: dict[str, str], workers: int, threads: int) -> tuple[Any, int]:
    port = _free_port()
    log = (work / "serve.log").open("w")
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "drip", "serve", "--port", str(port)),
            *("--workers", str(workers), "--threads", str(threads)),
        ],
        cwd=work,
        env={**env, "DRIP_BASE_URL": f"http://127.0.0.1:{port}"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                if r.status == 200:
                    return process, port
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"drip serve did not start:\n{(work / 'serve.log').read_text()}")
        time.sleep(0.2)


def _cpu(master: int) -> float:
    """CPU seconds used so far by the gunicorn master and its workers (user + system)."""
    tick = os.sysconf("SC_CLK_TCK")
    pids = [str(master), *Path(f"/proc/{master}/task/{master}/children").read_text().split()]
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _machine_cpu() -> float:
    """CPU seconds the whole machine has been busy (all cores, /proc/stat: not idle, iowait)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy = sum(ticks[:8]) - ticks[3] - ticks[4]  # guest time is already counted in user time
    return busy / os.sysconf("SC_CLK_TCK")


def _database_cpu() -> dict[int, float]:
    """CPU seconds used so far by each PostgreSQL backend serving the benchmark's database
    (pg_stat_activity, then /proc: the server runs on this machine)."""
    import psycopg

    tick = os.sysconf("SC_CLK_TCK")
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        pids = [
            row[0]
            for row in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s", (PG_DATABASE,)
            )
        ]
    found: dict[int, float] = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[pid] = (int(fields[11]) + int(fields[12])) / tick
    return found


def _database_cpu_since(before: dict[int, float]) -> float:
    """CPU seconds the benchmark database's backends used since `before` (a backend that
    connected meanwhile counts from its start)."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in _database_cpu().items())


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _emails(outbox: Path) -> int:
    return sum(1 for path in outbox.rglob("*") if path.is_file()) if outbox.is_dir() else 0


def _python_load(
    port: int, token: str, args: argparse.Namespace
) -> tuple[int, float, float, float, float, int]:
    """The fallback load generator (no wrk): Python client processes. Requests, seconds,
    median, p99 and max latency (ms), after the warm-up; then all requests, warm-up included."""
    results: Any = multiprocessing.get_context("fork").Queue()
    per_process = max(1, args.clients // args.client_processes)
    clients = [
        multiprocessing.get_context("fork").Process(
            target=_client,
            args=(port, token, args.seconds + WARM_UP, per_process, i * per_process, results),
        )
        for i in range(args.client_processes)
    ]
    began = time.monotonic()
    for client in clients:
        client.start()
    samples: list[tuple[float, float]] = []
    for _ in clients:
        samples.extend(results.get(timeout=args.seconds + 120))
    for client in clients:
        client.join()
        if client.exitcode != 0:
            raise SystemExit(f"a client failed (exit {client.exitcode})")
    measured = sorted(took for sent, took in samples if sent >= began + WARM_UP)
    window = max(sent for sent, _ in samples) - (began + WARM_UP)
    return (
        len(measured),
        window,
        statistics.median(measured) * 1000,
        measured[min(len(measured) - 1, int(0.99 * len(measured)))] * 1000,
        measured[-1] * 1000,
        len(samples),
    )


def _upgrade(work: Path, env: dict[str, str]) -> None:
    subprocess.run(
        [sys.executable, "-m", "drip", "db", "upgrade"],
        cwd=work,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )


def run_one(
    name: str, database_url: str | None, web_sends: str, code: Path, args: argparse.Namespace
) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"drip-bench-signup-{name}-"))
    env = _env(work, database_url, web_sends, code)
    if database_url:
        _upgrade(work, env)
    load_before = os.getloadavg()[0]
    process, port = _serve(work, env, args.workers, args.threads)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
            page = r.read().decode()
        match = re.search(r'name="form_token" value="([^"]+)"', page)
        assert match, "no form token on the signup page"
        token = match.group(1)
        if args.load == "wrk":
            _wrk(port, token, WARM_UP, args.clients, "w", args.close)
            database_before = _database_cpu() if database_url else {}
            server_before, wrk_before = _cpu(process.pid), _children_cpu()
            machine_before = _machine_cpu()
            stats = _wrk(port, token, args.seconds, args.clients, "m", args.close)
            server_cpu = _cpu(process.pid) - server_before
            database_cpu = _database_cpu_since(database_before) if database_url else None
            load_cpu: float | None = _children_cpu() - wrk_before
            machine_cpu = _machine_cpu() - machine_before
            window = stats["duration_us"] / 1e6
            count = int(stats["requests"])
            count_for_cpu = count
            median, p99, worst = (stats[k] / 1000 for k in ("p50_us", "p99_us", "max_us"))
        else:
            # CPU over the warm-up too (the clients run through it), scaled to the window.
            server_before, machine_before = _cpu(process.pid), _machine_cpu()
            started = time.monotonic()
            count, window, median, p99, worst, everything = _python_load(port, token, args)
            share = window / (time.monotonic() - started)
            server_cpu = (_cpu(process.pid) - server_before) * share
            machine_cpu = (_machine_cpu() - machine_before) * share
            load_cpu = None
            database_cpu = None
            count_for_cpu = everything * share
        sent = _emails(work / "outbox")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
        log = (work / "serve.log").read_text()
        shutil.rmtree(work, ignore_errors=True)
    if "Traceback" in log or "database is locked" in log:
        raise SystemExit(f"the server logged errors:\n{log[-3000:]}")
    result = {
        "code": str(code),
        "database": name,
        "web_sends": web_sends,
        "load": args.load,
        "load_average": round(max(load_before, os.getloadavg()[0]), 2),
        "requests": count,
        "seconds": round(window, 2),
        "requests_per_s": round(count / window, 1),
        "median_ms": round(median, 1),
        "p99_ms": round(p99, 1),
        "max_ms": round(worst, 1),
        "emails_sent_by_web": sent,
        "server_cpu_ms_per_request": round(server_cpu * 1000 / max(1, count_for_cpu), 2),
        "database_cpu_ms_per_request": (
            None if database_cpu is None else round(database_cpu * 1000 / max(1, count), 2)
        ),
        "load_cpu_ms_per_request": (
            None if load_cpu is None else round(load_cpu * 1000 / max(1, count), 2)
        ),
        "busy_cores_server": round(server_cpu / window, 2),
        "busy_cores_machine": round(machine_cpu / window, 2),
        "workers": args.workers,
        "threads": args.threads,
        "clients": args.clients,
        "connection": "close" if args.close else "keep-alive",
    }
    result["target_met"] = (
        result["requests_per_s"] >= TARGET_RATE and result["p99_ms"] < TARGET_P99_MS
    )
    return result


def in_process_child(count: int) -> None:
    """Run inside a subprocess (the environment names the code and database): `count`
    signups through Flask's test client after 200 unmeasured ones; prints one JSON line."""
    from drip.config import load_settings
    from drip.web import close, create_app

    app = create_app(load_settings(os.environ))
    client = app.test_client()
    page = client.get("/").get_data(as_text=True)
    match = re.search(r'name="form_token" value="([^"]+)"', page)
    assert match, "no form token on the signup page"

    def post(serial: int) -> None:
        ip = f"10.{serial % 251}.{serial // 251 % 251}.{serial // 63001 % 251 + 1}"
        answer = client.post(
            "/subscribe",
            data={
                "email": f"b{serial}@example.com",
                "timezone": "Asia/Tokyo",
                "form_token": match.group(1),
            },
            headers={"Origin": "null", "X-Forwarded-For": ip},
        )
        if answer.status_code != 200:
            raise SystemExit(f"POST /subscribe answered {answer.status_code}")

    for serial in range(200):
        post(10_000_000 + serial)
    postgres = os.environ.get("DRIP_DATABASE_URL", "").startswith("postgresql")
    database_before = _database_cpu() if postgres else {}
    cpu, wall = time.process_time(), time.perf_counter()
    for serial in range(count):
        post(serial)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    database_cpu = _database_cpu_since(database_before) if postgres else None
    close(app)
    figures = {"cpu_ms_per_request": cpu * 1000 / count, "wall_ms": wall * 1000 / count}
    if database_cpu is not None:
        figures["database_cpu_ms"] = database_cpu * 1000 / count
    print(json.dumps(figures))


def run_in_process(
    name: str, database_url: str | None, web_sends: str, code: Path, count: int
) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"drip-bench-signup-{name}-"))
    env = _env(work, database_url, web_sends, code)
    env["DRIP_BASE_URL"] = "http://127.0.0.1:8000"
    try:
        if database_url:
            _upgrade(work, env)
        load_before = os.getloadavg()[0]
        finished = subprocess.run(
            [sys.executable, __file__, "--in-process-child", str(count)],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    figures = json.loads(finished.stdout.splitlines()[-1])
    return {
        "code": str(code),
        "database": name,
        "web_sends": web_sends,
        "signups": count,
        "cpu_ms_per_request": round(figures["cpu_ms_per_request"], 3),
        "wall_ms_per_request": round(figures["wall_ms"], 3),
        "database_cpu_ms_per_request": (
            round(figures["database_cpu_ms"], 3) if "database_cpu_ms" in figures else None
        ),
        "load_average": round(max(load_before, os.getloadavg()[0]), 2),
    }


def _postgres(create: bool) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS drip_bench_signup WITH (FORCE)")
        if create:
            conn.execute("CREATE DATABASE drip_bench_signup")


def _line(run: dict[str, Any]) -> str:
    where = f"{run['database']:<10} DRIP_WEB_SENDS={run['web_sends']:<5}"
    if "cpu_ms_per_request" in run:
        return (
            f"{where} in-process, {run['signups']} signups:"
            f" CPU {run['cpu_ms_per_request']} ms/signup, wall {run['wall_ms_per_request']} ms,"
            f" database backends' CPU {run['database_cpu_ms_per_request']} ms/signup"
            f" (load average {run['load_average']}; code {run['code']})"
        )
    return (
        f"{where} {run['requests']:>6}"
        f" POST /subscribe in {run['seconds']} s: {run['requests_per_s']}/s,"
        f" median {run['median_ms']} ms, p99 {run['p99_ms']} ms, max {run['max_ms']} ms"
        f" ({run['workers']} workers x {run['threads']} threads, {run['clients']}"
        f" {run['connection']} connections, {run['load']};"
        f" {run['emails_sent_by_web']} emails sent by the web;"
        f" server CPU {run['server_cpu_ms_per_request']} ms/request,"
        f" database backends' CPU {run['database_cpu_ms_per_request']} ms/request,"
        f" {run['busy_cores_server']} of {run['busy_cores_machine']} busy cores;"
        f" load generator {run['load_cpu_ms_per_request']} ms/request;"
        f" load average {run['load_average']}; code {run['code']})"
        f" target >= {TARGET_RATE:.0f}/s and p99 < {TARGET_P99_MS:.0f} ms:"
        f" {'met' if run['target_met'] else 'NOT met'}"
    )


def _median(runs: list[dict[str, Any]], key: str) -> float:
    values = [run[key] for run in runs if run.get(key) is not None]
    return round(statistics.median(values), 2) if values else float("nan")


def _summary(runs: list[dict[str, Any]]) -> list[str]:
    """Per code, database and mode: the medians of the rounds."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["code"], run["database"], run["web_sends"]), []).append(run)
    lines = []
    for (code, database, mode), found in groups.items():
        median = functools.partial(_median, found)
        if "cpu_ms_per_request" in found[0]:
            figures = f"CPU {median('cpu_ms_per_request')} ms/signup"
            if database == "postgresql":
                figures += f", backends {median('database_cpu_ms_per_request')} ms/signup"
        else:
            figures = (
                f"{median('requests_per_s')}/s, p99 {median('p99_ms')} ms,"
                f" server CPU {median('server_cpu_ms_per_request')} ms/request"
            )
            if database == "postgresql":
                figures += f", backends {median('database_cpu_ms_per_request')} ms/request"
        lines.append(
            f"median of {len(found)}: {database:<10} {mode:<5} {figures}"
            f" (load average {median('load_average')}) {code}"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--threads", type=int, default=1, help="1 (the default): sync workers, as drip serve"
    )
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument(
        "--client-processes", type=int, default=2, help="Python load generator only"
    )
    parser.add_argument("--only", choices=["sqlite", "postgresql"])
    parser.add_argument(
        "--web-sends",
        choices=["now", "queue", "both"],
        default="both",
        help="DRIP_WEB_SENDS of the server: now (the default setting), queue, or both in turn",
    )
    parser.add_argument(
        "--load",
        choices=["wrk", "python"],
        default="wrk" if shutil.which("wrk") else "python",
        help="load generator (default: wrk when installed, else Python clients)",
    )
    parser.add_argument(
        "--code",
        type=Path,
        action="append",
        help="a checkout whose src/ the server runs (repeatable; default: this one)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="runs of each configuration")
    parser.add_argument(
        "--close",
        action="store_true",
        help="wrk: a new connection per request (Connection: close), as behind nginx",
    )
    parser.add_argument(
        "--in-process",
        type=int,
        metavar="N",
        help="measure the CPU of N signups through Flask's test client instead of a server",
    )
    parser.add_argument("--in-process-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="print one JSON object per run")
    args = parser.parse_args()
    if args.in_process_child:
        in_process_child(args.in_process_child)
        return
    if not args.in_process:
        if args.load == "wrk" and not shutil.which("wrk"):
            raise SystemExit("wrk is not installed (apt-get install wrk), or use --load python")
        if args.load == "python":
            print("load generator: Python clients (wrk not used)", file=sys.stderr)
    codes = [code.resolve() for code in args.code or [ROOT]]
    for code in codes:
        if not (code / "src" / "drip").is_dir():
            raise SystemExit(f"--code {code}: no src/drip there; give a checkout of drip")
    runs = run_all(codes, args)
    if args.rounds > 1 or len(codes) > 1:
        for line in _summary(runs):
            print(line)


def run_all(codes: list[Path], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every configuration `args` asks for, `args.rounds` times, the codes interleaved."""
    modes = ["now", "queue"] if args.web_sends == "both" else [args.web_sends]
    databases = [("sqlite", None), ("postgresql", PG_URL)]
    runs: list[dict[str, Any]] = []
    for _ in range(args.rounds):
        for mode in modes:
            for name, url in databases:
                if args.only not in (None, name):
                    continue
                for code in codes:
                    if url:
                        _postgres(create=True)
                    try:
                        if args.in_process:
                            run = run_in_process(name, url, mode, code, args.in_process)
                        else:
                            run = run_one(name, url, mode, code, args)
                    finally:
                        if url:
                            _postgres(create=False)
                    runs.append(run)
                    print(json.dumps(run) if args.json else _line(run), flush=True)
    return runs


if __name__ == "__main__":
    main()
