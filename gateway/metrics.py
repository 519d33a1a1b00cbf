"""Metrics(registry): every Prometheus metric of the gateway, in one place.

The registry is injected (tests build a fresh `CollectorRegistry()`); the app never touches the global one.
Label values come from small fixed sets and are initialised to 0 at start ("avoid missing metrics").
"""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from gateway import __version__

PREFIX: Final = "session_gateway"
METHODS: Final = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other")
UPSTREAM_ERROR_REASONS: Final = ("connect", "timeout", "reset", "protocol")
STREAM_KINDS: Final = ("sse", "websocket")

# Chat turns take milliseconds, LLM answers minutes: edges from 5 ms to 300 s, with one at every
# threshold the alert rules use (1 s, 5 s, 30 s).
DURATION_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
OVERHEAD_BUCKETS: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)


def method_label(method: str) -> str:
    """Bound the method label to a fixed set: clients can send any token as a method."""
    return method if method in METHODS else "other"


class Metrics:
    """Owns every metric; construct once per app with the registry to register on."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            f"{PREFIX}_requests", "Proxied requests by method and status code.", ["method", "code"], registry=r
        )
        self.request_duration = Histogram(
            f"{PREFIX}_request_duration_seconds",
            "Time from request received to response finished, streams included.",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.upstream_ttfb = Histogram(
            f"{PREFIX}_upstream_first_byte_seconds",
            "Time from sending the request upstream to receiving the response head.",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.overhead = Histogram(
            f"{PREFIX}_overhead_seconds",
            "Time the gateway itself spends per request, upstream wait excluded.",
            buckets=OVERHEAD_BUCKETS,
            registry=r,
        )
        self.upstream_errors = Counter(
            f"{PREFIX}_upstream_errors", "Failed upstream exchanges by reason.", ["reason"], registry=r
        )
        self.in_flight = Gauge(f"{PREFIX}_requests_in_flight", "Requests being proxied now.", registry=r)
        self.client_disconnects = Counter(
            f"{PREFIX}_client_disconnects", "Clients that went away before their response finished.", registry=r
        )
        self.streams_open = Gauge(
            f"{PREFIX}_streams_open", "Open long-lived streams by kind.", ["kind"], registry=r
        )
        self.build_info = Gauge(f"{PREFIX}_build_info", "Build information; always 1.", ["version"], registry=r)
        self.build_info.labels(version=__version__).set(1)
        ProcessCollector(registry=r)
        for reason in UPSTREAM_ERROR_REASONS:
            self.upstream_errors.labels(reason=reason)
        for kind in STREAM_KINDS:
            self.streams_open.labels(kind=kind)
