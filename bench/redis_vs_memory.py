"""Redis store vs memory store: round trips per request and throughput of continuing sessions, as ratios.

Everything runs on loopback: a redis-server, the demo bot, and one `python -m gateway serve` per run.
Runs alternate memory, redis, memory, redis, ... so machine drift hits both alike; the median of each is
kept and only ratios are printed (these machines are shared and noisy). Bounded: `--rounds` x 2 runs of
`--requests` requests each.

    .venv/bin/python -m bench.redis_vs_memory [--requests 2000] [--concurrency 32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import aiohttp

from bench.run import PATH, PYTHON, free_port, process

SESSIONS = 64  # conversations the load rotates over
BOT = (
    "import sys; from aiohttp import web; from gateway.demo import create_bot_app; "
    "web.run_app(create_bot_app(), host='127.0.0.1', port=int(sys.argv[1]), access_log=None, print=None)"
)
# Top-level commands: Redis counts the commands a script runs inside it in commandstats too.
_REQUEST_PATH = ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_script|load")


@contextmanager
def gateway(store: str, bot_port: int, redis_url: str, extra: dict[str, str] | None = None) -> Iterator[int]:
    """`python -m gateway serve` with this store; `extra` environment variables on top. Its port."""
    with gateway_process(store, bot_port, redis_url, extra) as (port, _):
        yield port


@contextmanager
def gateway_process(
    store: str, bot_port: int, redis_url: str, extra: dict[str, str] | None = None
) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """gateway(), and its process."""
    port, admin = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(
        GATEWAY_LISTEN_HOST="127.0.0.1",
        GATEWAY_LISTEN_PORT=str(port),
        GATEWAY_ADMIN_HOST="127.0.0.1",
        GATEWAY_ADMIN_PORT=str(admin),
        GATEWAY_UPSTREAM_URL=f"http://127.0.0.1:{bot_port}",
        GATEWAY_LOG_ACCESS="false",
        GATEWAY_LOG_LEVEL="warning",
        GATEWAY_SESSION_STORE=store,
        GATEWAY_SESSION_REDIS_URL=redis_url,
    )
    env.update(extra or {})
    with process([PYTHON, "-m", "gateway", "serve"], port, env) as proc:
        yield port, proc


def redis_calls(url: str) -> dict[str, int]:
    import redis

    stats = redis.Redis.from_url(url).info("commandstats")
    return {name: int(values["calls"]) for name, values in stats.items()}


async def start_sessions(port: int, count: int) -> list[str]:
    ids = []
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as client:
        for _ in range(count):
            async with client.get(f"http://127.0.0.1:{port}{PATH}") as response:
                await response.read()
                ids.append(response.headers["X-Session-Id"])
    return ids


async def continue_sessions(port: int, ids: list[str], requests: int, concurrency: int) -> float:
    """Send `requests` continuing requests over `ids` with `concurrency` workers; requests per second."""
    failures = 0
    sent = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar()) as client:

        async def worker() -> None:
            nonlocal sent, failures
            while sent < requests:
                sid = ids[sent % len(ids)]
                sent += 1
                headers = {"X-Teneo-Session": f"JSESSIONID={sid}"}
                async with client.get(f"http://127.0.0.1:{port}{PATH}", headers=headers) as response:
                    await response.read()
                    if response.status != 200 or "X-Session-New" in response.headers:
                        failures += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"{failures} requests did not continue their session")
    return requests / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not on PATH")
    redis_port, bot_port = free_port(), free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    redis_args = [
        binary,
        "--port",
        str(redis_port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        tempfile.mkdtemp(prefix="sg-bench-redis-"),
    ]
    with process(redis_args, redis_port), process([PYTHON, "-c", BOT, str(bot_port)], bot_port):
        # Round trips: every top-level command Redis saw while one gateway served N continuing requests.
        with gateway("redis", bot_port, redis_url) as port:
            ids = asyncio.run(start_sessions(port, SESSIONS))
            asyncio.run(continue_sessions(port, ids, 10, 1))  # the touch script's first call loads it
            before = redis_calls(redis_url)
            asyncio.run(continue_sessions(port, ids, args.requests, 1))
            after = redis_calls(redis_url)
        diff = {k.removeprefix("cmdstat_"): after.get(k, 0) - before.get(k, 0) for k in after}
        scripts = sum(diff.get(k.removeprefix("cmdstat_"), 0) for k in _REQUEST_PATH)
        print(f"redis round trips per continuing request: {scripts / args.requests:.3f} (script calls)")
        # The sweeper's pipelines (one ZRANGEBYSCORE and one ZCARD per shard, two round trips a sweep) are
        # the only other traffic; scripts never call these two.
        print(
            f"  sweeper meanwhile: {diff.get('zrangebyscore', 0)} zrangebyscore, {diff.get('zcard', 0)} zcard"
        )

        rates: dict[str, list[float]] = {"memory": [], "redis": []}
        for _ in range(args.rounds):
            for store in ("memory", "redis"):
                with gateway(store, bot_port, redis_url) as port:
                    ids = asyncio.run(start_sessions(port, SESSIONS))
                    asyncio.run(continue_sessions(port, ids, 200, args.concurrency))  # warm-up
                    rates[store].append(
                        asyncio.run(continue_sessions(port, ids, args.requests, args.concurrency))
                    )
        ratios = [r / m for m, r in zip(rates["memory"], rates["redis"], strict=True)]
        print(
            f"throughput redis / memory ({args.requests} continuing requests, {args.concurrency} at once, "
            f"{args.rounds} alternating rounds): median {statistics.median(ratios):.2f} "
            f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)})"
        )


if __name__ == "__main__":
    main()
