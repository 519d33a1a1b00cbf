"""session.state_file at 100k and 1M sessions: the shutdown's save and the start's load, timed, with the
file's size and the extra memory each takes, and JSON of the same data (the obvious alternative) as the
baseline in the same run. Each phase runs in a fresh subprocess so timings and RSS are its own.

    .venv/bin/python -m bench.state_file [count ...]
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

T0 = 1_700_000_000.0


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def _store(count: int):  # type: ignore[no-untyped-def]
    from gateway.config import SessionConfig
    from gateway.sessions.store.memory import MemoryStore

    c = SessionConfig()
    return MemoryStore(
        absolute_timeout=c.absolute_timeout,
        max_sessions=max(count, c.max_sessions),
        on_full="evict",
        tombstone_ttl=c.tombstone_ttl,
        max_tombstones=c.max_tombstones,
    )


def save(count: int, path: str) -> dict[str, float]:
    """Fill a store as a gateway would (32-hex Teneo ids, a tombstone per 5 sessions up to the default
    200k), then save it as the shutdown does; JSON of the same rows, written and fsynced, is the baseline."""
    from gateway.sessions.store import state_file

    async def fill():  # type: ignore[no-untyped-def]
        store = _store(count)
        tombs = min(count // 5, 200_000)
        for i in range(count + tombs):
            await store.create(f"{i:032X}", T0 + i * 1e-4, idle_timeout=600.0, replica="default")
        for i in range(tombs):
            await store.end(f"{i:032X}", T0 + 200, "client")
        return store

    store = asyncio.run(fill())
    base, before = _rss_mb(), _peak_mb()
    started = time.perf_counter()
    state_file.save(store, path, T0 + 300)
    seconds = time.perf_counter() - started
    peak = max(0.0, _peak_mb() - max(base, before))
    snapshot = store.snapshot()
    started = time.perf_counter()
    document = {
        "sessions": [[sid, *rec[:5]] for sid, rec in snapshot.sessions.items()],
        "tombstones": [[sid, *tomb] for sid, tomb in snapshot.tombstones.items()],
    }
    with open(path + ".json", "wb") as fh:
        fh.write(json.dumps(document, separators=(",", ":")).encode())
        fh.flush()
        os.fsync(fh.fileno())
    json_seconds = time.perf_counter() - started
    return {
        "sessions": len(snapshot.sessions),
        "tombstones": len(snapshot.tombstones),
        "save_s": round(seconds, 3),
        "save_peak_extra_mb": round(peak, 1),
        "file_mb": round(os.path.getsize(path) / 1e6, 1),
        "json_save_s": round(json_seconds, 3),
        "json_file_mb": round(os.path.getsize(path + ".json") / 1e6, 1),
    }


def load(count: int, path: str) -> dict[str, float]:
    """Load into an empty store as the start does (the file is consumed); then the JSON baseline, parsed
    into the same dict of records."""
    from gateway.config import SessionConfig
    from gateway.sessions.store import state_file

    store = _store(count)
    base = _rss_mb()
    started = time.perf_counter()
    ended = asyncio.run(state_file.load(store, path, T0 + 400, state_file.size_bound(SessionConfig())))
    seconds = time.perf_counter() - started
    assert not ended and len(store) == count, (len(ended), len(store))
    peak_during = _peak_mb() - base
    held = _rss_mb() - base
    del store
    started = time.perf_counter()
    with open(path + ".json", "rb") as fh:
        document = json.loads(fh.read())
    records = {row[0]: (*row[1:], 0.0) for row in document["sessions"]}
    json_seconds = time.perf_counter() - started
    assert len(records) == count
    return {
        "load_s": round(seconds, 3),
        "load_peak_extra_mb": round(max(0.0, peak_during - held), 1),
        "json_load_s": round(json_seconds, 3),
    }


def _in_subprocess(call: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", f"import json, bench.state_file as b; print(json.dumps({call}))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def run_all(counts: tuple[int, ...] = (100_000, 1_000_000)) -> dict[str, dict[str, float]]:
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-state-") as directory:
        for count in counts:
            path = os.path.join(directory, f"sessions-{count}.state")
            row = _in_subprocess(f"b.save({count}, {path!r})")
            row |= _in_subprocess(f"b.load({count}, {path!r})")
            results[str(count)] = row
            print(
                f"  {count:>9,} sessions + {int(row['tombstones']):,} tombstones: "
                f"file {row['file_mb']} MB ({row['file_mb'] * 1e6 / count:.0f} B/session), "
                f"save {row['save_s']} s (+{row['save_peak_extra_mb']} MB peak), "
                f"load {row['load_s']} s (+{row['load_peak_extra_mb']} MB transient); "
                f"JSON: {row['json_file_mb']} MB, save {row['json_save_s']} s "
                f"({row['json_save_s'] / row['save_s']:.1f}x), load {row['json_load_s']} s "
                f"({row['json_load_s'] / row['load_s']:.1f}x)",
                flush=True,
            )
    return results


if __name__ == "__main__":
    run_all(tuple(int(arg) for arg in sys.argv[1:]) or (100_000, 1_000_000))
