"""Configuration: frozen dataclass sections and `load_config`.

Precedence: defaults < TOML file < environment (`GATEWAY_<SECTION>_<KEY>`) < command-line overrides.
Unknown sections and keys are errors that name the key, so a typo never passes silently.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, get_args, get_origin
from urllib.parse import urlsplit

from gateway.errors import ConfigError
from gateway.sessions.placement import IdFormat, PathPlacement, parse_pointer

ENV_PREFIX = "GATEWAY_"
_REPLICA_NAME = re.compile(r"[A-Za-z0-9.:_-]{1,64}")  # it rides in the affinity cookie and a metric label
DEFAULT_UPSTREAM_URL = "http://127.0.0.1:8000"
LogFormat = Literal["json", "text"]
EventLoop = Literal["auto", "asyncio", "uvloop"]
LogLevel = Literal["debug", "info", "warning", "error"]


def _mask_url(url: str) -> str:
    """A URL with its password replaced, for messages and `check` output."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


_BEARER_TOKEN: Final = re.compile(r"[A-Za-z0-9\-._~+/]+=*")  # RFC 6750 §2.1's b64token


def _positive(key: str, value: float) -> None:
    if not value > 0:  # also refuses NaN, which every comparison calls false
        raise ConfigError(key, f"expected a number > 0, got {value!r}")


def _port(key: str, value: int) -> None:
    if not 0 <= value <= 65535:
        raise ConfigError(key, f"expected a port 0-65535, got {value!r}")


def _http_url(key: str, value: str) -> None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(key, f"expected an http:// or https:// URL, got {value!r}")
    if parts.query or parts.fragment:
        raise ConfigError(key, f"expected a base URL without query or fragment, got {value!r}")


