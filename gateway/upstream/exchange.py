"""What one proxied request did (`Exchange`), and the access-log line written for it when it ends."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from gateway.edge.messages import Incoming, NewStream
from gateway.sessions.manager import short_id
from gateway.upstream.headers import redact_path

log = logging.getLogger("gateway")
access_log = logging.getLogger("gateway.access")


@dataclass(slots=True)
class Exchange:
    """What one proxied request did, for the access log and metrics."""

    new_stream: NewStream  # how a streamed response is opened on this request's connection
    started: float = field(default_factory=time.perf_counter)
    upstream_status: int | None = None
    session: str | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    body_too_large: bool = False
    client_gone: bool = False
    note: str = ""


def log_exchange(request: Incoming, status: int, elapsed: float, exchange: Exchange, access: bool) -> None:
    """The exchange's note as a warning, if any; its access-log line when log.access is on (`access`)."""
    if exchange.note:
        log.warning("%s %s: %s", request.method, log_path(request), exchange.note)
    if not access:
        return
    access_log.info(
        "%s %s %s",
        request.method,
        log_path(request),
        status,
        extra={
            "fields": {
                "method": request.method,
                "path": log_path(request),
                "status": status,
                "duration_ms": round(elapsed * 1000, 3),
                "upstream_status": exchange.upstream_status,
                "bytes_in": exchange.bytes_in,
                "bytes_out": exchange.bytes_out,
                "client": request.remote,
                "session": short_id(exchange.session),
            }
        },
    )


def log_path(request: Incoming) -> str:
    """The request target as logs show it: a session id in the path masked."""
    return redact_path(request.raw_path)
