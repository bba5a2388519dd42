"""VxlanKernel against FakeNetlink: plan -> diff -> apply -> dump converges, without root."""

import errno

import pytest
from hypothesis import given, settings, strategies as st

from meshnet.dataplane.fastdp import (
    FASTDP,
    SLEEVE,
    ZERO_MAC,
    BridgeFdb,
    LocalConfig,
    Op,
    PeerInfo,
    diff,
    plan,
    probe_mac,
)
from meshnet.kernel.errors import KernelError
from meshnet.kernel.vxlan import VxlanKernel
from meshnet.testing.fakenetlink import FakeNetlink

LOCAL = LocalConfig(peer_id=1, bridge="meshnet", tap="mntap", vxlan="vxmesh", local_ip="192.168.90.1", mtu=1422)
PEERS = {2: PeerInfo("192.168.90.2", FASTDP), 3: PeerInfo("192.168.90.3", SLEEVE)}
ENDPOINTS = {"02:00:00:00:02:01": 2, "02:00:00:00:02:02": 2, "02:00:00:00:03:01": 3}


def host() -> FakeNetlink:
    nl = FakeNetlink()
    nl.add_link("meshnet", "bridge")
    nl.add_link("mntap", "tun", master="meshnet")
    nl.add_link("mnv0", "veth", master="meshnet")  # a container's port: never ours
    return nl


def fresh() -> tuple[FakeNetlink, VxlanKernel]:
    nl = host()
    kernel = VxlanKernel(nl)
    kernel.ensure_device(LOCAL)
    return nl, kernel


def test_ensure_device_creates_an_isolated_port_once():
    nl, kernel = fresh()
    vx = nl.link("vxmesh")
    assert vx.kind == "vxlan" and vx.master == nl.link("meshnet").index and vx.up and vx.mtu == 1422
    assert (vx.vxlan.vni, vx.vxlan.port, vx.vxlan.local, vx.vxlan.learning) == (0x4D5348, 6784, "192.168.90.1", False)
    assert ("set_brport", vx.index, True, True) in nl.calls  # isolated, learning (entries of ours are sticky)
    assert ("set_brport", nl.link("mntap").index, True, None) in nl.calls
    nl.calls.clear()
    assert kernel.ensure_device(LOCAL) == vx.index
    assert not [c for c in nl.calls if c[0] in ("add_vxlan", "del_link", "set_link")]


def test_ensure_device_replaces_a_device_with_other_parameters():
    nl, kernel = fresh()
    old = nl.link("vxmesh").index
    kernel.ensure_device(LocalConfig(**{**LOCAL.__dict__, "local_ip": "192.168.90.11"}))
    assert nl.link("vxmesh").index != old and nl.link("vxmesh").vxlan.local == "192.168.90.11"


def test_ensure_device_needs_the_bridge():
    kernel = VxlanKernel(FakeNetlink())
    with pytest.raises(KernelError) as err:
        kernel.ensure_device(LOCAL)
    assert err.value.errno == errno.ENODEV and isinstance(err.value, OSError)


def test_converge_reaches_the_plan_and_then_has_nothing_to_do():
    nl, kernel = fresh()
    want = plan(LOCAL, PEERS, ENDPOINTS)
    assert kernel.converge(LOCAL, want)
    assert kernel.dump(LOCAL) == want
    assert kernel.converge(LOCAL, want) == []
    # the kernel tables themselves: head-end replication has one remote per fastdp peer
    vx = nl.link("vxmesh").index
    assert nl.vxlan_fdb[vx][ZERO_MAC] == ["192.168.90.2"]


def test_applying_the_same_ops_twice_makes_no_duplicates():
    nl, kernel = fresh()
    want = plan(LOCAL, {**PEERS, 4: PeerInfo("192.168.90.4", FASTDP)}, ENDPOINTS)
    ops = diff(want, kernel.dump(LOCAL))
    kernel.apply(LOCAL, ops)
    kernel.apply(LOCAL, ops)  # e.g. a crash between apply and the next dump
    assert kernel.dump(LOCAL) == want
    vx = nl.link("vxmesh").index
    assert sorted(nl.vxlan_fdb[vx][ZERO_MAC]) == ["192.168.90.2", "192.168.90.4"]
    assert all(len(remotes) == 1 for mac, remotes in nl.vxlan_fdb[vx].items() if mac != ZERO_MAC)


