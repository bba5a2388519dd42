"""What the re-planning decides off the kernel: endpoint ownership per peer, and the warning
when the peers would fill the kernel's neighbour table."""

import logging
from types import SimpleNamespace

from meshnet.dataplane import layout
from meshnet.runtime.follow import MeshFollower, endpoint_tables

A, B, C = b"a" * 16, b"b" * 16, b"c" * 16


def test_each_mac_goes_to_its_owner_and_departed_peers_keep_only_unclaimed_macs():
    owners = {"m1": A, "m2": B, "m3": C, "m4": B}
    by_peer, by_mac = endpoint_tables(owners, served={A, B}, departed={C: ["m3", "m4", "m5"]})
    assert by_peer == {layout.peer_id(A): {"m1"}, layout.peer_id(B): {"m2", "m4"}, layout.peer_id(C): {"m3", "m5"}}
    assert by_mac["m4"] == layout.peer_id(B) and by_mac["m5"] == layout.peer_id(C)


def follower(limit):
    f = MeshFollower(SimpleNamespace(spawn=lambda coro: coro.close()), full_mesh_limit=64, degree=4)
    f.neighbour_limit = limit
    return f


def test_peers_that_would_fill_the_neighbour_table_are_warned_of_once(caplog):
    f = follower(1024)
    with caplog.at_level(logging.WARNING, logger="meshnet.router"):
        f._check_neighbour_room(511)
        assert not caplog.records
        f._check_neighbour_room(512)
        f._check_neighbour_room(900)
    assert len(caplog.records) == 1 and "gc_thresh3" in caplog.text
    f.close()


def test_no_warning_where_the_table_cannot_be_read(caplog):
    f = follower(None)
    with caplog.at_level(logging.WARNING, logger="meshnet.router"):
        f._check_neighbour_room(100_000)
    assert not caplog.records
    f.close()


def test_status_names_no_removed_peer_as_a_next_hop():
    """`status` says `via` as the pump routes: never through a peer removed with rmpeer."""
    from meshnet.mesh.topology import Link, PeerEntry, Topology
    from meshnet.runtime import status

    names = {n: n.encode() * 16 for n in "abcde"}  # a - b - c, and the long way a - d - e - c
    edges = {("a", "b"), ("b", "c"), ("a", "d"), ("d", "e"), ("e", "c")}

    def entry(n):
        peers = sorted(names[y] for x, y in edges | {(y, x) for x, y in edges} if x == n)
        return PeerEntry(names[n], n, 1, 1, 6783, 6783, tuple(Link(p, "10.0.0.1", True) for p in peers))

    topo = Topology(entry("a"))
    topo.merge([entry(n) for n in "bcde"])
    core = SimpleNamespace(name=names["a"], topology=topo, quota=SimpleNamespace(dropped={}))
    router = SimpleNamespace(core=core, spawn=lambda coro: coro.close(), fastdp=SimpleNamespace(mode=lambda pid: ("sleeve", "")), encrypted=False)
    router.follower = MeshFollower(router, full_mesh_limit=64, degree=4)
    try:
        via = {p["nick"]: p["via"] for p in status.peers(router)}
        assert via["c"] == names["b"].hex() and via["e"] == names["d"].hex()
        router.follower.removed = frozenset({names["b"]})
        via = {p["nick"]: p["via"] for p in status.peers(router)}
        assert via == {"a": None, "b": None, "c": names["d"].hex(), "d": None, "e": names["d"].hex()}  # the long way
    finally:
        router.follower.close()
