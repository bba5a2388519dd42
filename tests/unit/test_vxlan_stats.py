"""The per-peer VXLAN counter table: the nft script (counters kept across peer changes,
one map lookup per packet) and reading `nft -j` output back into inner-frame bytes."""

from __future__ import annotations

import json

from meshnet.kernel import vxlan_stats
from meshnet.kernel.vxlan_stats import OUTER_OVERHEAD, VxlanStats, script


def test_script_maps_addresses_to_named_counters():
    text = script({0x0A: "192.0.2.2", 0x0B: "192.0.2.3"}, 6784, stale={0x0C})
    assert "delete counter ip meshnet-vxstats tx-0000000c" in text
    assert text.index("flush map ip meshnet-vxstats tx") < text.index("delete counter")  # unreferenced first
    assert 'add element ip meshnet-vxstats tx { 192.0.2.2 : "tx-0000000a" }' in text
    assert "add rule ip meshnet-vxstats count_out udp dport 6784 counter name ip daddr map @tx" in text
    assert "delete table" not in text  # counters survive a peer change


def test_read_gives_inner_frame_bytes(monkeypatch):
    calls = []
    out = {"nftables": [{"metainfo": {}}, {"counter": {"name": "tx-0000000a", "packets": 2, "bytes": 2 * (1400 + OUTER_OVERHEAD)}},
                        {"counter": {"name": "rx-0000000a", "packets": 1, "bytes": 100 + OUTER_OVERHEAD}}, {"counter": {"name": "junk"}}]}

    def nft(args, script=None):
        calls.append(args)
        return json.dumps(out) if "-j" in args else ""

    monkeypatch.setattr(vxlan_stats, "_nft", nft)
    stats = VxlanStats(6784)
    stats.follow({0x0A: "192.0.2.2", 0x0D: "fe80::1"})  # IPv6 underlays are not counted (ipv4 map)
    stats.follow({0x0A: "192.0.2.2"})  # unchanged: no second nft run
    assert len(calls) == 1
    assert stats.read() == {0x0A: {"tx_packets": 2, "tx_bytes": 2800, "rx_packets": 1, "rx_bytes": 100}}