@dataclass(frozen=True, slots=True)
class ListenConfig:
    """Where the proxy listens."""

    host: str = "0.0.0.0"
    port: int = 8080
    shutdown_timeout: float = 20.0  # seconds to drain in-flight requests; keep under K8s' 30 s grace
    trusted_proxies: tuple[str, ...] = ()  # peers (IPs or CIDRs) whose X-Forwarded-* are kept
    # Bytes per request header name and per value (431 past it): chat widgets send big cookies and JWTs.
    max_field_size: int = 16384
    max_headers: int = 128
    backlog: int = 1024  # pending connections the kernel queues; aiohttp's 128 drops SYNs under bursts
    # auto: uvloop when installed. Measured (bench/): a few percent more requests/s with the front end. Its
    # one-accept-per-iteration tail under connection bursts is worked around in listener.py.
    event_loop: EventLoop = "auto"
    # The edge's timeouts (README "Limits and timeouts" compares them with nginx, HAProxy and Envoy).
    header_timeout: float = 10.0  # seconds for a whole request head, from its first byte (408 past it)
    body_timeout: float = 60.0  # seconds of silence allowed while a request body arrives (408 past it)
    keepalive_timeout: float = 75.0  # seconds an idle client connection is kept between requests (nginx's)
    send_timeout: float = 60.0  # seconds a client may accept no response byte before it is cut
    max_connections: int = 10_000  # client connections at once; past it new ones get 503 and are closed
    max_inflight: int = 0  # requests proxied at once before new ones get 503 upstream_busy; 0: no limit

    def __post_init__(self) -> None:
        _port("listen.port", self.port)
        for key in ("header_timeout", "body_timeout", "keepalive_timeout", "send_timeout", "max_connections"):
            _positive(f"listen.{key}", getattr(self, key))
        if self.max_inflight < 0:
            raise ConfigError(
                "listen.max_inflight", f"expected 0 (no limit) or more, got {self.max_inflight}"
            )
        _positive("listen.backlog", self.backlog)
        _positive("listen.shutdown_timeout", self.shutdown_timeout)
        _positive("listen.max_field_size", self.max_field_size)
        _positive("listen.max_headers", self.max_headers)
        for item in self.trusted_proxies:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ConfigError(
                    "listen.trusted_proxies", f"expected IP addresses or CIDR networks, got {item!r}"
                ) from None

    def trusted_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(item, strict=False) for item in self.trusted_proxies)


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """The admin port: /livez, /readyz, /metrics and the session API; never exposed through the Service."""

    host: str = "0.0.0.0"
    port: int = 9090
    ready_check_interval: float = 5.0  # seconds between upstream reachability checks for /readyz
    token: str = ""  # set: every admin endpoint but /livez, /readyz and /metrics needs it as a bearer token

    def __post_init__(self) -> None:
        _port("admin.port", self.port)
        _positive("admin.ready_check_interval", self.ready_check_interval)
        if self.token and not _BEARER_TOKEN.fullmatch(self.token):  # the value is a secret: never echoed
            raise ConfigError(
                "admin.token", "expected a bearer token (letters, digits and -._~+/, then any =), got another"
            )


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    """The bot behind the gateway."""

    url: str = DEFAULT_UPSTREAM_URL
    connect_timeout: float = 5.0  # seconds to open a TCP connection
    read_timeout: float = 120.0  # seconds of upstream silence before 504; not a cap on stream length
    max_body_size: int = 10 * 1024 * 1024  # bytes per request body, enforced while streaming
    pool_size: int = 256  # pooled keep-alive connections to the upstream
    keepalive_timeout: float = (
        4.0  # seconds; below uvicorn's and Node's 5 s so we never reuse a closing socket
    )
    ready_path: str = ""  # path probed by GET for /readyz (any HTTP answer counts); empty: a TCP connect
    max_ws_message_size: int = 4 * 1024 * 1024  # bytes per WebSocket message, both ways
    urls: tuple[str, ...] = ()  # several bot replicas, "name=url" or a bare URL; set it or url, not both
    strict_affinity: bool = False  # a session's replica is down: 503 instead of re-pinning it elsewhere
    down_backoff: float = 10.0  # seconds new sessions avoid a replica after a connect failure or timeout
    # A request body up to this is read whole before a bot connection is taken, so a slow uploader holds
    # none (nginx proxy_request_buffering); larger bodies stream.
    buffer_request_body: int = 1024 * 1024
    queue_timeout: float = 5.0  # seconds a request may wait for a bot connection (503 upstream_busy past it)
    # Bytes a bot answer may have (declared, or counted before its head is sent); 502 upstream_response_too_large
    # past it. 0: no cap. Dialogflow CX takes webhook answers of at most 64 KiB (65536). SSE streams are exempt.
    max_response_size: int = 0
    # The path prefix clients reach the gateway under ("/chat" behind an ingress that strips it); "" at the root.
    public_prefix: str = ""
    # Map the bot's cookie paths and redirects from its URL (upstream.url's path) back to the public one, as
    # nginx's proxy_cookie_path and proxy_redirect do.
    rewrite_paths: bool = True

    def __post_init__(self) -> None:
        _http_url("upstream.url", self.url)
        _positive("upstream.buffer_request_body", self.buffer_request_body)
        _positive("upstream.queue_timeout", self.queue_timeout)
        if self.max_response_size < 0:
            raise ConfigError(
                "upstream.max_response_size", f"expected bytes >= 0, got {self.max_response_size}"
            )
        if self.urls and self.url != DEFAULT_UPSTREAM_URL:
            raise ConfigError(
                "upstream.urls", "set upstream.url (one bot) or upstream.urls (replicas), not both"
            )
        names = [name for name, _ in self.replicas()]
        for name, url in self.replicas():
            _http_url("upstream.urls", url)
            if not _REPLICA_NAME.fullmatch(name):
                raise ConfigError(
                    "upstream.urls", f"expected replica names of letters, digits and .:_-, got {name!r}"
                )
        if len(set(names)) != len(names):
            raise ConfigError("upstream.urls", f"replica names must be unique, got {names}")
        _positive("upstream.down_backoff", self.down_backoff)
        _positive("upstream.connect_timeout", self.connect_timeout)
        _positive("upstream.read_timeout", self.read_timeout)
        _positive("upstream.max_body_size", self.max_body_size)
        _positive("upstream.pool_size", self.pool_size)
        _positive("upstream.keepalive_timeout", self.keepalive_timeout)
        _positive("upstream.max_ws_message_size", self.max_ws_message_size)
        if self.public_prefix and (
            not self.public_prefix.startswith("/")
            or self.public_prefix.endswith("/")
            or "//" in self.public_prefix
        ):
            raise ConfigError(
                "upstream.public_prefix", f"expected '' or a path such as '/chat', got {self.public_prefix!r}"
            )
        if self.ready_path and not self.ready_path.startswith("/"):
            raise ConfigError(
                "upstream.ready_path", f"expected a path starting with '/', got {self.ready_path!r}"
            )

    @property
    def base(self) -> str:
        """The upstream URL without a trailing slash, ready to prefix a raw request path."""
        return self.url.rstrip("/")

    def replicas(self) -> list[tuple[str, str]]:
        """(name, url) of every bot replica; a bare URL is named by its host:port, one url is "default"."""
        if not self.urls:
            return [("default", self.url)]
        named = []
        for item in self.urls:
            name, sep, url = item.partition("=")
            if not sep or "://" in name:
                url, name = item, (urlsplit(item).netloc or item)
            named.append((name.strip(), url.strip()))
        return named


