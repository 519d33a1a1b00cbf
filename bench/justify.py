"""Where the gateway replaces a library with code of its own, the measurement that justifies it, in one run.

- server: aiohttp's server vs a bare asyncio protocol with httptools, both answering a fixed JSON (the
  gateway's front end, gateway/frontend.py, is built on the latter);
- client: the plain aiohttp proxy vs the same proxy with the gateway's upstream pool (upstream_client.py);
- metrics: prometheus_client's locked Counter.inc + Histogram.observe vs the lock-free ones (hotmetrics.py);
- redis: a batch of 32 EVALSHA through redis-py's Pipeline vs packed by hiredis on a pooled connection, as
  gateway/store/batch.py sends the touches of one event-loop turn (a real redis-server, when installed).
Each is a ratio, ours over the library's, from contenders alternated round by round.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
import timeit
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from bench.run import HERE, PYTHON, ROOT, Rig, free_port, load, process
from gateway.hotmetrics import HotMetrics
from gateway.metrics import DURATION_BUCKETS


def _rps(args: list[str], port: int, seconds: float) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with process(args, port, env):
        return load(port, "new", 32, seconds, [])[0]


def _alternate(a: list[str], b: list[str], seconds: float, rounds: int) -> float:
    """Median req/s of command `b` over that of `a` (their "PORT" argument filled in), at 32 connections."""
    runs: dict[str, list[float]] = {"a": [], "b": []}
    for _ in range(rounds):
        for key, args in (("a", a), ("b", b)):
            port = free_port()
            runs[key].append(_rps([str(port) if arg == "PORT" else arg for arg in args], port, seconds))
    return statistics.median(runs["b"]) / statistics.median(runs["a"])


def measure_server(seconds: float, rounds: int) -> float:
    hello = str(HERE / "hello.py")
    ratio = _alternate(
        [PYTHON, hello, "aiohttp", "PORT"], [PYTHON, hello, "protocol", "PORT"], seconds, rounds
    )
    return round(ratio, 2)


def measure_client(rig: Rig, seconds: float, rounds: int) -> float:
    upstream = f"http://127.0.0.1:{rig.backend_port}"
    plain = [PYTHON, str(HERE / "plain_proxy.py"), "PORT", upstream]
    pool = [PYTHON, str(HERE / "pool_proxy.py"), "PORT", upstream]
    return round(_alternate(plain, pool, seconds, rounds), 2)


def measure_metrics() -> float:
    """Cost of one counter increment and one histogram observation: prometheus_client's over ours."""
    registry = CollectorRegistry()
    counter = Counter("x", "x", registry=registry)
    histogram = Histogram("y", "y", buckets=DURATION_BUCKETS, registry=registry)
    hot = HotMetrics()
    hot_counter, hot_histogram = hot.counter("x", "x").labels(), hot.histogram("y", "y", DURATION_BUCKETS)

    def theirs() -> None:
        counter.inc()
        histogram.observe(0.042)

    def ours() -> None:
        hot_counter.inc()
        hot_histogram.observe(0.042)

    n = 200_000
    library = min(timeit.repeat(theirs, number=n, repeat=5))
    own = min(timeit.repeat(ours, number=n, repeat=5))
    return round(library / own, 2)


async def _redis_batches(url: str, batches: int, size: int) -> float:
    import redis.asyncio as aioredis

    from gateway.store.batch import ScriptBatcher

    client = aioredis.Redis.from_url(url, decode_responses=True)
    script = client.register_script("redis.call('HSET', KEYS[1], 'l', ARGV[1]) return {'live', ARGV[1]}")
    batcher = ScriptBatcher(client, script, timeout=5.0)
    await script(keys=["sg-justify"], args=["0"])  # loaded
    calls: list[Any] = [([f"sg-justify:{i}"], [repr(time.time()), "600.0", "5"], None) for i in range(size)]

    async def theirs() -> None:
        async with client.pipeline(transaction=False) as pipe:
            for keys, args, _ in calls:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            await pipe.execute(raise_on_error=False)

    async def ours() -> None:
        await batcher._pipelined(calls)

    spent = {theirs: [], ours: []}  # type: ignore[var-annotated]
    for _ in range(5):  # alternated, the fastest of each kept
        for way in (theirs, ours):
            start = time.perf_counter()
            for _ in range(batches):
                await way()
            spent[way].append(time.perf_counter() - start)
    await client.delete(*(keys[0] for keys, _, _ in calls))
    await client.aclose()
    return min(spent[theirs]) / min(spent[ours])


def measure_redis_batch(redis_url: str) -> float:
    """Time to send 32 touches and read their replies: redis-py's Pipeline over the gateway's batch."""
    return round(asyncio.run(_redis_batches(redis_url, 200, 32)), 2)


def run_all(rig: Rig, seconds: float, rounds: int) -> dict[str, float]:
    results = {
        "server_protocol_over_aiohttp_rps": measure_server(seconds, rounds),
        "client_pool_over_aiohttp_rps": measure_client(rig, seconds, rounds),
        "metrics_prometheus_client_cost_over_hot": measure_metrics(),
    }
    if rig.redis_url:
        results["redis_pipeline_cost_over_batch"] = measure_redis_batch(rig.redis_url)
    for name, value in results.items():
        print(f"  {name}: {value}", flush=True)
    return results
