"""One request's session placement (session.place_json, place_path) and body carriage (carry_json).

Every fault of the client's request is found before a session is started for it (check), and the id is put in
afterwards (target, body), again if a re-pin gives the request another id.
"""

from __future__ import annotations

import secrets
from typing import NamedTuple

from gateway.config import SessionConfig
from gateway.errors import BadRequest, BadRequestBody
from gateway.sessions.placement import JsonPlacement, PathPlacement, Slot


class Checked(NamedTuple):
    """What a request's body says and where the id goes in it."""

    body: bytes | None  # the whole body, when it was read for placement or carriage
    slot: Slot | None  # where the id goes in it (place_json)
    body_id: str | None  # the id the client carried in it (carry_json)


NOTHING = Checked(None, None, None)


class Placer:
    """Built once from the configuration; `reads_body` says whether the proxy must read bodies whole first."""

    def __init__(self, config: SessionConfig) -> None:
        issued = config.issuer == "gateway"
        self._json = JsonPlacement(config.place_json) if issued and config.place_json else None
        self._path = PathPlacement(config.place_path) if issued and config.place_path else None
        self._carry = JsonPlacement(config.carry_json) if config.carry_json else None
        self._required = config.place_required
        self.reads_body = self._json is not None or self._carry is not None
        self.places = self._json is not None or self._path is not None

    def pointers(self) -> str:
        """The configured pointers, for messages."""
        return " and ".join(p.pointer for p in (self._json, self._carry) if p is not None)

    def check(self, target: str, body: bytes | None) -> Checked:
        """Refuse what cannot be placed (400), before a session starts for the request."""
        if self._path is not None and self._required and self._path.place(target, "x") is None:
            raise BadRequest(f"The request path does not match session.place_path ({self._path.pattern}).")
        if not body:  # no body: nothing to read, and nothing to place into
            if self._json is not None and self._required:
                raise BadRequestBody(
                    f"The request has no JSON body to place the session id in at {self._json.pointer}."
                )
            return NOTHING
        slot = self._json.locate(body) if self._json is not None else None
        body_id = self._carry.read(body) if self._carry is not None else None
        return Checked(body, slot, body_id)

    def target(self, target: str, session_id: str | None) -> str:
        """The target with the id in its session segment (unchanged when the path does not match)."""
        if self._path is None:
            return target
        placed = self._path.place(target, session_id or _throwaway())
        return target if placed is None else placed

    def body(self, checked: Checked, session_id: str | None) -> bytes | None:
        """The body to forward: with the id placed, or as it came."""
        if checked.slot is None or self._json is None:
            return checked.body
        return self._json.fill(checked.slot, session_id or _throwaway())


def _throwaway() -> str:
    # No session to place (the store is down and the client presented none): never let the client's own value
    # through to the bot, where it would pick a conversation.
    return secrets.token_hex(16)
