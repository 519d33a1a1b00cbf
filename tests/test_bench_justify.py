"""bench/justify.py's Redis comparison keeps working as the batcher it subclasses changes (a full bench run
is 16 minutes; a broken override surfaced only at its end)."""

from __future__ import annotations

from redis_server import RedisServer

from bench.justify import _redis_batches


async def test_the_pipeline_comparison_runs_both_batchers(redis: RedisServer) -> None:
    ratio = await _redis_batches(redis.url, batches=2, size=4)
    assert ratio > 0