Issuer = Literal["upstream", "gateway"]
OnFull = Literal["evict", "reject"]
SameSite = Literal["Lax", "Strict", "None"]
StoreKind = Literal["memory", "redis"]
StoreFailure = Literal["open", "closed"]
OnBotNewId = Literal["restart", "rename"]
Preset = Literal["", "teneo", "rasa-rest", "dialogflow-cx", "botpress"]
# What each session.preset sets, for the keys the configuration leaves unset (README "Any bot").
PRESETS: dict[str, dict[str, Any]] = {
    "teneo": {
        "issuer": "upstream",
        "cookie": "JSESSIONID",
        "header": "X-Teneo-Session",
        "path_param": "jsessionid",
    },
    # Rasa's REST channel: the conversation is the body's `sender`.
    "rasa-rest": {"issuer": "gateway", "place_json": "/sender"},
    # detectIntent's URL names the session: .../sessions/<id>:detectIntent, an id of at most 36 bytes;
    # 30 minutes is Dialogflow CX's own session lifetime.
    "dialogflow-cx": {
        "issuer": "gateway",
        "place_path": "/sessions/{session}",
        "place_required": True,
        "id_format": "uuid4",
        "idle_timeout": 1800.0,
    },
    "botpress": {"issuer": "gateway", "place_path": "/converse/{session}", "place_required": True},
}
_DIALOGFLOW_MAX_ID: Final = 36  # bytes of a Dialogflow CX session id
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _token(key: str, value: str) -> None:
    if not _TOKEN.fullmatch(value):
        raise ConfigError(key, f"expected a cookie or header name (an RFC 9110 token), got {value!r}")


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """Session carriage, expiry, signals and limits."""

    issuer: Issuer = "upstream"  # upstream: the bot's cookie is the session; gateway: the gateway mints UUIDs
    cookie: str = "JSESSIONID"  # the session cookie (the bot's, or the gateway's own when issuer = gateway)
    header: str = "X-Teneo-Session"  # request header carrying a cookie string, for cookie-blocked clients
    path_param: str = "jsessionid"  # `;jsessionid=<id>` path parameter (Teneo Web Chat); empty: off
    query_param: str = ""  # query parameter for EventSource/WebSocket clients; empty: off
    affinity_cookie: str = "GatewayAffinity"  # the gateway's own cookie, echoed in X-Gateway-Session
    secret: str = ""  # signs the affinity value; empty: random per process (replicas must share one)
    idle_timeout: float = 600.0  # seconds without a request before a session expires (Teneo's default)
    absolute_timeout: float = 86400.0  # seconds a session may live at most (Dialogflow CX's maximum)
    sweep_interval: float = 1.0  # seconds between expiry sweeps
    sweep_batch: int = 500  # sessions expired per batch before yielding to the event loop
    tombstone_ttl: float = 3600.0  # seconds an ended id is remembered, so a late request hears "expired"
    max_tombstones: int = 200_000
    max_sessions: int = 1_000_000
    on_full: OnFull = "evict"  # at max_sessions: end the session nearest expiry, or answer 503
    max_id_length: int = 128  # bytes
    end_path: str = "endsession"  # a request whose last path segment is this ends the session
    # Where a gateway-issued id goes on its way to the bot (issuer = "gateway"), one or several ways:
    place_header: bool = True  # X-Session-Id
    place_json: str = ""  # a JSON Pointer into the JSON request body: "/sender" (Rasa's REST channel)
    place_path: str = ""  # a path pattern: "/sessions/{session}" (Dialogflow CX), "/converse/{session}"
    place_required: bool = (
        False  # refuse (400) a request place_path does not match, or with no body for place_json
    )
    id_format: str = "uuid4"  # minted ids: "uuid4", "hex32", or a template with "{uuid}"
    carry_json: str = ""  # a JSON Pointer where a client that cannot set headers carries its id in the body
    preset: Preset = ""  # fills the keys above (and issuer) for a kind of bot; keys set explicitly win
    # A new bot id for a live session: "restart" (a new conversation, X-Session-New: upstream; the Teneo
    # engine issues one only when it lost the session) or "rename" (the same conversation under a new id:
    # Tomcat's changeSessionId(), Spring Security's session-fixation protection on login).
    on_bot_new_id: OnBotNewId = "restart"
    cookie_samesite: SameSite = "Lax"  # for the gateway's cookies; "None" for cross-site widgets
    cookie_secure: bool = False
    cookie_partitioned: bool = False  # CHIPS: a third-party cookie partitioned by the embedding site
    rewrite_upstream_cookies: bool = False  # apply the three cookie_* attributes to the bot's Set-Cookie too
    store: StoreKind = "memory"  # "redis" when several gateway replicas share sessions
    redis_url: str = "redis://127.0.0.1:6379/0"  # rediss:// for TLS; password as redis://:secret@host
    redis_prefix: str = "sg"  # key prefix, so several gateways can share one Redis
    redis_timeout: float = 0.5  # seconds per Redis command (and to wait for a pooled connection)
    redis_pool_size: int = 64  # Redis connections per gateway process
    redis_sentinels: tuple[str, ...] = ()  # "host:port" of Sentinels; set, they name the master to use
    redis_sentinel_master: str = "mymaster"  # the Sentinel service name; redis_url then gives password and db
    redis_cluster: bool = False  # redis_url names any node of a Redis Cluster; the gateway finds the others
    redis_shards: int = 16  # hash tags (Cluster slots) the sessions spread over; set once, same everywhere
    store_failure: StoreFailure = "open"  # store down: "open" proxies untracked, "closed" answers 503
    # The memory store's sessions are saved here on a graceful shutdown and restored at start; empty: off.
    state_file: str = ""

    def __post_init__(self) -> None:
        for key in ("cookie", "header", "affinity_cookie"):
            _token(f"session.{key}", getattr(self, key))
        for key in ("path_param", "query_param"):
            if getattr(self, key):
                _token(f"session.{key}", getattr(self, key))
        if self.cookie == self.affinity_cookie:
            raise ConfigError("session.affinity_cookie", f"must differ from session.cookie ({self.cookie!r})")
        for key in ("idle_timeout", "absolute_timeout", "sweep_interval", "tombstone_ttl", "redis_timeout"):
            _positive(f"session.{key}", getattr(self, key))
        for key in ("sweep_batch", "max_tombstones", "max_sessions", "max_id_length", "redis_pool_size"):
            _positive(f"session.{key}", getattr(self, key))
        _positive("session.redis_shards", self.redis_shards)
        if self.absolute_timeout < self.idle_timeout:
            raise ConfigError(
                "session.absolute_timeout",
                f"expected at least session.idle_timeout ({self.idle_timeout:g}), got {self.absolute_timeout:g}",
            )
        if not self.end_path or "/" in self.end_path:
            raise ConfigError("session.end_path", f"expected one path segment, got {self.end_path!r}")
        for item in self.redis_sentinels:
            host, sep, port = item.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ConfigError("session.redis_sentinels", f"expected 'host:port' entries, got {item!r}")
        if urlsplit(self.redis_url).scheme not in ("redis", "rediss", "unix"):
            raise ConfigError(
                "session.redis_url",
                f"expected a redis://, rediss:// or unix:// URL, got {_mask_url(self.redis_url)!r}",
            )
        if self.redis_cluster:
            self._check_cluster()
        if self.cookie_samesite == "None" and not self.cookie_secure:
            raise ConfigError(
                "session.cookie_samesite", "SameSite=None requires session.cookie_secure = true"
            )
        if self.cookie_partitioned and not self.cookie_secure:
            raise ConfigError(
                "session.cookie_partitioned", "Partitioned requires session.cookie_secure = true"
            )
        self._check_placement()

    def _check_cluster(self) -> None:
        """A Cluster has no Sentinels, no databases but 0, and no Unix sockets."""
        if self.redis_sentinels:
            raise ConfigError(
                "session.redis_cluster",
                "expected false with session.redis_sentinels (Cluster fails over itself)",
            )
        parts = urlsplit(self.redis_url)
        if parts.scheme == "unix" or parts.path.strip("/") not in ("", "0"):
            raise ConfigError(
                "session.redis_url",
                f"expected a TCP URL of database 0 with session.redis_cluster, got {_mask_url(self.redis_url)!r}",
            )

    def _check_placement(self) -> None:
        try:
            for key in ("place_json", "carry_json"):
                if getattr(self, key) and not parse_pointer(getattr(self, key)):
                    raise ValueError("expected a member, not the whole body ('')")
            id_length = IdFormat(self.id_format).max_length
            if self.place_path:
                PathPlacement(self.place_path)
        except ValueError as exc:
            raise ConfigError(f"session.{_failed_key(self, str(exc))}", str(exc)) from None
        if self.issuer != "gateway":
            for key in ("place_json", "place_path"):
                if getattr(self, key):
                    raise ConfigError(
                        f"session.{key}", 'places gateway-issued ids: set session.issuer = "gateway"'
                    )
        if self.issuer == "gateway" and id_length > self.max_id_length:
            raise ConfigError(
                "session.id_format",
                f"makes ids of {id_length} bytes, over session.max_id_length ({self.max_id_length})",
            )
        if self.place_path and (
            "/" in self.id_format or (id_length > _DIALOGFLOW_MAX_ID and "sessions/" in self.place_path)
        ):
            raise ConfigError(
                "session.id_format",
                f"makes ids of {id_length} bytes for a path segment; a session path such as Dialogflow CX's takes "
                f"ids of at most {_DIALOGFLOW_MAX_ID} bytes without '/' (uuid4 or hex32)",
            )
        if self.state_file and self.store != "memory":
            raise ConfigError(
                "session.state_file",
                f"only the memory store is saved to a file; with store = {self.store!r} expected '', "
                f"got {self.state_file!r}",
            )
        if self.state_file.endswith("/"):
            raise ConfigError(
                "session.state_file", f"expected a file path, got a directory: {self.state_file!r}"
            )


