"""Which control connections a router keeps: a full mesh up to a size, a bounded graph beyond.

Up to `full_mesh_limit` peers (us included) every router connects to every other one, as
Weave did. Beyond it each router *chooses* `degree` peers and keeps a connection to each,
plus every connection someone else chose (it never closes what another peer dialled).
The choice is rendezvous hashing: peer p ranks every other reachable peer q by
`H(p || q)` and chooses the best `degree` it can reach (a peer whose dial keeps failing
is passed over for the next one: repair). Choices are sticky: a connection we dialled
stays one of our choices while its peer ranks among our best 2 x `degree`, so a newcomer
that ranks high does not make us drop a working connection for it. The graph is a random
`degree`-out graph: connected and of diameter about log(N)/log(2 x degree) with high
probability, degrees near 2 x `degree`. A join costs the joiner's own `degree`
connections and its seed's, nothing elsewhere.

A connection neither end chooses any more (we dialled it: a seed, a choice since
replaced, the full mesh of a mesh that outgrew the limit) is closed by the end that
dialled it, once it is `prune_after` seconds old and only while all our own choices
are connected, so the graph never thins below what the policy promises.

The data plane does not follow this graph: endpoints and underlay addresses are gossiped,
so every pair of peers gets a direct path where the underlay allows (see docs/scaling.md).
Sans-IO: the topology and the clock come in, addresses and connections go out.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable

from meshnet.mesh.targets import normalize
from meshnet.mesh.topology import Topology

DEFAULT_FULL_MESH_LIMIT = 64
DEFAULT_DEGREE = 4
PRUNE_AFTER = 30.0  # seconds a connection nobody chooses is kept (no flapping while views settle)


def rank(owner: bytes, peers: Iterable[bytes]) -> list[bytes]:
    """`peers` in `owner`'s order of preference (rendezvous hashing)."""
    return sorted(peers, key=lambda p: hashlib.blake2b(owner + p, digest_size=8).digest())


@dataclass(frozen=True)
class Plan:
    dial: dict[str, bytes]  # "ip:port" -> peer: the connections we want and lack
    prune: list[bytes]  # peers whose connection (we dialled) nobody needs any more
    wanted: frozenset[bytes]  # the peers we choose (everyone in a full mesh)
    full_mesh: bool
    recheck: float | None = None  # plan again then: a connection becomes old enough to prune
    later: frozenset[bytes] = frozenset()  # of `dial`: peers that want us too and dial first (lower-named)


class ConnectionPolicy:
    def __init__(self, *, full_mesh_limit: int = DEFAULT_FULL_MESH_LIMIT, degree: int = DEFAULT_DEGREE, prune_after: float = PRUNE_AFTER):
        assert full_mesh_limit >= 2 and degree >= 1
        self.full_mesh_limit = full_mesh_limit
        self.degree = degree
        self.prune_after = prune_after

    def full_mesh(self, topology: Topology) -> bool:
        return len(topology.reachable()) + 1 <= self.full_mesh_limit

    def choices(
        self,
        owner: bytes,
        peers: Iterable[bytes],
        *,
        failing: frozenset[bytes] = frozenset(),
        dialled: frozenset[bytes] = frozenset(),
    ) -> list[bytes]:
        """The `degree` peers `owner` chooses among `peers`: those it `dialled` that still
        rank among its best 2 x degree first, then the best of the rest; peers it `failing`
        to reach come last."""
        ranked = rank(owner, [p for p in peers if p != owner])
        ranked = [p for p in ranked if p not in failing] + [p for p in ranked if p in failing]
        chosen = [p for p in ranked[: 2 * self.degree] if p in dialled][: self.degree]
        for p in ranked:
            if len(chosen) >= self.degree:
                break
            if p not in chosen:
                chosen.append(p)
        return chosen

    def plan(
        self,
        topology: Topology,
        *,
        connected: dict[bytes, tuple[bool, float]],
        now: float,
        failing: frozenset[bytes] = frozenset(),
    ) -> Plan:
        """What to dial and what to close.

        Args:
            connected: {peer: (we dialled it, since when)} for our established connections.
            failing: peers whose last dial failed (passed over while others are left).
        """
        me = topology.local_name
        reachable = topology.reachable()
        addresses = peer_addresses(topology)
        recheck = None
        if len(reachable) + 1 <= self.full_mesh_limit:
            wanted = frozenset(reachable)
            prune: list[bytes] = []
            full = True
        else:
            dialled = frozenset(p for p, (outbound, _) in connected.items() if outbound)
            wanted = frozenset(self.choices(me, reachable, failing=failing, dialled=dialled))
            prune = self._prunable(me, reachable, wanted, connected, now)
            full = False
            young = [since + self.prune_after for p, (outbound, since) in connected.items() if outbound and p not in wanted and since + self.prune_after > now]
            recheck = min(young, default=None)
        dial = {}
        for peer in sorted(wanted - connected.keys()):
            ip = addresses.get(peer)
            entry = topology.entries.get(peer)
            if ip is not None and entry is not None:
                dial[normalize(f"{ip}:{entry.port}")] = peer
        # Of two peers that want each other, the lower-named dials: the other waits.
        everyone = reachable | {me}
        later = frozenset(p for p in dial.values() if p < me and (full or me in self.choices(p, everyone)))
        return Plan(dial, prune, wanted, full, recheck, later)

    def _prunable(
        self, me: bytes, reachable: set[bytes], wanted: frozenset[bytes], connected: dict[bytes, tuple[bool, float]], now: float
    ) -> list[bytes]:
        if not wanted <= connected.keys():
            return []  # our own choices first: never thin out before they are up
        everyone = reachable | {me}
        out = []
        for peer, (outbound, since) in sorted(connected.items()):
            if not outbound or peer in wanted or now - since < self.prune_after:
                continue
            if me in self.choices(peer, everyone):
                continue  # the other end chooses us: it would only dial again
            out.append(peer)
        return out


def peer_addresses(topology: Topology) -> dict[bytes, str]:
    """Every peer's underlay IP as its neighbours see it (the lowest-named observer's
    view wins, so every router derives the same map)."""
    out: dict[bytes, str] = {}
    for name in sorted(topology.entries):
        for link in topology.entries[name].links:
            out.setdefault(link.peer, link.ip)
    return out
