"""The gateway's exception tree and the one middleware that renders it.

    GatewayError
    ├── ConfigError (ValueError)          a bad configuration file, variable or flag
    ├── ClientFault                       4xx: the client sent something we refuse
    │   ├── BadRequest                    400 bad_request
    │   ├── BadSessionCarrier             400 bad_session_header
    │   └── BodyTooLarge                  413 body_too_large
    ├── UpstreamError                     5xx: the bot failed
    │   ├── UpstreamUnavailable           502 upstream_unavailable
    │   │   └── ReplicaUnavailable        503 upstream_unavailable: a session's own replica (strict_affinity)
    │   └── UpstreamTimeout               504 upstream_timeout
    ├── SessionCapacity                   503 session_capacity
    └── StoreUnavailable                  503 store_unavailable

Errors become HTTP responses only in `error_middleware`, with the body
`{"error": {"code": "...", "message": "..."}}`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.headers import redact_path

log = logging.getLogger("gateway")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(GatewayError, ValueError):
    """A configuration value is invalid; `key` names it as `section.key`."""

    def __init__(self, key: str, message: str, source: str = "") -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key
        self.source = source  # the file or variable the bad value came from, filled in by load_config


class ClientFault(GatewayError):
    status = 400
    code = "bad_request"


class BadRequest(ClientFault):
    pass


class BadSessionCarrier(ClientFault):
    code = "bad_session_header"


class BodyTooLarge(ClientFault):
    status = 413
    code = "body_too_large"


class UpstreamError(GatewayError):
    status = 502
    code = "upstream_error"


class UpstreamUnavailable(UpstreamError):
    code = "upstream_unavailable"


class ReplicaUnavailable(UpstreamUnavailable):
    """The bot replica holding a session is down, and upstream.strict_affinity keeps the session there."""

    status = 503  # temporary: the replica may come back, so the client may retry


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class SessionCapacity(GatewayError):
    status = 503
    code = "session_capacity"


class StoreUnavailable(GatewayError):
    status = 503
    code = "store_unavailable"


def error_response(status: int, code: str, message: str) -> web.Response:
    """The JSON error body every gateway error uses."""
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def unexpected_error(method: str, raw_path: str) -> web.Response:
    """A bug of ours, never the client's: one line with the traceback (call inside `except`), a generic body.
    The path is logged redacted, as in the access log (no query, no `;jsessionid=` value)."""
    log.exception("unhandled error on %s %s", method, redact_path(raw_path))
    return error_response(500, "internal_error", "The gateway failed to handle the request.")


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render GatewayError as JSON; turn anything unexpected into one logged 500."""
    try:
        return await handler(request)
    except GatewayError as exc:
        return error_response(exc.status, exc.code, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 404 and not request.raw_path.startswith("/"):
            # `OPTIONS *` (asterisk form) never matches a route: it is a request we refuse, not a missing page.
            return error_response(400, "bad_request", "The asterisk request target is not supported.")
        code = exc.reason.lower().replace(" ", "_")
        return error_response(exc.status, code, exc.reason + ".")
    except Exception:
        return unexpected_error(request.method, request.raw_path)