def _failed_key(config: SessionConfig, message: str) -> str:
    """Which placement key a ValueError from gateway.sessions.placement is about (its message quotes the value)."""
    for key in ("place_json", "carry_json", "place_path"):
        value = getattr(config, key)
        if value and repr(value) in message:
            return key
    return "id_format"


EventSink = Literal["none", "webhook", "redis-stream"]


@dataclass(frozen=True, slots=True)
class EventsConfig:
    """Session lifecycle events (README "Lifecycle events"); off while sink = "none"."""

    # "webhook": POST batches to url; "redis-stream": a Redis Stream your own consumers read.
    sink: EventSink = "none"
    url: str = ""  # the webhook (sink = "webhook")
    secret: str = ""  # signs each batch: X-Gateway-Signature-256: sha256=<HMAC-SHA256 of the body, hex>
    batch: int = 100  # events per webhook POST at most
    flush_interval: float = 1.0  # seconds a batch waits to fill before it is sent
    max_age: float = 3600.0  # seconds an event is retried (network errors, 5xx, 429) before it is dropped
    timeout: float = 10.0  # seconds per webhook POST
    max_queue: int = 100_000  # events queued in process (memory store); past it new ones are dropped
    include_id: bool = True  # false: events carry the session id's digest, never the id
    instance: str = ""  # the gateway named in events; empty: the host name (the pod's name in Kubernetes)
    retention: float = 86400.0  # seconds events stay in the Redis streams (trimmed by age)
    # sink = "redis-stream" with the memory store: the stream key on session.redis_url. The Redis store
    # writes each shard's events to its own stream, `<session.redis_prefix>:{<n>}:ev`, whatever this says.
    stream: str = "sg:events"
    # Redis store: seconds a replica that stopped renewing its lease on a shard's stream (it died) keeps it
    # before another replica takes it over and delivers what it left unacknowledged.
    claim_idle: float = 30.0

    def __post_init__(self) -> None:
        if self.sink == "webhook":
            _http_url("events.url", self.url)
        for key in ("batch", "flush_interval", "max_age", "timeout", "max_queue", "retention", "claim_idle"):
            _positive(f"events.{key}", getattr(self, key))


