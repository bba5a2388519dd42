"""bench/endpoint_scale.py without root: how the endpoints are split among the announcing
peers, the kernel FDB rows it counts, the table it prints; and the scripted peer's parts it
relies on (endpoints, frames under the limit, one kernel responder for several peers)."""

from __future__ import annotations

import msgpack
import pytest

from bench.endpoint_scale import arguments, plan_entries, table
from bench.kernel_fdb import classify_fdb
from meshnet.kernel import responder
from meshnet.mesh import bounds
from meshnet.testing.scripted_peer import batches, endpoints, fake_peer

FDB = """\
33:33:00:00:00:01 dev eth0 self permanent
02:6e:00:00:00:01 dev vxmesh dst 192.168.90.13 self permanent
02:6e:00:00:00:01 dev vxmesh master meshnet static sticky
02:6e:00:00:00:02 dev mntap master meshnet static sticky
4e:50:12:34:56:78 dev vxmesh dst 192.168.90.13 self permanent
"""


def test_the_endpoints_fill_each_peers_share_and_leave_room_for_the_updates():
    own, ghosts = plan_entries(100_000, 4096, 5)
    assert own == 4091 and ghosts == [4096] * 23 + [1701] and own + sum(ghosts) == 100_000
    assert plan_entries(3000, 4096, 5) == (3000, [])
    own, ghosts = plan_entries(8192, 1024, 1)
    assert own == 1023 and own + sum(ghosts) == 8192 and max(ghosts) <= 1024


def test_fdb_rows_by_kind_for_one_prefix():
    assert classify_fdb(FDB, "02:6e") == {"vxlan": 1, "bridge:vxmesh": 1, "bridge:mntap": 1}
    assert sum(classify_fdb(FDB, "").values()) == 5


def test_arguments_are_bounded():
    assert arguments([]).endpoints == 100_000
    for bad in (["--endpoints", "0"], ["--updates", "4096"], ["--per-peer", "5000"], ["--samples", "0"]):
        with pytest.raises(SystemExit):
            arguments(bad)


def test_the_table_has_a_row_per_figure_and_both_phases():
    rest = {1: 38.6, 2: 38.8}
    figures = {
        "endpoints": 100_000, "idle_s": 20.0, "peers_announcing": 25, "mode_wanted": "fastdp",
        "before_attach": {"cli_s": [0.3, 0.35, 0.4], "api_s": [0.01, 0.02, 0.03]},
        "loaded_attach": {"cli_s": [0.31, 0.36, 0.5], "api_s": [0.02, 0.02, 0.04]},
        "update": {"kernel_s": [0.1, 0.2, 0.15], "fdb_events": [2, 2, 3], "syncs": [1, 1, 1], "ops": [2, 2, 2]},
        "before_rss_mib": rest, "loaded_rss_mib": {1: 250.0, 2: 251.5},
        "before_idle": {"pct": {1: 0.3, 2: 0.4}, "others_cores": 0.01}, "loaded_idle": {"pct": {1: 0.5, 2: 0.6}, "others_cores": 0.02},
        "load": {"in_status_s": 20.1, "in_kernel_s": 31.5, "max_status_answer_s": 0.5, "health": {"n": 1500, "median_ms": 1.0, "p99_ms": 40.0, "max_ms": 90.0},
                 "sync": {"syncs": 40, "ops": 400_011, "coalesce_max_run_s": 3.2}},
        "before_fdb": {"eth0": 3}, "loaded_fdb": {"vxlan": 100_000, "bridge:vxmesh": 100_000},
        "connections": {"since_load_s": 120.0, "dropped": []},
    }  # fmt: skip
    text = table(figures)
    lines = text.splitlines()
    assert lines[0] == "| figure | no gossiped endpoints | 100,000 gossiped endpoints |"
    assert all(line.startswith("| ") and line.endswith(" |") and line.count(" | ") == 2 for line in lines[2:])
    assert "| 0.350 s (0.300-0.400) | 0.360 s (0.310-0.500) |" in text
    assert "| router RSS, h1 (VmRSS) | 38.6 MiB | 250.0 MiB |" in text
    assert "| - | 2 / 1 / 2 |" in text and "none (all up since before the load, 120 s)" in text
    assert "200,000" in text and "25 (fastdp)" in text


def test_endpoints_carry_one_address_each_from_the_network():
    eps = endpoints(3, start=256, prefix="02:6e", network="10.64.0.0/12")
    assert eps == [["02:6e:00:00:01:00", ["10.64.1.0/12"], ""], ["02:6e:00:00:01:01", ["10.64.1.1/12"], ""], ["02:6e:00:00:01:02", ["10.64.1.2/12"], ""]]
    assert endpoints(1) == [["02:66:00:00:00:00", [], ""]]


def test_entries_go_as_many_to_a_frame_as_fit():
    entries = [fake_peer(bytes(16), "192.168.90.13", eps=endpoints(1024, start=k << 16, network="10.64.0.0/12")) for k in range(12)]
    groups = batches(entries)
    assert [e for g in groups for e in g] == entries
    for g in groups:
        assert len(msgpack.packb([9, g], use_bin_type=True)) <= bounds.MAX_FRAME
    assert 1 < len(groups) <= 3  # about 38 KB each: six to a frame
    assert len(batches([{"x": "a" * (bounds.MAX_FRAME + 1)}])) == 1  # too big for any frame: alone


def test_one_kernel_responder_answers_for_several_peers():
    one = responder.script("vxmesh", 0x12345678)
    assert one.count("fwd to") == 1 and "table netdev meshnet_probe" in one
    many = responder.script("vxmesh", [1, 2, 3], "scripted")
    assert many.count("fwd to") == 3 and "table netdev scripted" in many and "meshnet_probe" not in many
    assert responder.rule("vxmesh", 2) in many
