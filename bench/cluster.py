"""Redis Cluster store vs single Redis store: round trips per request and throughput of continuing sessions.

Everything runs on loopback: one redis-server, a Redis Cluster of three masters (redis-server
--cluster-enabled, joined by redis-cli --cluster create; no replicas, so the machine's cores go to the
masters), the demo bot, and one `python -m gateway serve` per run. Runs alternate single, cluster, single, ...
so machine drift hits both alike; the median of the ratios is printed. Bounded: `--rounds` x 2 runs of
`--requests` requests each. With `--instructions`, each store's instructions per request are counted by
callgrind too (bench/instructions.py), which the machine's load moves much less than its throughput.

    .venv/bin/python -m bench.cluster [--requests 2000] [--concurrency 32] [--rounds 3] [--instructions]
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
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from bench import instructions
from bench.redis_vs_memory import (
    BOT,
    SESSIONS,
    continue_sessions,
    gateway,
    gateway_process,
    redis_calls,
    start_sessions,
)
from bench.run import PYTHON, ROOT, backend, free_port, gateway_env, process

_SCRIPTS = ("evalsha", "eval", "script|load")  # top-level commands: those a script runs are counted too
MASTERS = 3


def redis(binary: str, port: int, *extra: str) -> list[str]:
    """A redis-server's command line: loopback, no persistence."""
    persistence = ["--save", "", "--appendonly", "no", "--dir", tempfile.mkdtemp(prefix="sg-bench-redis-")]
    return [binary, "--port", str(port), "--bind", "127.0.0.1", *persistence, *extra]


@contextmanager
def cluster(binary: str, cli: str) -> Iterator[list[str]]:
    """Three masters joined into a Cluster; their URLs."""
    ports = [free_port() for _ in range(MASTERS)]
    with ExitStack() as stack:
        for port in ports:
            args = redis(binary, port, "--cluster-enabled", "yes", "--cluster-port", str(free_port()))
            stack.enter_context(process(args, port))
        addresses = [f"127.0.0.1:{port}" for port in ports]
        subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        for port in ports:  # every node agrees the Cluster is up
            while (
                "cluster_state:ok"
                not in subprocess.run(
                    [cli, "-p", str(port), "CLUSTER", "INFO"], capture_output=True, text=True, check=True
                ).stdout
            ):
                pass
        yield [f"redis://127.0.0.1:{port}/0" for port in ports]


def calls(urls: list[str]) -> dict[str, int]:
    """Commands counted by every node, by name."""
    total: dict[str, int] = {}
    for url in urls:
        for name, count in redis_calls(url).items():
            total[name] = total.get(name, 0) + count
    return total


def round_trips(store: dict[str, str], bot_port: int, urls: list[str], requests: int) -> tuple[float, int]:
    """Script calls per continuing request (one at a time), and the sweeper's commands meanwhile (scripts never
    call these two)."""
    with gateway("redis", bot_port, urls[0], store) as port:
        ids = asyncio.run(start_sessions(port, SESSIONS))
        asyncio.run(continue_sessions(port, ids, 10, 1))  # the touch script's first call loads it
        before = calls(urls)
        asyncio.run(continue_sessions(port, ids, requests, 1))
        after = calls(urls)
    diff = {k.removeprefix("cmdstat_"): after.get(k, 0) - before.get(k, 0) for k in after}
    scripts = sum(diff.get(k, 0) for k in _SCRIPTS)
    return scripts / requests, diff.get("zrangebyscore", 0) + diff.get("zcard", 0)


def cpu_seconds(pid: int) -> float:
    """A process's CPU time so far, user and system (Linux: /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def count_instructions(env: dict[str, str], url: str, args: argparse.Namespace) -> float:
    """bench/instructions.py's count for this tree's gateway on this store, the cookie mix."""
    with backend() as rig:
        port, admin = free_port(), free_port()
        store_env = {**gateway_env(rig, port, admin, "redis"), "GATEWAY_SESSION_REDIS_URL": url, **env}
        options = argparse.Namespace(requests=args.requests, connections=args.concurrency)
        return instructions.count(str(ROOT), port, store_env, options, "cookie")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--instructions", action="store_true", help="callgrind's count per request as well")
    args = parser.parse_args()
    binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if binary is None or cli is None:
        sys.exit("redis-server and redis-cli must be on PATH")
    single_port, bot_port = free_port(), free_port()
    single = f"redis://127.0.0.1:{single_port}/0"
    with (
        process(redis(binary, single_port), single_port),
        cluster(binary, cli) as nodes,
        process([PYTHON, "-c", BOT, str(bot_port)], bot_port),
    ):
        kinds = {
            "single": ({}, [single]),
            "cluster": ({"GATEWAY_SESSION_REDIS_CLUSTER": "true"}, nodes),
        }
        for name, (env, urls) in kinds.items():
            per_request, other = round_trips(env, bot_port, urls, args.requests)
            print(
                f"{name}: {per_request:.3f} script calls per continuing request (one round trip each); "
                f"the sweeper meanwhile: {other} zrangebyscore and zcard"
            )
        rates: dict[str, list[float]] = {"single": [], "cluster": []}
        cpu: dict[str, list[float]] = {"single": [], "cluster": []}  # the gateway's CPU seconds per request
        for _ in range(args.rounds):
            for name, (env, urls) in kinds.items():
                with gateway_process("redis", bot_port, urls[0], env) as (port, proc):
                    ids = asyncio.run(start_sessions(port, SESSIONS))
                    asyncio.run(continue_sessions(port, ids, 200, args.concurrency))  # warm-up
                    before = cpu_seconds(proc.pid)
                    rates[name].append(
                        asyncio.run(continue_sessions(port, ids, args.requests, args.concurrency))
                    )
                    cpu[name].append((cpu_seconds(proc.pid) - before) / args.requests)
        if args.instructions:
            counted = {name: count_instructions(env, urls[0], args) for name, (env, urls) in kinds.items()}
            print(
                f"instructions per continuing request ({args.concurrency} connections): single "
                f"{counted['single']:,.0f}, cluster {counted['cluster']:,.0f} "
                f"(ratio {counted['cluster'] / counted['single']:.3f})"
            )
        ratios = [c / s for s, c in zip(rates["single"], rates["cluster"], strict=True)]
        costs = [c / s for s, c in zip(cpu["single"], cpu["cluster"], strict=True)]
        single_us, cluster_us = (statistics.median(cpu[name]) * 1e6 for name in ("single", "cluster"))
        print(
            f"gateway CPU per request cluster / single: median {statistics.median(costs):.2f} "
            f"(rounds: {', '.join(f'{r:.2f}' for r in costs)}; single {single_us:.0f} us, "
            f"cluster {cluster_us:.0f} us)"
        )
        print(
            f"throughput cluster / single ({args.requests} continuing requests, {args.concurrency} at once, "
            f"{args.rounds} alternating rounds): median {statistics.median(ratios):.2f} "
            f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)}; "
            f"single {statistics.median(rates['single']):.0f} req/s, "
            f"cluster {statistics.median(rates['cluster']):.0f} req/s)"
        )


if __name__ == "__main__":
    main()
