"""`--ipalloc-init`: how a peer gets its first ring.

  consensus=N   the first peers in consensus mode agree (Paxos, `paxos.py`) on the list of
                peers the range is split among, once a quorum of N//2+1 of them is known;
  seed=A,B,...  the range is split among exactly these peers (32-hex-digit names), no
                agreement needed, but every peer must be given the same list;
  observer      takes no space in the split and waits for a ring from the others.

Whatever the mode, a ring learned from a peer wins over making one, and a ring persisted in
the state dir wins over all of them.

`Bootstrap` is the allocator's state on the way to its first ring: the mode, the consensus
while it runs, and whose states reached us. Each `step` says what the allocator must do
(commit and gossip our Paxos entry, adopt the chosen ring); the allocator owns the ring and
the store. Once any ring is adopted the consensus is over (`done`).
"""

from __future__ import annotations

from dataclasses import dataclass

from meshnet.ipam.addr import Block
from meshnet.ipam.errors import IpamConfigError
from meshnet.ipam.paxos import Acceptor, Consensus
from meshnet.ipam.ring import NAME_LEN, Ring, genesis_id
from meshnet.ipam.wire import PaxosData

MAX_CONSENSUS = 100_000  # a sanity bound on N


@dataclass(frozen=True, slots=True)
class InitMode:
    kind: str  # "consensus" | "seed" | "observer"
    n: int = 0
    seeds: tuple[bytes, ...] = ()

    def __str__(self) -> str:
        if self.kind == "consensus":
            return f"consensus={self.n}"
        if self.kind == "seed":
            return "seed=" + ",".join(s.hex() for s in self.seeds)
        return self.kind


def parse_init(text: object) -> InitMode:
    """Parse `--ipalloc-init`. Raises IpamConfigError with what is wrong and what is expected."""
    usage = "expected consensus=N, seed=PEER,PEER,... (32-hex-digit peer names) or observer"
    if not isinstance(text, str):
        raise IpamConfigError(f"--ipalloc-init: {usage}")
    kind, sep, arg = text.strip().partition("=")
    if kind == "observer" and not sep:
        return InitMode("observer")
    if kind == "consensus" and sep:
        if not arg.isdigit() or not 1 <= int(arg) <= MAX_CONSENSUS:
            raise IpamConfigError(f"--ipalloc-init consensus=N: N must be a whole number >= 1, got {arg!r}")
        return InitMode("consensus", n=int(arg))
    if kind == "seed" and sep:
        seeds = []
        for item in arg.split(","):
            item = item.strip().lower()
            try:
                name = bytes.fromhex(item)
            except ValueError:
                name = b""
            if len(name) != NAME_LEN:
                raise IpamConfigError(f"--ipalloc-init seed: {item!r} is not a 32-hex-digit peer name")
            seeds.append(name)
        if len(set(seeds)) != len(seeds):
            raise IpamConfigError("--ipalloc-init seed: a peer is listed twice")
        return InitMode("seed", seeds=tuple(sorted(seeds)))
    raise IpamConfigError(f"--ipalloc-init {text!r}: {usage}")


def seed_ring(universe: Block, seeds: tuple[bytes, ...]) -> Ring:
    return Ring.split(universe, seeds, genesis_id("seed", universe, seeds))


def consensus_ring(universe: Block, chosen: tuple[bytes, ...]) -> Ring:
    return Ring.split(universe, chosen, genesis_id("consensus", universe, chosen))


@dataclass
class Step:
    """What one bootstrap step asks of the allocator, in this order."""

    note: str | None = None  # a conflict to report
    held: bool = False  # consensus held (see `Bootstrap.held`): nothing else was done
    paxos: bytes | None = None  # our acceptor entry changed: commit it (meta "paxos"), then gossip it
    ring: Ring | None = None  # the value was chosen: adopt this ring, then gossip it


class Bootstrap:
    def __init__(self, me: bytes, universe: Block, mode: InitMode):
        self.me = me
        self.universe = universe
        self.mode = mode
        self.consensus: Consensus | None = None  # runs while there is no ring, in consensus mode
        self.mismatch: str | None = None  # another peer bootstraps with another consensus N
        self.heard: set[bytes] = set()  # peers whose IPAM state reached us: consensus waits for all reachable

    def start(self, paxos: bytes | None) -> Ring | None:
        """No ring was stored: the seed ring to adopt, or None. In consensus mode the
        consensus starts from our persisted acceptor entry (`paxos`)."""
        if self.mode.kind == "seed":
            return seed_ring(self.universe, self.mode.seeds)
        if self.mode.kind == "consensus":
            self.consensus = Consensus(self.me, self.mode.n, Acceptor.from_bytes(paxos))
        return None

    def done(self) -> None:
        """A ring was adopted: it wins, the consensus is over."""
        self.consensus = None

    def reason(self) -> str:
        """Why a request waits while there is no ring."""
        if self.consensus is not None:
            return self.consensus.reason()
        if self.mode.kind == "observer":
            return "observer: waiting for the allocation ring from the other peers"
        return "waiting for the allocation ring from the other peers"

    def held(self, reachable: set[bytes]) -> bool:
        """Consensus waits until every reachable peer told us its state (one may hold a ring
        already), and stops while peers disagree about N; messages, not time, end the wait."""
        return not reachable <= self.heard or self.mismatch is not None

    def merge(self, src: bytes, paxos: PaxosData) -> None:
        """A peer's consensus map, while ours runs."""
        if self.consensus is None:
            return
        if paxos.n == self.consensus.n:
            self.consensus.merge(paxos.states)
        else:
            # Harmless once any ring exists (it wins); until then it blocks bootstrap.
            self.mismatch = f"peer {src.hex()} runs consensus={paxos.n}, we run consensus={self.consensus.n}"

    def paxos_data(self) -> PaxosData | None:
        """Our consensus map, to gossip while the consensus runs."""
        if self.consensus is None:
            return None
        return PaxosData(self.consensus.n, dict(self.consensus.states))

    def step(self, *, now: float, reachable: set[bytes]) -> Step:
        """Move the consensus along; only while it runs (`consensus` is set)."""
        consensus = self.consensus
        assert consensus is not None
        step = Step()
        if len(consensus.states) > consensus.n:  # quorums may no longer intersect
            step.note = (
                f"{len(consensus.states)} peers run consensus={consensus.n}: N must count "
                "every peer that bootstraps by consensus, or two rings may be created"
            )
        if self.held(reachable):
            step.held = True  # not before every reachable peer has told us its state
            return step
        changed, chosen = consensus.step(now=now, reachable=reachable)
        if changed:
            step.paxos = consensus.own.to_bytes()
        if chosen is not None:
            step.ring = consensus_ring(self.universe, chosen)
        return step

    def deadline(self, reachable: set[bytes]) -> float | None:
        """When `step` has something to do; None while held (messages end that) or done."""
        if self.consensus is None or self.held(reachable):
            return None
        return self.consensus.next_deadline()
