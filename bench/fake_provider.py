"""A fast fake SendGrid v3 Mail Send API for the benchmark (aiohttp, its own process).

`python bench/fake_provider.py --port 0 --latency 0.05` prints its port on the first stdout line
and serves until SIGTERM. Every POST /v3/mail/send is parsed and checked with the test fake's
check (`drip.transports.sendgrid.validate`: the parts SendGrid checks and drip's contract, per
personalization for bulk requests), then answered 202 with an X-Message-Id after `latency`
seconds; a bad request gets 400 and is counted as invalid.
Accepted emails are counted per `drip_delivery_id` (a personalization's own custom_args, else
the request's), so duplicates and losses can be reported.

GET /_stats returns {"requests", "emails", "invalid", "problems", "distinct", "duplicates"};
POST /_reset clears the counters. With `--record-dir DIR`, the bodies of the first
`--record-max` accepted one-reader requests are written to DIR/NNNNNN.json: bench/ceiling.py
posts them again, with nothing else, to measure the ceiling `drip send` is compared with.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections import Counter
from pathlib import Path

import orjson
from aiohttp import web

from drip.transports.sendgrid.protocol import MAIL_SEND_PATH
from drip.transports.sendgrid.validate import delivery_ids_of, validate_request_payload


class Provider:
    def __init__(
        self, latency: float, api_key: str | None, record_dir: Path | None, record_max: int
    ) -> None:
        self.latency = latency
        self.authorization = f"Bearer {api_key}" if api_key else None
        self.record_dir = record_dir
        self.record_left = record_max if record_dir else 0
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.invalid = 0
        self.problems: list[str] = []
        self.accepted: Counter[str] = Counter()

    async def mail_send(self, request: web.Request) -> web.Response:
        self.requests += 1
        number = self.requests
        if self.authorization and request.headers.get("Authorization") != self.authorization:
            return web.json_response({"errors": [{"message": "bad key"}]}, status=401)
        body = await request.read()
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            payload = None
        problems = validate_request_payload(payload)
        ids = [] if problems else delivery_ids_of(payload)
        if not request.content_type.startswith("application/json"):
            problems.append("Content-Type is not application/json")
        if problems:
            self.invalid += 1
            if len(self.problems) < 20:
                self.problems.extend(problems[:3])
            return web.json_response({"errors": [{"message": "; ".join(problems)}]}, status=400)
        # Counted when taken, before the latency: like SendGrid, the provider has it now.
        self.accepted.update(ids)
        # Only one-reader bodies: the ceiling stands for per-reader sending (a bulk body replayed
        # as many times would measure the provider's parsing, not a loop's ceiling).
        if self.record_left and self.record_dir is not None and len(ids) == 1:
            self.record_left -= 1
            (self.record_dir / f"{self.record_left:06d}.json").write_bytes(body)
        if self.latency:
            await asyncio.sleep(self.latency)
        return web.Response(status=202, headers={"X-Message-Id": f"bench-{os.getpid()}-{number}"})

    async def stats(self, request: web.Request) -> web.Response:
        duplicates = sum(count - 1 for count in self.accepted.values() if count > 1)
        return web.json_response(
            {
                "requests": self.requests,
                "emails": sum(self.accepted.values()),
                "distinct": len(self.accepted),
                "duplicates": duplicates,
                "invalid": self.invalid,
                "problems": self.problems,
                "ids": sorted(self.accepted) if request.query.get("ids") else None,
            }
        )

    async def reset_handler(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})


async def serve(
    port: int, latency: float, api_key: str | None, record_dir: Path | None, record_max: int
) -> None:
    provider = Provider(latency, api_key, record_dir, record_max)
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post(MAIL_SEND_PATH, provider.mail_send)
    app.router.add_get("/_stats", provider.stats)
    app.router.add_post("/_reset", provider.reset_handler)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=2048)
    await site.start()
    server = site._server
    sockets = getattr(server, "sockets", None) or []
    print(sockets[0].getsockname()[1], flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per answer")
    parser.add_argument("--api-key", default=None, help="the only key accepted (default: any)")
    parser.add_argument("--record-dir", type=Path, help="write accepted bodies here")
    parser.add_argument("--record-max", type=int, default=2000, help="how many to write")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.port, args.latency, args.api_key, args.record_dir, args.record_max))
    sys.exit(0)


if __name__ == "__main__":
    main()
