"""The fuzz of tests/test_fuzz.py at scale: 100,000 seeded cases (bench/fuzzing.py) against a real
`session-gateway serve` on loopback, in front of a recording bot in this process; prints the counts.

    .venv/bin/python -m bench.fuzz [--cases 100000] [--seed 16] [--concurrency 64] [--seconds 600]

Exits 1 on any anomaly (bench/fuzz_runner.py), an ERROR line or traceback in the gateway's log that no
known issue (fuzz_runner.KNOWN_ISSUES) accounts for, a failed health check afterwards, or an exit other
than 0 on SIGTERM. 100,000 cases take about 75 s on a 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aiohttp import ClientSession, web

from bench.fuzz_runner import LOOPBACK, SEQ_HEADER, Bot, Runner
from bench.fuzzing import SETTINGS
from bench.run import PYTHON, ROOT, free_port, wait_port


def gateway_env(upstream: str, port: int, admin: int) -> dict[str, str]:
    """The fuzz SETTINGS as GATEWAY_* variables; warnings and errors only, as JSON lines."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env |= {
        "GATEWAY_LISTEN_HOST": LOOPBACK,
        "GATEWAY_LISTEN_PORT": str(port),
        "GATEWAY_ADMIN_HOST": LOOPBACK,
        "GATEWAY_ADMIN_PORT": str(admin),
        "GATEWAY_UPSTREAM_URL": upstream,
        "GATEWAY_LOG_LEVEL": "warning",
        "GATEWAY_LOG_FORMAT": "json",
    }
    for section, values in SETTINGS.items():
        for key, value in values.items():
            env[f"GATEWAY_{section.upper()}_{key.upper()}"] = str(value).lower()
    return env


def log_levels(path: Path) -> tuple[collections.Counter[str], list[str]]:
    """Lines of the gateway's log by level ("traceback" for lines with one), and the non-warning ones."""
    levels: collections.Counter[str] = collections.Counter()
    notable: list[str] = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
            level = str(record.get("level", "?"))
        except ValueError:
            level = "unstructured"
        if "Traceback" in line:
            level = "traceback"
        levels[level] += 1
        if level not in ("warning", "info", "debug") and len(notable) < 20:
            notable.append(line[:400])
    return levels, notable


async def health(port: int) -> bool:
    async with ClientSession() as session, session.get(f"http://{LOOPBACK}:{port}/after") as response:
        return response.status == 200 and SEQ_HEADER in response.headers


async def main(args: argparse.Namespace) -> int:
    bot = Bot()
    bot_runner = web.AppRunner(bot.app(), access_log=None)
    await bot_runner.setup()
    bot_port = free_port()
    await web.TCPSite(bot_runner, LOOPBACK, bot_port).start()
    port, admin = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        log_path = Path(args.log or Path(tmp) / "gateway.log")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [PYTHON, "-m", "gateway", "serve"],
                env=gateway_env(f"http://{LOOPBACK}:{bot_port}", port, admin),
                stdout=subprocess.DEVNULL,
                stderr=log,
                cwd=ROOT,
            )
        try:
            await asyncio.to_thread(wait_port, port)
            runner = Runner(port, bot, seed=args.seed)
            print(
                f"fuzzing the gateway (pid {proc.pid}) on port {port}: {args.cases} cases, seed {args.seed}"
            )
            tally = await runner.run(
                args.cases, start=args.start, concurrency=args.concurrency, seconds=args.seconds
            )
            runner.verify()
            healthy = await health(port)
        finally:
            proc.send_signal(signal.SIGTERM)
            began = time.monotonic()
            code = await asyncio.to_thread(proc.wait, 60)
            stopped = time.monotonic() - began
        levels, notable = log_levels(log_path)
    await bot_runner.cleanup()
    print(tally.report(bot))
    print(f"gateway log lines      {dict(levels)}")
    for line in notable:
        print(f"  {line}")
    print(f"healthy afterwards     {healthy}")
    print(f"exit on SIGTERM        {code} after {stopped:.2f} s")
    errors, explained = levels["error"] + levels["critical"] + levels["traceback"], tally.known_error_lines()
    print(f"ERROR lines unexplained {max(0, errors - explained)} ({explained} from known issues)")
    failed = tally.anomalies or errors > explained
    return 1 if failed or not healthy or code != 0 else 0


def cli() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--start", type=int, default=0, help="the first case number")
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=64, help="connections at once")
    parser.add_argument("--seconds", type=float, default=600.0, help="start no case after this long")
    parser.add_argument("--log", help="keep the gateway's log (JSON lines) in this file")
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        sys.exit(asyncio.run(main(args)))
    sys.exit(uvloop.run(main(args)))


if __name__ == "__main__":
    cli()
