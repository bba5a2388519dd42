"""Router metrics: the families built from a snapshot, and the HTTP server's threading
(collect() asks the loop for the snapshot; it never reads router state itself)."""

from __future__ import annotations

import asyncio
import threading
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from meshnet.runtime import metrics

ME, P2, P3, P4 = "aa" * 16, "bb" * 16, "cc" * 16, "dd" * 16

SNAP = {
    "router": {"name": ME, "nick": "h1", "id": 1, "uptime": 12.5, "bridge": "meshnet", "mtu": 1376, "encrypted": True},
    "dataplane": {
        "pump": {"compiled": True, "features": {}},
        "stats": {"tap_rx": 10, "tap_rx_bytes": 1000, "udp_tx": 9, "udp_tx_bytes": 1100, "drop_no_route": 3, "drop_ttl": 1, "learn_table_full": 0,
                  "flood_tx": 4, "learn_over_quota": 6, "learned_aged": 2, "learned_evicted": 1, "unlearned": 5},
        "tables": {"macs": 120, "learned": 20, "peers": 3},
    },
    "peers": [
        {"name": ME, "nick": "h1", "id": 1, "reachable": True},
        {"name": P2, "nick": "h2", "id": 2, "reachable": True},
        {"name": P3, "nick": "h3", "id": 3, "reachable": True, "via": P2},
        {"name": P4, "nick": "h4", "id": 4, "reachable": False},
    ],
    "connections": [
        {"peer": P2, "nick": "h2", "state": "established", "mode": "sleeve+encrypted", "heartbeat_age_s": 1.5},
        {"address": "192.168.90.14:6783", "state": "retrying", "last_error": "refused"},
    ],
    "refusals": [{"reason": "wrong password"}],
    "counters": {"handshake_failures": 2, "wrong_password": 1, "messages_in": 5, "messages_out": 6},
    "peer_stats": {2: {"rx_frames": 7, "rx_bytes": 700, "tx_frames": 8, "tx_bytes": 800}},
    "vxlan_stats": {"peers": {2: {"tx_packets": 3, "tx_bytes": 4200, "rx_packets": 2, "rx_bytes": 2800}}, "device": {"tx_dropped": 1, "rx_errors": 0}},
    "ipam": {
        "name": ME,
        "range": "10.32.0.0/12",
        "init": "consensus=3",
        "state": "ready",
        "pending": 0,
        "local": {"ranges": 2, "size": 4096, "used": 5, "free": 4091},
        "peers": {ME: {"reachable": True, "size": 4096, "free": 4091, "ranges": [{}, {}]}, P2: {"reachable": True, "size": 100, "free": 50, "ranges": [{}]}},
        "conflicts": [],
    },
}


def samples(fams) -> dict[tuple[str, tuple], float]:
    out = {}
    for fam in fams:
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_families_cover_the_issue_list():
    s = samples(metrics.families(SNAP))
    # peers by state and mode (self excluded; h3 is reached through h2)
    assert s[("meshnet_peers", (("mode", "encrypted"), ("state", "reachable")))] == 1
    assert s[("meshnet_peers", (("mode", "relayed"), ("state", "reachable")))] == 1
    assert s[("meshnet_peers", (("mode", ""), ("state", "unreachable")))] == 1
    assert s[("meshnet_peers", (("mode", "fastdp"), ("state", "reachable")))] == 0
    # connections by state and mode
    assert s[("meshnet_connections", (("mode", "encrypted"), ("state", "established")))] == 1
    assert s[("meshnet_connections", (("mode", ""), ("state", "retrying")))] == 1
    assert s[("meshnet_connections", (("mode", "sleeve"), ("state", "established")))] == 0
    # per peer bytes and frames
    assert s[("meshnet_peer_bytes_total", (("direction", "tx"), ("nick", "h2"), ("path", "sleeve"), ("peer", P2)))] == 800
    assert s[("meshnet_peer_frames_total", (("direction", "rx"), ("nick", "h2"), ("path", "sleeve"), ("peer", P2)))] == 7
    assert s[("meshnet_peer_bytes_total", (("direction", "tx"), ("nick", "h2"), ("path", "fastdp"), ("peer", P2)))] == 4200
    assert s[("meshnet_peer_frames_total", (("direction", "rx"), ("nick", "h2"), ("path", "fastdp"), ("peer", P2)))] == 2
    assert s[("meshnet_vxlan_device_drops_total", (("reason", "tx_dropped"),))] == 1
    # per peer mode as a labelled gauge, heartbeat age
    assert s[("meshnet_peer_mode", (("mode", "encrypted"), ("nick", "h2"), ("peer", P2)))] == 1
    assert s[("meshnet_peer_mode", (("mode", "fastdp"), ("nick", "h2"), ("peer", P2)))] == 0
    assert s[("meshnet_peer_mode", (("mode", "relayed"), ("nick", "h3"), ("peer", P3)))] == 1
    assert not any(k[0] == "meshnet_peer_mode" and ("peer", P4) in k[1] for k in s)  # unreachable: no mode
    assert s[("meshnet_peer_heartbeat_age_seconds", (("nick", "h2"), ("peer", P2)))] == 1.5
    # drops by reason
    assert s[("meshnet_dataplane_drops_total", (("reason", "no_route"),))] == 3
    assert s[("meshnet_dataplane_drops_total", (("reason", "learn_table_full"),))] == 0
    assert s[("meshnet_dataplane_drops_total", (("reason", "learn_over_quota"),))] == 6
    assert s[("meshnet_dataplane_learned_removed_total", (("reason", "aged"),))] == 2
    assert s[("meshnet_dataplane_learned_removed_total", (("reason", "evicted"),))] == 1
    assert s[("meshnet_dataplane_learned_removed_total", (("reason", "moved_here"),))] == 5
    assert s[("meshnet_dataplane_macs", (("kind", "gossiped"),))] == 100
    assert s[("meshnet_dataplane_macs", (("kind", "learned"),))] == 20
    assert s[("meshnet_dataplane_frames_total", (("direction", "rx"), ("side", "tap")))] == 10
    assert s[("meshnet_dataplane_flood_tx_total", ())] == 4
    # handshake failures
    assert s[("meshnet_handshake_failures_total", ())] == 2
    assert s[("meshnet_handshake_wrong_password_total", ())] == 1
    # IPAM ranges and addresses
    assert s[("meshnet_ipam_ranges", ())] == 2
    assert s[("meshnet_ipam_addresses", (("state", "used"),))] == 5
    assert s[("meshnet_ipam_addresses", (("state", "free"),))] == 4091
    assert s[("meshnet_ipam_ready", ())] == 1
    assert s[("meshnet_ipam_peer_addresses", (("peer", P2), ("state", "free")))] == 50
    assert s[("meshnet_router_info", (("bridge", "meshnet"), ("encryption", "enabled"), ("name", ME), ("nick", "h1"), ("pump", "compiled")))] == 1


