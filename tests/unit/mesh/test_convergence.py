"""Property: whatever the wire does (loss, duplication, reordering, partitions), every
peer converges on the same topology once the network heals."""

import random

from meshnet.errors import Refusal

from hypothesis import given, settings
from hypothesis import strategies as st

from meshnet.testing.gossipnet import GossipNet


def random_graph(n: int, extra: int, rng: random.Random) -> list[tuple[int, int]]:
    edges = {(rng.randrange(i), i) for i in range(1, n)}  # a random spanning tree: connected
    for _ in range(extra):
        a, b = rng.sample(range(n), 2)
        edges.add((min(a, b), max(a, b)))
    return sorted(edges)


def heal_and_settle(net: GossipNet, edges) -> None:
    net.loss, net.dup = 0.0, 0.0
    net.partitioned.clear()
    for _ in range(40):  # 40 simulated seconds: anti-entropy runs every ~5 s per peer
        for a, b in edges:  # what the connection maker does: redial links that timed out
            net.connect(a, b)
        net.settle()
        net.advance(1.0)
        if net.converged():
            break
    net.settle()


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(3, 12),
    seed=st.integers(0, 2**32),
    loss=st.floats(0, 0.4),
    dup=st.floats(0, 0.3),
    reorder=st.booleans(),
    churn=st.integers(0, 6),
)
def test_every_peer_converges_after_healing(n, seed, loss, dup, reorder, churn):
    rng = random.Random(seed)
    net = GossipNet(n, seed=seed, loss=loss, dup=dup, reorder=reorder)
    edges = random_graph(n, extra=n // 2, rng=rng)
    for a, b in edges:
        net.connect(a, b)
    for round_ in range(12):
        if churn and rng.random() < 0.5:
            a, b = rng.choice(edges)
            net.partitioned.add(frozenset((a, b)))
        if rng.random() < 0.5:
            i = rng.randrange(n)
            net._emit(i, net.cores[i].set_data("eps", [[f"02:00:00:00:00:{round_:02x}", [], ""]], now=net.now))
        net.step()
        net.advance(1.0)
    heal_and_settle(net, edges)
    assert net.converged()
    for i, core in enumerate(net.cores):
        for other in net.cores:
            assert other.topology.entries[core.name].version == core.topology.local.version
        assert core.topology.reachable() == {c.name for c in net.cores} - {core.name}


def test_routes_follow_shortest_paths_and_relay_through_a_line():
    net = GossipNet(3, seed=1)
    net.connect(0, 1)
    net.connect(1, 2)
    net.settle()
    names = [c.name for c in net.cores]
    assert net.cores[0].topology.routes() == {names[1]: names[1], names[2]: names[1]}
    events = net.cores[0].unicast(names[2], "test", b"hello", now=net.now)
    net._emit(0, events)
    delivered = []
    original = net.cores[2].receive

    def spy(conn, message, now):
        out = original(conn, message, now=now)
        delivered.extend(e for e in out if type(e).__name__ == "Deliver")
        return out

    net.cores[2].receive = spy
    net.settle()
    assert [(d.src, d.payload, d.unicast) for d in delivered] == [(names[0], b"hello", True)]
    assert net.cores[1].counters["relayed"] == 1


def test_routes_avoid_peers_they_are_told_to_and_take_the_next_shortest_path():
    """0 - 1 - 3 and 0 - 2 - 4 - 3: with 1 avoided (a peer removed with rmpeer), 3 is
    reached through 2, and 1 is no destination."""
    net = GossipNet(5, seed=2)
    for a, b in ((0, 1), (1, 3), (0, 2), (2, 4), (4, 3)):
        net.connect(a, b)
    net.settle()
    n = [c.name for c in net.cores]
    topo = net.cores[0].topology
    assert topo.routes()[n[3]] == n[1]
    assert topo.routes(avoid=frozenset({n[1]})) == {n[2]: n[2], n[4]: n[2], n[3]: n[2]}
    assert topo.routes()[n[3]] == n[1]  # the cached view is untouched


def test_broadcast_reaches_everyone_once():
    net = GossipNet(8, seed=3)
    for a, b in random_graph(8, 6, random.Random(3)):
        net.connect(a, b)
    net.settle()
    seen = {i: [] for i in range(8)}
    for i, core in enumerate(net.cores):
        original = core.receive

        def spy(conn, message, now, i=i, original=original):
            out = original(conn, message, now=now)
            seen[i].extend(e.payload for e in out if type(e).__name__ == "Deliver")
            return out

        core.receive = spy
    net._emit(0, net.cores[0].broadcast("ch", b"news", now=net.now))
    net.settle()
    assert all(seen[i] == [b"news"] for i in range(1, 8)) and seen[0] == []


def test_dead_peer_noticed_within_ten_seconds():
    net = GossipNet(3, seed=5)
    net.connect(0, 1)
    net.connect(1, 2)
    net.connect(0, 2)
    net.settle()
    net.partitioned.add(frozenset((0, 1)))
    net.partitioned.add(frozenset((1, 2)))  # peer 1 goes silent
    for second in range(1, 11):
        net.advance(1.0)
        net.settle()
        if net.cores[1].name not in net.cores[0].topology.reachable():
            break
    assert second <= 10
    assert net.cores[1].name not in net.cores[2].topology.reachable()


def test_duplicate_name_refused():
    net = GossipNet(2, seed=7)
    net.connect(0, 1)
    clone = {**net.features(0), "uid": net.features(0)["uid"] + 1, "nick": "clone"}  # a cloned machine
    refused, _ = net.cores[1].add_connection(99, remote=clone, ip="10.9.9.9", outbound=False, now=net.now)
    assert refused is not None and refused.refusal is Refusal.DUPLICATE_NAME and "clone" in refused.reason
    assert net.cores[1].counters["refused"] == 1
    assert 99 not in net.cores[1].conns


def test_simultaneous_dial_keeps_exactly_one_connection():
    net = GossipNet(2, seed=9)
    a, b = net.cores
    ra, _ = a.add_connection(1, remote=net.features(1), ip="10.0.0.1", outbound=True, now=net.now)
    rb, _ = a.add_connection(2, remote=net.features(1), ip="10.0.0.1", outbound=False, now=net.now)
    rb2, _ = b.add_connection(3, remote=net.features(0), ip="10.0.0.0", outbound=False, now=net.now)
    ra2, _ = b.add_connection(4, remote=net.features(0), ip="10.0.0.0", outbound=True, now=net.now)
    # Both keep the connection dialled by the lower-named peer.
    a_keeps = {1} if a.name < b.name else {2}
    b_keeps = {3} if a.name < b.name else {4}
    assert set(a.conns) == a_keeps and set(b.conns) == b_keeps


def test_connection_limit():
    net = GossipNet(4, seed=8, conn_limit=2)
    assert net.connect(0, 1) and net.connect(0, 2)
    assert not net.connect(0, 3)
