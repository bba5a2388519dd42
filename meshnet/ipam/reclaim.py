"""rmpeer: taking over the ranges of a peer that is gone, safe to run twice or on two peers.

Weave's rmpeer simply took the dead peer's ranges; run on two hosts at once it made two
owners, and the peers then dropped each other's connections. Here:

1. `take`: every token the dead peer owns in our ring becomes ours at `version + 1` with the
   reclaim flag set. The flag makes the entry lose to a normal entry of the same version (a
   change the dead peer made that we had not seen) and, between two reclaims, the lowest
   owner name wins (`ring.py`). Flagged ranges are never used.
2. `start`: we send our ring to every reachable peer with `ask`, and wait for each to answer
   with its own ring (`re`), re-asking every `ASK_RESEND` seconds. Peers that become
   unreachable are not waited for.
3. `advance`, once all have answered: every answer was a ring that had merged our claim, so
   a better claim (another rmpeer by a lower-named peer, or the dead peer's own newer entry)
   has reached us and won, or nobody reachable believes anything but ours. Tokens the dead
   peer still owns (its newer entries) are taken again (back to 2); otherwise the flagged
   tokens that are still ours are confirmed: version + 1 again, flag cleared, usable.

The targets are persisted, and the flags live in the ring, so a restart resumes at 2.
What this cannot fix: rmpeer of a peer that is alive on the other side of a partition (an
operator error; reported as a conflict when the sides meet), or of a peer whose last
donation reached only peers that are unreachable too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import msgpack

from meshnet.ipam.ring import Entry, Ring, host_count
from meshnet.ipam.store import Changes

ASK_RESEND = 2.0  # s between re-asks of peers that have not answered


@dataclass
class Round:
    id: int
    waiting: set[bytes]  # reachable peers whose answer we still need
    resend_at: float


@dataclass
class Step:
    changes: Changes = field(default_factory=Changes)  # commit, then apply to the ring
    ask: list[bytes] = field(default_factory=list)  # then send our state with ask=round.id
    confirmed: bool = False  # then broadcast our state
    notes: list[str] = field(default_factory=list)  # conflicts to report


class Reclaimer:
    def __init__(self, me: bytes, stored: bytes | None):
        self.me = me
        self.targets: set[bytes] = set(msgpack.unpackb(stored)) if stored else set()
        self.round: Round | None = None

    def take(self, ring: Ring, peers: Iterable[bytes]) -> tuple[int, Changes]:
        """Flag-take every token of `peers`. Returns (addresses taken, changes to commit)."""
        changes = Changes()
        taken = 0
        for peer in peers:
            for start, end, e in ring.owned(peer):
                changes.ring[start] = Entry(self.me, e.version + 1, host_count(start, end, ring.universe), reclaim=True)
                taken += end - start
                self.targets.add(peer)
        changes.meta["rmpeer"] = self._stored()
        return taken, changes

    def start(self, reachable: set[bytes], now: float, round_id: int) -> list[bytes]:
        """Begin (or restart) a confirmation round; returns the peers to ask."""
        self.round = Round(round_id, set(reachable), now + ASK_RESEND)
        return sorted(self.round.waiting)

    def answered(self, src: bytes, re: int) -> None:
        if self.round is not None and re == self.round.id:
            self.round.waiting.discard(src)

    def unconfirmed(self, ring: Ring) -> list[int]:
        return [start for start, _, e in ring.owned(self.me) if e.reclaim]

    def advance(self, ring: Ring, reachable: set[bytes], now: float, new_id: Callable[[], int]) -> Step:
        """Move the reclaim along; `new_id` names a new round if one starts."""
        step = Step()
        for peer in sorted(self.targets & reachable):
            step.notes.append(f"peer {peer.hex()} was removed with rmpeer but is reachable; its reclaim is abandoned")
            self.targets.discard(peer)
            step.changes.meta["rmpeer"] = self._stored()
        if self.round is None:
            if self.unconfirmed(ring):  # we restarted while confirming
                _, step.changes = self.take(ring, [t for t in self.targets if ring.owned(t)])
                step.ask = self.start(reachable, now, new_id())
            elif self.targets:  # confirmed just before a crash, or the target came back
                self.targets.clear()
                step.changes.meta["rmpeer"] = None
            return step
        self.round.waiting &= reachable
        if self.round.waiting:
            if now >= self.round.resend_at:
                self.round.resend_at = now + ASK_RESEND
                step.ask = sorted(self.round.waiting)
            return step
        self.round = None
        again = [t for t in self.targets if ring.owned(t)]
        if again:  # the dead peer's own newer entries beat our claim: claim those
            _, step.changes = self.take(ring, again)
            step.ask = self.start(reachable, now, new_id())
            return step
        for start in self.unconfirmed(ring):
            e = ring.get(start)
            assert e is not None
            step.changes.ring[start] = Entry(self.me, e.version + 1, e.free)
        self.targets.clear()
        step.changes.meta["rmpeer"] = None
        step.confirmed = True
        return step

    def _stored(self) -> bytes | None:
        return msgpack.packb(sorted(self.targets)) if self.targets else None
