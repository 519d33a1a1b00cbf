"""The gateway against an earlier revision of itself, in paired rounds on loopback.

Issue 16 asked the hardened front end to keep at least 0.95 of the speed of the main it replaced. Both
gateways (memory store) stay up and take turns, a short wrk run each per round, so machine drift between
rounds cancels; the median of the per-round ratios is printed with its quartiles.
Run: .venv/bin/python -m bench.versus --baseline 69c63d2 [--rounds 12] [--seconds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from bench.run import (
    PYTHON,
    ROOT,
    Rig,
    _make_sessions,
    backend,
    free_port,
    gateway_env,
    load,
    process,
    quartiles,
)


@contextmanager
def worktree(revision: str) -> Iterator[Path]:
    """A detached checkout of `revision`, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="sg-bench-baseline-")) / "tree"
    subprocess.run(["git", "worktree", "add", "--detach", str(path), revision], cwd=ROOT, check=True)
    try:
        yield path
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=ROOT, check=False)


@contextmanager
def gateway(rig: Rig, tree: Path) -> Iterator[int]:
    port, admin = free_port(), free_port()
    env = {**gateway_env(rig, port, admin, "memory"), "PYTHONPATH": str(tree)}
    with process([PYTHON, "-m", "gateway", "serve"], port, env, cwd=tree):
        yield port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--baseline", required=True, help="the git revision to compare with")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=2.0, help="one contender's run per round")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--mixes", default="cookie,new")
    args = parser.parse_args()
    with ExitStack() as stack:
        rig = stack.enter_context(backend())
        base_tree = stack.enter_context(worktree(args.baseline))
        ports = {
            "this": stack.enter_context(gateway(rig, ROOT)),
            "baseline": stack.enter_context(gateway(rig, base_tree)),
        }
        sessions = {name: asyncio.run(_make_sessions(port, 64)) for name, port in ports.items()}
        for mix in args.mixes.split(","):
            for name, port in ports.items():
                load(port, mix, args.connections, 1.0, sessions[name])  # warm-up
            rps: list[float] = []
            p99: list[float] = []
            for rnd in range(args.rounds):
                order = list(ports) if rnd % 2 == 0 else list(reversed(ports))
                got = {
                    name: load(ports[name], mix, args.connections, args.seconds, sessions[name])
                    for name in order
                }
                rps.append(got["this"][0] / got["baseline"][0])
                p99.append(got["this"][2] / got["baseline"][2])
                print(
                    f"  {mix} round {rnd}: this {got['this'][0]:.0f} rps, baseline {got['baseline'][0]:.0f} rps",
                    flush=True,
                )
            print(
                f"{mix}, {args.connections} connections, {args.rounds} rounds: requests/s this/baseline "
                f"{statistics.median(rps):.3f} (quartiles {quartiles(rps)}), p99 this/baseline "
                f"{statistics.median(p99):.3f} (quartiles {quartiles(p99)})",
                flush=True,
            )


if __name__ == "__main__":
    main()
