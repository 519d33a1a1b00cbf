"""The proxy's side of deferral: which requests may be deferred, the bot's head awaited for deferred.after
seconds, and, when it is late, the rest of the exchange handed to the background while the client gets an
interim answer. (deferral.py keeps the tokens and builds the answers; deferred.py stores them.)"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any, Protocol

from aiohttp import hdrs, web

from gateway.edge.messages import Incoming, Outgoing, Whole
from gateway.errors import StoreUnavailable
from gateway.ops.metrics import Metrics
from gateway.sessions.manager import SessionManager, Turn
from gateway.sessions.placing import Checked
from gateway.upstream.deferral import Deferrals
from gateway.upstream.exchange import Exchange, log_path
from gateway.upstream.upstream_client import Response

log = logging.getLogger("gateway")


class Respond(Protocol):
    """Proxy._respond: the bot's answer to the client; whole up to `keep` bytes when `keep` is given."""

    async def __call__(
        self,
        request: Incoming,
        upstream: Response,
        exchange: Exchange,
        turn: Turn,
        *,
        overhead: float,
        received: float,
        keep: int = 0,
    ) -> web.StreamResponse | Outgoing | Whole: ...


class Deferring:
    """Sends a deferrable request with a deadline; a late bot's exchange goes on in the background."""

    def __init__(
        self, deferrals: Deferrals, sessions: SessionManager, metrics: Metrics, buffer: int, respond: Respond
    ) -> None:
        self._deferrals = deferrals
        self._sessions = sessions
        self._metrics = metrics
        self._buffer = buffer  # upstream.buffer_request_body
        self._respond = respond

    def deferrable(self, request: Incoming, checked: Checked) -> bool:
        """Only a request whose body is read whole (so nothing of it is left to stream), never HEAD."""
        if request.method == hdrs.METH_HEAD:
            return False
        length = request.content_length
        return (
            checked.body is not None
            or not request.body_exists
            or (length is not None and length <= self._buffer)
        )

    async def send_or_defer(
        self,
        request: Incoming,
        turn: Turn,
        exchange: Exchange,
        send: Coroutine[Any, Any, Response],
        sent: float,
    ) -> Response | Whole:
        """The bot's head if it comes within deferred.after; else an interim answer, the exchange going on."""
        task = asyncio.ensure_future(send)
        try:
            done, _ = await asyncio.wait({task}, timeout=self._deferrals.after)
            if done:
                return task.result()
            # Bound to the session the client carries; a Dialogflow CX agent carries none of ours (the 128-bit
            # token is the proof there).
            session = turn.session_id if turn.live or self._sessions.config.issuer == "gateway" else None
            bound = None if self._deferrals.dialogflow else session or turn.carried.session_id
            try:
                token = await self._deferrals.open(bound)
            except StoreUnavailable:
                token = None  # nowhere to keep the answer: wait for it instead
            if token is None:  # max_pending (or no store): wait as without deferral
                return await task
        except BaseException:
            task.cancel()  # the client left (or the store failed): the bot's request goes with it
            raise
        self._deferrals.run(token, self._answer_later(request, turn, exchange, task, sent))
        exchange.note = ""
        return self._deferrals.interim(token, self._sessions.known_headers(turn))

    async def _answer_later(
        self, request: Incoming, turn: Turn, exchange: Exchange, task: asyncio.Future[Response], sent: float
    ) -> Whole:
        """A deferred exchange's rest: the bot's answer, whole and processed as usual, for the store."""
        try:
            try:
                upstream = await task
            except BaseException:
                await asyncio.shield(self._sessions.abandon(turn))
                raise
            response = await self._respond_to(
                request, upstream, exchange, turn, sent, keep=self._deferrals.answer_cap
            )
            assert isinstance(response, Whole)  # keep: read whole
            return response
        finally:
            if exchange.note:
                log.warning("%s %s (deferred): %s", request.method, log_path(request), exchange.note)
            assert turn.replica is not None
            turn.replica.in_flight -= 1

    async def _respond_to(
        self,
        request: Incoming,
        upstream: Response,
        exchange: Exchange,
        turn: Turn,
        sent: float,
        keep: int = 0,
    ) -> web.StreamResponse | Outgoing | Whole:
        received = time.perf_counter()
        exchange.upstream_status = upstream.status
        self._metrics.upstream_ttfb.observe(received - sent)
        try:
            return await self._respond(
                request,
                upstream,
                exchange,
                turn,
                overhead=sent - exchange.started,
                received=received,
                keep=keep,
            )
        finally:
            upstream.release()
