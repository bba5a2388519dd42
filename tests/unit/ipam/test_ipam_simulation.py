"""Property-based simulation: 3-20 peers under random operations, partitions and crashes.

At every step: no address is owned by two peers, none is handed out twice, every address
handed out lies in a range its peer owns, and nothing a caller was told is lost across a
crash. After healing (and rmpeer of the peers that left): every peer holds the same ring,
the ranges tile the whole range, and no request is left waiting.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipam_sim import Net, peer_name
from meshnet.ipam import IpamError, Pending, Result
from meshnet.ipam.addr import fmt

UNIVERSES = ["10.32.0.0/24", "10.32.0.0/26", "10.32.0.0/22"]  # small: donation and exhaustion happen

op = st.one_of(
    st.tuples(st.just("alloc"), st.integers(0, 19), st.integers(0, 7), st.sampled_from([None, 0, 1])),
    st.tuples(st.just("burst"), st.integers(0, 19), st.integers(1, 40), st.sampled_from([None, 0, 1])),
    st.tuples(st.just("release"), st.integers(0, 19), st.integers(0, 7)),
    st.tuples(st.just("release-all"), st.integers(0, 19)),
    st.tuples(st.just("claim"), st.integers(0, 19), st.integers(0, 7), st.integers(1, 62)),
    st.tuples(st.just("partition"), st.integers(0, 2**16)),
    st.tuples(st.just("heal")),
    st.tuples(st.just("restart"), st.integers(0, 19)),
    st.tuples(st.just("rmpeer"), st.integers(0, 19), st.integers(1, 2), st.integers(0, 30)),
    st.tuples(st.just("reset"), st.integers(0, 19)),
    st.tuples(st.just("deliver"), st.integers(1, 40)),
    st.tuples(st.just("dup"), st.integers(1, 5)),
    st.tuples(st.just("tick"), st.sampled_from([0.5, 1.0, 3.0, 7.0])),
    st.tuples(st.just("gossip")),
)


@st.composite
def cluster(draw: st.DrawFn) -> tuple[str, list[str]]:
    n = draw(st.integers(3, 20))
    mode = draw(st.sampled_from(["consensus", "seed", "mixed"]))
    if mode == "seed":
        seeds = sorted(draw(st.sets(st.integers(0, n - 1), min_size=1, max_size=n)))
        init = "seed=" + ",".join(peer_name(i).hex() for i in seeds)
        inits = [init] * n
    elif mode == "consensus":
        inits = [f"consensus={n}"] * n
    else:  # a few observers beside the consensus peers
        observers = draw(st.integers(1, n - 1))
        inits = [f"consensus={n - observers}"] * (n - observers) + ["observer"] * observers
    return draw(st.sampled_from(UNIVERSES)), inits


def subnet_of(net: Net, choice: int | None) -> str | None:
    if choice is None:
        return None
    half = (net.block.end - net.block.start) // 2
    return f"{fmt(net.block.start + choice * half)}/{net.block.prefixlen + 1}"


def run(net: Net, steps: list[tuple]) -> None:
    for o, then in steps:
        names = sorted(net.peers)
        pick = lambda i: names[i % len(names)]  # noqa: E731
        kind = o[0]
        if kind == "alloc":
            name, owner = pick(o[1]), f"c{o[2]}"
            first = net.allocate(name, owner, subnet_of(net, o[3]))
            if isinstance(first, Result):  # idempotent for the same owner
                again = net.allocate(name, owner, subnet_of(net, o[3]))
                assert isinstance(again, Result) and again.address == first.address
            elif isinstance(first, Pending):
                again = net.allocate(name, owner, subnet_of(net, o[3]))
                assert isinstance(again, (Pending, Result))
                if isinstance(again, Pending):
                    assert again.request_id == first.request_id
        elif kind == "burst":  # many containers at once: runs peers out of space
            name = pick(o[1])
            for i in range(o[2]):
                net.allocate(name, f"b{i}", subnet_of(net, o[3]))
        elif kind == "release-all":
            name = pick(o[1])
            for owner in list(net.peers[name].held):
                net.release(name, owner)
        elif kind == "release":
            net.release(pick(o[1]), f"c{o[2]}")
            net.release(pick(o[1]), f"c{o[2]}")  # idempotent
        elif kind == "claim":
            address = fmt(net.block.start + o[3] % (net.block.end - net.block.start - 2) + 1)
            net.claim(pick(o[1]), f"c{o[2]}", address)
        elif kind == "partition":
            net.partition(o[1])
        elif kind == "heal":
            net.heal()
        elif kind == "restart":
            net.restart(pick(o[1]))
        elif kind == "rmpeer":
            # Operators run rmpeer on a peer that is gone, with the rest of the mesh connected;
            # here one or two peers do it at once.
            if len(names) > 3 and net.healed() and all(p.alloc.ring for p in net.peers.values()):
                target = pick(o[1])
                net.leave(target, reset=False)
                names = sorted(net.peers)
                reclaimers = sorted({pick(o[1] + j) for j in range(o[2])})
                for reclaimer in reclaimers:
                    result = net.rmpeer(reclaimer, target)
                    assert not isinstance(result, IpamError), result
                for reclaimer in reclaimers:  # allocate while the reclaim is unconfirmed
                    for i in range(o[3]):
                        net.allocate(reclaimer, f"r{i}")
        elif kind == "reset":
            if len(names) > 3 and all(p.alloc.ring for p in net.peers.values()):
                net.leave(pick(o[1]), reset=True)
        elif kind == "deliver":
            net.deliver(o[1])
        elif kind == "dup":
            net.duplicate(o[1])
        elif kind == "tick":
            net.advance(o[1])
        elif kind == "gossip":
            net.gossip()
        net.check_safety()
        if then == "flush":
            net.deliver()
            net.check_safety()


def finish(net: Net) -> None:
    """Heal, rmpeer every peer that left (a no-op for those that reset), check agreement."""
    net.heal()
    for gone in sorted(net.gone):
        result = net.rmpeer(sorted(net.peers)[0], gone)
        assert isinstance(result, int), result
    net.settle()
    net.check_safety()
    net.check_converged()
    ring = next(iter(net.peers.values())).alloc.ring
    assert ring is not None
    assert {e.owner for _, _, e in ring.ranges()} <= set(net.peers)  # nothing left to the dead


# Most steps are followed by delivering everything in flight; the rest leave messages queued
# so they arrive late, out of order, duplicated, or are lost to a partition.
step = st.tuples(op, st.sampled_from(["flush", "flush", "flush", "hold"]))


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(cluster(), st.booleans(), st.lists(step, max_size=50), st.integers(0, 2**32))
def test_random_operations_keep_ownership_unique_and_converge(
    shape: tuple[str, list[str]], warm: bool, steps: list[tuple], seed: int
) -> None:
    universe, inits = shape
    net = Net(universe, inits, seed=seed)
    if warm:  # start from a bootstrapped mesh; otherwise bootstrap races the operations
        net.settle()
    run(net, steps)
    finish(net)


bootstrap_op = st.one_of(
    st.tuples(st.just("partition"), st.integers(0, 2**16)),
    st.tuples(st.just("heal")),
    st.tuples(st.just("restart"), st.integers(0, 19)),
    st.tuples(st.just("deliver"), st.integers(1, 20)),
    st.tuples(st.just("dup"), st.integers(1, 5)),
    st.tuples(st.just("tick"), st.sampled_from([0.5, 1.0, 2.0, 4.0])),
    st.tuples(st.just("alloc"), st.integers(0, 19), st.integers(0, 3), st.just(None)),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(3, 12),
    st.lists(st.tuples(bootstrap_op, st.sampled_from(["flush", "hold", "hold"])), max_size=40),
    st.integers(0, 2**32),
)
def test_consensus_bootstrap_makes_exactly_one_ring(n: int, steps: list[tuple], seed: int) -> None:
    net = Net("10.32.0.0/24", [f"consensus={n}"] * n, seed=seed)
    run(net, steps)
    assert len({p.alloc.ring.genesis for p in net.peers.values() if p.alloc.ring}) <= 1
    net.settle()
    net.check_safety()
    net.check_converged()
