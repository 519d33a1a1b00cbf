"""Which bot replica a request goes to: the session's pinned one, the one its affinity value names, or the
least busy; and where a session moves when its replica is gone."""

from __future__ import annotations

from gateway.errors import ReplicaUnavailable
from gateway.sessions.affinity import AffinitySigner
from gateway.sessions.carriage import Carried
from gateway.sessions.turn import Turn
from gateway.upstream.upstreams import Replica, Upstreams


class ReplicaChoice:
    """Places each turn on a replica (upstream.strict_affinity: a session never moves)."""

    def __init__(self, upstreams: Upstreams, signer: AffinitySigner, *, strict_affinity: bool) -> None:
        self.upstreams = upstreams
        self.signer = signer
        self.strict_affinity = strict_affinity

    def affinity_replica(self, carried: Carried) -> Replica | None:
        """The replica the client's signed affinity value names, if it verifies and is up."""
        if not carried.affinity or not carried.session_id:
            return None
        replica = self.upstreams.get(self.signer.verify(carried.affinity, carried.session_id))
        return replica if replica is not None and self.upstreams.is_up(replica) else None

    def place(self, turn: Turn) -> bool:
        """Choose the replica: the pinned one; the affinity value's for an id the store lost; else the least
        busy. False: the live session's replica is gone, so the session must move (repin)."""
        if turn.live or (turn.ended and turn.pinned_name):
            replica = self.upstreams.get(turn.pinned_name)
            if replica is None:
                replica = self.affinity_replica(turn.carried)
            if replica is not None and (self.upstreams.is_up(replica) or len(self.upstreams.replicas) == 1):
                turn.replica = replica
                return True
            if self.strict_affinity:
                raise ReplicaUnavailable("The bot replica holding this session is unavailable.")
            if turn.live:
                return False
        elif turn.adopting or turn.ended:  # an id the gateway does not know: where the client says it lives
            turn.replica = self.affinity_replica(turn.carried) or self.upstreams.choose()
            return True
        turn.replica = self.upstreams.choose()
        return True

    def can_repin(self, turn: Turn) -> bool:
        """Whether a failed live session may move to another replica (as a new session, reason upstream)."""
        return (turn.live or turn.adopting) and not self.strict_affinity and len(self.upstreams.replicas) > 1

    def instead_of(self, failed: Replica | None) -> Replica:
        """Where a session moves from `failed`: an up replica before a down one, then the least busy."""
        candidates = [r for r in self.upstreams.replicas if r is not failed]
        return min(candidates, key=lambda r: (not self.upstreams.is_up(r), r.in_flight))
