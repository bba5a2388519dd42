"""What a router stores of the gossiped topology: a peer's endpoint share, the mesh-wide
endpoint table and the peer table, each with its policy (docs/concepts.md, "Limits")."""

from meshnet.mesh.quota import Limits, Quota
from meshnet.mesh.topology import PeerEntry
from meshnet.testing.gossipnet import GossipNet


def eps(n, start=0):
    return [(f"02:00:00:00:{(i >> 8) & 255:02x}:{i & 255:02x}", (), "") for i in range(start, start + n)]  # as decoded: tuples


def peer(i, n_eps=0, version=1, start=0):
    return PeerEntry(bytes([i]) * 16, f"p{i}", 1, version, 6783, 6783, (), {"eps": eps(n_eps, start)})


def test_a_peer_keeps_its_first_endpoints_up_to_its_share():
    q = Quota(Limits(max_peer_endpoints=3))
    (kept,) = q.admit([peer(1, 5)], {})
    assert kept.data["eps"] == eps(3) and kept.version == 1
    assert q.dropped == {bytes([1]) * 16: 2} and q.counters["endpoints_over_quota"] == 2
    (again,) = q.admit([peer(1, 2, version=2)], {bytes([1]) * 16: kept})
    assert again.data["eps"] == eps(2) and q.dropped == {} and q.stored_endpoints == 2


def test_the_mesh_wide_table_keeps_what_fits():
    q = Quota(Limits(max_endpoints=5, max_peer_endpoints=4))
    a, b = q.admit([peer(1, 4), peer(2, 4)], {})
    assert len(a.data["eps"]) == 4 and len(b.data["eps"]) == 1
    assert q.counters["endpoints_table_full"] == 3 and q.stored_endpoints == 5
    q.forget(a.name)
    assert q.stored_endpoints == 1
    (b2,) = q.admit([peer(2, 4, version=2)], {b.name: b})
    assert len(b2.data["eps"]) == 4


def test_the_peer_table_refuses_new_peers_when_full_and_remembers_them():
    q = Quota(Limits(max_peers=2))
    known = {bytes([9]) * 16: peer(9)}
    admitted = q.admit([peer(1), peer(2)], known)
    assert [e.name for e in admitted] == [bytes([1]) * 16]
    assert q.counters["peers_table_full"] == 1 and q.refused(bytes([2]) * 16)
    q.forget(bytes([1]) * 16)
    assert not q.refused(bytes([2]) * 16)  # room again: it may come


def test_every_router_with_the_same_limits_holds_the_same_trimmed_entry():
    net = GossipNet(4, seed=3)
    for core in net.cores:
        core.quota.limits = Limits(max_peer_endpoints=2)
    for i in range(3):
        net.connect(i, i + 1)
    net.settle()
    # core 0's entry lists 5 endpoints (as a peer with a larger share would publish it)
    net._emit(0, net.cores[0].set_data("eps", eps(5), now=net.now))
    net.settle()
    far = [c.topology.entries[net.cores[0].name] for c in net.cores[1:]]
    assert all(e.data["eps"] == eps(2) for e in far)
    assert all(c.quota.dropped == {net.cores[0].name: 3} for c in net.cores[1:2])
    net.advance(6.0)
    net.settle()
    assert net.converged()  # same version everywhere: anti-entropy is quiet


def test_refused_peers_are_not_requested_again_by_anti_entropy():
    net = GossipNet(3, seed=4)
    net.cores[2].quota.limits = Limits(max_peers=2)
    net.connect(0, 1)
    net.settle()
    net.connect(1, 2)
    net.settle()
    core = net.cores[2]
    assert len(core.topology.entries) == 2 and core.quota.counters["peers_table_full"] >= 1
    before = net.messages_sent
    for _ in range(5):
        net.advance(6.0)
        net.settle()
    # Summaries keep differing (core 2 lacks one entry) but core 2 never asks for it.
    assert core.quota.counters["peers_table_full"] <= 2
    assert net.messages_sent - before < 60