DeferredFormat = Literal["json", "teneo", "dialogflow-cx"]


@dataclass(frozen=True, slots=True)
class DeferredConfig:
    """Interim answers for slow bots (README "Slow bots"); off while `after` is 0."""

    after: float = 0.0  # seconds without the bot's response head before the client gets an interim answer
    format: DeferredFormat = (
        "json"  # the interim body: 202 JSON, the Teneo engine's shape, a Dialogflow CX one
    )
    message: str = (
        "One moment, I am still working on your answer."  # the interim's text (teneo, dialogflow-cx)
    )
    poll_wait: float = 20.0  # seconds a pick-up waits for the answer before it gets the interim again
    keep: float = 300.0  # seconds an answer is kept for its pick-up
    max_pending: int = (
        10_000  # deferred answers not yet picked up, per gateway process; past it: not deferred
    )
    max_answer: int = 1024 * 1024  # bytes of an answer kept when upstream.max_response_size is 0

    def __post_init__(self) -> None:
        if self.after < 0 or self.after != self.after:
            raise ConfigError("deferred.after", f"expected seconds >= 0 (0: off), got {self.after!r}")
        for key in ("poll_wait", "keep", "max_pending", "max_answer"):
            _positive(f"deferred.{key}", getattr(self, key))


@dataclass(frozen=True, slots=True)
class CorsConfig:
    """CORS for chat widgets on other sites; empty allow_origins leaves CORS to the bot."""

    allow_origins: tuple[
        str, ...
    ] = ()  # exact origins such as "https://shop.example", or "*" (no credentials)
    allow_headers: tuple[str, ...] = ()  # request headers allowed beyond Content-Type and the session header
    max_age: int = 600  # seconds a browser may cache a preflight

    def __post_init__(self) -> None:
        if "*" in self.allow_origins and len(self.allow_origins) > 1:
            raise ConfigError("cors.allow_origins", "'*' cannot be combined with explicit origins")
        for origin in self.allow_origins:
            parts = urlsplit(origin)
            if origin != "*" and (parts.scheme not in ("http", "https") or not parts.netloc or parts.path):
                raise ConfigError(
                    "cors.allow_origins", f"expected origins like 'https://site.example', got {origin!r}"
                )
        for name in self.allow_headers:
            _token("cors.allow_headers", name)
        if self.max_age < 0:
            raise ConfigError("cors.max_age", f"expected seconds >= 0, got {self.max_age}")


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """The JS session client (session-client.js) the gateway serves to chat widgets."""

    enabled: bool = True
    path: str = "/_gateway/session-client.js"  # GET and HEAD are answered here, never forwarded to the bot
    max_age: int = 3600  # seconds browsers may cache it (revalidated by ETag afterwards)

    def __post_init__(self) -> None:
        if not self.path.startswith("/") or self.path == "/" or any(c in self.path for c in "?#{}\\ "):
            raise ConfigError("client.path", f"expected a path like '/_gateway/client.js', got {self.path!r}")
        if self.max_age < 0:
            raise ConfigError("client.max_age", f"expected seconds >= 0, got {self.max_age}")


