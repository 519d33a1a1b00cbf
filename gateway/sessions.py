"""The session lifecycle: resolve, continue, start, expire, end, and signal why a conversation restarted."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, Literal

from aiohttp import hdrs
from multidict import CIMultiDict, CIMultiDictProxy, istr

from gateway.affinity import AffinitySigner
from gateway.carriage import Carried, Cookies, Extractor
from gateway.config import SessionConfig
from gateway.cookies import (
    COOKIE_OCTETS,
    build_set_cookie,
    render_cookie_header,
    rewrite_set_cookie,
    set_cookie_deletes,
    set_cookie_name_value,
)
from gateway.errors import ReplicaUnavailable, SessionCapacity, StoreUnavailable
from gateway.events import Emitter
from gateway.metrics import Metrics
from gateway.placement import IdFormat
from gateway.store import CapacityExceeded, EndReason, Outcome, SessionInfo, SessionStore, TombReason, Touch
from gateway.upstreams import Replica, Upstreams

log = logging.getLogger("gateway")

StartReason = Literal["first", "expired", "lifetime", "ended", "unknown", "upstream", "adopted"]
Clock = Callable[[], float]

X_SESSION_NEW: Final = istr("X-Session-New")
X_SESSION_PREVIOUS: Final = istr("X-Session-Previous")
X_SESSION_ID: Final = istr("X-Session-Id")
X_SESSION_CONTROL: Final = istr("X-Session-Control")
X_GATEWAY_SESSION: Final = istr("X-Gateway-Session")
_FROM_BOT: Final = frozenset({X_SESSION_NEW, X_SESSION_ID, X_GATEWAY_SESSION, X_SESSION_CONTROL})
_MAX_SUCCESSOR_HOPS: Final = 3
_CLAIM_POLL: Final = 0.02  # seconds between asks while another request holds a claim
# Event-loop time one sweep batch may take before yielding (the stall target is 5 ms).
_BATCH_SECONDS: Final = 0.001
_AFFINITY_CACHE_SIZE: Final = 16384  # sessions whose affinity headers are remembered (~8 MB at most)
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


@dataclass(slots=True)
class Turn:
    """One request's session decisions, from before forwarding to after the upstream's response head."""

    carried: Carried
    session_id: str | None = None  # the session the bot is told about (continued, adopted or minted)
    reason: StartReason | None = None  # a new session whose reason is known before forwarding
    previous: str | None = None  # the id this new session replaces
    live: bool = False  # continues a session the gateway knows
    adopting: bool = False  # an id unknown to the gateway, forwarded for the bot to accept or replace
    claimed: str | None = None  # the dead or unknown id whose claim this request holds
    ended: bool = False  # an end-session request that ended a live session
    untracked: bool = False  # the store is down (store_failure = "open"): forwarded as presented
    pinned_name: str | None = None  # the replica the store says holds the session
    replica: Replica | None = None  # where this request goes
    answer_logout: bool = False  # answer the logout JSON without forwarding
    headers: tuple[tuple[str, str], ...] = ()  # to add on the request to the bot


class SessionManager:
    """Owns the store, the sweeper and the session metrics; the proxy calls prepare() and finish()."""

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
        # Lifecycle events produced here (memory store); a shared store's scripts produce their own.
        self.events = events
        self._sweeper: asyncio.Task[None] | None = None
        self._stopping = False
        self._active_max = 0
        self._batch = min(64, config.sweep_batch)  # grows while batches stay under _BATCH_SECONDS
        self.store_healthy = True
        # Every response carries the affinity headers (and, issuer = gateway, the session's Set-Cookie): built
        # once per replica and session.
        self._affinity_values = functools.lru_cache(maxsize=_AFFINITY_CACHE_SIZE)(self._affinity_pair)
        # And every request to the bot the same Cookie field for a session's messages, made once.
        self._session_fields = functools.lru_cache(maxsize=_AFFINITY_CACHE_SIZE)(self._fields)
        owned = [X_SESSION_NEW, X_SESSION_PREVIOUS, istr(config.header)]
        if config.issuer == "gateway":
            owned.append(X_SESSION_ID)
        self.owned_request_headers = frozenset(owned)  # a client's copies never reach the bot
        metrics.sessions_limit.set(config.max_sessions)
        metrics.store_shared.set(1 if store.shared else 0)
        metrics.idle_timeout.set(config.idle_timeout)

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="session-sweeper")

    async def restore(self, ended: Iterable[tuple[SessionInfo, EndReason]]) -> None:
        """Count the sessions a state file held that ended while the gateway was down (before start())."""
        now = self.clock()
        for info, reason in ended:
            # An idle or lifetime end happened at its deadline: the downtime is not part of the session.
            deadline = min(info.last_seen + info.idle_timeout, info.created + self.config.absolute_timeout)
            self._observe_end(info, reason, now if reason == "evicted" else min(now, deadline))
        await self._refresh_active()

    async def stop(self, save: Callable[[], None] | None = None) -> None:
        """Stop the sweeper, then `save` (session.state_file), then close the store (a memory store empties)."""
        if self._sweeper is not None:
            # The flag ends the loop even when the cancel is lost: redis-py sends through asyncio.wait_for,
            # which on Python 3.11 swallows a cancel that lands as the send completes (bpo-42130).
            self._stopping = True
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if save is not None:
            save()
        await self.store.close()

    async def _sweep_forever(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.config.sweep_interval)
            try:
                await self.sweep()
            except StoreUnavailable as exc:
                self._store_down("sweep", exc)
            except Exception:  # a bug must not kill the sweeper; one line with the traceback
                log.exception("expiry sweep failed")
            else:
                self._store_up()

    def _store_down(self, op: str, exc: StoreUnavailable) -> None:
        self.metrics.store_errors[op].inc()
        if self.store_healthy:
            self.store_healthy = False
            self.metrics.store_up.set(0)
            log.warning(
                "session store unavailable (%s; store_failure = %s)", exc.message, self.config.store_failure
            )

    def _store_up(self) -> None:
        if not self.store_healthy:
            self.store_healthy = True
            self.metrics.store_up.set(1)
            log.info("session store available again")

    async def sweep(self) -> int:
        """End every session past a timeout, in bounded batches that yield to the event loop."""
        started = time.perf_counter()
        now = self.clock()
        count = 0
        while True:
            batch_started = time.perf_counter()
            swept = await self.store.expire_due(now, self._batch)
            observed = time.perf_counter()
            for ended in swept.ended:
                self._observe_end(ended.session, ended.reason, now)
            count += len(swept.ended)
            # Keep every batch near _BATCH_SECONDS of event-loop time, whatever a session costs to end here.
            # A shared store's expire_due is mostly waiting on the network, when the loop serves others.
            spent = time.perf_counter() - (observed if self.store.shared else batch_started)
            if spent > _BATCH_SECONDS and self._batch > 16:
                self._batch //= 2
            elif spent < _BATCH_SECONDS / 2 and self._batch < self.config.sweep_batch:
                self._batch = min(self._batch * 2, self.config.sweep_batch)
            if not swept.more:
                break
            await asyncio.sleep(0)
        await self._refresh_active(sweeping=True)
        self.metrics.sweep_duration.observe(time.perf_counter() - started)
        self.metrics.sweep_last.set(time.time())
        return count

    async def end_by_admin(self, session_id: str) -> bool:
        info = await self.store.end(session_id, self.clock(), "admin")
        if info is None:
            return False
        self._observe_end(info, "admin", self.clock())
        await self._refresh_active()
        return True

    # -- metrics -----------------------------------------------------------------------------------

    def _observe_end(self, info: SessionInfo, reason: EndReason, now: float) -> None:
        self.metrics.ended[reason].inc()
        self.metrics.session_duration.observe(max(0.0, now - info.created))
        self.metrics.session_requests.observe(info.requests)
        if self.events is not None:
            self.events.ended(info, reason, now)

    async def _refresh_active(self, *, sweeping: bool = False) -> None:
        if self.store.shared and not sweeping:
            return  # a shared count costs a round trip: the sweeper refreshes it every sweep_interval
        active = await self.store.count()
        self.metrics.sessions_active.set(active)
        if active > self._active_max:
            self._active_max = active
            self.metrics.sessions_active_max.set(active)

    # -- before forwarding -------------------------------------------------------------------------

    async def prepare(self, target: str, headers: CIMultiDictProxy[str], body_id: str | None = None) -> Turn:
        """Resolve the session a request carries (`body_id`: what its body carries, session.carry_json) and
        decide what the bot is told."""
        carried = self.extract(target, headers, body_id)
        self.metrics.carriers[carried.carrier].inc()
        turn = Turn(carried)
        if carried.session_id is None and self.config.store_failure == "closed" and not self.store_healthy:
            # Nothing to read before forwarding, but the session the bot starts could not be recorded.
            raise StoreUnavailable("The session store is unavailable.")
        try:
            await self._decide(turn)
        except StoreUnavailable as exc:
            self._store_down("request", exc)
            # A claim taken before the store failed (touch answered, create did not): the conversation's
            # next request must not wait out its life.
            await self.abandon(turn)
            if self.config.store_failure == "closed":
                raise
            # Fail open: proxy as if the gateway were not there, and signal nothing we cannot know.
            turn = Turn(carried, untracked=True, session_id=carried.session_id)
            turn.replica = self._affinity_replica(carried) or self.upstreams.choose()
        except BaseException:
            await self.abandon(turn)  # e.g. refused at the cap: racing requests must not wait on our claim
            raise
        else:
            self._store_up()
        self._bot_headers(turn)
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
        if not self._place(turn):
            await self.repin(turn, now)
            if self.config.issuer == "gateway":
                return  # repin minted the moved session's id; create() enforced the cap
        if turn.reason is not None and self.config.issuer == "gateway":
            await self._mint(turn, now)
        elif turn.reason is not None or turn.adopting:
            await self._check_capacity()

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
            self._observe_end(touch.session, "idle" if touch.outcome is Outcome.EXPIRED else "lifetime", now)
            await self._refresh_active()
        if touch.outcome is Outcome.LIVE and touch.session is not None:
            if (
                touch.idle_gap is not None
            ):  # the end request is one of the session's requests (touch counted it)
                self.metrics.idle_gap.observe(touch.idle_gap)
            info = await self.store.end(touch.session.id, now, "client")
            turn.pinned_name = touch.session.replica
            if info is not None:
                self._observe_end(info, "client", now)
            await self._refresh_active()
        elif self.config.issuer == "gateway":
            # An id the gateway did not mint or no longer knows never reaches the bot: answer the logout.
            if touch.outcome is not Outcome.PENDING and touch.successor is None:
                await self.store.release(current)
            turn.answer_logout = True
            return
        elif touch.outcome is Outcome.MISSING:
            # Unknown here (a gateway restart, an adopted id) but perhaps not to the bot: it decides, and the
            # id is remembered as ended so its next request hears `ended`. Counted nowhere: we had no record.
            await self.store.mark_ended(current, now, "client")
        elif touch.outcome is not Outcome.PENDING and touch.successor is None:
            await self.store.release(current)  # touch() claimed the dead id; we start nothing
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
                self._observe_end(
                    touch.session, "idle" if touch.outcome is Outcome.EXPIRED else "lifetime", now
                )
                await self._refresh_active()
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
            if self.config.issuer == "gateway":
                # Client-chosen ids are never adopted.
                turn.reason, turn.previous = "unknown", current if held else None
            else:
                turn.adopting, turn.session_id = True, current
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

    def _affinity_replica(self, carried: Carried) -> Replica | None:
        """The replica the client's signed affinity value names, if it verifies and is up."""
        if not carried.affinity or not carried.session_id:
            return None
        replica = self.upstreams.get(self.signer.verify(carried.affinity, carried.session_id))
        return replica if replica is not None and self.upstreams.is_up(replica) else None

    def _place(self, turn: Turn) -> bool:
        """Choose the replica: the pinned one; the affinity value's for an id the store lost; else the least
        busy. False: the live session's replica is gone, so the session must move (repin)."""
        if turn.live or (turn.ended and turn.pinned_name):
            replica = self.upstreams.get(turn.pinned_name)
            if replica is None:
                replica = self._affinity_replica(turn.carried)
            if replica is not None and (self.upstreams.is_up(replica) or len(self.upstreams.replicas) == 1):
                turn.replica = replica
                return True
            if self.strict_affinity:
                raise ReplicaUnavailable("The bot replica holding this session is unavailable.")
            if turn.live:
                return False
        elif turn.adopting or turn.ended:  # an id the gateway does not know: where the client says it lives
            turn.replica = self._affinity_replica(turn.carried) or self.upstreams.choose()
            return True
        turn.replica = self.upstreams.choose()
        return True

    def can_repin(self, turn: Turn) -> bool:
        """Whether a failed live session may move to another replica (as a new session, reason upstream)."""
        return (turn.live or turn.adopting) and not self.strict_affinity and len(self.upstreams.replicas) > 1

    async def repin(self, turn: Turn, now: float | None = None) -> None:
        """The session's replica is gone, and its conversation with it: start a new one elsewhere."""
        now = self.clock() if now is None else now
        old = turn.session_id
        assert old is not None
        if turn.live:
            await self._end(old, "upstream", now)
            touch = await self.store.touch(
                old, now
            )  # takes the claim, so racing requests follow our successor
            turn.claimed = old if touch.outcome is not Outcome.PENDING else None
        failed = turn.replica
        turn.live = turn.adopting = False
        turn.reason, turn.previous, turn.session_id = "upstream", old, None
        candidates = [r for r in self.upstreams.replicas if r is not failed]
        turn.replica = min(candidates, key=lambda r: (not self.upstreams.is_up(r), r.in_flight))
        if self.config.issuer == "gateway":
            await self._mint(turn, now)
        self._bot_headers(turn)

    async def _check_capacity(self) -> None:
        if self.config.on_full == "reject" and await self.store.count() >= self.config.max_sessions:
            self.metrics.sessions_rejected.inc()
            raise SessionCapacity("The gateway holds as many sessions as it may; try again later.")

    async def _mint(self, turn: Turn, now: float) -> None:
        """Gateway-issued mode: a new id in session.id_format, created before forwarding."""
        assert turn.reason is not None
        session_id = self.mint_id()
        await self._start(session_id, turn.reason, now, previous=turn.previous, replica=turn.replica)
        turn.session_id = session_id
        turn.claimed = None  # create() released it

    def _bot_headers(self, turn: Turn) -> None:
        """Set what the bot is told; a repin calls it again, and the second answer replaces the first."""
        session_id = turn.session_id or None
        fields_for = self._session_fields if turn.carried.small else self._fields  # large: never cached
        if self.config.issuer == "gateway":
            fields = fields_for(turn.carried.cookies, None, session_id)
        else:
            carried_on = turn.live or turn.adopting or turn.ended or turn.untracked
            fields = fields_for(turn.carried.cookies, session_id if carried_on else None, None)
        if turn.reason is not None:
            signal: list[tuple[str, str]] = [(X_SESSION_NEW, turn.reason)]
            if turn.previous:
                signal.append((X_SESSION_PREVIOUS, turn.previous))
            fields = (*fields, *signal)
        turn.headers = fields

    def _fields(
        self, cookies: Cookies, session_cookie: str | None, issued: str | None
    ) -> tuple[tuple[str, str], ...]:
        """The Cookie field (the client's cookies, then the session's) and the gateway-issued id's field."""
        pairs = [*cookies, (self.config.cookie, session_cookie)] if session_cookie else cookies
        fields = [(hdrs.COOKIE, render_cookie_header(pairs))] if pairs else []
        if issued and self.config.place_header:
            fields.append((X_SESSION_ID, issued))
        return tuple(fields)

    async def _start(
        self, session_id: str, reason: StartReason, now: float, previous: str | None, replica: Replica | None
    ) -> bool:
        replica = replica or self.upstreams.choose()
        try:
            created = await self.store.create(
                session_id,
                now,
                idle_timeout=self.config.idle_timeout,
                replica=replica.name,
                previous=previous,
            )
        except CapacityExceeded:
            self.metrics.sessions_rejected.inc()
            raise SessionCapacity("The gateway holds as many sessions as it may; try again later.") from None
        if created.evicted is not None:
            self._observe_end(created.evicted, "evicted", now)
        if created.created:
            self.metrics.started[reason].inc()
            self.upstreams.pinned(replica)
            if self.events is not None:
                self.events.started(session_id, reason, previous, replica.name)
        await self._refresh_active()
        return created.created

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
        controls = self._take_owned(headers) if headers.keys() & _FROM_BOT else []
        session_id = turn.session_id
        bot_id, bot_deleted = (None, False) if self.config.issuer == "gateway" else self._bot_cookies(headers)
        if turn.live and not controls and not bot_deleted and bot_id in (None, session_id):
            # The commonest answer: the bot continued the live session and changed nothing (claimed is None:
            # a live session holds no claim).
            assert session_id is not None
            headers[X_SESSION_ID] = session_id
            self._affinity_headers(headers, session_id, turn.replica)
            return
        now = self.clock()
        signal: StartReason | None = None
        try:
            if turn.untracked:
                session_id = bot_id or session_id
            elif self.config.issuer == "gateway":
                signal = turn.reason
            else:
                session_id, signal = await self._follow_bot(
                    turn, status, bot_id, bot_deleted, now, told_rename="rename" in controls
                )
            if controls and session_id is not None and not turn.untracked and not turn.ended:
                await self._apply_controls(session_id, controls, now)
        except SessionCapacity:
            # Full since prepare() checked (on_full = reject): the bot answered, so pass it on untracked.
            session_id, signal = None, None
        except StoreUnavailable as exc:
            # The bot has answered: pass its answer on, untracked, rather than fail the request.
            self._store_down("response", exc)
            session_id, signal = bot_id or turn.session_id, None
        finally:
            await self.abandon(turn)  # a no-op when create() released the claim
        if turn.ended:
            self._end_headers(headers)
            return
        if signal is not None:
            headers[X_SESSION_NEW] = signal
        if session_id:
            headers[X_SESSION_ID] = session_id
            self._affinity_headers(headers, session_id, turn.replica)
        # else no session: nothing to pin, so no affinity value (and no cookie signed over an empty id)

    @staticmethod
    def _take_owned(headers: CIMultiDict[str]) -> list[str]:
        """Remove the bot's copies of the headers the gateway sets; return its X-Session-Control values."""
        headers.popall(X_SESSION_NEW, None)
        headers.popall(X_SESSION_ID, None)
        headers.popall(X_GATEWAY_SESSION, None)
        raw_controls = headers.popall(X_SESSION_CONTROL, ())
        return [v.strip().lower() for raw in raw_controls for v in raw.split(",")]

    def _bot_cookies(self, headers: CIMultiDict[str]) -> tuple[str | None, bool]:
        """The session id the bot set (or whether it deleted its cookie); rewrites Set-Cookie when configured."""
        bot_id, bot_deleted = None, False
        rewrite = self.config.rewrite_upstream_cookies
        cookies = headers.popall(hdrs.SET_COOKIE, ())
        for value in cookies:
            name, cookie_value = set_cookie_name_value(value)
            if name == self.config.cookie:
                if set_cookie_deletes(value):
                    bot_deleted = True
                elif COOKIE_OCTETS.fullmatch(cookie_value) and len(cookie_value) <= self.config.max_id_length:
                    bot_id = cookie_value
            c = self.config
            headers.add(
                hdrs.SET_COOKIE,
                rewrite_set_cookie(
                    value,
                    samesite=c.cookie_samesite,
                    secure=c.cookie_secure,
                    partitioned=c.cookie_partitioned,
                )
                if rewrite
                else value,
            )
        return bot_id, bot_deleted

    async def _follow_bot(
        self, turn: Turn, status: int, bot_id: str | None, bot_deleted: bool, now: float, *, told_rename: bool
    ) -> tuple[str | None, StartReason | None]:
        """Upstream-issued mode: from the bot's Set-Cookie, learn which session it continued or started
        (`told_rename`: the bot said `X-Session-Control: rename`)."""
        current = turn.session_id
        if turn.ended:
            return current, None
        if turn.live and current is not None:
            if bot_deleted:
                await self._end(current, "bot", now)
                return None, None
            if bot_id is not None and bot_id != current:
                renames = told_rename or self.config.on_bot_new_id == "rename"
                if renames and await self.store.rename(current, bot_id, now) is not None:
                    # The same conversation under a new id (session-fixation protection): no signal; the
                    # old id leads to the new one, so another tab still holding it continues too.
                    self.metrics.sessions_renamed.inc()
                    if self.events is not None:
                        self.events.renamed(bot_id, current, turn.replica.name if turn.replica else "")
                    turn.session_id = bot_id
                    return bot_id, None
                await self._end(current, "upstream", now)
                await self._start(bot_id, "upstream", now, previous=current, replica=turn.replica)
                turn.session_id = bot_id
                return bot_id, "upstream"
            return current, None
        if turn.adopting and current is not None:
            if bot_id is not None and bot_id != current:
                # An explicit rename of an id we did not know: the bot's conversation goes on, adopted.
                reason: StartReason = "adopted" if told_rename else "unknown"
                await self._start(bot_id, reason, now, previous=current, replica=turn.replica)
                turn.session_id, turn.claimed = bot_id, None
                return bot_id, None if told_rename else "unknown"
            if bot_deleted or status >= 500:
                turn.session_id = None
                return None, None
            # A gateway restart must not break chats.
            await self._start(current, "adopted", now, previous=None, replica=turn.replica)
            turn.claimed = None
            return current, None
        if turn.reason is not None and bot_id is not None:
            await self._start(bot_id, turn.reason, now, previous=turn.previous, replica=turn.replica)
            turn.session_id, turn.claimed = bot_id, None
            return bot_id, turn.reason
        turn.session_id = None  # the bot started no session for this request
        return None, None

    async def _end(self, session_id: str, reason: EndReason, now: float) -> None:
        info = await self.store.end(session_id, now, reason)
        if info is not None:
            self._observe_end(info, reason, now)
            await self._refresh_active()

    async def _apply_controls(self, session_id: str, controls: list[str], now: float) -> None:
        """`X-Session-Control: end` ends the session after this response; `timeout=<s>` sets its idle timeout."""
        for control in controls:
            if control == "end":
                await self._end(session_id, "bot", now)
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

    def _cookie(self, name: str, value: str, max_age: int | None = None) -> str:
        c = self.config
        return build_set_cookie(
            name,
            value,
            samesite=c.cookie_samesite,
            secure=c.cookie_secure,
            partitioned=c.cookie_partitioned,
            max_age=max_age,
        )

    def _affinity_headers(self, headers: CIMultiDict[str], session_id: str, replica: Replica | None) -> None:
        """X-Gateway-Session and its Set-Cookie; Teneo Web Chat keeps `value.split(';')[0]`, so the pair comes first."""
        gateway_session, set_cookie, session_cookie = self._affinity_values(
            (replica or self.upstreams.replicas[0]).name, session_id
        )
        headers[X_GATEWAY_SESSION] = gateway_session
        headers.add(hdrs.SET_COOKIE, set_cookie)
        if session_cookie is not None:
            headers.add(hdrs.SET_COOKIE, session_cookie)

    def _affinity_pair(self, replica: str, session_id: str) -> tuple[str, str, str | None]:
        """X-Gateway-Session's value, the affinity Set-Cookie, and the session's own when the gateway issues it."""
        value = self.signer.sign(replica, session_id)
        own = (
            self._cookie(self.config.cookie, session_id)
            if self.config.issuer == "gateway" and session_id
            else None
        )
        return f"{self.config.affinity_cookie}={value}", self._cookie(self.config.affinity_cookie, value), own

    def known_headers(self, turn: Turn) -> CIMultiDict[str]:
        """What an interim answer may say of its session before the bot answers: the id and affinity of a
        session the gateway already holds (live, or minted by it). A session the bot starts is told with its
        answer, as the new-session signal is."""
        headers: CIMultiDict[str] = CIMultiDict()
        session_id = turn.session_id
        if (
            session_id
            and not (turn.ended or turn.untracked)
            and (turn.live or self.config.issuer == "gateway")
        ):
            headers[X_SESSION_ID] = session_id
            self._affinity_headers(headers, session_id, turn.replica)
        return headers

    def _end_headers(self, headers: CIMultiDict[str]) -> None:
        headers[X_GATEWAY_SESSION] = ""
        headers.add(hdrs.SET_COOKIE, self._cookie(self.config.affinity_cookie, "", max_age=0))
        if self.config.issuer == "gateway":
            headers.add(hdrs.SET_COOKIE, self._cookie(self.config.cookie, "", max_age=0))

    def logout_headers(self, turn: Turn) -> CIMultiDict[str]:
        """Headers for the gateway's own logout answer."""
        headers: CIMultiDict[str] = CIMultiDict()
        if turn.ended:
            self._end_headers(headers)
        return headers
