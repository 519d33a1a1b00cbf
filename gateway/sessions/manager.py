"""The session lifecycle: resolve, continue, start, expire, end, and signal why a conversation restarted."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Final

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.config import SessionConfig
from gateway.errors import SessionCapacity, StoreUnavailable
from gateway.ops.events import Emitter
from gateway.ops.metrics import Metrics
from gateway.sessions.affinity import AffinitySigner
from gateway.sessions.carriage import Extractor
from gateway.sessions.issuers import make_issuer
from gateway.sessions.placement import IdFormat
from gateway.sessions.replica_choice import ReplicaChoice
from gateway.sessions.session_headers import FROM_BOT, take_owned
from gateway.sessions.session_ledger import SessionLedger
from gateway.sessions.store import EndReason, Outcome, SessionInfo, SessionStore, TombReason, Touch
from gateway.sessions.sweeper import StoreHealth, Sweeper
from gateway.sessions.turn import X_SESSION_ID, X_SESSION_NEW, StartReason, Turn
from gateway.upstream.upstreams import Upstreams

__all__ = ["LOGOUT", "Clock", "SessionManager", "StartReason", "Turn", "short_id"]

log = logging.getLogger("gateway")

Clock = Callable[[], float]

_MAX_SUCCESSOR_HOPS: Final = 3
_CLAIM_POLL: Final = 0.02  # seconds between asks while another request holds a claim
LOGOUT: Final = {"status": 1, "message": "logout"}

# Why a dead session's tombstone says it ended, as the reason its successor started.
_RESTART_REASON: Final[dict[TombReason, StartReason]] = {
    "idle": "expired",
    "lifetime": "lifetime",
    "client": "ended",
    "bot": "ended",
    "upstream": "ended",
    "evicted": "ended",
    "admin": "ended",
    "unknown": "unknown",
    "renamed": "ended",  # never read while the successor it names is followed
}


def short_id(session_id: str | None) -> str:
    """A session id for logs: enough to correlate, too little to hijack."""
    return "-" if not session_id else session_id[:6] + "…"


class SessionManager:
    """Decides each request's session; the proxy calls prepare() before forwarding and finish() after."""

    def __init__(
        self,
        config: SessionConfig,
        store: SessionStore,
        metrics: Metrics,
        upstreams: Upstreams,
        clock: Clock = time.time,
        *,
        claim_wait: float = 30.0,
        strict_affinity: bool = False,
        events: Emitter | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.signer = AffinitySigner(config.secret)
        self.extract = Extractor(config)
        self.mint_id = IdFormat(config.id_format).mint  # gateway-issued ids (uuid4: a valid Dialogflow CX id)
        self.claim_wait = claim_wait
        self.upstreams = upstreams
        self.strict_affinity = strict_affinity
        self.events = events
        self._ledger = ledger = SessionLedger(config, store, metrics, upstreams, events)
        self._health = StoreHealth(config, metrics)
        self._sweeper = Sweeper(ledger, self._health, clock)
        self._replicas = ReplicaChoice(upstreams, self.signer, strict_affinity=strict_affinity)
        self._issuer = issuer = make_issuer(config, ledger, self.signer, upstreams, self.mint_id)
        self._headers = headers = issuer.headers
        self.owned_request_headers = headers.owned_request_headers
        self._follow = issuer.follow

    @property
    def store_healthy(self) -> bool:
        """Whether the store answered the last request or sweep that asked it."""
        return self._health.healthy

    def known_headers(self, turn: Turn) -> CIMultiDict[str]:
        """What an interim answer may say of its session before the bot answers."""
        return self._headers.known_headers(turn)

    def can_repin(self, turn: Turn) -> bool:
        """Whether a failed live session may move to another replica (as a new session, reason upstream)."""
        return self._replicas.can_repin(turn)

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._sweeper.start()

    async def restore(self, ended: Iterable[tuple[SessionInfo, EndReason]]) -> None:
        """Count the sessions a state file held that ended while the gateway was down (before start())."""
        now = self.clock()
        for info, reason in ended:
            # An idle or lifetime end happened at its deadline: the downtime is not part of the session.
            deadline = min(info.last_seen + info.idle_timeout, info.created + self.config.absolute_timeout)
            self._ledger.observe_end(info, reason, now if reason == "evicted" else min(now, deadline))
        await self._ledger.refresh_active()

    async def stop(self, save: Callable[[], None] | None = None) -> None:
        """Stop the sweeper, then `save` (session.state_file), then close the store (a memory store empties)."""
        await self._sweeper.stop()
        if save is not None:
            save()
        await self.store.close()

    async def sweep(self) -> int:
        """End every session past a timeout, in bounded batches that yield to the event loop."""
        return await self._sweeper.sweep()

    async def end_by_admin(self, session_id: str) -> bool:
        info = await self.store.end(session_id, self.clock(), "admin")
        if info is None:
            return False
        self._ledger.observe_end(info, "admin", self.clock())
        await self._ledger.refresh_active()
        return True

    # -- before forwarding -------------------------------------------------------------------------

    async def prepare(self, target: str, headers: CIMultiDictProxy[str], body_id: str | None = None) -> Turn:
        """Resolve the session a request carries (`body_id`: what its body carries, session.carry_json) and
        decide what the bot is told."""
        carried = self.extract(target, headers, body_id)
        self.metrics.carriers[carried.carrier].inc()
        turn = Turn(carried)
        if carried.session_id is None and self.config.store_failure == "closed" and not self._health.healthy:
            # Nothing to read before forwarding, but the session the bot starts could not be recorded.
            raise StoreUnavailable("The session store is unavailable.")
        try:
            await self._decide(turn)
        except StoreUnavailable as exc:
            self._health.down("request", exc)
            # A claim taken before the store failed (touch answered, create did not): the conversation's
            # next request must not wait out its life.
            await self.abandon(turn)
            if self.config.store_failure == "closed":
                raise
            # Fail open: proxy as if the gateway were not there, and signal nothing we cannot know.
            turn = Turn(carried, untracked=True, session_id=carried.session_id)
            turn.replica = self._replicas.affinity_replica(carried) or self.upstreams.choose()
        except BaseException:
            await self.abandon(turn)  # e.g. refused at the cap: racing requests must not wait on our claim
            raise
        else:
            self._health.up()
        self._issuer.tell_bot(turn)
        return turn

    async def _decide(self, turn: Turn) -> None:
        carried = turn.carried
        now = self.clock()
        if carried.is_end:
            await self._prepare_end(turn, now)
        elif carried.session_id is None:
            turn.reason = "first"
        else:
            await self._resolve(turn, carried.session_id, now)
        if not self._replicas.place(turn):
            await self._move(turn, now)
        if turn.reason is not None or turn.adopting:
            await self._issuer.new_session(turn, now)

    async def _prepare_end(self, turn: Turn, now: float) -> None:
        presented = turn.carried.session_id
        if presented is None:
            turn.answer_logout = True  # no session: nothing to end, and nothing for the bot to decide
            return
        current, touch = presented, await self.store.touch(presented, now)
        for _ in range(_MAX_SUCCESSOR_HOPS):  # an id that was renamed (or restarted) leads to its successor
            if touch.successor is None:
                break
            current = touch.successor
            touch = await self.store.touch(current, now)
        if touch.outcome in (Outcome.EXPIRED, Outcome.LIFETIME) and touch.session:
            self._ledger.observe_end(
                touch.session, "idle" if touch.outcome is Outcome.EXPIRED else "lifetime", now
            )
            await self._ledger.refresh_active()
        if touch.outcome is not Outcome.LIVE or touch.session is None:
            await self._issuer.end_unknown(turn, current, touch, now)
            return
        if touch.idle_gap is not None:  # the end request is one of the session's requests (touch counted it)
            self.metrics.idle_gap.observe(touch.idle_gap)
        info = await self.store.end(touch.session.id, now, "client")
        turn.pinned_name = touch.session.replica
        if info is not None:
            self._ledger.observe_end(info, "client", now)
        await self._ledger.refresh_active()
        turn.session_id = current
        turn.ended = True

    async def _resolve(self, turn: Turn, presented: str, now: float) -> None:
        """Continue the presented session, its successor, or decide why a new one starts (holding the claim)."""
        current = presented
        for _ in range(1 + _MAX_SUCCESSOR_HOPS):  # the presented id, then its successors
            touch = await self.store.touch(current, now)
            if touch.outcome is Outcome.PENDING:
                touch = await self._touch_waiting(current)
            if touch.outcome is Outcome.LIVE:
                session = touch.session
                assert session is not None
                turn.live, turn.session_id, turn.pinned_name = True, session.id, session.replica
                if touch.idle_gap is not None:
                    self.metrics.idle_gap.observe(touch.idle_gap)
                return
            if touch.outcome in (Outcome.EXPIRED, Outcome.LIFETIME) and touch.session is not None:
                self._ledger.observe_end(
                    touch.session, "idle" if touch.outcome is Outcome.EXPIRED else "lifetime", now
                )
                await self._ledger.refresh_active()
            if touch.successor is None:
                break
            # Another request (another tab, another replica) already started this id's successor.
            current = touch.successor
        else:
            # A chain of dead successors longer than we follow: start afresh. Nothing was claimed (an id
            # with a successor is not), and the last id already has a successor, so none is recorded.
            turn.reason = "unknown"
            return
        # PENDING: we waited claim_wait and another request still holds the claim. We go on without it, and a
        # gateway-issued session names no predecessor (naming the id's successor is the claim holder's to do).
        held = touch.outcome is not Outcome.PENDING
        turn.claimed = current if held else None
        if touch.outcome in (Outcome.MISSING, Outcome.PENDING):
            self._issuer.unknown_id(turn, current, held)
            return
        turn.previous = current
        if touch.outcome is Outcome.ENDED:
            assert touch.ended_reason is not None
            turn.reason = _RESTART_REASON[touch.ended_reason]
        else:
            turn.reason = "expired" if touch.outcome is Outcome.EXPIRED else "lifetime"

    async def _touch_waiting(self, session_id: str) -> Touch:
        """touch() again while another request holds the claim on this id (bounded by the claim's life)."""
        deadline = time.monotonic() + self.claim_wait
        while True:
            await asyncio.sleep(_CLAIM_POLL)
            touch = await self.store.touch(session_id, self.clock())
            if touch.outcome is not Outcome.PENDING or time.monotonic() >= deadline:
                return touch

    async def repin(self, turn: Turn, now: float | None = None) -> None:
        """The session's replica is gone, and its conversation with it: start a new one elsewhere."""
        now = self.clock() if now is None else now
        await self._move(turn, now)
        await self._issuer.moved(turn, now)
        self._issuer.tell_bot(turn)

    async def _move(self, turn: Turn, now: float) -> None:
        """End the session on its failed replica and choose another; the new session's reason is upstream."""
        old = turn.session_id
        assert old is not None
        if turn.live:
            await self._ledger.end(old, "upstream", now)
            # takes the claim, so racing requests follow our successor
            touch = await self.store.touch(old, now)
            turn.claimed = old if touch.outcome is not Outcome.PENDING else None
        failed = turn.replica
        turn.live = turn.adopting = False
        turn.reason, turn.previous, turn.session_id = "upstream", old, None
        turn.replica = self._replicas.instead_of(failed)

    async def abandon(self, turn: Turn) -> None:
        """The exchange failed before an answer: give up the claim so racing requests decide for themselves."""
        if turn.claimed is not None:
            claimed, turn.claimed = turn.claimed, None
            with contextlib.suppress(Exception):
                await self.store.release(claimed)

    # -- after the upstream answered -----------------------------------------------------------------

    async def finish(self, turn: Turn, status: int, headers: CIMultiDict[str]) -> None:
        """Record what the bot did, apply its controls, and add the gateway's headers to its response."""
        # Found with one case-insensitive intersection in C: a bot rarely sends any of them.
        controls = take_owned(headers) if headers.keys() & FROM_BOT else []
        session_id = turn.session_id
        bot_id, bot_deleted = self._issuer.bot_cookies(headers)
        if turn.live and not controls and not bot_deleted and bot_id in (None, session_id):
            # The commonest answer: the bot continued the live session and changed nothing (claimed is None:
            # a live session holds no claim).
            assert session_id is not None
            headers[X_SESSION_ID] = session_id
            self._headers.affinity_headers(headers, session_id, turn.replica)
            return
        now = self.clock()
        signal: StartReason | None = None
        try:
            if turn.untracked:
                session_id = bot_id or session_id
            elif self._follow is None:  # the gateway issued the id before forwarding
                signal = turn.reason
            else:
                session_id, signal = await self._follow(
                    turn, status, bot_id, bot_deleted, now, "rename" in controls
                )
            if controls and session_id is not None and not turn.untracked and not turn.ended:
                await self._apply_controls(session_id, controls, now)
        except SessionCapacity:
            # Full since prepare() checked (on_full = reject): the bot answered, so pass it on untracked.
            session_id, signal = None, None
        except StoreUnavailable as exc:
            # The bot has answered: pass its answer on, untracked, rather than fail the request.
            self._health.down("response", exc)
            session_id, signal = bot_id or turn.session_id, None
        finally:
            await self.abandon(turn)  # a no-op when create() released the claim
        if turn.ended:
            self._headers.end_headers(headers)
            return
        if signal is not None:
            headers[X_SESSION_NEW] = signal
        if session_id:
            headers[X_SESSION_ID] = session_id
            self._headers.affinity_headers(headers, session_id, turn.replica)
        # else no session: nothing to pin, so no affinity value (and no cookie signed over an empty id)

    async def _apply_controls(self, session_id: str, controls: list[str], now: float) -> None:
        """`X-Session-Control: end` ends the session after this response; `timeout=<s>` sets its idle timeout."""
        for control in controls:
            if control == "end":
                await self._ledger.end(session_id, "bot", now)
            elif control.startswith("timeout="):
                try:
                    seconds = float(control.partition("=")[2])
                except ValueError:
                    log.warning("ignoring X-Session-Control %r from the upstream", control)
                    continue
                if seconds > 0:
                    await self.store.set_idle_timeout(session_id, min(seconds, self.config.absolute_timeout))
            elif control and control != "rename":  # rename was read with the bot's Set-Cookie
                log.warning("ignoring X-Session-Control %r from the upstream", control)
