"""IPAM anti-entropy by summary: a 16-byte hash to one neighbour; only a peer whose ring
differs answers, and then both converge."""

import random

from meshnet.ipam import Allocator
from meshnet.ipam.wire import Summary, decode, encode_summary
from meshnet.testing.ipam_store import MemoryStore

UNIVERSE = "10.32.0.0/12"
A, B = bytes([0xA0, 1]) + bytes(14), bytes([0xA0, 2]) + bytes(14)


def test_summary_round_trips_and_is_small():
    payload = encode_summary(Summary(UNIVERSE, bytes(range(16))))
    assert decode(payload) == Summary(UNIVERSE, bytes(range(16)))
    assert len(payload) < 60


def deliver(out, src, peers, now):
    """Carry outgoing messages until quiet; return how many were sent."""
    sent = 0
    queue = [(src, o) for o in out]
    while queue:
        src, (kind, *rest) = queue.pop(0)
        sent += 1
        targets = [p for p in peers if p != src] if kind == "broadcast" else [rest[0]]
        payload = rest[-1]
        for dst in targets:
            handler = peers[dst].on_broadcast if kind == "broadcast" else peers[dst].on_unicast
            queue += [(dst, o) for o in handler(src, payload, now=now)]
    return sent


def test_peers_that_agree_exchange_only_the_summary_and_those_that_differ_converge():
    peers = {
        name: Allocator(name=name, universe=UNIVERSE, init=f"seed={A.hex()},{B.hex()}", store=MemoryStore(), now=0.0, rng=random.Random(i))
        for i, name in enumerate((A, B))
    }
    for p in peers.values():
        p.on_peers_changed(set(peers), now=0.0)
    a, b = peers[A], peers[B]
    assert a.summary() == b.summary()  # both seeded alike
    assert deliver([("unicast", B, a.summary())], A, peers, 1.0) == 1  # nothing but the summary
    result, out = a.allocate("c1", now=1.0)  # a change whose broadcast is lost
    a.tick(now=5.0)
    assert a.summary() != b.summary()
    sent = deliver([("unicast", B, a.summary())], A, peers, 6.0)
    assert a.summary() == b.summary() and sent <= 3
