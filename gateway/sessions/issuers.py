"""Who names a session: the gateway, which mints the id before forwarding, or the bot, whose Set-Cookie
names it (session.issuer). Chosen once at construction; the rest of the session code is the same for both."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Final, Protocol

from aiohttp import hdrs
from multidict import CIMultiDict

from gateway.config import SessionConfig
from gateway.errors import SessionCapacity
from gateway.sessions.affinity import AffinitySigner
from gateway.sessions.cookies import (
    COOKIE_OCTETS,
    rewrite_set_cookie,
    set_cookie_deletes,
    set_cookie_name_value,
)
from gateway.sessions.session_headers import SessionHeaders, with_signal
from gateway.sessions.session_ledger import SessionLedger
from gateway.sessions.store import Outcome, Touch
from gateway.sessions.turn import StartReason, Turn
from gateway.upstream.upstreams import Upstreams

log = logging.getLogger("gateway")

# (turn, status, the bot's id, whether it deleted its cookie, now, whether it said rename) -> (id, signal)
Follow = Callable[
    [Turn, int, str | None, bool, float, bool], Awaitable[tuple[str | None, StartReason | None]]
]
_NO_BOT_ID: Final[tuple[str | None, bool]] = (None, False)


class Issuer(Protocol):
    """What differs between the two issuers; everything here is decided once, at construction."""

    headers: SessionHeaders  # built for this issuer: whether the gateway sets the client's session cookie
    follow: Follow | None  # learns the session from the bot's answer; None: the bot's answer names none

    def unknown_id(self, turn: Turn, current: str, held: bool) -> None:
        """A presented id the store does not know (`held`: this request holds its claim)."""

    async def new_session(self, turn: Turn, now: float) -> None:
        """Before forwarding a turn that starts (or adopts) a session."""

    async def moved(self, turn: Turn, now: float) -> None:
        """After a repin chose another replica for the session."""

    async def end_unknown(self, turn: Turn, current: str, touch: Touch, now: float) -> None:
        """An end-session request for an id that is not live."""

    def tell_bot(self, turn: Turn) -> None:
        """Set the turn's fields for the bot: Cookie, and X-Session-Id or the new-session signal; a repin calls
        it again, and the second answer replaces the first."""

    def bot_cookies(self, headers: CIMultiDict[str]) -> tuple[str | None, bool]:
        """The session id the bot's Set-Cookie names, and whether it deleted its cookie."""


class GatewayIssuer:
    """The gateway mints each id (session.id_format) and creates the session before forwarding."""

    def __init__(
        self,
        config: SessionConfig,
        ledger: SessionLedger,
        signer: AffinitySigner,
        upstreams: Upstreams,
        mint_id: Callable[[], str],
    ) -> None:
        self.store = ledger.store
        self.ledger = ledger
        self.mint_id = mint_id
        self.headers = SessionHeaders(
            config, signer, upstreams, client_cookie=config.cookie, names_before_answer=True
        )
        self._cached_fields, self._fields = self.headers.cached_fields, self.headers.fields
        self.follow: Follow | None = None

    def unknown_id(self, turn: Turn, current: str, held: bool) -> None:
        # Client-chosen ids are never adopted.
        turn.reason, turn.previous = "unknown", current if held else None

    async def new_session(self, turn: Turn, now: float) -> None:
        assert turn.reason is not None
        session_id = self.mint_id()
        await self.ledger.start(session_id, turn.reason, now, previous=turn.previous, replica=turn.replica)
        turn.session_id = session_id
        turn.claimed = None  # create() released it

    moved = new_session  # the moved session gets a new id at once; create() enforces the cap

    async def end_unknown(self, turn: Turn, current: str, touch: Touch, now: float) -> None:
        # An id the gateway did not mint or no longer knows never reaches the bot: answer the logout.
        if touch.outcome is not Outcome.PENDING and touch.successor is None:
            await self.store.release(current)
        turn.answer_logout = True

    def tell_bot(self, turn: Turn) -> None:
        fields_for = self._cached_fields if turn.carried.small else self._fields  # large: never cached
        fields = fields_for(turn.carried.cookies, None, turn.session_id or None)
        turn.headers = fields if turn.reason is None else with_signal(fields, turn)

    def bot_cookies(self, headers: CIMultiDict[str]) -> tuple[str | None, bool]:
        return _NO_BOT_ID  # the bot's cookies are its own business, passed on as they are


