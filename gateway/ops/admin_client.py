"""`session-gateway sessions list|show|end`: a client of the admin port's session API (aiohttp)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from typing import Any, TextIO
from urllib.parse import quote, urlsplit

import aiohttp
from aiohttp import hdrs
from yarl import URL

from gateway.config import Config
from gateway.sessions.manager import short_id

EXIT_OK = 0
EXIT_FAILED = 1  # not found, refused, unreachable: any answer but the one asked for
EXIT_USAGE = 2  # a bad configuration, flag or URL (argparse and the config loader use 2 as well)
_COLUMNS = "{id:<14} {age:>8} {idle:>8} {expires:>10} {requests:>8}  {replica}"


class AdminError(Exception):
    """The admin API refused the request, answered an error, or could not be reached."""


class AdminClient:
    """The admin API at `base` (`http://host:port`), with a bearer token when admin.token is set."""

    def __init__(self, base: str, token: str = "", timeout: float = 30.0) -> None:
        self.base = base.rstrip("/")
        self._headers = {hdrs.AUTHORIZATION: f"Bearer {token}"} if token else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AdminClient:
        self._session = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def page(self, limit: int, cursor: str | None = None) -> dict[str, Any]:
        """One page of GET /sessions: {"store", "now", "sessions": [...], "next": cursor or None}."""
        params = {"limit": str(limit), **({"cursor": cursor} if cursor else {})}
        return await self._call("GET", "/sessions", params)

    async def pages(
        self, limit: int, cursor: str | None = None, *, follow: bool = True
    ) -> AsyncIterator[dict[str, Any]]:
        """The page at `cursor`, then (`follow`) every next one."""
        while True:
            answer = await self.page(limit, cursor)
            yield answer
            cursor = answer["next"]
            if not (follow and cursor):
                return

    async def show(self, session_id: str) -> dict[str, Any]:
        """GET /sessions/<id>: {"now", "session": {...}}."""
        return await self._call("GET", self._session_path(session_id))

    async def end(self, session_id: str) -> None:
        """DELETE /sessions/<id>: the session ends with reason admin."""
        await self._call("DELETE", self._session_path(session_id))

    @staticmethod
    def _session_path(session_id: str) -> str:
        return "/sessions/" + quote(session_id, safe="")  # an id may hold "/", "?" or "%"

    async def _call(self, method: str, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        assert self._session is not None, "use AdminClient as an async context manager"
        url = URL(self.base + path, encoded=True).with_query(params or {})
        try:
            async with self._session.request(method, url) as response:
                body = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AdminError(
                f"cannot reach the admin API at {self.base}: {exc or type(exc).__name__}"
            ) from None
        if response.status == 204:
            return {}
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        if response.status >= 400 or not isinstance(answer, dict):
            error = answer.get("error") if isinstance(answer, dict) else None
            if isinstance(error, dict):
                raise AdminError(f"{response.status} {error.get('code')}: {error.get('message')}")
            raise AdminError(f"{response.status} {response.reason}: not the admin API's answer")
        return answer


def run_sessions(args: argparse.Namespace, config: Config) -> int:
    """The `sessions` command: list, show or end through the admin API; the exit code."""
    base = args.admin or default_admin_url(config)
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        print(f"--admin: expected an http:// or https:// URL, got {base!r}", file=sys.stderr)
        return EXIT_USAGE
    token = args.token if args.token is not None else config.admin.token
    try:
        return asyncio.run(_sessions(args, AdminClient(base, token), sys.stdout))
    except AdminError as exc:
        print(f"session-gateway sessions {args.action}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:  # `sessions list --all | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return EXIT_OK


def default_admin_url(config: Config) -> str:
    """The admin port of the gateway this configuration runs: its host, or loopback for a wildcard."""
    host = config.admin.host
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"http://{f'[{host}]' if ':' in host else host}:{config.admin.port}"


async def _sessions(args: argparse.Namespace, client: AdminClient, out: TextIO) -> int:
    async with client:
        if args.action == "list":
            await _list(client, args, out)
        elif args.action == "show":
            answer = await client.show(args.session_id)
            if args.json:
                print(json.dumps(answer["session"]), file=out)
            else:
                _print_session(answer["session"], answer["now"], out)
        else:
            await client.end(args.session_id)
            print(f"ended {short_id(args.session_id)}", file=out)
    return EXIT_OK


async def _list(client: AdminClient, args: argparse.Namespace, out: TextIO) -> None:
    """A table (one header, rows as pages arrive), or JSON Lines: one session object per line."""
    header = not args.json
    async for answer in client.pages(args.limit, args.cursor, follow=args.all):
        if header:
            ids = "ID (digest)" if answer["store"] == "redis" else "ID"
            print(
                _COLUMNS.format(
                    id=ids,
                    age="AGE",
                    idle="IDLE",
                    expires="EXPIRES IN",
                    requests="REQUESTS",
                    replica="REPLICA",
                ),
                file=out,
            )
            header = False
        for session in answer["sessions"]:
            if args.json:
                print(json.dumps(session), file=out)
            else:
                print(_row(session, answer["now"]), file=out)
        out.flush()
        if not args.all and answer["next"]:
            print(f"more: session-gateway sessions list --cursor {answer['next']}", file=sys.stderr)


def _row(session: dict[str, Any], now: float) -> str:
    return _COLUMNS.format(
        id=session["id"],
        age=duration(now - session["started"]),
        idle=duration(now - session["last_seen"]),
        expires=duration(session["deadline"] - now) if session["deadline"] > now else "due",
        requests=session["requests"],
        replica=session["replica"],
    )


def _print_session(session: dict[str, Any], now: float, out: TextIO) -> None:
    rows = [
        ("id", session["id"]),
        ("started", f"{duration(now - session['started'])} ago"),
        ("last seen", f"{duration(now - session['last_seen'])} ago"),
        ("idle timeout", duration(session["idle_timeout"])),
        ("expires", f"in {duration(session['deadline'] - now)}" if session["deadline"] > now else "due"),
        ("requests", session["requests"]),
        ("replica", session["replica"]),
    ]
    for name, value in rows:
        print(f"{name + ':':<14}{value}", file=out)


def duration(seconds: float) -> str:
    """Seconds as an operator reads them: 42s, 5m12s, 3h05m, 2d03h."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"
