"""rmpeer: taking over the ranges of a peer that is gone, safe to run twice or on two peers.

Weave's rmpeer simply took the dead peer's ranges; run on two hosts at once it made two
owners, and the peers then dropped each other's connections. Here:

1. `begin`: every token the dead peer owns in our ring becomes ours at `version + 1` with
   the reclaim flag set. The flag makes the entry lose to a normal entry of the same version
   (a change the dead peer made that we had not seen) and, between two reclaims, the lowest
   owner name wins (`ring.py`). Flagged ranges are never used. Then we send our ring to
   every reachable peer with `ask`, and wait for each to answer with its own ring (`re`),
   re-asking every `ASK_RESEND` seconds. The round runs even when the peer owns nothing in
   our ring: another peer may have donated to it in a change that has not reached us (it
   asked for space, then died or reset), and the answers are what bring that change here.
2. A peer that becomes unreachable meanwhile is still waited for: it may be a second
   reclaimer cut off by a partition, and confirming without its answer is how two owners
   would arise. If it is gone for good, `rmpeer` it too (on any peer): removed peers are
   gossiped (`gone` in `state`) and nobody waits for them.
3. `advance`, once all have answered: every answer was a ring that had merged our claim, so
   a better claim (another rmpeer by a lower-named peer, or the dead peer's own newer entry)
   has reached us and won, or none of those peers believes anything but ours. Tokens the
   dead peer still owns (its newer entries, or a donation to it we had not seen) are taken
   again (back to 1); otherwise the flagged tokens that are still ours are confirmed:
   version + 1 again, flag cleared, usable.

Targets and the peers waited for are persisted and the flags live in the ring, so a restart
resumes at 1; so does an rmpeer run before we had a ring, once one arrives (`defer`).
Removed peers (`Removed`) are persisted and gossiped too, bounded to the most recent
`MAX_GONE`.

No range stays with a removed peer, if every live peer was reachable when rmpeer ran: each
answer in 3 is a ring that already holds every donation its sender made to the dead peer,
and none comes later, because the ask carried the removal (`gone`), merged before the
answer, and a donor denies a removed peer's `want`. A round is only ever begun by rmpeer
(or resumed), never by the allocator on its own when it sees a removed peer's range: only
the operator can tell gone from cut off, and a reclaim begun inside one side of a split
mesh waits only for that side, so both sides could confirm it, or take a range the removed
peer handed on to a peer over there before it died.

What this cannot fix: rmpeer run while the mesh is partitioned, of a peer alive on the other
side (an operator error, reported as a conflict when the sides meet) or concurrently with a
reclaimer on the other side; or of a peer whose last donation reached only peers that are
gone too. A range of the removed peer that only a peer unreachable during the whole round
knew of stays the removed peer's (status: `unreachable_owners`) until rmpeer runs again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import msgpack

from meshnet.ipam.ring import Entry, Ring, host_count, next_version
from meshnet.ipam.store import Changes
from meshnet.ipam.wire import MAX_GONE

ASK_RESEND = 2.0  # s between re-asks of peers that have not answered


@dataclass
class Round:
    id: int
    members: set[bytes]  # everyone asked since the reclaim began (reachable when asked first)
    waiting: set[bytes]  # members whose answer to this round we still need
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
        saved = msgpack.unpackb(stored) if stored else {}
        self.targets: set[bytes] = set(saved.get("t", ()))
        self._members: set[bytes] = set(saved.get("w", ()))  # of a round cut short by a crash
        self.round: Round | None = None

    def meta(self) -> bytes | None:
        """What the store keeps: the targets, and whom their confirmation must hear from."""
        if not self.targets and self.round is None:
            return None
        members = self.round.members if self.round else self._members
        return msgpack.packb({"t": sorted(self.targets), "w": sorted(members)}, use_bin_type=True)

    def begin(self, ring: Ring, peers: Iterable[bytes], reachable: set[bytes], now: float, round_id: int) -> Step:
        """Flag-take every token of `peers` and start a (new) confirmation round.

        The round asks everyone asked before since the reclaim began, not only who is
        reachable now: one of them may be a concurrent reclaimer cut off since.
        """
        step = Step()
        for peer in peers:
            self.targets.add(peer)  # even owning nothing here: the answers may show more
            for start, end, e in ring.owned(peer):
                free = host_count(start, end, ring.universe)
                step.changes.ring[start] = Entry(self.me, next_version(e.version), free, reclaim=True)
        members = (set(reachable) | self._members | (self.round.members if self.round else set())) - self.targets
        self.round = Round(round_id, members, set(members), now + ASK_RESEND)
        step.changes.meta["rmpeer"] = self.meta()
        step.ask = sorted(members & reachable)
        return step

    def defer(self, peer: bytes, reachable: set[bytes]) -> None:
        """rmpeer before we have a ring: `begin` once one arrives (`advance`), waiting then
        for everyone reachable now too. The caller persists `meta()`."""
        self.targets.add(peer)
        self._members |= set(reachable) - self.targets

    def answered(self, src: bytes, re: int) -> None:
        if self.round is not None and re == self.round.id:
            self.round.waiting.discard(src)

    def gone(self, peer: bytes) -> None:
        """The operator says `peer` is gone (rmpeer): stop waiting for it."""
        self._members.discard(peer)
        if self.round is not None:
            self.round.members.discard(peer)
            self.round.waiting.discard(peer)

    def unconfirmed(self, ring: Ring) -> list[int]:
        return [start for start, _, e in ring.owned(self.me) if e.reclaim]

    def advance(
        self, ring: Ring, reachable: set[bytes], gone: Iterable[bytes], now: float, new_id: Callable[[], int]
    ) -> Step:
        """Move the reclaim along. `gone`: peers removed with rmpeer anywhere, not waited for;
        `new_id` names a new round if one starts."""
        for peer in gone:
            self.gone(peer)
        notes = []
        for peer in sorted(self.targets & reachable):
            notes.append(f"peer {peer.hex()} was removed with rmpeer but is reachable; its reclaim is abandoned")
            self.targets.discard(peer)
        step = self._advance(ring, reachable, now, new_id)
        step.notes = notes
        if notes and "rmpeer" not in step.changes.meta:
            step.changes.meta["rmpeer"] = self.meta()
        return step

    def _advance(self, ring: Ring, reachable: set[bytes], now: float, new_id: Callable[[], int]) -> Step:
        if self.round is None:
            if self.targets or self.unconfirmed(ring):  # we restarted while confirming, or deferred
                return self.begin(ring, sorted(self.targets), reachable, now, new_id())
            step = Step()
            if self._members:  # the targets came back before the round began again
                self._members.clear()
                step.changes.meta["rmpeer"] = None
            return step
        if self.round.waiting:
            step = Step()
            if now >= self.round.resend_at:
                self.round.resend_at = now + ASK_RESEND
                step.ask = sorted(self.round.waiting & reachable)
            return step
        again = [t for t in self.targets if ring.owned(t)]
        if again:  # the dead peer's own newer entries beat our claim: claim those
            return self.begin(ring, again, reachable, now, new_id())
        self.round = None
        self._members.clear()
        step = Step(confirmed=True)
        for start in self.unconfirmed(ring):
            e = ring.get(start)
            assert e is not None
            step.changes.ring[start] = Entry(self.me, next_version(e.version), e.free)
        self.targets.clear()
        step.changes.meta["rmpeer"] = None
        return step


class Removed:
    """Peers removed with rmpeer, here or anywhere, most recent last: nobody waits for them.

    Persisted (meta "gone") and gossiped (`gone` in `state`), bounded to `MAX_GONE`.
    """

    def __init__(self, stored: bytes | None):
        self._peers: dict[bytes, None] = dict.fromkeys(msgpack.unpackb(stored or b"\x90"))

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._peers)

    def __contains__(self, peer: object) -> bool:
        return peer in self._peers

    def __len__(self) -> int:
        return len(self._peers)

    def add(self, peers: Iterable[bytes]) -> None:
        for peer in peers:
            self._peers.pop(peer, None)
            self._peers[peer] = None  # most recent last
        while len(self._peers) > MAX_GONE:
            del self._peers[next(iter(self._peers))]

    def back(self, reachable: set[bytes]) -> set[bytes]:
        """The removed peers that are reachable again. They stay removed (a tombstone): such
        a peer must reset before it may allocate, and every router reports it until then."""
        return {p for p in self._peers if p in reachable}

    def meta(self) -> bytes | None:
        """What the store keeps under "gone"."""
        return msgpack.packb(list(self._peers), use_bin_type=True) if self._peers else None
