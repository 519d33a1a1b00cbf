"""The bot replicas behind the gateway: choice for new sessions, passive health, per-replica metrics."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from gateway.config import UpstreamConfig
from gateway.ops.metrics import Metrics
from gateway.upstream.reverse import PathMap
from gateway.upstream.upstream_client import Origin

log = logging.getLogger("gateway")


@dataclass(slots=True, eq=False)
class Replica:
    name: str
    base: str  # URL without a trailing slash, ready to prefix a raw request path
    in_flight: int = 0
    down_until: float = 0.0  # time.monotonic() until which new sessions avoid it
    order: int = field(default=0)
    origin: Origin = field(init=False)
    prefix: str = field(init=False)  # the base URL's path ("/bot/v1"), put before every request target
    requests_metric: Any = field(default=None)  # the bound replica_requests child
    path_map: PathMap | None = None  # maps its cookie paths and redirects to public ones (rewrite_paths)

    def __post_init__(self) -> None:
        self.origin = Origin(self.base)
        self.prefix = urlsplit(self.base).path


class Upstreams:
    """Named replicas; a session is pinned to one by name, so adding a replica moves no session."""

    def __init__(
        self, config: UpstreamConfig, metrics: Metrics, monotonic: Callable[[], float] = time.monotonic
    ):
        self._backoff = config.down_backoff
        self._monotonic = monotonic
        self._metrics = metrics
        self.replicas = [
            Replica(name, url.rstrip("/"), order=i) for i, (name, url) in enumerate(config.replicas())
        ]
        self.by_name = {r.name: r for r in self.replicas}
        if config.rewrite_paths:
            for replica in self.replicas:
                replica.path_map = PathMap(replica.base, config.public_prefix)
        self._turn = itertools.count()
        for replica in self.replicas:
            replica.requests_metric = metrics.replica_requests.labels(replica=replica.name)
            metrics.replica_errors.labels(replica=replica.name)
            metrics.replica_pinned.labels(replica=replica.name)
            metrics.replica_up.labels(replica=replica.name).set(1)

    def get(self, name: str | None) -> Replica | None:
        return self.by_name.get(name) if name else None

    def is_up(self, replica: Replica) -> bool:
        return replica.down_until <= self._monotonic()

    def choose(self) -> Replica:
        """The least busy replica that is up (all of them when none is), ties broken round-robin."""
        up = [r for r in self.replicas if self.is_up(r)] or self.replicas
        start = next(self._turn) % len(up)
        rotated = up[start:] + up[:start]
        return min(rotated, key=lambda r: r.in_flight)

    def pinned(self, replica: Replica) -> None:
        self._metrics.replica_pinned.labels(replica=replica.name).inc()

    def mark_down(self, replica: Replica, reason: str) -> None:
        """Passive health: after a connect failure or timeout, new sessions avoid it for down_backoff seconds."""
        was_up = self.is_up(replica)
        replica.down_until = self._monotonic() + self._backoff
        self._metrics.replica_up.labels(replica=replica.name).set(0)
        if was_up:
            log.warning("upstream replica %s marked down for %gs (%s)", replica.name, self._backoff, reason)

    def mark_up(self, replica: Replica) -> None:
        if replica.down_until:
            replica.down_until = 0.0
            self._metrics.replica_up.labels(replica=replica.name).set(1)
