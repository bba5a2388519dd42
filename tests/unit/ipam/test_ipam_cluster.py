"""Scenarios across several allocators: bootstrap, donation, reset, rmpeer, partitions."""

from __future__ import annotations

import pytest

from ipam_sim import Net, peer_name
from meshnet.ipam import IpamBadRequest, IpamError, Pending, PeerReachable, RangeExhausted, Result
from meshnet.ipam.errors import Tombstoned
from meshnet.ipam.paxos import GRACE

P0, P1, P2, P3, P4 = (peer_name(i) for i in range(5))


def owners(net: Net) -> set[bytes]:
    ring = next(iter(net.peers.values())).alloc.ring
    assert ring is not None
    return {e.owner for _, _, e in ring.ranges()}


def test_consensus_splits_among_all_when_all_show_up() -> None:
    net = Net("10.32.0.0/12", ["consensus=3"] * 3)
    net.settle()
    net.check_converged()
    assert owners(net) == {P0, P1, P2}
    assert net.now == 0  # all N known: no grace period needed


def test_consensus_with_a_quorum_waits_for_the_grace_period() -> None:
    net = Net("10.32.0.0/24", ["consensus=5"] * 3)
    net.deliver()
    assert all(p.alloc.ring is None for p in net.peers.values())
    net.settle()
    assert net.now >= GRACE
    assert owners(net) == {P0, P1, P2}


def test_no_quorum_no_ring() -> None:
    net = Net("10.32.0.0/24", ["consensus=5"] * 2)
    for _ in range(20):
        net.deliver()
        net.advance(1.0)
    alloc = net.peers[P0].alloc
    assert alloc.ring is None
    pending = net.allocate(P0, "c1")
    assert isinstance(pending, Pending) and pending.reason == "awaiting consensus (quorum: 3, known: 2)"


def test_a_partitioned_minority_never_creates_a_second_ring() -> None:
    net = Net("10.32.0.0/24", ["consensus=4"] * 4)
    for name in (P0, P1):
        net.group[name] = 1  # 2 | 2: neither side has a quorum of 3
    net.topology_changed()
    for _ in range(20):
        net.deliver()
        net.advance(1.0)
    assert all(p.alloc.ring is None for p in net.peers.values())
    net.settle()
    net.check_converged()


def test_consensus_survives_restarts_of_acceptors() -> None:
    net = Net("10.32.0.0/24", ["consensus=3"] * 3)
    net.deliver(4)
    net.restart(P1)
    net.restart(P0)
    net.settle()
    net.check_safety()
    net.check_converged()


def test_observer_gets_space_by_donation() -> None:
    net = Net("10.32.0.0/24", ["consensus=2", "consensus=2", "observer"])
    net.settle()
    assert P2 not in owners(net)
    result = net.allocate(P2, "c1")
    assert isinstance(result, Pending) and "asking peer" in result.reason
    net.settle()
    assert net.peers[P2].held["c1"]
    assert P2 in owners(net)
    net.check_safety()


def test_a_full_peer_borrows_until_the_whole_range_is_used() -> None:
    net = Net("10.32.0.0/27", [f"seed={P0.hex()},{P1.hex()}"] * 2)  # 30 usable addresses
    net.settle()
    for i in range(30):
        net.allocate(P0, f"c{i}")
        net.settle()
    assert sum(len(a) for a in net.peers[P0].held.values()) == 30
    assert isinstance(net.allocate(P0, "c30"), RangeExhausted)
    refused = net.allocate(P1, "d0")  # P1 gave all its space away
    if isinstance(refused, Pending):  # it asked P0 (a stale hint) and is refused later
        net.settle()
        refused = next(e for _, rid, e in net.errors if rid == refused.request_id)
    assert isinstance(refused, RangeExhausted)
    net.release(P0, "c3")
    net.settle()
    net.allocate(P1, "d0")
    net.settle()
    assert net.peers[P1].held["d0"]
    net.check_safety()


def test_space_owned_by_unreachable_peers_makes_requests_wait_with_a_reason() -> None:
    net = Net("10.32.0.0/24", [f"seed={P0.hex()}", f"seed={P0.hex()}"])
    net.settle()
    net.group[P0] = 1
    net.topology_changed()
    pending = net.allocate(P1, "c1")
    assert isinstance(pending, Pending)
    assert "unreachable peers" in pending.reason and P0.hex() in pending.reason and "rmpeer" in pending.reason
    assert net.peers[P1].alloc.status()["unreachable_owners"] == [P0.hex()]
    net.settle()
    assert net.peers[P1].held["c1"]


def test_reset_hands_ranges_to_a_reachable_peer() -> None:
    net = Net("10.32.0.0/24", ["consensus=3"] * 3)
    net.settle()
    net.allocate(P1, "c1")
    net.leave(P1, reset=True)
    assert P1 not in owners(net)
    net.settle()
    net.check_converged()


def test_reset_with_nobody_to_take_over_is_refused() -> None:
    net = Net("10.32.0.0/24", [f"seed={P0.hex()}"])
    with pytest.raises(IpamError, match="no reachable peer"):
        net.peers[P0].alloc.reset(now=0)


