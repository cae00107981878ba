"""The ceiling `drip send` is measured against: a bare aiohttp loop, nothing else.

`python bench/ceiling.py --url URL --bodies DIR --count N [--concurrency 256]` posts the
request bodies the fake provider recorded from a real `drip send` (bench/fake_provider.py
--record-dir), cycling through them, to the same provider with the same concurrency as drip's
fast client (one connection pool of `--concurrency` keep-alive connections, as many requests in
flight), and prints one JSON object: {"emails", "seconds", "emails_per_s", "statuses"}. No
database, no rendering, no bookkeeping: what is left is the HTTP client and the provider, so
drip's emails/s over this figure says how much of the machine drip's own work costs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from pathlib import Path

import aiohttp


async def post_all(
    url: str, bodies: list[bytes], count: int, concurrency: int
) -> dict[str, object]:
    statuses: Counter[int] = Counter()
    headers = {"Authorization": "Bearer SG.bench-key", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency, keepalive_timeout=30)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        queue = iter(range(count))

        async def worker() -> None:
            for number in queue:
                body = bodies[number % len(bodies)]
                async with session.post(url, data=body) as response:
                    await response.read()
                    statuses[response.status] += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    return {
        "emails": count,
        "seconds": round(seconds, 3),
        "emails_per_s": round(count / seconds, 1),
        "statuses": {str(code): n for code, n in sorted(statuses.items())},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", required=True, help="the provider's POST /v3/mail/send URL")
    parser.add_argument("--bodies", type=Path, required=True, help="recorded request bodies")
    parser.add_argument("--count", type=int, required=True, help="requests to post")
    parser.add_argument("--concurrency", type=int, default=256, help="drip's window")
    args = parser.parse_args()
    bodies = [path.read_bytes() for path in sorted(args.bodies.glob("*.json"))]
    if not bodies:
        raise SystemExit(f"no recorded bodies in {args.bodies}")
    print(json.dumps(asyncio.run(post_all(args.url, bodies, args.count, args.concurrency))))


if __name__ == "__main__":
    main()
