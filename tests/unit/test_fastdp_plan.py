"""fastdp planning: the wanted FDB state from the mesh state, and diffs between states."""

import pytest
from hypothesis import given, strategies as st

from meshnet.dataplane.fastdp import (
    FASTDP,
    SLEEVE,
    ZERO_MAC,
    BridgeFdb,
    KernelState,
    LocalConfig,
    Op,
    PeerInfo,
    VxlanFdb,
    diff,
    norm_mac,
    plan,
    probe_mac,
)

LOCAL = LocalConfig(peer_id=1, bridge="meshnet", tap="mntap", vxlan="vxmesh", local_ip="192.168.90.1", mtu=1422)
NOFDP = LocalConfig(peer_id=1, bridge="meshnet", tap="mntap", vxlan=None, local_ip="192.168.90.1", mtu=1422)

PEERS = {2: PeerInfo("192.168.90.2", FASTDP), 3: PeerInfo("192.168.90.3", SLEEVE)}
ENDPOINTS = {"02:00:00:00:02:01": 2, "02:00:00:00:02:02": 2, "02:00:00:00:03:01": 3}


def test_plan_programs_fastdp_peers_on_vxlan_and_sleeve_peers_on_the_tap():
    want = plan(LOCAL, PEERS, ENDPOINTS)
    assert want.vxlan_fdb == {
        VxlanFdb(ZERO_MAC, "192.168.90.2"),  # BUM replication to the fastdp peer only
        VxlanFdb("02:00:00:00:02:01", "192.168.90.2"),
        VxlanFdb("02:00:00:00:02:02", "192.168.90.2"),
        VxlanFdb(probe_mac(2), "192.168.90.2"),  # every peer is probed, sleeve ones too
        VxlanFdb(probe_mac(3), "192.168.90.3"),
    }
    assert want.bridge_fdb == {
        BridgeFdb("02:00:00:00:02:01", "vxmesh"),
        BridgeFdb("02:00:00:00:02:02", "vxmesh"),
        BridgeFdb("02:00:00:00:03:01", "mntap"),
        BridgeFdb(probe_mac(1), "vxmesh"),  # our own probes stop at the VXLAN port
    }


def test_plan_without_fastdp_sends_everything_to_the_tap():
    peers = {pid: PeerInfo(p.underlay_ip, SLEEVE) for pid, p in PEERS.items()}
    want = plan(NOFDP, peers, ENDPOINTS)
    assert want.vxlan_fdb == frozenset()
    assert want.bridge_fdb == {BridgeFdb(mac, "mntap") for mac in ENDPOINTS}
    with pytest.raises(ValueError):
        plan(NOFDP, PEERS, ENDPOINTS)


def test_plan_leaves_out_what_cannot_be_an_endpoint():
    endpoints = {
        "02:00:00:00:01:01": 1,  # our own container: the bridge learns it on its veth
        "02:00:00:00:09:01": 9,  # peer not known (yet)
        "ff:ff:ff:ff:ff:ff": 2,
        "01:00:5e:00:00:01": 2,
        ZERO_MAC: 2,
        probe_mac(7): 2,
        "not a mac": 2,
        "02:00:00:00:02:01": 2,
    }
    peers = {**PEERS, 4: PeerInfo("fe80::1", FASTDP), 5: PeerInfo("garbage", FASTDP)}
    want = plan(LOCAL, peers, endpoints)
    macs = {e.mac for e in want.bridge_fdb}
    assert macs == {"02:00:00:00:02:01", probe_mac(1)}
    # peers without a usable IPv4 underlay address get no VXLAN entries at all
    assert {e.dst for e in want.vxlan_fdb} == {"192.168.90.2", "192.168.90.3"}


def test_plan_normalises_macs():
    want = plan(LOCAL, PEERS, {"02-AB-00-00-02-01": 2})
    assert BridgeFdb("02:ab:00:00:02:01", "vxmesh") in want.bridge_fdb
    assert norm_mac(b"\x02\xab\x00\x00\x02\x01") == "02:ab:00:00:02:01"
    with pytest.raises(ValueError):
        norm_mac("02:ab:00:00:02")