def test_rmpeer_is_refused_for_reachable_peers_and_self() -> None:
    net = Net("10.32.0.0/24", ["consensus=3"] * 3)
    net.settle()
    assert isinstance(net.rmpeer(P0, P1), PeerReachable)
    assert isinstance(net.rmpeer(P0, P0), IpamBadRequest)
    assert isinstance(net.rmpeer(P0, b"short"), IpamBadRequest)
    assert net.peers[P0].alloc.ring == net.peers[P1].alloc.ring


def test_rmpeer_before_the_topology_is_known_is_refused() -> None:
    from meshnet.ipam import Allocator
    from meshnet.testing.ipam_store import MemoryStore

    alloc = Allocator(name=P0, universe="10.32.0.0/24", init=f"seed={P0.hex()},{P1.hex()}", store=MemoryStore(), now=0)
    with pytest.raises(IpamError, match="reachable"):
        alloc.rmpeer(P1, now=0)


def test_rmpeer_reclaims_once_and_is_idempotent() -> None:
    net = Net("10.32.0.0/24", ["consensus=4"] * 4)
    net.settle()
    net.leave(P3, reset=False)
    assert net.rmpeer(P0, P3) == 64
    assert net.rmpeer(P0, P3) == 0  # again, before it is confirmed
    net.settle()
    assert net.rmpeer(P0, P3) == 0  # again, after
    assert net.rmpeer(P1, P3) == 0  # elsewhere, after
    assert owners(net) == {P0, P1, P2}
    net.check_converged()


def test_concurrent_rmpeer_on_two_peers_ends_with_one_owner() -> None:
    net = Net("10.32.0.0/24", ["consensus=4"] * 4)
    net.settle()
    net.leave(P3, reset=False)
    assert net.rmpeer(P2, P3) == 64
    assert net.rmpeer(P1, P3) == 64
    # both claims are unconfirmed: neither side may use them yet
    for name in (P1, P2):
        status = net.peers[name].alloc.status()
        assert status["reclaiming"]["peers"] == [P3.hex()]
        assert status["reclaiming"]["waiting_for"]
    net.settle()
    net.check_converged()
    ring = net.peers[P0].alloc.ring
    assert ring is not None
    assert [e.owner for s, _, e in ring.ranges() if s == net.block.start + 192] == [P1]  # the lower name won
    net.check_safety()


def test_rmpeer_confirmation_survives_a_restart() -> None:
    net = Net("10.32.0.0/24", ["consensus=4"] * 4)
    net.settle()
    net.leave(P3, reset=False)
    assert net.rmpeer(P0, P3) == 64
    net.inflight.clear()  # the asks are lost
    net.restart(P0)
    assert net.peers[P0].alloc.status()["reclaiming"]["peers"] == [P3.hex()]
    net.settle()
    assert owners(net) == {P0, P1, P2}
    assert net.peers[P0].alloc.status()["reclaiming"] == {"peers": [], "waiting_for": [], "removed": [P3.hex()], "returned": []}


def test_rmpeer_loses_to_a_change_the_dead_peer_made_that_we_had_not_seen() -> None:
    net = Net("10.32.0.0/24", ["consensus=4"] * 4)
    net.settle()
    net.group[P0] = 1  # P0 misses P3's donation to P2
    net.topology_changed()
    for i in range(70):
        net.allocate(P2, f"c{i}")
        net.deliver()
        net.advance(0.5)
    net.deliver()
    ring0, ring2 = net.peers[P0].alloc.ring, net.peers[P2].alloc.ring
    assert ring0 is not None and ring2 is not None and len(ring2) > len(ring0)
    net.leave(P3, reset=False)
    net.heal()
    net.inflight.clear()  # P0 is still stale when it runs rmpeer
    net.peers[P0].alloc.ring = ring0
    assert net.rmpeer(P0, P3) > 0
    net.settle()
    net.check_safety()
    net.check_converged()
    assert P3 not in owners(net)


def test_partitioned_sides_keep_allocating_without_duplicates() -> None:
    net = Net("10.32.0.0/26", ["consensus=4"] * 4)
    net.settle()
    net.partition(seed=3)
    for i in range(40):
        for name in sorted(net.peers):
            net.allocate(name, f"{name.hex()[:4]}-{i}")
        net.deliver()
        net.advance(1.0)
        net.check_safety()
    net.settle()
    net.check_safety()
    handed = [a for p in net.peers.values() for addrs in p.held.values() for a in addrs]
    assert len(handed) == len(set(handed)) == 62


def test_different_seeds_and_ranges_are_reported_not_merged() -> None:
    net = Net("10.32.0.0/24", [f"seed={P0.hex()}", f"seed={P1.hex()}"])
    net.deliver()
    for name in (P0, P1):
        status = net.peers[name].alloc.status()
        assert status["state"] == "conflict"
        assert any("different bootstrap" in c for c in status["conflicts"])
    assert net.peers[P0].alloc.ring != net.peers[P1].alloc.ring

    other = Net("10.32.0.0/24", [f"seed={P0.hex()}"])
    foreign = Net("10.33.0.0/24", [f"seed={P1.hex()}"], names=[P1])
    other.peers[P0].alloc.on_broadcast(P1, foreign.peers[P1].alloc.full_state(), now=0)
    assert any("uses range 10.33.0.0/24" in c for c in other.peers[P0].alloc.status()["conflicts"])


