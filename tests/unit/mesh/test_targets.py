"""Whom to dial: a connected peer's failures are history, whichever side dialled."""

from __future__ import annotations

import random

from meshnet.mesh.targets import Targets

PEER = b"p" * 16


def pending(targets: Targets) -> list[tuple[str, str]]:
    """What status shows as retrying: (address, reason)."""
    return [(t["address"], t["last_error"]) for t in targets.status() if t["failures"] or t["last_error"]]


def test_inbound_connection_clears_a_failing_direct_target():
    t = Targets(random.Random(1))
    t.add_direct("192.0.2.2:6783")
    t.dialling("192.0.2.2:6783")
    t.failed("192.0.2.2:6783", "connect: ConnectionRefusedError", now=0.0)
    assert pending(t) == [("192.0.2.2:6783", "connect: ConnectionRefusedError")]
    t.peer_connected(PEER, "192.0.2.2:6783")  # the peer came up and dialled us
    assert pending(t) == []
    assert t.due(100.0, {PEER}) == []  # and it is not dialled while connected


def test_a_known_peer_under_another_address_is_cleared_too():
    t = Targets(random.Random(1))
    t.add_direct("peer-host:6783")
    t.succeeded("peer-host:6783", PEER)
    t.failed("peer-host:6783", "connect: timeout", now=0.0)
    t.peer_connected(PEER, "192.0.2.9:6783")
    assert pending(t) == []


def test_other_targets_keep_their_reason():
    t = Targets(random.Random(1))
    t.add_direct("192.0.2.3:6783")
    t.failed("192.0.2.3:6783", "connect: refused", now=0.0)
    t.peer_connected(PEER, "192.0.2.2:6783")
    assert pending(t) == [("192.0.2.3:6783", "connect: refused")]
