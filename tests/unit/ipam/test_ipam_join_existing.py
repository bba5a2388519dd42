"""Peers launched later with another consensus count join the ring that exists, never make a second one."""

from meshnet.ipam.allocator import Allocator
from meshnet.testing.ipam_store import MemoryStore

NAMES = [bytes([i]) * 16 for i in (1, 2, 3)]


def test_late_consensus_peers_adopt_the_existing_ring():
    now = 100.0
    a = Allocator(name=NAMES[0], universe="10.32.0.0/12", init="consensus=1", store=MemoryStore(), now=now)
    b = Allocator(name=NAMES[1], universe="10.32.0.0/12", init="consensus=2", store=MemoryStore(), now=now)
    c = Allocator(name=NAMES[2], universe="10.32.0.0/12", init="consensus=2", store=MemoryStore(), now=now)
    peers = dict(zip(NAMES, (a, b, c)))
    queue = [(NAMES[0], m) for m in a.on_peers_changed(set(), now=now)]
    queue += [(NAMES[0], m) for m in a.tick(now=now)]
    assert a.ring is not None  # alone with consensus=1: it made the ring
    # b and c see each other first; a comes into view in the same update.
    queue += [(NAMES[1], m) for m in b.on_peers_changed({NAMES[0], NAMES[2]}, now=now)]
    queue += [(NAMES[2], m) for m in c.on_peers_changed({NAMES[0], NAMES[1]}, now=now)]
    queue += [(NAMES[0], m) for m in a.on_peers_changed({NAMES[1], NAMES[2]}, now=now)]
    for _ in range(200):
        if not queue:
            break
        src, message = queue.pop(0)
        targets = [n for n in NAMES if n != src] if message[0] == "broadcast" else [message[1]]
        for dst in targets:
            handler = peers[dst].on_broadcast if message[0] == "broadcast" else peers[dst].on_unicast
            queue += [(dst, m) for m in handler(src, message[-1], now=now)]
    assert b.ring is not None and c.ring is not None
    assert b.ring.genesis == a.ring.genesis == c.ring.genesis
    assert not a.conflicts and not b.conflicts and not c.conflicts
