"""The connection policy: a full mesh up to the limit, a bounded, connected graph beyond
it that every router derives alike; reconnects that keep failing back off."""

import random
from collections import deque

from meshnet.mesh.policy import ConnectionPolicy, peer_addresses, rank
from meshnet.mesh.targets import CAP_DELAY, STABLE_AFTER, Targets
from meshnet.testing.gossipnet import GossipNet


def names(n: int, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.getrandbits(128).to_bytes(16, "big") for _ in range(n)]


def chosen_graph(policy: ConnectionPolicy, peers: list[bytes]) -> dict[bytes, set[bytes]]:
    graph: dict[bytes, set[bytes]] = {p: set() for p in peers}
    for p in peers:
        for q in policy.choices(p, peers):
            graph[p].add(q)
            graph[q].add(p)
    return graph


def diameter_from(graph: dict[bytes, set[bytes]], root: bytes) -> int:
    seen, queue, far = {root: 0}, deque([root]), 0
    while queue:
        node = queue.popleft()
        for nxt in graph[node]:
            if nxt not in seen:
                seen[nxt] = seen[node] + 1
                far = max(far, seen[nxt])
                queue.append(nxt)
    assert len(seen) == len(graph), "not connected"
    return far


def test_the_bounded_graph_is_connected_short_and_of_bounded_degree():
    policy = ConnectionPolicy(full_mesh_limit=64, degree=4)
    for n, seed in ((100, 1), (1000, 2)):
        peers = names(n, seed)
        graph = chosen_graph(policy, peers)
        degrees = sorted(len(v) for v in graph.values())
        assert degrees[0] >= 4 and degrees[-1] <= 20, (n, degrees[0], degrees[-1])
        assert sum(degrees) / n <= 8.5
        assert max(diameter_from(graph, root) for root in peers[:20]) <= 7


def test_a_join_changes_few_choices():
    policy = ConnectionPolicy(degree=4)
    peers = names(1001, 3)
    before = {p: set(policy.choices(p, peers[:-1])) for p in peers[:-1]}
    after = {p: set(policy.choices(p, peers)) for p in peers[:-1]}
    changed = sum(1 for p in before if before[p] != after[p])
    assert changed <= 16, changed  # about `degree` routers re-choose, not the mesh


def test_choices_are_sticky_while_they_rank_high():
    policy = ConnectionPolicy(degree=3)
    peers = names(50, 6)
    me, others = peers[0], peers[1:]
    best = rank(me, others)
    dialled = frozenset({best[4], best[5], best[7]})  # ranks 5, 6 and 8 of 50: within 2 x degree... not 8
    assert policy.choices(me, others, dialled=dialled) == [best[4], best[5], best[0]]
    assert policy.choices(me, others, dialled=frozenset(best[20:30])) == best[:3]  # too far down: re-chosen


def test_a_failing_choice_is_replaced_by_the_next_one():
    policy = ConnectionPolicy(degree=3)
    peers = names(50, 4)
    me, others = peers[0], peers[1:]
    best = rank(me, others)
    assert policy.choices(me, others) == best[:3]
    assert policy.choices(me, others, failing=frozenset({best[1]})) == [best[0], best[2], best[3]]
    assert policy.choices(me, others, failing=frozenset(others)) == best[:3]  # all failing: keep trying


def build(n: int) -> GossipNet:
    net = GossipNet(n, seed=5)
    for i in range(1, n):
        net.connect(0, i)  # every router seeded with the first one
    for _ in range(60):  # anti-entropy fills in what the first deltas missed
        net.settle()
        if net.converged():
            break
        net.advance(1.0)
    assert net.converged()
    return net


def test_full_mesh_up_to_the_limit_then_choices_and_pruning():
    net = build(12)
    core = net.cores[5]
    full = ConnectionPolicy(full_mesh_limit=12, degree=3)
    plan = full.plan(core.topology, connected={net.cores[0].name: (True, net.now)}, now=net.now)
    assert plan.full_mesh and plan.wanted == core.topology.reachable() and not plan.prune
    assert len(plan.dial) == 10 and all(a.endswith(":6783") for a in plan.dial)

    bounded = ConnectionPolicy(full_mesh_limit=11, degree=3, prune_after=30)
    reachable = core.topology.reachable()
    seed = net.cores[0].name
    wanted = set(bounded.choices(core.name, reachable, dialled=frozenset({seed})))  # the seed is sticky
    plan = bounded.plan(core.topology, connected={seed: (True, net.now)}, now=net.now)
    assert not plan.full_mesh and plan.wanted == wanted and set(plan.dial.values()) == wanted - {seed}
    assert plan.prune == []  # our own choices are not up yet: the seed stays
    connected = {p: (True, net.now - 60) for p in wanted | {seed}}
    plan = bounded.plan(core.topology, connected=connected, now=net.now)
    assert plan.wanted == wanted
    seed_wants_us = core.name in bounded.choices(seed, reachable | {core.name})
    assert plan.prune == ([] if seed in wanted or seed_wants_us else [seed])
    young = {**connected, seed: (True, net.now - 5)}
    assert bounded.plan(core.topology, connected=young, now=net.now).prune == []  # too young to prune
    inbound = {**connected, seed: (False, net.now - 60)}
    assert bounded.plan(core.topology, connected=inbound, now=net.now).prune == []  # the dialler decides


def test_addresses_are_learned_from_the_neighbours_links():
    net = build(4)
    addresses = peer_addresses(net.cores[3].topology)
    assert addresses[net.cores[1].name] == "10.0.0.1" and addresses[net.cores[0].name] == "10.0.0.0"
    assert peer_addresses(net.cores[2].topology) == addresses  # every router derives the same


def test_a_connection_that_keeps_dropping_is_redialled_ever_more_slowly():
    targets = Targets(random.Random(1))
    targets.add_direct("10.0.0.1:6783")
    peer = b"p" * 16
    now, delays = 0.0, []
    for _ in range(8):
        assert targets.due(now, set()) == ["10.0.0.1:6783"]
        targets.dialling("10.0.0.1:6783")
        targets.succeeded("10.0.0.1:6783", peer, now=now)
        now += 2.0  # it drops after two seconds, again and again
        targets.disconnected("10.0.0.1:6783", now=now)
        delay = targets.next_deadline(set()) - now
        delays.append(delay)
        now += delay
    assert delays[0] < 1.0 and max(delays[-3:]) >= CAP_DELAY / 2
    targets.succeeded("10.0.0.1:6783", peer, now=now)
    targets.disconnected("10.0.0.1:6783", now=now + STABLE_AFTER + 1)  # a long-lived one: at once again
    assert targets.next_deadline(set()) - (now + STABLE_AFTER + 1) < 1.0


def test_satisfied_direct_targets_are_not_dialled():
    targets = Targets(random.Random(2))
    targets.add_direct("10.0.0.1:6783")
    peer = b"s" * 16
    targets.dialling("10.0.0.1:6783")
    targets.succeeded("10.0.0.1:6783", peer, now=0.0)
    targets.disconnected("10.0.0.1:6783", now=100.0)
    assert targets.due(200.0, set(), frozenset({peer})) == []  # reachable through others: not needed
    assert targets.due(200.0, set()) == ["10.0.0.1:6783"]
