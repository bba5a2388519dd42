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
