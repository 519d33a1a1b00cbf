"""One request's session decisions (`Turn`), and the headers in which the gateway tells them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from multidict import istr

from gateway.sessions.carriage import Carried
from gateway.upstream.upstreams import Replica

StartReason = Literal["first", "expired", "lifetime", "ended", "unknown", "upstream", "adopted"]

X_SESSION_NEW: Final = istr("X-Session-New")
X_SESSION_PREVIOUS: Final = istr("X-Session-Previous")
X_SESSION_ID: Final = istr("X-Session-Id")
X_SESSION_CONTROL: Final = istr("X-Session-Control")
X_GATEWAY_SESSION: Final = istr("X-Gateway-Session")


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
