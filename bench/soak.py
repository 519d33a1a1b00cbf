"""Soak: minutes of mixed traffic, ordinary and hostile, against a real `session-gateway serve` on loopback.

Each minute it prints the gateway's resident memory, its open file descriptors and connections, and what the
clients did; a gateway that leaks shows a column that keeps growing. Not part of CI (issue 16 asked for ten
minutes). Every loop is bounded by the duration; every address is 127.0.0.1.

    .venv/bin/python -m bench.soak [--minutes 10] [--clients 16]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import random
import re
import sys
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from bench.run import PYTHON, Rig, free_port, gateway_env, process

BIG = os.urandom(1024 * 1024)


def bot_app() -> web.Application:
    """A bot: a chat turn with a session cookie, a 1 MiB answer for clients that never read it, a slow one."""

    async def chat(request: web.Request) -> web.Response:
        await request.read()
        response = web.json_response({"output": {"text": "hello"}})
        if "JSESSIONID" not in request.cookies:
            response.set_cookie("JSESSIONID", os.urandom(8).hex())
        return response

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=BIG)

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(2)
        return web.Response(text="late")

    app = web.Application()
    app.router.add_route("*", "/big", big)
    app.router.add_route("*", "/slow", slow)
    app.router.add_route("*", "/{tail:.*}", chat)
    return app


Counts = collections.Counter[str]


async def ordinary(port: int, deadline: float, counts: Counts) -> None:
    """A widget: a session, turns on one keep-alive connection, sometimes a pause."""
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as session:
        while time.monotonic() < deadline:
            try:
                async with session.post(f"http://127.0.0.1:{port}/engine", data=b"userinput=hi") as r:
                    await r.read()
                    counts[f"ordinary {r.status}"] += 1
            except aiohttp.ClientError as exc:
                counts[f"ordinary {type(exc).__name__}"] += 1
            await asyncio.sleep(random.random() * 0.05)


async def raw(port: int, data: bytes, *, trickle: float = 0.0, read: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if trickle:
            for i in range(len(data)):
                if reader.at_eof() or len(reader._buffer):  # answered (a 408) before the request was done
                    break
                writer.write(data[i : i + 1])
                await writer.drain()
                await asyncio.sleep(trickle)
        else:
            writer.write(data)
        if not read:
            await asyncio.sleep(3)  # holds the answer unread
            return b""
        return await asyncio.wait_for(reader.read(), 30)
    except (ConnectionError, TimeoutError):
        return b""
    finally:
        writer.close()


HOSTILE = {
    "slowloris": lambda port: raw(
        port, b"GET /a HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 200 + b"\r\n\r\n", trickle=0.2
    ),
    "slow upload": lambda port: raw(
        port, b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\n" + b"x" * 20, trickle=0.3
    ),
    "non-reader": lambda port: raw(port, b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n", read=False),
    "malformed": lambda port: raw(port, b"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n"),
    "connect": lambda port: raw(
        port, b"CONNECT a:1 HTTP/1.1\r\nHost: a\r\nContent-Length: 20\r\n\r\nGET / HTTP/1.1\r\n\r\n"
    ),
    "bad cookie": lambda port: raw(
        port, b"GET / HTTP/1.1\r\nHost: x\r\nCookie: JSESSIONID=\xff\r\nConnection: close\r\n\r\n"
    ),
    "slow bot": lambda port: raw(port, b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    "silent": lambda port: raw(port, b"", read=True),
}


async def hostile(port: int, deadline: float, counts: Counts) -> None:
    while time.monotonic() < deadline:
        kind = random.choice(list(HOSTILE))
        answer = await HOSTILE[kind](port)
        status = re.match(rb"HTTP/1\.1 (\d{3})", answer)
        counts[f"{kind} {status.group(1).decode() if status else 'closed'}"] += 1


def usage(pid: int) -> tuple[int, int]:
    """Resident memory (KiB) and open descriptors of a process."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


async def metric(admin: int, name: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{admin}/metrics") as r:
        text = await r.text()
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    return found.group(1) if found else "?"


async def soak(port: int, admin: int, pid: int, minutes: float, clients: int) -> None:
    counts = Counts()
    start = time.monotonic()
    deadline = start + minutes * 60
    workers = [asyncio.create_task(ordinary(port, deadline, counts)) for _ in range(clients)]
    workers += [asyncio.create_task(hostile(port, deadline, counts)) for _ in range(clients)]
    print("minute  rss_kib  fds  connections_open  sessions_active  requests_so_far", flush=True)
    minute = 0
    while time.monotonic() < deadline:
        await asyncio.sleep(min(60, max(0.0, deadline - time.monotonic())))
        minute += 1
        rss, fds = usage(pid)
        open_now = await metric(admin, "session_gateway_connections_open")
        sessions = await metric(admin, "session_gateway_sessions_active")
        print(
            f"{minute:6d}  {rss:7d}  {fds:4d}  {open_now:>16}  {sessions:>15}  {sum(counts.values()):15d}",
            flush=True,
        )
    await asyncio.gather(*workers, return_exceptions=True)
    await asyncio.sleep(5)  # the gateway's timeouts end what the clients left behind
    rss, fds = usage(pid)
    print(f"after   {rss:7d}  {fds:4d}  {await metric(admin, 'session_gateway_connections_open'):>16}")
    for key, value in sorted(counts.items()):
        print(f"  {key}: {value}")


async def main_async(args: argparse.Namespace) -> None:
    runner = web.AppRunner(bot_app(), access_log=None)
    await runner.setup()
    bot_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", bot_port).start()
    port, admin = free_port(), free_port()
    env = gateway_env(Rig(bot_port, None, "soak bot", None), port, admin, "memory")
    env.update(
        {
            "GATEWAY_LISTEN_HEADER_TIMEOUT": "2",
            "GATEWAY_LISTEN_BODY_TIMEOUT": "2",
            "GATEWAY_LISTEN_SEND_TIMEOUT": "2",
            "GATEWAY_LISTEN_KEEPALIVE_TIMEOUT": "5",
            "GATEWAY_UPSTREAM_POOL_SIZE": "32",
            # Most hostile clients start a session each: a short idle timeout lets the count level off
            # within the run, so a growing memory column means a leak and not live sessions.
            "GATEWAY_SESSION_IDLE_TIMEOUT": "30",
        }
    )
    with process([PYTHON, "-m", "gateway", "serve"], port, env) as proc:
        await soak(port, admin, proc.pid, args.minutes, args.clients)
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=16, help="ordinary clients, and as many hostile ones")
    asyncio.run(main_async(parser.parse_args()))
    sys.exit(0)


if __name__ == "__main__":
    main()
