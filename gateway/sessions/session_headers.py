"""The session headers and cookies the bot is sent and the client is answered with."""

from __future__ import annotations

import functools
from typing import Final

from aiohttp import hdrs
from multidict import CIMultiDict, istr

from gateway.config import SessionConfig
from gateway.sessions.affinity import AffinitySigner
from gateway.sessions.carriage import Cookies
from gateway.sessions.cookies import build_set_cookie, render_cookie_header
from gateway.sessions.turn import (
    X_GATEWAY_SESSION,
    X_SESSION_CONTROL,
    X_SESSION_ID,
    X_SESSION_NEW,
    X_SESSION_PREVIOUS,
    Turn,
)
from gateway.upstream.upstreams import Replica, Upstreams

FROM_BOT: Final = frozenset({X_SESSION_NEW, X_SESSION_ID, X_GATEWAY_SESSION, X_SESSION_CONTROL})
Fields = tuple[tuple[str, str], ...]
_AFFINITY_CACHE_SIZE: Final = 16384  # sessions whose affinity headers are remembered (~8 MB at most)


def take_owned(headers: CIMultiDict[str]) -> list[str]:
    """Remove the bot's copies of the headers the gateway sets; return its X-Session-Control values."""
    headers.popall(X_SESSION_NEW, None)
    headers.popall(X_SESSION_ID, None)
    headers.popall(X_GATEWAY_SESSION, None)
    raw_controls = headers.popall(X_SESSION_CONTROL, ())
    return [v.strip().lower() for raw in raw_controls for v in raw.split(",")]


def with_signal(fields: Fields, turn: Turn) -> Fields:
    """The bot's request fields and the new-session signal: why this session started, and what it replaces."""
    assert turn.reason is not None
    signal: list[tuple[str, str]] = [(X_SESSION_NEW, turn.reason)]
    if turn.previous:
        signal.append((X_SESSION_PREVIOUS, turn.previous))
    return (*fields, *signal)


class SessionHeaders:
    """Builds the session's request fields for the bot and its response headers and cookies for the client."""

    def __init__(
        self,
        config: SessionConfig,
        signer: AffinitySigner,
        upstreams: Upstreams,
        *,
        client_cookie: str | None,
        names_before_answer: bool,
    ) -> None:
        """`client_cookie`: the session cookie the gateway itself sets on the client; `names_before_answer`: the
        gateway names a new session before the bot answers (both: issuer = gateway)."""
        self.config = config
        self.signer = signer
        self.upstreams = upstreams
        self._client_cookie = client_cookie
        self._names_before_answer = names_before_answer
        # Every response carries the affinity headers (and, issuer = gateway, the session's Set-Cookie): built
        # once per replica and session.
        self._affinity_values = functools.lru_cache(maxsize=_AFFINITY_CACHE_SIZE)(self._affinity_pair)
        # And every request to the bot the same Cookie field for a session's messages, made once.
        self.cached_fields = functools.lru_cache(maxsize=_AFFINITY_CACHE_SIZE)(self.fields)
        owned = [X_SESSION_NEW, X_SESSION_PREVIOUS, istr(config.header)]
        if names_before_answer:
            owned.append(X_SESSION_ID)  # it tells the bot the id the gateway minted
        self.owned_request_headers = frozenset(owned)  # a client's copies never reach the bot

    def fields(self, cookies: Cookies, session_cookie: str | None, issued: str | None) -> Fields:
        """The Cookie field (the client's cookies, then the session's) and the gateway-issued id's field."""
        pairs = [*cookies, (self.config.cookie, session_cookie)] if session_cookie else cookies
        fields = [(hdrs.COOKIE, render_cookie_header(pairs))] if pairs else []
        if issued and self.config.place_header:
            fields.append((X_SESSION_ID, issued))
        return tuple(fields)

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

    def affinity_headers(self, headers: CIMultiDict[str], session_id: str, replica: Replica | None) -> None:
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
        name = self._client_cookie
        own = self._cookie(name, session_id) if name is not None and session_id else None
        return f"{self.config.affinity_cookie}={value}", self._cookie(self.config.affinity_cookie, value), own

    def known_headers(self, turn: Turn) -> CIMultiDict[str]:
        """What an interim answer may say of its session before the bot answers: the id and affinity of a
        session the gateway already holds (live, or minted by it). A session the bot starts is told with its
        answer, as the new-session signal is."""
        headers: CIMultiDict[str] = CIMultiDict()
        session_id = turn.session_id
        if session_id and not (turn.ended or turn.untracked) and (turn.live or self._names_before_answer):
            headers[X_SESSION_ID] = session_id
            self.affinity_headers(headers, session_id, turn.replica)
        return headers

    def end_headers(self, headers: CIMultiDict[str]) -> None:
        """Clear the client's affinity (and the gateway's session cookie): the session ended."""
        headers[X_GATEWAY_SESSION] = ""
        headers.add(hdrs.SET_COOKIE, self._cookie(self.config.affinity_cookie, "", max_age=0))
        if self._client_cookie is not None:
            headers.add(hdrs.SET_COOKIE, self._cookie(self._client_cookie, "", max_age=0))