def test_diff_of_equal_states_is_empty_and_stale_entries_are_deleted():
    want = plan(LOCAL, PEERS, ENDPOINTS)
    assert diff(want, want) == []
    stale = KernelState(
        want.vxlan_fdb | {VxlanFdb(ZERO_MAC, "192.168.90.9")},
        want.bridge_fdb | {BridgeFdb("02:00:00:00:09:01", "vxmesh")},
    )
    assert diff(want, stale) == [
        Op("del", BridgeFdb("02:00:00:00:09:01", "vxmesh")),
        Op("del", VxlanFdb(ZERO_MAC, "192.168.90.9")),
    ]


def test_diff_puts_adds_before_deletes_and_vxlan_before_bridge():
    before = plan(LOCAL, PEERS, ENDPOINTS)
    after = plan(LOCAL, {2: PeerInfo("192.168.90.2", SLEEVE), 3: PeerInfo("192.168.90.3", FASTDP)}, ENDPOINTS)
    ops = diff(after, before)
    kinds = [(op.action, type(op.entry).__name__) for op in ops]
    assert kinds == sorted(kinds, key=[("add", "VxlanFdb"), ("add", "BridgeFdb"), ("del", "BridgeFdb"), ("del", "VxlanFdb")].index)
    assert Op("add", BridgeFdb("02:00:00:00:02:01", "mntap")) in ops
    assert Op("del", BridgeFdb("02:00:00:00:02:01", "vxmesh")) in ops


macs = st.builds(lambda b: norm_mac(b"\x02" + b), st.binary(min_size=5, max_size=5))
ips = st.sampled_from([f"192.168.90.{i}" for i in range(2, 8)])
vx_entries = st.frozensets(st.builds(VxlanFdb, macs, ips), max_size=8)
br_entries = st.frozensets(st.builds(BridgeFdb, macs, st.sampled_from(["vxmesh", "mntap"])), max_size=8)
states = st.builds(KernelState, vx_entries, br_entries)


@given(states, states)
def test_diff_applied_as_set_operations_reaches_the_wanted_state(want, have):
    vx, br = set(have.vxlan_fdb), set(have.bridge_fdb)
    for op in diff(want, have):
        table = vx if isinstance(op.entry, VxlanFdb) else br
        assert (op.entry in table) == (op.action == "del")  # never a useless op
        (table.add if op.action == "add" else table.discard)(op.entry)
    assert KernelState(frozenset(vx), frozenset(br)) == want


peer_tables = st.dictionaries(
    st.integers(2, 6), st.builds(PeerInfo, ips, st.sampled_from([FASTDP, SLEEVE])), max_size=5
)


@given(peer_tables, st.dictionaries(macs, st.integers(1, 7), max_size=10))
def test_plan_is_deterministic_and_consistent(peers, endpoints):
    want = plan(LOCAL, peers, endpoints)
    assert want == plan(LOCAL, dict(reversed(list(peers.items()))), endpoints)
    on_vxlan = {e.mac for e in want.bridge_fdb if e.port == "vxmesh"} - {probe_mac(1)}
    # a MAC sent to the VXLAN port always has exactly one remote in the device's table
    for mac in on_vxlan:
        assert len([e for e in want.vxlan_fdb if e.mac == mac]) == 1
    assert len({e.mac for e in want.bridge_fdb}) == len(want.bridge_fdb)  # one port per MAC


def test_two_spellings_of_one_mac_get_one_port():
    want = plan(LOCAL, PEERS, {"02:00:00:00:02:01": 3, "02-00-00-00-02-01": 2, "02:00:00:00:02:01".upper(): 2})
    assert [e for e in want.bridge_fdb if e.mac == "02:00:00:00:02:01"] == [BridgeFdb("02:00:00:00:02:01", "vxmesh")]
    assert want == plan(LOCAL, PEERS, dict(reversed(list({"02:00:00:00:02:01": 3, "02-00-00-00-02-01": 2}.items()))))
