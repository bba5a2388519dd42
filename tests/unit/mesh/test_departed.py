"""Departed peers: a router that left is kept, with its last entry and underlay address, for
the grace period (so its kernel data path keeps being used while it restarts), and no longer."""

from meshnet.mesh.core import Changed, MeshCore
from meshnet.mesh.departed import DepartedPeers
from meshnet.mesh.topology import PeerEntry
from meshnet.testing.gossipnet import GossipNet

EPS = [("02:00:00:00:00:01", ("10.32.0.5/12",), "web")]  # as decoded: tuples (mesh/schema.py)


def mesh(grace: float = 60.0) -> GossipNet:
    net = GossipNet(3, seed=7, departed_grace=grace)
    for a, b in ((0, 1), (0, 2), (1, 2)):
        net.connect(a, b)
    net._emit(0, net.cores[0].set_data("eps", EPS, now=net.now))
    net.settle()
    return net


def crash(net: GossipNet, i: int) -> None:
    """kill -9: every connection of core i closes at once."""
    for j in net.neighbours(i):
        net.disconnect(i, j)
    net.settle()


def test_a_peer_that_leaves_is_kept_with_its_address_and_endpoints_for_the_grace_period():
    net = mesh()
    gone = net.cores[0].name
    crash(net, 0)
    for i in (1, 2):
        d = net.cores[i].departed.get(gone)
        assert d is not None and d.ip == "10.0.0.0" and d.entry.data["eps"] == EPS
        assert gone not in net.cores[i].topology.reachable()
        assert net.cores[i].next_deadline() <= d.since + 60
    net.advance(59.0)
    assert gone in net.cores[1].departed
    events = net.cores[1].tick(now=net.now + 1.5)
    assert gone not in net.cores[1].departed and any(isinstance(e, Changed) for e in events)


def test_a_peer_back_within_grace_is_live_again_not_departed():
    net = mesh()
    gone = net.cores[0].name
    crash(net, 0)
    net.advance(5.0)
    net.connect(0, 1)  # restarted (the test's core keeps its name; a new uid changes nothing here)
    net.settle()
    assert gone not in net.cores[1].departed and gone in net.cores[1].topology.reachable()


def test_only_peers_we_were_connected_to_are_kept_and_rmpeer_ends_it():
    net = GossipNet(3, seed=3, departed_grace=60.0)
    net.connect(0, 1)
    net.connect(1, 2)  # 0 and 2 only know each other through 1
    net.settle()
    crash(net, 1)
    assert net.cores[0].departed.get(net.cores[1].name) is not None
    assert net.cores[0].departed.get(net.cores[2].name) is None  # no address to reach it at
    assert net.cores[0].forget_departed({net.cores[1].name}) == [Changed()]
    assert len(net.cores[0].departed) == 0 and net.cores[0].forget_departed({net.cores[1].name}) == []


def test_no_grace_keeps_nothing():
    net = mesh(grace=0.0)
    crash(net, 0)
    assert len(net.cores[1].departed) == 0


def test_the_table_is_bounded_oldest_departure_first():
    table = DepartedPeers(60.0, limit=2)
    entries = [PeerEntry(bytes([i]) * 16, f"p{i}", i, 1, 6783, 6783) for i in range(3)]
    for t, e in enumerate(entries):
        table.left(e, f"192.168.0.{t}", float(t))
    assert [d.entry.name for d in table] == [entries[1].name, entries[2].name]
    assert table.next_deadline() == 61.0
    assert table.expire(61.0) == [entries[1].name] and table.expire(100.0) == [entries[2].name]
    assert table.next_deadline() is None


def test_a_core_without_grace_needs_no_argument():
    core = MeshCore(name=b"a" * 16, nick="a", uid=1, port=1, udp_port=1, now=0.0)
    assert core.departed.grace == 0 and core.next_deadline() > 0
