"""How a failed exchange with a bot becomes the client's error: classified (connect, timeout, reset,
protocol, too_large), counted, noted for the log line, and the replica marked down when the bot is at fault."""

from __future__ import annotations

import asyncio

import aiohttp

from gateway.config import UpstreamConfig
from gateway.errors import (
    BodyTooLarge,
    ClientFault,
    UpstreamBusy,
    UpstreamResponseTooLarge,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.ops.metrics import Metrics
from gateway.upstream.exchange import Exchange
from gateway.upstream.upstream_client import PoolBusy, Response, UpstreamConnectError
from gateway.upstream.upstreams import Replica, Upstreams

# How reading a bot's body fails (ConnectionError: the bot closed the connection mid-body).
BODY_FAILURES = (asyncio.IncompleteReadError, aiohttp.ClientPayloadError, ConnectionError, TimeoutError)


class Failures:
    """Maps what went wrong with a bot to the gateway error the client gets; counts and notes it once."""

    def __init__(self, config: UpstreamConfig, metrics: Metrics, upstreams: Upstreams) -> None:
        self._queue_timeout = config.queue_timeout
        self._read_timeout = config.read_timeout
        self._max_body = config.max_body_size
        self._metrics = metrics
        self._upstreams = upstreams

    def request_failure(self, exc: BaseException, exchange: Exchange, replica: Replica) -> BaseException:
        """Map a failed upstream request to the gateway error the client gets; count and log it once.
        A client's fault (a slow or oversized body, a client gone) and a full pool never count against
        the replica: they do not mark it down, so no other user's session moves."""
        if isinstance(exc, ClientFault):
            return exc
        if isinstance(exc, PoolBusy):
            exchange.note = "upstream busy: no connection within upstream.queue_timeout"
            return UpstreamBusy(f"No connection to the bot became free within {self._queue_timeout:g} s.")
        if exchange.body_too_large:
            return BodyTooLarge(f"The request body exceeds the limit of {self._max_body} bytes.")
        if exchange.client_gone:
            return asyncio.CancelledError()
        reason, error = self.classify(exc)
        self._metrics.upstream_errors.labels(reason=reason).inc()
        self._metrics.replica_errors.labels(replica=replica.name).inc()
        if reason in ("connect", "timeout"):
            self._upstreams.mark_down(replica, reason)
        exchange.note = f"upstream {reason}: {type(exc).__name__}"
        return error

    def classify(self, exc: BaseException) -> tuple[str, Exception]:
        """The failure's reason (a metric label) and the error for the client."""
        if isinstance(
            exc, UpstreamConnectError | aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError
        ):
            return "connect", UpstreamUnavailable("The upstream could not be reached.")
        if isinstance(exc, asyncio.TimeoutError):
            return "timeout", UpstreamTimeout(
                f"The upstream did not answer within {self._read_timeout:g} seconds."
            )
        if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError | ConnectionError):
            return "reset", UpstreamUnavailable("The upstream closed the connection before answering.")
        return "protocol", UpstreamUnavailable("The upstream sent an invalid HTTP response.")

    def body_failure(self, exc: BaseException, exchange: Exchange) -> Exception:
        """The bot failed mid-body (before anything reached the client): counted, noted, mapped."""
        reason, error = self.classify(exc)
        self._metrics.upstream_errors.labels(reason=reason).inc()
        exchange.note = f"upstream {reason} in body: {type(exc).__name__}"
        return error

    def too_large(self, upstream: Response, exchange: Exchange, why: str) -> UpstreamResponseTooLarge:
        """The bot's answer is over what may be kept: its connection closed, counted, noted."""
        upstream.close()  # the rest is never read: the connection cannot be reused
        self._metrics.upstream_errors.labels(reason="too_large").inc()
        exchange.note = f"upstream answer too large: {why}"
        return UpstreamResponseTooLarge(f"The bot's answer is too large: {why}.")
