"""No range stays with a removed peer: rmpeer takes space given to the peer after it left.

The shape the simulation found: peer P5 asks donor P1 for space, then resets (it owns
nothing yet, so it hands nothing over) and leaves; its `want` still reaches P1, which
donates a block to a peer that is gone. P0 had not seen that donation when the operator
ran `rmpeer P5` on it, so it took nothing, and the block stayed P5's for good.
"""

from __future__ import annotations

from ipam_sim import Net, peer_name
from meshnet.ipam import Pending
from test_ipam_simulation import finish, run

P0, P1, P2, P3, P4, P5 = (peer_name(i) for i in range(6))
SEEDS = f"seed={P0.hex()},{P1.hex()}"


def owners(net: Net, name: bytes) -> set[bytes]:
    ring = net.peers[name].alloc.ring
    assert ring is not None
    return {e.owner for _, _, e in ring.ranges()}


def donated_to_a_peer_that_left() -> Net:
    """P1 has given P5 a block after P5 reset and left; P0 has not seen it."""
    net = Net("10.32.0.0/24", [SEEDS] * 6)
    net.settle()
    for name in (P1, P2, P3, P5):
        net.group[name] = 1  # P0 and P4 on the other side
    net.topology_changed()
    net.deliver()
    assert isinstance(net.allocate(P5, "c0"), Pending)  # its want to P1 is in flight
    net.leave(P5, reset=True)  # nothing to hand over yet; the router flushes the want on exit
    net.deliver()
    assert P5 in owners(net, P1) and P5 not in owners(net, P0)
    net.heal()
    return net


def test_rmpeer_takes_a_donation_it_had_not_seen_when_it_ran() -> None:
    net = donated_to_a_peer_that_left()
    assert net.rmpeer(P0, P5) == 0  # nothing of P5 in P0's ring yet
    assert net.peers[P0].alloc.status()["reclaiming"]["peers"] == [P5.hex()]
    net.settle()
    net.check_safety()
    net.check_converged()
    assert owners(net, P0) == {P0, P1}
    assert not net.peers[P0].alloc.status()["unreachable_owners"]


def test_the_confirmation_waits_for_the_peers_that_know_of_the_donation() -> None:
    """Cut off from them again right after rmpeer, P0 decides nothing: its round waits."""
    net = donated_to_a_peer_that_left()
    assert net.rmpeer(P0, P5) == 0
    for name in (P1, P2, P3):
        net.group[name] = 1
    net.topology_changed()
    for _ in range(10):
        net.deliver()
        net.gossip()
        net.deliver()
        net.advance(1.0)
        net.check_safety()
    status = net.peers[P0].alloc.status()
    assert status["reclaiming"]["waiting_for"] == sorted(p.hex() for p in (P1, P2, P3))
    net.settle()
    net.check_safety()
    net.check_converged()
    assert owners(net, P0) == {P0, P1}


def test_the_round_survives_a_restart_before_any_answer() -> None:
    net = donated_to_a_peer_that_left()
    assert net.rmpeer(P0, P5) == 0
    net.inflight.clear()  # the asks are lost
    net.restart(P0)
    assert net.peers[P0].alloc.status()["reclaiming"]["peers"] == [P5.hex()]
    net.settle()
    net.check_converged()
    assert owners(net, P0) == {P0, P1}


def test_rmpeer_before_the_ring_arrived_takes_the_space_once_it_does() -> None:
    net = Net("10.32.0.0/24", [SEEDS] * 3 + ["observer"])  # P3 has no ring until gossip arrives
    net.leave(P1, reset=False)
    assert net.peers[P3].alloc.ring is None
    assert net.rmpeer(P3, P1) == 0
    assert net.peers[P3].alloc.status()["reclaiming"]["peers"] == [P1.hex()]
    net.settle()
    net.check_safety()
    net.check_converged()
    assert owners(net, P3) <= {P0, P2, P3} and P1 not in owners(net, P0)


def test_the_simulation_shape_that_found_it() -> None:
    """The steps Hypothesis drew, replayed through the simulation's own checks."""
    net = Net("10.32.0.0/24", [SEEDS] * 6, seed=0)
    net.settle()
    run(net, [(("partition", 70), "flush"), (("alloc", 5, 0, None), "hold"), (("reset", 5), "flush")])
    finish(net)


def test_a_split_mesh_never_gives_a_removed_peers_range_to_both_sides() -> None:
    """Why nothing reclaims on its own when it sees a removed peer's range: here the lowest
    peer of each side would, and both sides would confirm it (two owners of 10.32.0.192/26).
    Only the round rmpeer began, which waits for both sides, may take it."""
    net = donated_to_a_peer_that_left()
    net.inflight.clear()  # P0 has still not seen the donation ...
    assert net.rmpeer(P0, P5) == 0
    net.inflight.clear()
    state = net.peers[P0].alloc.full_state()
    net.send(P0, [("unicast", P1, state), ("unicast", P3, state)])  # ... but P1 and P3 learn P5 is removed
    net.deliver()
    for name in (P1, P3):
        net.group[name] = 1  # P2, which knows of the donation, stays with P0
    net.topology_changed()
    for _ in range(20):
        net.deliver()
        net.gossip()
        net.deliver()
        net.advance(1.0)
        net.check_safety()
    assert P5 in owners(net, P0) and P5 in owners(net, P1)  # undecided on both sides
    net.settle()
    net.check_safety()
    net.check_converged()
    assert owners(net, P0) == {P0, P1}
