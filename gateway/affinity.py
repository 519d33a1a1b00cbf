"""The signed affinity value: which upstream holds a session, unforgeable by the client."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

_CACHE_SIZE = 65536  # signed values remembered; bounded memory (~10 MB at most)


class AffinitySigner:
    """Signs `<replica>.<mac>` over the replica name and the session id with `session.secret`.

    Binding the session id means a value copied from another conversation does not verify.
    """

    def __init__(self, secret: str) -> None:
        # Unset: random per process, so replicas must share one through configuration.
        self._key = secret.encode() if secret else secrets.token_bytes(32)
        self._signed: dict[tuple[str, str], str] = {}

    def _mac(self, replica: str, session_id: str) -> str:
        digest = hmac.new(self._key, f"{replica}\x00{session_id}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:12]).decode()

    def sign(self, replica: str, session_id: str) -> str:
        # Every response carries the value: remember recent ones (an HMAC costs ~3 µs, a dict hit ~0.1).
        key = (replica, session_id)
        value = self._signed.get(key)
        if value is None:
            if len(self._signed) >= _CACHE_SIZE:
                self._signed.clear()
            value = self._signed[key] = f"{replica}.{self._mac(replica, session_id)}"
        return value

    def verify(self, value: str, session_id: str) -> str | None:
        """The replica named by a valid value, else None."""
        replica, sep, mac = value.rpartition(".")
        if not sep or not replica:
            return None
        return replica if hmac.compare_digest(mac, self._mac(replica, session_id)) else None
