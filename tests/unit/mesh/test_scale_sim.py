"""The control plane at scale, simulated as the router runs it (meshnet/testing/meshsim.py;
bench/gossip_scale.py runs the same at 100, 1,000 and 5,000 routers): the cost per router
at rest does not grow with the mesh, and a join costs at most N log2 N x 1 KB."""

import math

import pytest

from meshnet.testing.meshsim import MeshSim


def at_rest(n: int) -> tuple[MeshSim, float]:
    sim = MeshSim.primed(n, ring_owners=min(n, 64))
    sim.run(10.0)
    sim.reset_counters()
    sim.run(30.0)
    return sim, sum(sim.sent) / n / 30.0


def settled(sim: MeshSim, i: int) -> bool:
    core, router = sim.cores[i], sim.routers[i]
    connected = {c.peer: (c.outbound, c.since) for c in core.conns.values()}
    return sim.converged() and router.policy.plan(core.topology, connected=connected, now=sim.now).wanted <= connected.keys()


@pytest.mark.slow
def test_cost_at_rest_does_not_grow_with_the_mesh_and_a_join_is_cheap():
    small, per_small = at_rest(80)  # both beyond the full-mesh limit: bounded graphs
    big, per_big = at_rest(240)
    assert per_big <= 1.3 * per_small and per_big < 200, (per_small, per_big)  # bytes/s per router
    assert max(big.degrees()) <= 20
    big.reset_counters()
    joiner = big.join(seed=0)
    took = big.run_until(lambda: settled(big, joiner), 30.0)
    n = len(big.cores)
    assert settled(big, joiner) and took <= 10.0
    assert sum(big.sent) <= n * math.log2(n) * 1000, sum(big.sent)


def test_a_dead_router_is_routed_around_and_its_choosers_replace_it():
    sim = MeshSim.primed(70, ring_owners=16)
    sim.run(5.0)
    choosers = [i for i in range(70) if i != 3 and 3 in sim.neighbours(i)]
    gone = sim.cores[3].name
    sim.kill(3)
    took = sim.run_until(lambda: sim.converged() and all(settled(sim, i) for i in choosers), 30.0)
    assert took < 10.0 and all(gone not in sim.cores[i].topology.reachable() for i in choosers)