def test_families_without_ipam_or_peer_stats():
    snap = {k: v for k, v in SNAP.items() if k not in ("ipam", "peer_stats")}
    names = {f.name for f in metrics.families(snap)}
    assert "meshnet_ipam_ranges" not in names and "meshnet_peer_bytes" in names


@pytest.mark.parametrize("mode,label", [("fastdp", "fastdp"), ("sleeve", "sleeve"), ("sleeve+encrypted", "encrypted"), (None, "")])
def test_mode_label(mode, label):
    assert metrics.mode_label(mode) == label


def test_parse_addr():
    assert metrics.parse_addr("127.0.0.1:6782") == ("127.0.0.1", 6782)
    assert metrics.parse_addr(":9000") == ("0.0.0.0", 9000)
    assert metrics.parse_addr("[::1]:9000") == ("::1", 9000)
    assert metrics.parse_addr("") is None
    for bad in ("6782", "host:", "h:99999"):
        with pytest.raises(ValueError):
            metrics.parse_addr(bad)


def test_server_takes_the_snapshot_on_the_loop_thread():
    """Scrape over loopback; the snapshot coroutine must run on the loop's thread."""
    seen = []

    async def snapshot():
        seen.append(threading.current_thread())
        return SNAP

    async def scenario():
        server = metrics.MetricsServer("127.0.0.1:0", snapshot)
        assert server.start()
        try:
            url = f"http://127.0.0.1:{server.port}/metrics"
            loop = asyncio.get_running_loop()
            text = await loop.run_in_executor(None, lambda: urllib.request.urlopen(url, timeout=10).read().decode())
        finally:
            await loop.run_in_executor(None, server.stop)
        return text

    text = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert seen == [threading.main_thread()]
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert fams["meshnet_up"].samples[0].value == 1
    assert "meshnet_handshake_failures" in fams and "meshnet_ipam_addresses" in fams


def test_scrape_when_snapshot_fails_reports_down():
    async def snapshot():
        raise RuntimeError("boom")

    async def scenario():
        server = metrics.MetricsServer("127.0.0.1:0", snapshot)
        assert server.start()
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                None, lambda: urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10).read().decode()
            )
        finally:
            await loop.run_in_executor(None, server.stop)

    text = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert "meshnet_up 0.0" in text


def test_bind_failure_does_not_raise():
    async def scenario():
        a = metrics.MetricsServer("127.0.0.1:0", lambda: None)
        assert a.start()
        b = metrics.MetricsServer(f"127.0.0.1:{a.port}", lambda: None)
        try:
            assert b.start() is False
        finally:
            await asyncio.get_running_loop().run_in_executor(None, a.stop)

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_disabled():
    assert metrics.MetricsServer("", lambda: None).start() is False
