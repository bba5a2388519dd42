"""The graph is patched as entries change (O(degree) per change); it must always equal the
graph rebuilt from the entries: property-tested over random merges, updates and removals."""

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from meshnet.mesh.topology import Link, PeerEntry, Topology

NAMES = [bytes([i]) * 16 for i in range(8)]


def entry(name: bytes, version: int, peers) -> PeerEntry:
    return PeerEntry(name, name.hex()[:4], 1, version, 6783, 6783, tuple(Link(p, "10.0.0.1", True) for p in sorted(peers)))


def rebuilt(topo: Topology) -> Topology:
    fresh = Topology(topo.local)
    fresh.entries = dict(topo.entries)
    return fresh


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 60))
def test_the_patched_graph_is_the_rebuilt_graph(seed, steps):
    rng = random.Random(seed)
    topo = Topology(entry(NAMES[0], 1, ()))
    topo.graph()  # cached from the start, so every change patches it
    versions = {n: 1 for n in NAMES}
    for _ in range(steps):
        name = rng.choice(NAMES)
        peers = rng.sample(NAMES, rng.randrange(len(NAMES)))
        action = rng.random()
        if name == NAMES[0]:
            topo.update_local(now_ms=0, links=entry(name, 0, peers).links)
        elif action < 0.15:
            topo.remove(name)
        else:
            versions[name] += 1
            topo.merge([entry(name, versions[name], peers)])
        fresh = rebuilt(topo)
        assert topo.graph() == fresh.graph()
        assert topo.routes() == fresh.routes()  # the trees too (their cache is dropped)
