"""The gateway's exception tree and the one middleware that renders it.

    GatewayError
    ├── ConfigError (ValueError)          a bad configuration file, variable or flag
    ├── ClientFault                       4xx: the client sent something we refuse (never the bot's fault)
    │   ├── BadRequest                    400 bad_request
    │   ├── BadSessionCarrier             400 bad_session_header
    │   ├── BadRequestBody                400 bad_request_body: a body the session id cannot be placed in or read from
    │   ├── Unauthorized                  401 unauthorized: an admin request without the bearer token admin.token
    │   ├── NotFound                      404 not_found: a gateway page that does not exist
    │   │   └── DeferredNotFound          404 deferred_not_found: a pick-up token unknown, expired or taken
    │   ├── MethodNotAllowed              405 method_not_allowed: CONNECT and TRACE
    │   ├── RequestTimeout                408 request_timeout: a head or body too slow (listen.*_timeout)
    │   ├── BodyTooLarge                  413 body_too_large
    │   ├── UriTooLong                    414 uri_too_long
    │   ├── ExpectationFailed             417 expectation_failed: an Expect other than 100-continue
    │   ├── HeadersTooLarge               431 headers_too_large
    │   └── VersionNotSupported           505 http_version_not_supported: not HTTP/1.0 or 1.1
    ├── UpstreamError                     5xx: the bot failed
    │   ├── UpstreamUnavailable           502 upstream_unavailable
    │   │   ├── ReplicaUnavailable        503 upstream_unavailable: a session's own replica (strict_affinity)
    │   │   └── UpstreamResponseTooLarge  502 upstream_response_too_large: over upstream.max_response_size
    │   └── UpstreamTimeout               504 upstream_timeout
    ├── Busy                              503 with Retry-After: the gateway sheds load
    │   ├── UpstreamBusy                  503 upstream_busy: no bot connection within upstream.queue_timeout
    │   └── TooManyConnections            503 too_many_connections: listen.max_connections reached
    ├── SessionCapacity                   503 session_capacity
    └── StoreUnavailable                  503 store_unavailable

Errors become HTTP responses in one renderer, `error_whole` (the proxy port's front end) and
`error_response` (aiohttp's apps: admin, WebSocket handshakes), with the body
`{"error": {"code": "...", "message": "..."}}`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web
from multidict import CIMultiDict

from gateway.edge.messages import Whole
from gateway.upstream.headers import redact_path

log = logging.getLogger("gateway")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""

    status: int = 500
    code: str = "internal_error"
    retry_after: int | None = None  # seconds, sent as Retry-After

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


class BadRequestBody(ClientFault):
    code = "bad_request_body"


class Unauthorized(ClientFault):
    """An admin request without `Authorization: Bearer <admin.token>`; answered with a challenge (RFC 6750)."""

    status = 401
    code = "unauthorized"

    def __init__(self, message: str, *, invalid: bool = False) -> None:
        super().__init__(message)
        # invalid_token: a token was presented, and it is not the one (RFC 6750 §3.1).
        self.challenge = 'Bearer realm="session-gateway"' + (', error="invalid_token"' if invalid else "")


class NotFound(ClientFault):
    status = 404
    code = "not_found"


class DeferredNotFound(NotFound):
    code = "deferred_not_found"


class MethodNotAllowed(ClientFault):
    status = 405
    code = "method_not_allowed"


class TooManyPipelined(ClientFault):
    status = 429
    code = "too_many_pipelined_requests"
    retry_after = 1


class RequestTimeout(ClientFault):
    status = 408
    code = "request_timeout"


class BodyTooLarge(ClientFault):
    status = 413
    code = "body_too_large"


class UriTooLong(ClientFault):
    status = 414
    code = "uri_too_long"


class ExpectationFailed(ClientFault):
    status = 417
    code = "expectation_failed"


class HeadersTooLarge(ClientFault):
    status = 431
    code = "headers_too_large"


class VersionNotSupported(ClientFault):
    status = 505  # a 5xx by RFC 9110 §15.6.6, though the client's choice: never the bot's fault
    code = "http_version_not_supported"


class UpstreamError(GatewayError):
    status = 502
    code = "upstream_error"


class UpstreamUnavailable(UpstreamError):
    code = "upstream_unavailable"


class ReplicaUnavailable(UpstreamUnavailable):
    """The bot replica holding a session is down, and upstream.strict_affinity keeps the session there."""

    status = 503  # temporary: the replica may come back, so the client may retry


class UpstreamResponseTooLarge(UpstreamUnavailable):
    code = "upstream_response_too_large"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class Busy(GatewayError):
    status = 503
    code = "busy"
    retry_after = 1


class UpstreamBusy(Busy):
    code = "upstream_busy"


class TooManyConnections(Busy):
    code = "too_many_connections"


class SessionCapacity(GatewayError):
    status = 503
    code = "session_capacity"


class StoreUnavailable(GatewayError):
    status = 503
    code = "store_unavailable"


def error_body(code: str, message: str) -> bytes:
    """The JSON error body every gateway error uses."""
    return json.dumps({"error": {"code": code, "message": message}}).encode()


def error_whole(exc: GatewayError) -> Whole:
    """A gateway error as the front end writes it."""
    headers = CIMultiDict({"Content-Type": "application/json; charset=utf-8"})
    if exc.retry_after is not None:
        headers["Retry-After"] = str(exc.retry_after)
    return Whole(exc.status, "", headers, error_body(exc.code, exc.message))


def error_response(status: int, code: str, message: str) -> web.Response:
    """The JSON error body every gateway error uses, as an aiohttp response."""
    return web.Response(
        body=error_body(code, message), status=status, content_type="application/json", charset="utf-8"
    )


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
        response = error_response(exc.status, exc.code, exc.message)
        if isinstance(exc, Unauthorized):
            response.headers[hdrs.WWW_AUTHENTICATE] = exc.challenge
        return response
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