def test_restarted_router_converges_and_leaves_other_entries_alone():
    nl, kernel = fresh()
    kernel.converge(LOCAL, plan(LOCAL, {**PEERS, 5: PeerInfo("192.168.90.5", FASTDP)}, {**ENDPOINTS, "02:00:00:00:05:01": 5}))
    nl.foreign("mnv0", "02:00:00:00:aa:aa")  # someone's static entry on a container port
    nl.learned("mntap", "02:00:00:00:bb:bb")  # learned by the bridge on our TAP
    nl.learned("mnv0", "02:00:00:00:01:01")  # a local container
    own_addresses = {(m, e.port) for m, e in nl.bridge_fdb[nl.link("meshnet").index].items() if e.state == 0x80}

    # restart: a new VxlanKernel, peer 5 has gone, peer 3 moved to fastdp, peer 2 to sleeve
    kernel = VxlanKernel(nl)
    kernel.ensure_device(LOCAL)
    peers = {2: PeerInfo("192.168.90.2", SLEEVE), 3: PeerInfo("192.168.90.3", FASTDP)}
    want = plan(LOCAL, peers, ENDPOINTS)
    kernel.converge(LOCAL, want)
    assert kernel.dump(LOCAL) == want
    table = nl.bridge_fdb[nl.link("meshnet").index]
    assert table["02:00:00:00:aa:aa"].port == nl.link("mnv0").index
    assert "02:00:00:00:bb:bb" in table and "02:00:00:00:01:01" in table
    assert own_addresses <= {(m, e.port) for m, e in table.items()}
    vx = nl.link("vxmesh").index
    assert nl.vxlan_fdb[vx][ZERO_MAC] == ["192.168.90.3"]
    assert "02:00:00:00:05:01" not in nl.vxlan_fdb[vx] and probe_mac(5) not in nl.vxlan_fdb[vx]


def test_a_learned_entry_for_a_planned_mac_is_taken_over():
    nl, kernel = fresh()
    nl.learned("mntap", "02:00:00:00:02:01")  # e.g. learned while the peer was on sleeve
    want = plan(LOCAL, PEERS, ENDPOINTS)
    kernel.converge(LOCAL, want)
    entry = nl.bridge_fdb[nl.link("meshnet").index]["02:00:00:00:02:01"]
    assert entry.port == nl.link("vxmesh").index and entry.sticky and entry.state == 0x40


def test_fastdp_turned_off_drops_the_device_and_keeps_the_tap_entries():
    nl, kernel = fresh()
    kernel.converge(LOCAL, plan(LOCAL, PEERS, ENDPOINTS))
    off = LocalConfig(**{**LOCAL.__dict__, "vxlan": None})
    assert kernel.remove_device("vxmesh") and not kernel.remove_device("vxmesh")
    sleeve = {pid: PeerInfo(p.underlay_ip, SLEEVE) for pid, p in PEERS.items()}
    want = plan(off, sleeve, ENDPOINTS)
    kernel.converge(off, want)
    assert kernel.dump(off) == want and want.bridge_fdb == {BridgeFdb(m, "mntap") for m in ENDPOINTS}


def test_apply_tries_every_op_and_reports_the_failure():
    nl, kernel = fresh()
    want = plan(LOCAL, PEERS, ENDPOINTS)
    ops = diff(want, kernel.dump(LOCAL))
    with pytest.raises(KernelError) as err:
        kernel.apply(LOCAL, [Op("add", BridgeFdb("02:00:00:00:09:09", "gone"))] + ops)
    assert err.value.errno == errno.ENODEV
    assert kernel.dump(LOCAL) == want  # everything else was applied


mesh_states = st.tuples(
    st.dictionaries(
        st.integers(2, 6),
        st.builds(PeerInfo, st.sampled_from([f"192.168.90.{i}" for i in range(2, 9)]), st.sampled_from([FASTDP, SLEEVE])),
        max_size=5,
    ),
    st.dictionaries(st.sampled_from([f"02:00:00:00:00:{i:02x}" for i in range(12)]), st.integers(2, 6), max_size=12),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(mesh_states, min_size=1, max_size=6))
def test_any_sequence_of_mesh_states_converges(sequence):
    nl, kernel = fresh()
    for peers, endpoints in sequence:
        want = plan(LOCAL, peers, endpoints)
        kernel.converge(LOCAL, want)
        assert kernel.dump(LOCAL) == want
        assert diff(want, kernel.dump(LOCAL)) == []
        vx = nl.vxlan_fdb[nl.link("vxmesh").index]
        assert all(len(set(r)) == len(r) for r in vx.values())  # no duplicate remotes
        restarted = VxlanKernel(nl)
        restarted.ensure_device(LOCAL)
        assert restarted.converge(LOCAL, want) == []
