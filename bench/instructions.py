"""Instructions per proxied request, counted by callgrind: an A/B measure that the machine's load cannot move.

req/s on these shared 2-core machines drifts ±15% between runs; callgrind's instruction count for the same
code and the same requests repeats within 0.1%, even with the other core busy. It counts user space only (the
kernel's share of a socket write is not in it), so it guides trimming the Python path; `./scripts/bench` stays
the measure of the targets. Each tree (a checkout, e.g. `git worktree add /tmp/base HEAD~3`) runs its own
`python -m gateway serve` under callgrind behind the bench's backend; counters are zeroed after a warm-up and
read after exactly `--requests` requests on `--connections` keep-alive connections.

    .venv/bin/python -m bench.instructions [--tree DIR ...] [--mix cookie|new|browser|rasa ...]
        [--store memory|redis] [--requests 2000]

Several --mix values are measured one after the other on each tree, with their ratio to the first: e.g.
`--mix cookie --mix rasa` is what placing the session in a 1 KiB Rasa body (session.preset = "rasa-rest")
costs against a continued cookie request.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from bench.run import PYTHON, ROOT, backend, free_port, gateway_env, redis_server, wait_port

SESSION = "82068651f3d9e128215189b348b0a5bb"
REQUESTS = {
    "cookie": f"GET /engine?userinput=hi HTTP/1.1\r\nHost: x\r\nCookie: JSESSIONID={SESSION}\r\n\r\n",
    "new": "GET /engine?userinput=hi HTTP/1.1\r\nHost: x\r\n\r\n",
    # What a Chromium widget sends cross-site: 15 fields, a form body, the session in X-Teneo-Session.
    "browser": "POST /engine HTTP/1.1\r\nHost: chat.example.com\r\nConnection: keep-alive\r\n"
    'Content-Length: 28\r\nsec-ch-ua: "Chromium";v="156"\r\nsec-ch-ua-mobile: ?0\r\n'
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/156.0 Safari/537.36\r\n"
    f"Content-Type: application/x-www-form-urlencoded\r\nX-Teneo-Session: JSESSIONID={SESSION}\r\n"
    "Accept: */*\r\nOrigin: https://shop.example.org\r\nSec-Fetch-Site: cross-site\r\nSec-Fetch-Mode: cors\r\n"
    "Referer: https://shop.example.org/\r\nAccept-Encoding: gzip, deflate, br\r\nAccept-Language: en-GB\r\n"
    "\r\nuserinput=hi&viewtype=tieapi",
}
# Rasa's REST channel behind session.preset = "rasa-rest": a 1 KiB JSON body whose `sender` the gateway replaces.
# The id presented is unknown at first; its successor, started by the warm-up, continues from then on.
_RASA_BODY = (
    '{"sender": "chosen-by-client", "message": "hi", "metadata": {"page": "' + "p" * (1024 - 72) + '"}}'
)
REQUESTS["rasa"] = (
    "POST /webhooks/rest/webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    f"X-Teneo-Session: JSESSIONID={SESSION}\r\nContent-Length: {len(_RASA_BODY)}\r\n\r\n{_RASA_BODY}"
)
MIX_ENV: dict[str, dict[str, str]] = {"rasa": {"GATEWAY_SESSION_PRESET": "rasa-rest"}}


async def drive(port: int, request: bytes, count: int, connections: int) -> None:
    """Exactly `count` requests, one at a time per connection, each response read to its end."""
    left = [count]

    async def one_connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while left[0] > 0:
            left[0] -= 1
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
            await reader.readexactly(int(length.group(1)) if length else 0)
        writer.close()

    await asyncio.gather(*(one_connection() for _ in range(connections)))


def _dump(out: str, timeout: float) -> str:
    """The -d dump's text once callgrind has written all of it ("totals:" ends it); "" if it never does.
    (The final dump, written on exit, has no suffix.)"""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name in sorted(glob.glob(f"{out}/cg.out.*")):
            text = Path(name).read_text()
            if "\ntotals:" in text:
                return text
        time.sleep(0.1)
    return ""


def count(tree: str, port: int, env: dict[str, str], args: argparse.Namespace, mix: str) -> float:
    out = tempfile.mkdtemp(prefix="sg-callgrind-")
    valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/cg.out"]
    proc = subprocess.Popen(
        [*valgrind, PYTHON, "-m", "gateway", "serve"],
        cwd=tree,  # `python -m gateway` imports the tree's own package
        env={**env, "PYTHONPATH": tree},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port, timeout=120)  # callgrind runs Python ~50x slower: start-up takes a while
        request = REQUESTS[mix].encode()
        asyncio.run(drive(port, request, 300, args.connections))  # warm-up: imports, caches, the session
        subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True, capture_output=True)
        asyncio.run(drive(port, request, args.requests, args.connections))
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True, capture_output=True)
        text = _dump(out, timeout=30)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        shutil.rmtree(out, ignore_errors=True)
    if not text:
        raise SystemExit(f"callgrind wrote no dump for {tree} within 30 s (is the gateway there starting?)")
    summary = re.search(r"^summary: (\d+)", text, re.M)
    assert summary is not None, "no summary line in the callgrind dump"
    return int(summary.group(1)) / args.requests


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--tree", action="append", help="a checkout to measure (repeatable); default: this one"
    )
    parser.add_argument("--mix", choices=sorted(REQUESTS), action="append", help="repeatable; default cookie")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--store", choices=["memory", "redis"], default="memory")
    args = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    trees = [os.path.abspath(t) for t in args.tree or [str(ROOT)]]
    with backend() as rig, redis_server() as redis_url:
        if args.store == "redis" and redis_url is None:
            raise SystemExit("redis-server is not installed")
        rig.redis_url = redis_url
        for tree in trees:
            first = None
            for mix in args.mix or ["cookie"]:
                port, admin = free_port(), free_port()
                env = {**gateway_env(rig, port, admin, args.store), **MIX_ENV.get(mix, {})}
                per_request = count(tree, port, env, args, mix)
                first = first or per_request
                print(
                    f"{tree}  mix={mix}  store={args.store}  instructions/request={per_request:,.0f}"
                    f"  ratio to the first mix={per_request / first:.3f}"
                )


if __name__ == "__main__":
    main()
