"""Where the gateway replaces a library with code of its own, the measurement that justifies it, in one run.

- server: aiohttp's server vs a bare asyncio protocol with httptools, both answering a fixed JSON (the
  gateway's front end, gateway/edge/frontend.py, is built on the latter);
- client: the plain aiohttp proxy vs the same proxy with the gateway's upstream pool (upstream_client.py);
- metrics: prometheus_client's locked Counter.inc + Histogram.observe vs the lock-free ones (hotmetrics.py);
- redis: 32 touches batched by gateway/sessions/store/batch.py's ScriptBatcher, sent through redis-py's Pipeline (as
  before) vs packed by hiredis on a pooled connection (as now), against a real redis-server when installed.
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
from gateway.ops.hotmetrics import HotMetrics
from gateway.ops.metrics import DURATION_BUCKETS


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

    from gateway.sessions.store.batch import Call, ScriptBatcher

    class PipelineBatcher(ScriptBatcher):
        """The same batching, sent the way it was before: through redis-py's Pipeline."""

        async def _pipelined(self, batch: list[Call], sent: list[bool], missing: list[int]) -> list[Any]:
            sent[0] = True
            async with self._client.pipeline(transaction=False) as pipe:
                for keys, args, _ in batch:
                    pipe.evalsha(self._script.sha, len(keys), *keys, *args)
                return await pipe.execute(raise_on_error=False)  # type: ignore[no-any-return]

    client = aioredis.Redis.from_url(url, decode_responses=True)
    script = client.register_script("redis.call('HSET', KEYS[1], 'l', ARGV[1]) return {'live', ARGV[1]}")
    await script(keys=["sg-justify"], args=["0"])  # loaded
    calls = [([f"sg-justify:{i}"], [repr(time.time()), "600.0", "5"]) for i in range(size)]
    spent: dict[str, list[float]] = {"pipeline": [], "hiredis": []}
    batchers = {
        "pipeline": PipelineBatcher(client, script, timeout=5.0),
        "hiredis": ScriptBatcher(client, script, timeout=5.0),
    }
    for _ in range(5):  # alternated, the fastest of each kept
        for name, batcher in batchers.items():
            start = time.perf_counter()
            for _ in range(batches):  # as the store calls it: one awaited call per touch, in one loop turn
                await asyncio.gather(*(batcher(keys, args) for keys, args in calls))
            spent[name].append(time.perf_counter() - start)
    await client.delete(*(keys[0] for keys, _ in calls))
    for batcher in batchers.values():
        await batcher.close()
    await client.aclose()
    return min(spent["pipeline"]) / min(spent["hiredis"])


def measure_redis_batch(redis_url: str) -> float:
    """32 touches batched and answered: sent through redis-py's Pipeline, over packed by hiredis (the batch)."""
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
