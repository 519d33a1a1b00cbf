"""The signed affinity value: which upstream holds a session, unforgeable by the client."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets


class AffinitySigner:
    """Signs `<replica>.<mac>` over the replica name and the session id with `session.secret`.

    Binding the session id means a value copied from another conversation does not verify.
    """

    def __init__(self, secret: str) -> None:
        # Unset: random per process, so replicas must share one through configuration.
        self._key = secret.encode() if secret else secrets.token_bytes(32)

    def _mac(self, replica: str, session_id: str) -> str:
        digest = hmac.new(self._key, f"{replica}\x00{session_id}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:12]).decode()

    def sign(self, replica: str, session_id: str) -> str:
        """The value for this replica and session (the session manager caches it: an HMAC costs ~3 µs)."""
        return f"{replica}.{self._mac(replica, session_id)}"

    def verify(self, value: str, session_id: str) -> str | None:
        """The replica named by a valid value, else None."""
        if not value.isascii():  # not ours (we sign in ASCII), and hmac would refuse to compare it
            return None
        replica, sep, mac = value.rpartition(".")
        if not sep or not replica:
            return None
        return replica if hmac.compare_digest(mac, self._mac(replica, session_id)) else None
