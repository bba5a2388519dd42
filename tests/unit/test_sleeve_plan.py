"""The sleeve planner: mesh view in, the pump's tables out; the diff applies only changes.

Replaces the old test that built a Router by hand to reach its private key programming."""

from __future__ import annotations

import pytest

from meshnet.cli import build_parser
from meshnet.cli.status import describe_macs, describe_pump
from meshnet.config import from_args
from meshnet.dataplane import layout
from meshnet.dataplane import sleeve_plan as sp
from meshnet.errors import UsageError
from meshnet.mesh.session import Ephemeral, Session

A, B, C, D = (bytes(15) + bytes([i]) for i in (0x0A, 0x0B, 0x0C, 0x0D))
IDS = {n: layout.peer_id(n) for n in (A, B, C, D)}
MAC_C = "02:00:00:00:00:0c"


def _sessions() -> tuple[Session, Session]:
    ea, eb = Ephemeral(), Ephemeral()
    common = dict(shared=ea.exchange(eb.public), password=b"pw", pub_initiator=ea.public, pub_acceptor=eb.public)
    return Session(initiator=True, **common), Session(initiator=False, **common)


def _plan(local=A, routes=None, direct=None, fastdp=frozenset(), endpoints=None) -> sp.PumpTables:
    routes = {B: B, C: B} if routes is None else routes
    direct = {B: sp.Direct(("192.168.90.12", 6783))} if direct is None else direct
    return sp.plan(local=local, routes=routes, direct=direct, fastdp=set(fastdp), endpoints=endpoints or {})


def test_direct_and_relayed_peers_and_their_macs():
    want = _plan(endpoints={MAC_C: IDS[C], "02:00:00:00:00:0d": IDS[D]})
    assert want.peers[IDS[B]] == sp.PeerRow(("192.168.90.12", 6783), IDS[B], True)
    assert want.peers[IDS[C]] == sp.PeerRow(None, IDS[B], True)  # relayed through B
    assert want.macs == {bytes.fromhex("02000000000c"): IDS[C]}  # D is not routed: its MAC stays out
    assert want.keys == {}  # unencrypted: no keys


def test_fastdp_peers_get_no_floods_from_the_sleeve():
    want = _plan(fastdp={IDS[B]})
    assert want.peers[IDS[B]].flood is False and want.peers[IDS[C]].flood is True


def test_both_ends_install_matching_keys_and_the_same_epoch():
    sa, sb = _sessions()
    a = _plan(local=A, routes={B: B}, direct={B: sp.Direct(("10.0.0.2", 6783), sa.sleeve_keys(A, B))})
    b = _plan(local=B, routes={A: A}, direct={A: sp.Direct(("10.0.0.1", 6783), sb.sleeve_keys(B, A))})
    ka, kb = a.keys[IDS[B]], b.keys[IDS[A]]
    assert ka.tx == kb.rx and ka.rx == kb.tx and ka.tx != ka.rx and ka.epoch == kb.epoch


def test_only_direct_peers_have_keys():
    sa, _ = _sessions()
    want = _plan(direct={B: sp.Direct(("10.0.0.2", 6783), sa.sleeve_keys(A, B))})
    assert set(want.keys) == {IDS[B]}


def test_diff_orders_direct_peers_first_and_applies_only_changes():
    sa, _ = _sessions()
    want = _plan(direct={B: sp.Direct(("10.0.0.2", 6783), sa.sleeve_keys(A, B))}, endpoints={MAC_C: IDS[C]})
    ops = sp.diff(want, sp.PumpTables())
    kinds = [type(op).__name__ for op in ops]
    assert kinds == ["SetPeer", "SetPeer", "SetKeys", "SetMac"]
    assert ops[0].pid == IDS[B]  # the next hop before the peer relayed through it
    assert sp.diff(want, want) == []  # re-planning the same view: nothing, keys keep their counters
    _, sb2 = _sessions()
    rekeyed = _plan(direct={B: sp.Direct(("10.0.0.2", 6783), sb2.sleeve_keys(A, B))}, endpoints={MAC_C: IDS[C]})
    assert [type(op).__name__ for op in sp.diff(rekeyed, want)] == ["SetKeys"]  # a new session: new keys


def test_diff_removes_what_is_gone():
    have = _plan(endpoints={MAC_C: IDS[C]})
    want = _plan(routes={B: B})
    ops = sp.diff(want, have)
    assert ops == [sp.ForgetMac(bytes.fromhex("02000000000c")), sp.RemovePeer(IDS[C])]


def test_peer_id_collision_is_reported_not_forwarded():
    want = _plan(local=A, routes={A: A, B: B}, direct={})
    assert A in want.collisions and IDS[A] not in want.peers


def test_status_line_names_what_the_pump_uses():
    features = {"batch": 64, "vnet_hdr": True, "tap_offload": ["csum", "tso4"], "udp_gso": True, "udp_gro": False, "gro_merge": True, "crypto": "AES-256-GCM"}
    line = describe_pump({"compiled": True, "features": features})
    assert line == "compiled: batch 64, TAP csum/tso4, UDP GSO, TCP merging, sleeve AES-256-GCM"
    assert describe_pump({"compiled": False}).startswith("PURE-PYTHON TWIN")
    assert "no IFF_VNET_HDR" in describe_pump({"compiled": True, "features": {"batch": 32, "vnet_hdr": False}})


def test_status_line_of_the_mac_table():
    dp = {"pump": {"features": {"mac_table_max": 131072, "learn_quota": 4096, "mac_age": 300}},
          "tables": {"macs": 120, "learned": 20, "peers": 3}, "stats": {"learn_over_quota": 7, "learned_evicted": 0}}
    assert describe_macs(dp) == ["MACs     120 of 131072 (20 learned; 4096 learned per peer, aged after 300s): "
                                 "7 not learned: peer over quota"]
    assert describe_macs({"pump": {"compiled": True}}) == []  # an older router: nothing to say


def test_mac_table_limits_come_from_flags_or_their_environment_twins():
    cfg = from_args(build_parser().parse_args(["launch", "--mac-age", "60"]), environ={"MESHNET_MAC_LEARN_QUOTA": "10"})
    assert (cfg.mac_table_max, cfg.mac_learn_quota, cfg.mac_age) == (layout.MAC_TABLE_DEFAULT, 10, 60)
    for flag, value in (("--mac-table-max", "0"), ("--mac-learn-quota", "-1"), ("--mac-age", "0"), ("--mac-table-max", "lots")):
        with pytest.raises(UsageError, match=flag):
            from_args(build_parser().parse_args(["launch", flag, value]), environ={})