class BotIssuer:
    """The bot names the session in its Set-Cookie; the gateway follows, adopting ids it never saw."""

    def __init__(
        self, config: SessionConfig, ledger: SessionLedger, signer: AffinitySigner, upstreams: Upstreams
    ) -> None:
        self.config = config
        self.store = ledger.store
        self.metrics = ledger.metrics
        self.ledger = ledger
        self.headers = SessionHeaders(
            config, signer, upstreams, client_cookie=None, names_before_answer=False
        )
        self._cached_fields, self._fields = self.headers.cached_fields, self.headers.fields
        self.follow: Follow | None = self._follow

    def unknown_id(self, turn: Turn, current: str, held: bool) -> None:
        turn.adopting, turn.session_id = True, current

    async def new_session(self, turn: Turn, now: float) -> None:
        # The bot starts it, so the cap is checked now and enforced again when the bot's id is recorded.
        if self.config.on_full == "reject" and await self.store.count() >= self.config.max_sessions:
            self.metrics.sessions_rejected.inc()
            raise SessionCapacity("The gateway holds as many sessions as it may; try again later.")

    async def moved(self, turn: Turn, now: float) -> None:
        pass  # the bot names the moved session's new id in its answer

    async def end_unknown(self, turn: Turn, current: str, touch: Touch, now: float) -> None:
        if touch.outcome is Outcome.MISSING:
            # Unknown here (a gateway restart, an adopted id) but perhaps not to the bot: it decides, and the
            # id is remembered as ended so its next request hears `ended`. Counted nowhere: we had no record.
            await self.store.mark_ended(current, now, "client")
        elif touch.outcome is not Outcome.PENDING and touch.successor is None:
            await self.store.release(current)  # touch() claimed the dead id; we start nothing
        turn.session_id = current
        turn.ended = True

    def tell_bot(self, turn: Turn) -> None:
        fields_for = self._cached_fields if turn.carried.small else self._fields  # large: never cached
        carried_on = turn.live or turn.adopting or turn.ended or turn.untracked
        fields = fields_for(turn.carried.cookies, (turn.session_id or None) if carried_on else None, None)
        turn.headers = fields if turn.reason is None else with_signal(fields, turn)

    def bot_cookies(self, headers: CIMultiDict[str]) -> tuple[str | None, bool]:
        """Also rewrites every Set-Cookie when session.rewrite_upstream_cookies is set."""
        bot_id, bot_deleted = None, False
        c = self.config
        rewrite = c.rewrite_upstream_cookies
        cookies = headers.popall(hdrs.SET_COOKIE, ())
        for value in cookies:
            name, cookie_value = set_cookie_name_value(value)
            if name == c.cookie:
                if set_cookie_deletes(value):
                    bot_deleted = True
                elif COOKIE_OCTETS.fullmatch(cookie_value) and len(cookie_value) <= c.max_id_length:
                    bot_id = cookie_value
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

    async def _follow(
        self, turn: Turn, status: int, bot_id: str | None, bot_deleted: bool, now: float, told_rename: bool
    ) -> tuple[str | None, StartReason | None]:
        """From the bot's Set-Cookie, learn which session it continued or started (`told_rename`: the bot
        said `X-Session-Control: rename`)."""
        current = turn.session_id
        if turn.ended:
            return current, None
        ledger = self.ledger
        if turn.live and current is not None:
            if bot_deleted:
                await ledger.end(current, "bot", now)
                return None, None
            if bot_id is not None and bot_id != current:
                renames = told_rename or self.config.on_bot_new_id == "rename"
                if renames and await self.store.rename(current, bot_id, now) is not None:
                    # The same conversation under a new id (session-fixation protection): no signal; the
                    # old id leads to the new one, so another tab still holding it continues too.
                    self.metrics.sessions_renamed.inc()
                    if ledger.events is not None:
                        ledger.events.renamed(bot_id, current, turn.replica.name if turn.replica else "")
                    turn.session_id = bot_id
                    return bot_id, None
                await ledger.end(current, "upstream", now)
                await ledger.start(bot_id, "upstream", now, previous=current, replica=turn.replica)
                turn.session_id = bot_id
                return bot_id, "upstream"
            return current, None
        if turn.adopting and current is not None:
            if bot_id is not None and bot_id != current:
                # An explicit rename of an id we did not know: the bot's conversation goes on, adopted.
                reason: StartReason = "adopted" if told_rename else "unknown"
                await ledger.start(bot_id, reason, now, previous=current, replica=turn.replica)
                turn.session_id, turn.claimed = bot_id, None
                return bot_id, None if told_rename else "unknown"
            if bot_deleted or status >= 500:
                turn.session_id = None
                return None, None
            # A gateway restart must not break chats.
            await ledger.start(current, "adopted", now, previous=None, replica=turn.replica)
            turn.claimed = None
            return current, None
        if turn.reason is not None and bot_id is not None:
            await ledger.start(bot_id, turn.reason, now, previous=turn.previous, replica=turn.replica)
            turn.session_id, turn.claimed = bot_id, None
            return bot_id, turn.reason
        turn.session_id = None  # the bot started no session for this request
        return None, None


def make_issuer(
    config: SessionConfig,
    ledger: SessionLedger,
    signer: AffinitySigner,
    upstreams: Upstreams,
    mint_id: Callable[[], str],
) -> Issuer:
    """The issuer session.issuer names."""
    if config.issuer == "gateway":
        return GatewayIssuer(config, ledger, signer, upstreams, mint_id)
    return BotIssuer(config, ledger, signer, upstreams)