def test_addresses_survive_restarts_in_a_cluster() -> None:
    net = Net("10.32.0.0/24", ["consensus=3"] * 3)
    net.settle()
    results = [net.allocate(P1, f"c{i}") for i in range(5)]
    assert all(isinstance(r, Result) for r in results)
    net.restart(P1)
    net.settle()
    net.check_safety()


def test_a_too_small_consensus_n_is_reported() -> None:
    net = Net("10.32.0.0/24", ["consensus=1"] * 2)  # both may bootstrap alone: two rings
    net.deliver()
    notes = [c for p in net.peers.values() for c in p.alloc.status()["conflicts"]]
    assert any("2 peers run consensus=1" in c for c in notes) or any("different bootstrap" in c for c in notes)


def test_concurrent_rmpeers_cut_apart_by_a_partition_wait_for_each_other() -> None:
    net = Net("10.32.0.0/24", ["consensus=5"] * 5)
    net.settle()
    net.leave(P3, reset=False)
    assert net.rmpeer(P1, P3) > 0 and net.rmpeer(P2, P3) > 0
    net.group[P2] = 1  # the two claims are lost in flight
    net.topology_changed()
    for _ in range(10):
        net.deliver()
        net.advance(1.0)
        net.check_safety()  # neither may confirm without the other's answer
    assert net.peers[P1].alloc.status()["reclaiming"]["waiting_for"] == [P2.hex()]
    net.settle()
    net.check_safety()
    net.check_converged()


def test_a_reclaim_waiting_for_a_peer_that_died_finishes_once_that_peer_is_removed() -> None:
    net = Net("10.32.0.0/24", ["consensus=5"] * 5)
    net.settle()
    net.leave(P3, reset=False)
    assert net.rmpeer(P0, P3) > 0
    net.leave(P4, reset=False)  # dies before answering
    for _ in range(5):
        net.deliver()
        net.advance(1.0)
    assert P4.hex() in net.peers[P0].alloc.status()["reclaiming"]["waiting_for"]
    assert net.rmpeer(P1, P4) > 0  # anywhere: the removal is gossiped
    net.settle()
    assert owners(net) <= {P0, P1, P2}
    net.check_converged()


def test_a_removed_peer_that_comes_back_must_reset_and_every_peer_says_so() -> None:
    """rmpeer of a peer that was only cut off (a VM restored from a snapshot comes back):
    it is recognised by its tombstone, refuses to allocate, gets no donation, and every
    peer reports it; the addresses it still holds are not its own any more."""
    net = Net("10.32.0.0/24", ["consensus=4"] * 4)
    net.settle()
    kept = net.allocate(P3, "c3")
    assert isinstance(kept, Result)
    net.group[P3] = 1  # cut off: to the others it is gone
    net.topology_changed()
    assert net.rmpeer(P0, P3) == 64
    for _ in range(20):
        net.deliver()
        net.gossip()
        net.deliver()
        net.advance(1.0)
    assert P3 not in {e.owner for _, _, e in net.peers[P0].alloc.ring.ranges()}
    net.heal()  # it comes back
    for _ in range(10):
        net.deliver()
        net.gossip()
        net.deliver()
        net.advance(1.0)
    back = net.peers[P3].alloc
    assert back.tombstoned and back.status()["tombstoned"] and "meshnet reset" in back.status()["state"]
    assert isinstance(net.allocate(P3, "new"), Tombstoned)
    assert back.standing(kept.address) is not None  # its container's address is not its own
    for name in (P0, P1, P2):
        status = net.peers[name].alloc.status()
        assert status["reclaiming"]["returned"] == [P3.hex()]
        assert any(P3.hex() in c and "reset" in c for c in status["conflicts"])
    # it asks for space: denied by every donor
    assert isinstance(net.allocate(P3, "again"), Tombstoned)
    assert not any(p.alloc.ring.owned(P3) for p in net.peers.values())
    net.restart(P3)  # the tombstone is persisted
    assert net.peers[P3].alloc.tombstoned


def test_a_peers_own_addresses_have_standing_others_do_not() -> None:
    net = Net("10.32.0.0/24", ["consensus=2"] * 2)
    net.settle()
    mine = net.allocate(P0, "c0")
    theirs = net.allocate(P1, "c1")
    assert isinstance(mine, Result) and isinstance(theirs, Result)
    a = net.peers[P0].alloc
    assert a.standing(mine.address) is None
    assert "not allocated on this peer" in a.standing(theirs.address)
    assert a.standing("192.168.1.1") is None  # outside the range: not IPAM's
    free = next(f"10.32.0.{i}" for i in range(1, 255) if f"10.32.0.{i}" not in (mine.address, theirs.address))
    assert a.standing(free) is not None
