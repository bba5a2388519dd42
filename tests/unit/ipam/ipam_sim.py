"""A fake mesh for IPAM allocators: partitions, loss, duplication, crashes, and the checks.

`Net` holds one `Allocator` per live peer, each on its own `MemoryStore`, and moves their
outgoing messages. Connectivity is a partition into groups: a broadcast reaches the sender's
group, a unicast reaches its destination if it is in the group when delivered; everything
else is lost (the allocators must cope, through retries and anti-entropy).

`check_safety` is what must hold at every step; `settle` heals everything and runs the mesh
until it is quiet; `check_converged` is what must hold then.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from meshnet.ipam import Allocator, IpamError, Pending, Result
from meshnet.ipam.addr import parse_universe
from meshnet.testing.ipam_store import MemoryStore


def peer_name(i: int) -> bytes:
    return bytes([0xA0, i]) + bytes(14)


@dataclass
class Peer:
    name: bytes
    init: str
    store: MemoryStore
    alloc: Allocator
    held: dict[str, set[str]] = field(default_factory=dict)  # owner -> addresses we were given
    pending: dict[int, str] = field(default_factory=dict)  # request id -> owner


class Net:
    def __init__(self, universe: str, inits: list[str], *, seed: int = 0, names: list[bytes] | None = None):
        self.universe = universe
        self.block = parse_universe(universe)
        self.now = 0.0
        self.rng = random.Random(seed)
        self.peers: dict[bytes, Peer] = {}
        self.group: dict[bytes, int] = {}
        self.gone: set[bytes] = set()
        self.inflight: list[tuple[bytes, bytes, str, bytes]] = []  # (src, dst, "b"|"u", payload)
        self.errors: list[tuple[bytes, int, IpamError]] = []
        names = names or [peer_name(i) for i in range(len(inits))]
        for name, init in zip(names, inits):
            store = MemoryStore()
            self.peers[name] = Peer(name, init, store, self._start(name, init, store))
            self.group[name] = 0
        self.topology_changed()

    def _start(self, name: bytes, init: str, store: MemoryStore) -> Allocator:
        return Allocator(name=name, universe=self.universe, init=init, store=store, now=self.now,
                         rng=random.Random(self.rng.getrandbits(32)))

    # ---- connectivity -------------------------------------------------------------------

    def connected(self, a: bytes, b: bytes) -> bool:
        return a in self.peers and b in self.peers and self.group[a] == self.group[b]

    def reachable(self, name: bytes) -> set[bytes]:
        return {p for p in self.peers if p != name and self.connected(p, name)}

    def topology_changed(self) -> None:
        """Tell everyone who they can reach; the mesh then sends full state to neighbours."""
        for name in sorted(self.peers):
            self.send(name, self.peers[name].alloc.on_peers_changed(self.reachable(name), now=self.now))
        self.gossip()

    def partition(self, seed: int) -> None:
        rnd = random.Random(seed)
        for name in self.peers:
            self.group[name] = rnd.randrange(2)
        self.topology_changed()

    def heal(self) -> None:
        for name in self.peers:
            self.group[name] = 0
        self.topology_changed()

    def healed(self) -> bool:
        return len(set(self.group[p] for p in self.peers)) <= 1

    # ---- messages -----------------------------------------------------------------------

    def send(self, src: bytes, outs: list) -> None:
        peer = self.peers[src]
        self._collect(peer)
        for out in outs:
            if out[0] == "broadcast":
                for dst in sorted(self.reachable(src)):
                    self.inflight.append((src, dst, "b", out[1]))
            else:
                _, dst, payload = out
                assert dst != src
                if self.connected(src, dst):
                    self.inflight.append((src, dst, "u", payload))

    def _collect(self, peer: Peer) -> None:
        for req_id, outcome in peer.alloc.completed():
            owner = peer.pending.pop(req_id, None)
            if owner is None:
                continue
            if isinstance(outcome, Result):
                peer.held.setdefault(owner, set()).add(outcome.address)
            else:
                self.errors.append((peer.name, req_id, outcome))

    def deliver(self, count: int | None = None) -> None:
        steps = 0
        while self.inflight and (count is None or steps < count):
            steps += 1
            src, dst, kind, payload = self.inflight.pop(self.rng.randrange(len(self.inflight)))
            if not self.connected(src, dst):
                continue  # the link went down with it
            alloc = self.peers[dst].alloc
            handler = alloc.on_broadcast if kind == "b" else alloc.on_unicast
            self.send(dst, handler(src, payload, now=self.now))
            assert steps < 200_000, "message storm"

    def duplicate(self, count: int) -> None:
        for _ in range(min(count, len(self.inflight))):
            self.inflight.append(self.rng.choice(self.inflight))

    def gossip(self) -> None:
        for name in sorted(self.peers):
            self.send(name, [("broadcast", self.peers[name].alloc.full_state())])

    def advance(self, dt: float) -> None:
        self.now += dt
        for name in sorted(self.peers):
            alloc = self.peers[name].alloc
            deadline = alloc.next_deadline()
            if deadline is not None and deadline <= self.now:
                self.send(name, alloc.tick(now=self.now))
                after = alloc.next_deadline()
                assert after is None or after > self.now, "a deadline that tick() does not clear: busy loop"

    # ---- the local API, with bookkeeping ------------------------------------------------

    def allocate(self, name: bytes, owner: str, subnet: str | None = None) -> Result | Pending | IpamError:
        peer = self.peers[name]
        try:
            outcome, outs = peer.alloc.allocate(owner, subnet=subnet, now=self.now)
        except IpamError as exc:
            return exc
        self._record(peer, owner, outcome)
        self.send(name, outs)
        return outcome

    def claim(self, name: bytes, owner: str, address: str) -> Result | Pending | IpamError:
        peer = self.peers[name]
        try:
            outcome, outs = peer.alloc.claim(owner, address, now=self.now)
        except IpamError as exc:
            return exc
        self._record(peer, owner, outcome)
        self.send(name, outs)
        return outcome

    def _record(self, peer: Peer, owner: str, outcome: Result | Pending) -> None:
        if isinstance(outcome, Result):
            peer.held.setdefault(owner, set()).add(outcome.address)
        else:
            peer.pending[outcome.request_id] = owner

    def release(self, name: bytes, owner: str) -> None:
        peer = self.peers[name]
        outs = peer.alloc.release(owner, now=self.now)
        peer.held.pop(owner, None)
        peer.pending = {r: o for r, o in peer.pending.items() if o != owner}
        self.send(name, outs)

    def restart(self, name: bytes) -> None:
        """kill -9 and start again on what the store committed."""
        peer = self.peers[name]
        peer.store = peer.store.crash()
        self.inflight = [m for m in self.inflight if name not in (m[0], m[1])]
        peer.alloc = self._start(name, peer.init, peer.store)
        peer.pending.clear()  # the callers of a dead router get connection errors
        self.send(name, peer.alloc.on_peers_changed(self.reachable(name), now=self.now))
        self.send(name, [("broadcast", peer.alloc.full_state())])
        for other in sorted(self.reachable(name)):
            self.send(other, [("unicast", name, self.peers[other].alloc.full_state())])

    def leave(self, name: bytes, *, reset: bool) -> None:
        """The peer goes for good; with `reset` it first hands its ranges over."""
        peer = self.peers[name]
        if reset:
            try:
                self.send(name, peer.alloc.reset(now=self.now))
            except IpamError:
                pass
            mine = [m for m in self.inflight if m[0] == name]  # the router flushes before exiting
            self.inflight = [m for m in self.inflight if m[0] != name]
            for src, dst, kind, payload in mine:
                if self.connected(src, dst):
                    alloc = self.peers[dst].alloc
                    handler = alloc.on_broadcast if kind == "b" else alloc.on_unicast
                    self.send(dst, handler(src, payload, now=self.now))
        self.inflight = [m for m in self.inflight if name not in (m[0], m[1])]
        del self.peers[name]
        del self.group[name]
        self.gone.add(name)
        self.topology_changed()

    def rmpeer(self, name: bytes, target: bytes) -> int | IpamError:
        try:
            count, outs = self.peers[name].alloc.rmpeer(target, now=self.now)
        except IpamError as exc:
            return exc
        self.send(name, outs)
        return count

    # ---- running to quiet ---------------------------------------------------------------

    def settle(self, *, rounds: int = 300) -> None:
        """Heal, then run until every ring agrees, nothing is in flight and nobody is busy."""
        self.heal()
        for i in range(rounds):
            self.deliver()
            if i % 3 == 0:
                self.gossip()
                self.deliver()
            if self.converged() and not self.inflight and not self.busy():
                return
            self.advance(1.0)
        raise AssertionError(f"no convergence after {rounds} rounds: {self.describe()}")

    def busy(self) -> bool:
        return any(p.alloc.requests or p.alloc.reclaim.round or p.alloc.seeker.want for p in self.peers.values())

    def converged(self) -> bool:
        rings = [p.alloc.ring for p in self.peers.values()]
        return all(r is not None for r in rings) and all(r == rings[0] for r in rings)

    def describe(self) -> str:
        lines = []
        for name, p in sorted(self.peers.items()):
            a = p.alloc
            lines.append(
                f"{name.hex()[:4]} ring={'yes' if a.ring else 'no'} req={len(a.requests)} "
                f"want={a.seeker.want} round={a.reclaim.round} status={a.status()['waiting']!r}"
            )
        return "\n".join(lines)

    # ---- the properties -----------------------------------------------------------------

    def check_safety(self) -> None:
        """No address owned or handed out twice; every address handed out lies in its own range."""
        owned: list[tuple[int, int, bytes]] = []
        handed: dict[int, bytes] = {}
        for name, p in self.peers.items():
            a = p.alloc
            assert not a.conflicts, (name.hex(), list(a.conflicts))
            if a.ring is None:
                assert len(a.space) == 0
                continue
            tokens = [start for start, _, _ in a.ring.ranges()]
            assert tokens[0] == self.block.start and tokens == sorted(set(tokens))
            for start, end, e in a.ring.owned(name):
                if not e.reclaim:
                    owned.append((start, end, name))
            for addr, owner in a.space.items():
                assert addr not in handed, f"{addr} handed out by {handed[addr].hex()} and {name.hex()}"
                handed[addr] = name
                e = a.ring.get(a.ring.token_at(addr))
                assert e is not None and e.owner == name and not e.reclaim
            # what callers were told is still held (across restarts too)
            for owner, addresses in p.held.items():
                assert addresses <= set(a.addresses(owner)), (owner, addresses, a.addresses(owner))
        owned.sort()
        for (s1, e1, n1), (s2, e2, n2) in zip(owned, owned[1:]):
            assert e1 <= s2, f"[{s1},{e1}) of {n1.hex()} overlaps [{s2},{e2}) of {n2.hex()}"

    def check_converged(self) -> None:
        assert self.converged(), self.describe()
        ring = next(iter(self.peers.values())).alloc.ring
        assert ring is not None
        covered = sum(end - start for start, end, _ in ring.ranges())
        assert covered == self.block.end - self.block.start
        for p in self.peers.values():
            assert not p.alloc.requests, self.describe()
