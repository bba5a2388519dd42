"""Consensus bootstrap (`--ipalloc-init consensus=N`): single-decree Paxos over gossip.

The decision is the list of peers the first ring is split among. Every peer in consensus
mode is an acceptor and a learner, and may be a proposer. There are no Paxos messages as
such: each peer gossips the map `name -> Acceptor(promised, accepted, value)` of every
acceptor it has heard of, and only the named peer ever changes its own entry (so the per-name
merge, by `rank`, converges like the ring). Reading the map:

  * a proposer P asks for promises by promising its own ballot `(round, P)`;
  * an acceptor promises the highest ballot it sees anyone promise (promising more only
    restricts it), and accepts `(ballot, value)` once it sees that ballot's value in some
    entry while its own promise is that ballot;
  * when a quorum of entries promised P's ballot, P takes the value with the highest accepted
    ballot among them (standard Paxos), or, if none accepted anything, the sorted names of
    the consensus peers it knows (at least a quorum), and accepts it itself;
  * a value is chosen when a quorum of entries accepted the same ballot. Every learner then
    builds the same ring from it (`Ring.split`), so there is exactly one ring.

Quorum is N//2+1 of N; two quorums intersect as long as at most N peers run consensus, which
is why a mismatched N or more than N consensus peers is reported in status (weave #1559,
#786). The acceptor's own entry must be persisted before it is gossiped.

Who proposes. Once a quorum is known the lowest-named reachable consensus peer proposes,
after a grace period unless all N are known (so a cluster starting together splits among all
of them). Higher-named peers wait `STAGGER` seconds per rank before trying, and anyone who
sees another ballot promised backs off, so proposers rarely duel; Paxos keeps it safe when
they do.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import msgpack

from meshnet.ipam.ring import next_version

Ballot = tuple[int, bytes]
NO_BALLOT: Ballot = (0, b"")

GRACE = 3.0  # s to wait for the rest of the N once a quorum is known
RETRY = 4.0  # s a proposal may take before it is abandoned for a higher ballot
STAGGER = 2.0  # s of extra wait per rank among the reachable consensus peers


@dataclass(frozen=True, slots=True)
class Acceptor:
    promised: Ballot = NO_BALLOT
    accepted: Ballot = NO_BALLOT
    value: tuple[bytes, ...] = ()

    def rank(self) -> tuple[Ballot, Ballot, tuple[bytes, ...]]:
        return (self.promised, self.accepted, self.value)

    def to_bytes(self) -> bytes:
        """For the store (our own entry only, which we wrote ourselves)."""
        return msgpack.packb([*self.promised, *self.accepted, list(self.value)], use_bin_type=True)

    @classmethod
    def from_bytes(cls, data: bytes | None) -> Acceptor:
        if data is None:
            return cls()
        pr, pn, ar, an, value = msgpack.unpackb(data)
        return cls((pr, pn) if pr else NO_BALLOT, (ar, an) if ar else NO_BALLOT, tuple(value))


class Consensus:
    def __init__(self, me: bytes, n: int, own: Acceptor):
        self.me = me
        self.n = n
        self.quorum = n // 2 + 1
        self.states: dict[bytes, Acceptor] = {me: own}
        self._proposal: tuple[Ballot, float] | None = None  # our ballot and when we started it
        self._quorum_since: float | None = None
        self._not_before = 0.0  # no new proposal from us before this
        self._reachable: set[bytes] = set()

    @property
    def own(self) -> Acceptor:
        return self.states[self.me]

    def known(self) -> list[bytes]:
        return sorted(self.states)

    def reason(self) -> str:
        return f"awaiting consensus (quorum: {self.quorum}, known: {len(self.states)})"

    def merge(self, states: Mapping[bytes, Acceptor]) -> None:
        for name, state in states.items():
            cur = self.states.get(name)
            # Our own entry is ours alone and persisted; an echo of it is never newer.
            if name != self.me and (cur is None or state.rank() > cur.rank()):
                self.states[name] = state

    def step(self, *, now: float, reachable: set[bytes]) -> tuple[bool, tuple[bytes, ...] | None]:
        """Advance every role. Returns (own entry changed: persist then gossip it, chosen value)."""
        self._reachable = reachable
        if len(self.states) < self.quorum:
            self._quorum_since = None
        elif self._quorum_since is None:
            self._quorum_since = now
        before = own = self.own
        top = max(s.promised for s in self.states.values())
        if top > own.promised:
            own = replace(own, promised=top)
            if top[1] != self.me:
                self._not_before = max(self._not_before, now + RETRY)  # someone else is proposing
        if own.accepted < own.promised:
            for s in self.states.values():
                if s.accepted == own.promised:
                    own = replace(own, accepted=s.accepted, value=s.value)
                    break
        self.states[self.me] = own
        if self.chosen() is None:  # once decided, nothing is left to propose
            self._propose(now)
        return self.own != before, self.chosen()

    def _propose(self, now: float) -> None:
        if self._proposal is not None:
            ballot, started = self._proposal
            if self.own.promised > ballot:
                self._proposal = None  # outbid: back off, the other proposer is making progress
                self._not_before = max(self._not_before, now + RETRY)
            elif now >= started + RETRY:
                self._proposal = None  # stuck (lost gossip, a dead acceptor): retry higher
            elif self.own.accepted != ballot:
                promisers = [s for s in self.states.values() if s.promised == ballot]
                if len(promisers) >= self.quorum:
                    prior = max(promisers, key=lambda s: s.accepted)
                    value = prior.value if prior.accepted != NO_BALLOT else tuple(self.known())
                    self.states[self.me] = replace(self.own, accepted=ballot, value=value)
        ready = self._ready_at()
        if self._proposal is None and ready is not None and now >= ready:
            top = max(max(s.promised[0], s.accepted[0]) for s in self.states.values())
            ballot = (next_version(top), self.me)  # at the wire's bound it cannot outbid: it stalls, not crashes
            self.states[self.me] = replace(self.own, promised=ballot)
            self._proposal = (ballot, now)

    def _ready_at(self) -> float | None:
        """When we may start a proposal, or None while fewer than a quorum are known."""
        if self._quorum_since is None:
            return None
        start = self._quorum_since + (0.0 if len(self.states) >= self.n else GRACE)
        contenders = [x for x in self.known() if x == self.me or x in self._reachable]
        return max(start, self._not_before) + contenders.index(self.me) * STAGGER

    def next_deadline(self) -> float | None:
        if self._proposal is not None:
            return self._proposal[1] + RETRY
        return self._ready_at()

    def chosen(self) -> tuple[bytes, ...] | None:
        votes: dict[tuple[Ballot, tuple[bytes, ...]], int] = {}
        for s in self.states.values():
            if s.accepted != NO_BALLOT:
                votes[(s.accepted, s.value)] = votes.get((s.accepted, s.value), 0) + 1
        won = [key for key, count in votes.items() if count >= self.quorum]
        return max(won)[1] if won else None
