"""Print the README's Performance tables from bench/results/latest.json (32 connections, cookie mix)."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"


def main() -> None:
    doc = json.loads(RESULTS.read_text())
    rows = {(r["contender"], r["mix"], r["connections"]): r for r in doc["results"]}

    def get(name: str) -> dict[str, float] | None:
        return rows.get((name, "cookie", 32))

    plain, nginx = get("plain aiohttp proxy"), get("nginx proxy")
    for name in ("backend direct", "nginx proxy", "plain aiohttp proxy", "gateway memory", "gateway redis"):
        r = get(name)
        if r is None or plain is None:
            continue
        x_nginx = f"{r['rps'] / nginx['rps']:.2f}" if nginx else "-"
        print(
            f"| {name} | {r['rps']:.0f} | {r['p99_ms']:.1f} | {r['rps'] / plain['rps']:.2f} | "
            f"{r['p99_ms'] / plain['p99_ms']:.2f} | {x_nginx} |"
        )
    print()
    gw, redis, extras = get("gateway memory"), get("gateway redis"), doc["extras"]
    assert gw and plain
    checks = [
        (
            "≥ 2.5× the plain proxy's req/s (memory, cookie, 32 conns)",
            gw["rps"] / plain["rps"],
            lambda v: v >= 2.5,
        ),
        ("p99 ≤ 0.4× the plain proxy's", gw["p99_ms"] / plain["p99_ms"], lambda v: v <= 0.4),
    ]
    if nginx:
        checks.append(("≥ 0.25× nginx's req/s", gw["rps"] / nginx["rps"], lambda v: v >= 0.25))
    if "throughput_1m_sessions_over_64" in extras:
        checks.append(
            (
                "1M live sessions ≥ 0.95× throughput",
                extras["throughput_1m_sessions_over_64"],
                lambda v: v >= 0.95,
            )
        )
    if "memory_bytes_per_session_1000000" in extras:
        checks.append(
            ("≤ 400 bytes per session at 1M", extras["memory_bytes_per_session_1000000"], lambda v: v <= 400)
        )
    if "expiry_of_100k" in extras:
        checks.append(
            (
                "no stall > 5 ms while 100k expire",
                extras["expiry_of_100k"]["longest_stall_ms"],
                lambda v: v <= 5,
            )
        )
    if redis:
        checks.append(("Redis store ≥ 0.7× memory store", redis["rps"] / gw["rps"], lambda v: v >= 0.7))
    if "redis_round_trips_per_request" in extras:
        checks.append(
            ("one Redis round trip per request", extras["redis_round_trips_per_request"], lambda v: v <= 1.05)
        )
    for label, value, ok in checks:
        print(f"| {label} | {value:.2f} | {'yes' if ok(value) else 'no'} |")
    paired = extras.get("paired_targets")
    if paired:
        spread = extras.get("paired_spread", {})
        print(
            f"\nPaired rounds ({paired['rounds']}, contenders kept up, median of per-round ratios,"
            " and the quartiles where the run kept them):"
        )
        for key, value in paired.items():
            if key != "rounds":
                q1, q3 = spread.get(key, (None, None))
                middle = f" | {q1:.2f}–{q3:.2f}" if q1 is not None else ""
                print(f"| {key} | {value:.2f}{middle} |")


if __name__ == "__main__":
    main()
