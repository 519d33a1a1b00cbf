"""Metrics(registry): every Prometheus metric of the gateway is declared here, and nowhere else.

The registry is injected (tests build a fresh `CollectorRegistry()`); the app never touches the global one.
Label values come from small fixed sets and are initialised to 0 at start ("avoid missing metrics").

Two kinds, one exposition:
- Updated on every proxied request (request counts and durations, upstream timings, overhead, bytes): the
  hand-written lock-free ones of hotmetrics.py, reached through `self.hot`. prometheus_client takes a
  threading.Lock on every update; 13 such updates a request cost ~10% of the gateway's CPU (profiled, issue 6),
  and all updates and scrapes run on the one event-loop thread, so the lock buys nothing.
- Everything else (session starts and ends, the sweeper, the store, events, deferrals, limits): ordinary
  prometheus_client Counters, Gauges and Histograms, declared below.
A new metric is a prometheus_client one, unless it is updated on every request of the proxy path: then it is a
hotmetrics one, and bench/instructions.py shows what it costs.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)

from gateway import __version__
from gateway.ops.hotmetrics import HotCounter, HotMetrics

# No `_created` series: they double the exposition, and no dashboard or rule reads them (increase() and
# rate() handle counter resets by themselves). The switch is process-wide in prometheus_client.
disable_created_metrics()  # type: ignore[no-untyped-call]

PREFIX: Final = "session_gateway"
METHODS: Final = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other")
UPSTREAM_ERROR_REASONS: Final = ("connect", "timeout", "reset", "protocol", "too_large")
STREAM_KINDS: Final = ("sse", "websocket")

# Chat turns take milliseconds, LLM answers minutes: edges from 5 ms to 300 s, with one at every
# threshold the alert rules use (5 s, SessionGatewayUpstreamSlowFirstByte; tests/ops/test_metrics.py checks).
DURATION_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
OVERHEAD_BUCKETS: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
# Sessions live from seconds to the 24 h absolute maximum; edges at the common idle timeouts (10, 30, 60 min).
SESSION_DURATION_BUCKETS: Final = (
    10,
    30,
    60,
    120,
    300,
    600,
    900,
    1800,
    3600,
    7200,
    14400,
    28800,
    43200,
    86400,
)
SESSION_REQUESTS_BUCKETS: Final = (1, 2, 3, 5, 10, 20, 50, 100, 200, 500, 1000)
IDLE_GAP_BUCKETS: Final = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 900, 1200, 1800, 3600, 7200)
SWEEP_BUCKETS: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
START_REASONS: Final = ("first", "expired", "lifetime", "ended", "unknown", "upstream", "adopted")
END_REASONS: Final = ("idle", "lifetime", "client", "bot", "upstream", "evicted", "admin")
CARRIERS: Final = ("cookie", "header", "path", "query", "body", "none")
STORE_OPS: Final = ("request", "response", "sweep")
CLIENT_TIMEOUT_PHASES: Final = ("header", "body", "send", "keepalive")
DEFERRED_OUTCOMES: Final = ("delivered", "expired", "too_large", "failed")
EVENT_TYPES: Final = ("session.started", "session.ended", "session.renamed")
EVENT_OUTCOMES: Final = ("delivered", "retried", "dropped")
# Lifecycle events reach a healthy receiver within a flush_interval (1 s); retries stretch it to max_age.
EVENT_LAG_BUCKETS: Final = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
# From a bot's late answer picked up at once to a widget polling back minutes later (deferred.keep is 300 s).
PICKUP_BUCKETS: Final = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
# Waiting for a bot connection is normally 0; the edges reach upstream.queue_timeout's 5 s default.
QUEUE_BUCKETS: Final = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def method_label(method: str) -> str:
    """Bound the method label to a fixed set: clients can send any token as a method."""
    return method if method in METHODS else "other"


_METHOD_SET: Final = frozenset(METHODS)


class Metrics:
    """Owns every metric; construct once per app with the registry to register on."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # Updated on every request: lock-free (hotmetrics.py says why), exposed as prometheus_client would.
        self.hot = hot = HotMetrics()
        self.requests = hot.counter(
            f"{PREFIX}_requests", "Proxied requests by method and status code.", ["method", "code"]
        )
        self.request_duration = hot.histogram(
            f"{PREFIX}_request_duration_seconds",
            "Time from request received to response finished, streams included.",
            DURATION_BUCKETS,
        )
        self.upstream_ttfb = hot.histogram(
            f"{PREFIX}_upstream_first_byte_seconds",
            "Time from sending the request upstream to receiving the response head.",
            DURATION_BUCKETS,
        )
        self.overhead = hot.histogram(
            f"{PREFIX}_overhead_seconds",
            "Time the gateway itself spends per request, upstream wait excluded.",
            OVERHEAD_BUCKETS,
        )
        self.in_flight = hot.gauge(f"{PREFIX}_requests_in_flight", "Requests being proxied now.")
        self.replica_requests = hot.counter(
            f"{PREFIX}_upstream_requests", "Requests sent to each bot replica.", ["replica"]
        )
        self.carrier = hot.counter(
            f"{PREFIX}_session_carrier", "Requests by how they carried their session.", ["carrier"]
        )
        self.idle_gap = hot.histogram(
            f"{PREFIX}_session_idle_gap_seconds",
            "Time between consecutive requests of a session: which idle timeout fits the traffic.",
            IDLE_GAP_BUCKETS,
        )
        self.upstream_queue = hot.histogram(
            f"{PREFIX}_upstream_queue_seconds",
            "Time a request waited for a connection to its bot replica (upstream.pool_size in use).",
            QUEUE_BUCKETS,
        )
        r.register(hot)  # after they exist: the registry learns every name from describe()
        self.upstream_errors = Counter(
            f"{PREFIX}_upstream_errors", "Failed upstream exchanges by reason.", ["reason"], registry=r
        )
        self.client_disconnects = Counter(
            f"{PREFIX}_client_disconnects",
            "Clients that went away before their response finished.",
            registry=r,
        )
        self.connections_open = Gauge(
            f"{PREFIX}_connections_open", "Client connections open on the proxy port.", registry=r
        )
        self.connections_rejected = Counter(
            f"{PREFIX}_connections_rejected",
            "Client connections refused with 503 at listen.max_connections.",
            registry=r,
        )
        client_timeouts = Counter(
            f"{PREFIX}_client_timeouts",
            "Client connections ended by a listen.*_timeout, by what the gateway waited for.",
            ["phase"],
            registry=r,
        )
        self.client_timeouts = {phase: client_timeouts.labels(phase=phase) for phase in CLIENT_TIMEOUT_PHASES}
        self.streams_open = Gauge(
            f"{PREFIX}_streams_open", "Open long-lived streams by kind.", ["kind"], registry=r
        )
        self.sessions_active = Gauge(f"{PREFIX}_sessions_active", "Sessions alive now.", registry=r)
        self.sessions_active_max = Gauge(
            f"{PREFIX}_sessions_active_max",
            "Highest number of sessions alive at once since start.",
            registry=r,
        )
        self.sessions_limit = Gauge(
            f"{PREFIX}_sessions_limit", "The configured session.max_sessions.", registry=r
        )
        self.idle_timeout = Gauge(
            f"{PREFIX}_session_idle_timeout_seconds",
            "The configured default session.idle_timeout.",
            registry=r,
        )
        self.sessions_started = Counter(
            f"{PREFIX}_sessions_started",
            "Sessions started, by why the conversation (re)started.",
            ["reason"],
            registry=r,
        )
        self.sessions_ended = Counter(
            f"{PREFIX}_sessions_ended", "Sessions ended, by reason.", ["reason"], registry=r
        )
        deferred = Counter(
            f"{PREFIX}_deferred",
            "Deferred answers by outcome: delivered (picked up), expired (not picked up within deferred.keep), "
            "too_large (over the cap, kept as a 502), failed (the bot failed; its error was kept).",
            ["outcome"],
            registry=r,
        )
        self.deferred = {outcome: deferred.labels(outcome=outcome) for outcome in DEFERRED_OUTCOMES}
        self.deferred_pending = Gauge(
            f"{PREFIX}_deferred_pending",
            "Bot exchanges running after their client got an interim answer.",
            registry=r,
        )
        self.deferred_pickup = Histogram(
            f"{PREFIX}_deferred_pickup_seconds",
            "Time from the interim answer to the pick-up that delivered the bot's answer (on the same replica).",
            buckets=PICKUP_BUCKETS,
            registry=r,
        )
        self.events = Counter(
            f"{PREFIX}_events",
            "Lifecycle events by type and outcome: delivered (the receiver took it), retried (a failed attempt), "
            "dropped (refused with a 4xx, older than events.max_age, or over events.max_queue).",
            ["type", "outcome"],
            registry=r,
        )
        for kind in EVENT_TYPES:
            for outcome in EVENT_OUTCOMES:
                self.events.labels(type=kind, outcome=outcome)
        self.events_lag = Histogram(
            f"{PREFIX}_events_lag_seconds",
            "Time from a lifecycle event to its delivery.",
            buckets=EVENT_LAG_BUCKETS,
            registry=r,
        )
        self.events_queue = Gauge(
            f"{PREFIX}_events_queue", "Lifecycle events waiting for delivery in this process.", registry=r
        )
        self.sessions_renamed = Counter(
            f"{PREFIX}_sessions_renamed",
            "Sessions the bot moved to a new id, continuing the conversation (session.on_bot_new_id = rename, "
            "or X-Session-Control: rename).",
            registry=r,
        )
        self.sessions_rejected = Counter(
            f"{PREFIX}_sessions_rejected",
            "New sessions refused at session.max_sessions (on_full = reject).",
            registry=r,
        )
        self.session_duration = Histogram(
            f"{PREFIX}_session_duration_seconds",
            "Session lifetime from start to end, observed when a session ends.",
            buckets=SESSION_DURATION_BUCKETS,
            registry=r,
        )
        self.session_requests = Histogram(
            f"{PREFIX}_session_requests",
            "Requests per session, observed when a session ends.",
            buckets=SESSION_REQUESTS_BUCKETS,
            registry=r,
        )
        self.sweep_duration = Histogram(
            f"{PREFIX}_expiry_sweep_duration_seconds",
            "Duration of one expiry sweep.",
            buckets=SWEEP_BUCKETS,
            registry=r,
        )
        self.sweep_last = Gauge(
            f"{PREFIX}_expiry_sweep_last_timestamp_seconds",
            "Unix time the last expiry sweep finished.",
            registry=r,
        )
        self.store_up = Gauge(
            f"{PREFIX}_store_up", "1 when the session store answered its last call.", registry=r
        )
        self.store_up.set(1)
        self.store_shared = Gauge(
            f"{PREFIX}_store_shared",
            "1 when the session store is shared by gateway replicas (Redis): sessions_active is then the "
            "shared count, to aggregate with max() rather than sum().",
            registry=r,
        )
        self.store_errors_total = Counter(
            f"{PREFIX}_store_errors",
            "Failed session store calls, by the phase that made them.",
            ["op"],
            registry=r,
        )
        self.replica_errors = Counter(
            f"{PREFIX}_upstream_replica_errors",
            "Failed exchanges with each bot replica.",
            ["replica"],
            registry=r,
        )
        self.replica_pinned = Counter(
            f"{PREFIX}_upstream_sessions_pinned",
            "Sessions pinned to each bot replica (new sessions and re-pins).",
            ["replica"],
            registry=r,
        )
        self.replica_up = Gauge(
            f"{PREFIX}_upstream_up",
            "0 after a connect failure or timeout, until a request to the replica succeeds again.",
            ["replica"],
            registry=r,
        )
        self.build_info = Gauge(
            f"{PREFIX}_build_info", "Build information; always 1.", ["version"], registry=r
        )
        self.build_info.labels(version=__version__).set(1)
        ProcessCollector(registry=r)
        for reason in UPSTREAM_ERROR_REASONS:
            self.upstream_errors.labels(reason=reason)
        for kind in STREAM_KINDS:
            self.streams_open.labels(kind=kind)
        self.started = {reason: self.sessions_started.labels(reason=reason) for reason in START_REASONS}
        self.ended = {reason: self.sessions_ended.labels(reason=reason) for reason in END_REASONS}
        self.store_errors = {op: self.store_errors_total.labels(op=op) for op in STORE_OPS}
        self._request_children: dict[tuple[str, int], HotCounter] = {}
        self.carriers = {carrier: self.carrier.labels(carrier=carrier) for carrier in CARRIERS}

    def count_request(self, method: str, status: int) -> None:
        """requests_total{method,code}; children are bound once (no kwargs dict per request)."""
        key = (method if method in _METHOD_SET else "other", status)
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.requests.labels(method=key[0], code=str(status))
        child.inc()
