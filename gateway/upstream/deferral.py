"""Deferral: when the bot is slow, answer the client with an interim and keep the bot's answer for a pick-up.

The proxy asks `Deferrals` whether a request may be deferred, opens a token when the bot's head is late, hands
the rest of the exchange over as a background task, and returns `interim()`. The answer reaches the client
through `GET /_gateway/deferred/<token>` (a long-poll, `pickup`), or, with `format = "dialogflow-cx"`, through
the agent's next webhook call carrying `sessionInfo.parameters.gateway_deferred` (`dialogflow_token`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, Final

from aiohttp import hdrs
from multidict import CIMultiDict, istr

from gateway.config import DeferredConfig
from gateway.edge.messages import Incoming, Whole
from gateway.errors import DeferredNotFound, GatewayError, MethodNotAllowed, UpstreamUnavailable, error_whole
from gateway.ops.metrics import Metrics
from gateway.upstream.deferred import RUNNING, Answer, DeferredStore, new_token

log = logging.getLogger("gateway")

PICKUP_PREFIX: Final = "/_gateway/deferred/"
X_SESSION_DEFERRED: Final = istr("X-Session-Deferred")
DIALOGFLOW_PARAMETER: Final = "gateway_deferred"
DIALOGFLOW_MAX_BODY: Final = 64 * 1024  # bytes of a webhook request parsed for a pending token (CX's own cap)
_JSON: Final = "application/json; charset=utf-8"


class Deferrals:
    """The deferred answers of one gateway process: its background exchanges, the store, the pick-up page."""

    def __init__(
        self,
        config: DeferredConfig,
        store: DeferredStore,
        metrics: Metrics,
        answer_cap: int,
        carried_session: Callable[[Incoming], str | None],
    ) -> None:
        self.config = config
        self.store = store
        self.enabled = config.after > 0
        self.after = config.after
        self.answer_cap = answer_cap  # bytes of an answer kept (upstream.max_response_size, else max_answer)
        self.dialogflow = config.format == "dialogflow-cx"
        self._metrics = metrics
        self._carried_session = carried_session
        self._tasks: set[asyncio.Task[None]] = set()
        # token -> perf_counter() when deferred, until delivered or dropped
        self._opened: dict[str, float] = {}
        self.shutdown_began: float | None = None  # time.monotonic() when SIGTERM began the drain

    # -- deferring ---------------------------------------------------------------------------------------------

    async def open(self, session: str | None) -> str | None:
        """A token for a request whose bot is late; None when max_pending answers are pending (not deferred)."""
        token = new_token()
        if not await self.store.open(token, session, self.config.keep):
            return None
        self._opened[token] = time.perf_counter()
        if len(self._opened) > 4 * self.config.max_pending:  # tokens never picked up: forget the oldest
            del self._opened[next(iter(self._opened))]
        return token

    def run(self, token: str, exchange: Coroutine[Any, Any, Whole]) -> None:
        """The rest of the bot's exchange, in the background: its answer (or the error for it) is stored."""
        task = asyncio.get_running_loop().create_task(self._keep(token, exchange), name="deferred-answer")
        self._tasks.add(task)
        self._metrics.deferred_pending.inc()
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._metrics.deferred_pending.dec()

    async def _keep(self, token: str, exchange: Coroutine[Any, Any, Whole]) -> None:
        outcome = "stored"
        try:
            whole = await exchange
        except GatewayError as exc:
            whole = error_whole(exc)
            outcome = "too_large" if exc.code == "upstream_response_too_large" else "failed"
        except asyncio.CancelledError:  # shutdown, past its grace: the token answers 404
            self._metrics.deferred["failed"].inc()
            with contextlib.suppress(GatewayError):
                await self.store.drop(token)
            return
        except Exception:  # a bug of ours: one line with the traceback; the pick-up gets a 502
            log.exception("a deferred exchange failed")
            whole = error_whole(
                UpstreamUnavailable("The gateway failed to complete the exchange with the bot.")
            )
            outcome = "failed"
        if outcome != "stored":
            self._metrics.deferred[outcome].inc()
        answer = Answer(whole.status, whole.reason, tuple(whole.headers.items()), whole.body)
        with contextlib.suppress(GatewayError):  # a store outage: the pick-up hears 404, as for an expiry
            await self.store.finish(token, answer, self.config.keep)

    async def close(self, timeout: float) -> None:
        """Shutdown: running exchanges get `timeout` to store their answer, then they are cancelled."""
        if self._tasks:
            _, late = await asyncio.wait(set(self._tasks), timeout=timeout)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        await self.store.close()

    # -- answering ---------------------------------------------------------------------------------------------

    def interim(self, token: str, headers: CIMultiDict[str]) -> Whole:
        """The interim answer, shaped for the caller, with the session headers the gateway already knows."""
        headers[hdrs.CONTENT_TYPE] = _JSON
        headers[X_SESSION_DEFERRED] = token
        headers[hdrs.RETRY_AFTER] = "1"
        headers[hdrs.CACHE_CONTROL] = "no-store"
        message = self.config.message
        if self.config.format == "teneo":
            status, body = 200, _teneo(message, token, headers.get("X-Session-Id", ""))
        elif self.dialogflow:
            status, body = 200, _dialogflow(message, token)
        else:
            status, body = 202, {"deferred": {"token": token, "poll": PICKUP_PREFIX + token}}
        return Whole(status, "", headers, json.dumps(body).encode())

    async def pickup(self, token: str, request: Incoming) -> Whole:
        """GET /_gateway/deferred/<token>: the answer, once; the interim while the bot works; else 404."""
        if request.method != "GET":  # a HEAD (a link preview, a monitor) must not use the answer up
            return error_whole(MethodNotAllowed("A deferred answer is picked up with GET."))
        found = await self.take(token, request, self.config.poll_wait)
        if found is None:
            return error_whole(
                DeferredNotFound("No deferred answer with this token is waiting for this session.")
            )
        return found

    async def take(self, token: str, request: Incoming, wait: float) -> Whole | None:
        """The answer, or the interim while the bot works; None when no answer waits for this request."""
        session = self._carried_session(request)
        found = await self.store.take(token, session, wait) if token else None
        if found is None:
            return None
        if found == RUNNING:
            return self.interim(token, CIMultiDict())
        assert isinstance(found, Answer)
        self._metrics.deferred["delivered"].inc()
        opened = self._opened.pop(token, None)
        if opened is not None:
            self._metrics.deferred_pickup.observe(time.perf_counter() - opened)
        return Whole(found.status, found.reason, CIMultiDict(found.headers), found.body)

    @staticmethod
    def dialogflow_token(body: bytes) -> str | None:
        """The pending token a Dialogflow CX webhook request carries in sessionInfo.parameters, if any."""
        if DIALOGFLOW_PARAMETER.encode() not in body:  # most calls: no parse
            return None
        try:
            doc = json.loads(body)
            token = doc["sessionInfo"]["parameters"][DIALOGFLOW_PARAMETER]
        except (ValueError, KeyError, TypeError):
            return None
        return token if isinstance(token, str) and token else None


def _teneo(message: str, token: str, session_id: str) -> dict[str, Any]:
    return {
        "status": 0,
        "input": {"text": "", "parameters": {}},
        "output": {"text": message, "emotion": "", "link": "", "parameters": {DIALOGFLOW_PARAMETER: token}},
        "sessionId": session_id,
    }


def _dialogflow(message: str, token: str) -> dict[str, Any]:
    """A WebhookResponse: the message now, and the token the agent routes on to fetch the answer later."""
    return {
        "fulfillmentResponse": {"messages": [{"text": {"text": [message]}}]},
        "sessionInfo": {"parameters": {DIALOGFLOW_PARAMETER: token}},
    }
