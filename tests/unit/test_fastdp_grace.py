"""fastdp across restarts (dataplane/grace.py): what the kernel still holds is adopted, departed
peers stay programmed while their path answers probes, and the live mesh always wins."""

from meshnet.dataplane import grace
from meshnet.dataplane.fastdp import (
    FASTDP,
    REASON_ADOPTED,
    REASON_HEALTHY,
    SLEEVE,
    BridgeFdb,
    LocalConfig,
    PathHealth,
    PeerInfo,
    VxlanFdb,
    diff,
    plan,
    probe_mac,
)
from meshnet.kernel.vxlan import VxlanKernel
from meshnet.testing.fakenetlink import FakeNetlink

LOCAL = LocalConfig(peer_id=1, bridge="meshnet", tap="mntap", vxlan="vxmesh", local_ip="192.168.90.1", mtu=1422)
IP2, IP3 = "192.168.90.2", "192.168.90.3"
EPS = {"02:00:00:00:02:01": 2, "02:00:00:00:02:02": 2, "02:00:00:00:03:01": 3}


def kernel_after_a_run() -> tuple[FakeNetlink, VxlanKernel]:
    """What a router killed while peer 2 was on fastdp and peer 3 on sleeve leaves behind."""
    nl = FakeNetlink()
    nl.add_link("meshnet", "bridge")
    nl.add_link("mntap", "tun", master="meshnet")
    kernel = VxlanKernel(nl)
    kernel.ensure_device(LOCAL)
    kernel.converge(LOCAL, plan(LOCAL, {2: PeerInfo(IP2, FASTDP), 3: PeerInfo(IP3, SLEEVE)}, EPS))
    return nl, kernel


def by_mac(endpoints: dict[int, frozenset[str]]) -> dict[str, int]:
    """The planner's per-peer MACs as `fastdp.plan` takes them."""
    return {mac: pid for pid, macs in endpoints.items() for mac in macs}


def modes(**by_pid):
    return lambda pid: by_pid.get(f"p{pid}", SLEEVE)


def test_adopt_reads_back_the_fastdp_peers_and_only_those():
    _, kernel = kernel_after_a_run()
    adopted = grace.adopt(LOCAL, kernel.dump(LOCAL))
    assert adopted == {2: grace.Adopted(IP2, frozenset({"02:00:00:00:02:01", "02:00:00:00:02:02"}))}
    assert grace.adopt(LocalConfig(**{**LOCAL.__dict__, "vxlan": None}), kernel.dump(LOCAL)) == {}


def test_a_restarted_router_leaves_the_adopted_fastdp_state_as_it_is():
    _, kernel = kernel_after_a_run()
    have = kernel.dump(LOCAL)
    adopted = grace.adopt(LOCAL, have)
    infos, endpoints = grace.plan_inputs(live={}, departed={}, adopted=adopted, endpoints={}, mode=modes(p2=FASTDP))
    ops = diff(plan(LOCAL, infos, by_mac(endpoints)), have)
    touched = {op.entry for op in ops}
    assert all(e.dst != IP2 for e in touched if isinstance(e, VxlanFdb))  # nothing of peer 2 moves
    assert not {e for e in touched if isinstance(e, BridgeFdb) and e.mac.startswith("02:00:00:00:02")}
    assert {op.action for op in ops} == {"del"}  # only the sleeve peer's leftovers go
    assert VxlanFdb(probe_mac(3), IP3) in touched


def test_departed_peers_are_programmed_while_their_path_answers_and_only_probed_after():
    departed = {2: IP2}
    eps = {2: frozenset({"02:00:00:00:02:01"})}
    alive, alive_eps = grace.plan_inputs(live={}, departed=departed, adopted={}, endpoints=eps, mode=modes(p2=FASTDP))
    want = plan(LOCAL, alive, by_mac(alive_eps))
    assert VxlanFdb("02:00:00:00:02:01", IP2) in want.vxlan_fdb and BridgeFdb("02:00:00:00:02:01", "vxmesh") in want.bridge_fdb
    dead, dead_eps = grace.plan_inputs(live={}, departed=departed, adopted={}, endpoints=eps, mode=modes())
    want = plan(LOCAL, dead, by_mac(dead_eps))
    assert want.vxlan_fdb == {VxlanFdb(probe_mac(2), IP2)}  # still probed: a path that comes back is seen
    assert not [e for e in want.bridge_fdb if e.mac == "02:00:00:00:02:01"]  # not even to the TAP
    assert grace.probed({5: "192.168.90.5", 6: None}, departed, {7: grace.Adopted(IP3, frozenset())}) == {2, 5, 7}


def test_the_live_mesh_wins_over_adopted_state():
    adopted = {2: grace.Adopted(IP2, frozenset({"02:00:00:00:02:01", "02:00:00:00:09:09"}))}
    live_eps = {2: frozenset({"02:00:00:00:02:01"})}  # 09:09 left while we were down
    infos, endpoints = grace.plan_inputs(live={2: IP2}, departed={}, adopted=adopted, endpoints=live_eps, mode=modes(p2=FASTDP))
    assert endpoints == live_eps and infos == {2: PeerInfo(IP2, FASTDP)}
    other = {3: grace.Adopted(IP3, frozenset({"02:00:00:00:02:01"}))}  # a MAC the mesh places elsewhere
    _, endpoints = grace.plan_inputs(live={2: IP2}, departed={}, adopted=other, endpoints=live_eps, mode=modes(p2=FASTDP, p3=FASTDP))
    assert by_mac(endpoints) == {"02:00:00:00:02:01": 2}


def test_adopted_paths_start_on_fastdp_and_fall_back_only_without_replies():
    health = PathHealth(interval=1.0, fail_after=3, now=0.0, first_seq=0)
    health.adopt([2, 3], now=0.0)
    assert health.mode(2) == (FASTDP, REASON_ADOPTED)
    changed, now = [], 0.0
    while now < 5.0:
        for pid, seq in health.probes_due(now):
            if pid == 2:  # 2's kernel answers, 3 is gone
                health.on_probe_reply(pid, seq, now + 0.01)
        changed += [(round(now, 1), pid, mode) for pid, mode, _ in health.tick(now + 0.02)]
        now += 0.1
    assert health.mode(2) == (FASTDP, REASON_HEALTHY)
    assert [(pid, mode) for _, pid, mode in changed] == [(3, SLEEVE)]
    assert 2.9 <= changed[0][0] <= 3.0  # the fallback window: fail_after x interval


def test_adopted_peers_end_when_the_mesh_names_them_or_they_were_removed():
    adopted = {2: grace.Adopted(IP2, frozenset()), 3: grace.Adopted(IP3, frozenset()), 4: grace.Adopted("192.168.90.4", frozenset())}
    kept = grace.still_adopted(adopted, live={2: IP2}, departed={}, removed=set())
    assert set(kept) == {3, 4}
    kept = grace.still_adopted(kept, live={}, departed={3: IP3}, removed={4})  # 4: rmpeer while we were down
    assert kept == {}