@dataclass(frozen=True, slots=True)
class LogConfig:
    """Logging to stderr."""

    format: LogFormat = "json"
    level: LogLevel = "info"
    access: bool = True  # one line per request


@dataclass(frozen=True, slots=True)
class DemoConfig:
    """The demo bot of `session-gateway demo`."""

    slow_seconds: float = 5.0  # seconds the demo bot takes to answer "think" (shows [deferred] at work)

    def __post_init__(self) -> None:
        if not self.slow_seconds >= 0:  # also refuses NaN
            raise ConfigError("demo.slow_seconds", f"expected seconds >= 0, got {self.slow_seconds!r}")


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration."""

    listen: ListenConfig = field(default_factory=ListenConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    session: SessionConfig = field(default_factory=SessionConfig)
    deferred: DeferredConfig = field(default_factory=DeferredConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    cors: CorsConfig = field(default_factory=CorsConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    log: LogConfig = field(default_factory=LogConfig)

    demo: DemoConfig = field(default_factory=DemoConfig)

    def __post_init__(self) -> None:
        if self.session.store == "redis" and self.events.sink == "webhook":
            e = self.events
            # A replica renews its leases between POSTs: one POST must not outlast them.
            if e.timeout >= e.claim_idle:
                raise ConfigError(
                    "events.claim_idle",
                    f"expected more seconds than events.timeout ({e.timeout}), got {e.claim_idle}",
                )
            # An entry trimmed before it is delivered is lost: the streams keep what is still being retried.
            if e.retention < e.max_age:
                raise ConfigError(
                    "events.retention",
                    f"expected at least events.max_age ({e.max_age}) seconds, got {e.retention}",
                )


SECRET_KEYS: frozenset[str] = frozenset({"admin.token", "events.secret", "session.secret"})


def _coerce(key: str, hint: Any, value: Any, *, from_text: bool) -> Any:
    """Check (TOML) or convert (environment, flags) one value to the field's type."""
    origin = get_origin(hint)
    if origin is Literal:
        choices = get_args(hint)
        if value not in choices:
            raise ConfigError(key, f"expected one of {', '.join(map(repr, choices))}, got {value!r}")
        return value
    if origin in (types.UnionType, typing.Union):
        options = [a for a in get_args(hint) if a is not type(None)]
        if (from_text and value == "") or value is None:
            return None
        return _coerce(key, options[0], value, from_text=from_text)
    if origin is tuple:
        (item,) = {a for a in get_args(hint) if a is not Ellipsis}
        if from_text:
            text = value.strip()
            if text.startswith("["):
                value = _parse_toml_value(key, text)
            else:
                value = [part.strip() for part in text.split(",") if part.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(key, f"expected a list, got {value!r}")
        return tuple(_coerce(key, item, v, from_text=False) for v in value)
    if hint is bool:
        if from_text:
            lowered = value.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected true or false, got {value!r}")
        return value
    if hint in (int, float):
        if from_text:
            try:
                value = hint(value.strip())
            except ValueError:
                raise ConfigError(
                    key, f"expected {'an integer' if hint is int else 'a number'}, got {value!r}"
                ) from None
        valid = isinstance(value, int) if hint is int else isinstance(value, int | float)
        if isinstance(value, bool) or not valid:
            raise ConfigError(key, f"expected {'an integer' if hint is int else 'a number'}, got {value!r}")
        return hint(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {hint!r} for {key}")  # pragma: no cover - a bug in this module


def _parse_toml_value(key: str, text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(key, f"expected a TOML array, got {text!r} ({exc})") from None


def _section_types() -> dict[str, type[Any]]:
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config)}


def _field_hints(section_cls: type[Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(section_cls, include_extras=False)
    return {f.name: hints[f.name] for f in dataclasses.fields(section_cls)}


def _merge(layers: dict[str, dict[str, Any]], section: str, key: str, value: Any, *, from_text: bool) -> None:
    sections = _section_types()
    if section not in sections:
        raise ConfigError(section, f"unknown section (known: {', '.join(sections)})")
    hints = _field_hints(sections[section])
    if key not in hints:
        raise ConfigError(f"{section}.{key}", f"unknown key (known in [{section}]: {', '.join(hints)})")
    layers.setdefault(section, {})[key] = _coerce(f"{section}.{key}", hints[key], value, from_text=from_text)


def env_overrides(environ: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """(section, key, text) for every `GATEWAY_<SECTION>_<KEY>` variable of a known section.

    Variables whose second word is not a section are ignored: Kubernetes injects `<SERVICE>_PORT`-style
    variables for Services, and one named `gateway` must not break start-up.
    """
    sections = _section_types()
    found = []
    for name, text in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("_")
        if section in sections and key:
            found.append((section, key, text))
    return found


def load_config(
    path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, str] | None = None,
) -> Config:
    """Build the effective configuration; raises ConfigError naming the offending key."""
    source = str(path) if path is not None else "<defaults>"
    try:
        return _load(path, environ or {}, overrides or {})
    except ConfigError as exc:
        exc.source = exc.source or source
        raise


def _load(path: str | Path | None, environ: Mapping[str, str], overrides: Mapping[str, str]) -> Config:
    layers: dict[str, dict[str, Any]] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                document = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError("", f"cannot read the file: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("", f"not valid TOML: {exc}") from None
        for section, table in document.items():
            if not isinstance(table, dict):
                raise ConfigError(section, "expected a [section] table")
            for key, value in table.items():
                _merge(layers, section, key, value, from_text=False)
    for section, key, text in env_overrides(environ):
        try:
            _merge(layers, section, key, text, from_text=True)
        except ConfigError as exc:
            exc.source = f"{ENV_PREFIX}{section.upper()}_{key.upper()}"
            raise
    for dotted, text in overrides.items():
        section, _, key = dotted.partition(".")
        try:
            _merge(layers, section, key, text, from_text=True)
        except ConfigError as exc:
            exc.source = f"--set {dotted}"
            raise
    session = layers.setdefault("session", {})
    for key, value in PRESETS.get(session.get("preset", ""), {}).items():
        session.setdefault(key, value)
    sections = _section_types()
    built = {name: sections[name](**layers.get(name, {})) for name in sections}
    return Config(**built)


def effective(config: Config) -> dict[str, dict[str, Any]]:
    """The configuration as plain data, with secrets masked, for `session-gateway check`."""
    out: dict[str, dict[str, Any]] = {}
    for section in dataclasses.fields(config):
        values = dataclasses.asdict(getattr(config, section.name))
        for key in values:
            if f"{section.name}.{key}" in SECRET_KEYS and values[key]:
                values[key] = "***"
            elif key.endswith("_url") and isinstance(values[key], str):
                values[key] = _mask_url(values[key])
            elif isinstance(values[key], tuple):
                values[key] = list(values[key])
        out[section.name] = values
    return out
