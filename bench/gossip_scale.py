"""Gossip at scale, simulated in one process: rounds and bytes to converge after a join
and after a leave, for N peers each connected to a few others (as a connection limit
forces in a big cluster).

    .venv/bin/python bench/gossip_scale.py 100 300 1000

A "round" is one hop of every message in flight (GossipNet.step). Bytes are the real
encoded control messages (msgpack), counted from the change until all peers agree.
Weave's topology update sends the whole topology to every neighbour: O(N²) bytes per
change; ours sends one entry down a spanning tree: O(N) entries per change.
"""

from __future__ import annotations

import math
import random
import sys
import time

from meshnet.testing.gossipnet import GossipNet

DEGREE = 4  # links each peer dials when it joins


def build(n: int, seed: int = 1) -> GossipNet:
    net = GossipNet(n, seed=seed, conn_limit=64)
    rng = random.Random(seed)
    for i in range(1, n):
        for j in {rng.randrange(i) for _ in range(min(i, DEGREE // 2 + 1))}:
            net.connect(i, j)
    net.prime()
    assert net.converged()
    return net


def measure(net: GossipNet, change, exclude: frozenset[int] = frozenset()) -> tuple[int, float, int]:
    """Apply a change; return (rounds, simulated seconds, gossip bytes) until all agree.

    Rounds count message hops; when nothing is in flight the clock moves 1 s so that
    anti-entropy can repair what the spanning-tree deltas missed. Heartbeats are not
    counted: they are a constant background, not a cost of the change.
    """
    net.gossip_bytes = 0
    start = net.now
    change()
    rounds = 0
    while not net.converged(exclude) and rounds < 500:
        if net.step():
            rounds += 1
        else:
            net.advance(1.0)
    assert net.converged(exclude)
    return rounds, net.now - start, net.gossip_bytes


def run(n: int) -> dict[str, float]:
    t0 = time.perf_counter()
    net = build(n)
    rng = random.Random(n)
    joiner = net.add_core()

    def join() -> None:
        for j in rng.sample(range(n), DEGREE):
            net.connect(joiner, j)

    join = measure(net, join)

    def leave() -> None:
        for j in net.neighbours(joiner):
            net.disconnect(joiner, j)

    # After a leave, "agree" means every remaining peer holds the new entries of the
    # leaver's former neighbours (the leaver's own entry is then unreachable everywhere).
    leave = measure(net, leave, exclude=frozenset({joiner}))
    return {"n": n, "join": join, "leave": leave, "seconds": time.perf_counter() - t0}


def main(argv: list[str]) -> None:
    sizes = [int(a) for a in argv] or [100, 300, 1000]
    print("| peers | join: rounds | join: sim s | join: gossip bytes | per peer | leave: rounds | leave: sim s | leave: gossip bytes | per peer | N log2 N |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in sizes:
        r = run(n)
        (jr, js, jb), (lr, ls, lb) = r["join"], r["leave"]
        print(
            f"| {n} | {jr} | {js:.0f} | {jb} | {jb / n:.0f} | {lr} | {ls:.0f} | {lb} | {lb / n:.0f} | {n * math.log2(n):.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
