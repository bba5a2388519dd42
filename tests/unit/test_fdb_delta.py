"""fastdp's FDB by delta: the planner agrees with `fastdp.plan`, and an update costs
O(changes) netlink operations, never a dump (counted through FakeNetlink)."""

import asyncio
import time

import pytest
from hypothesis import given, settings, strategies as st

from meshnet.dataplane import fastdp
from meshnet.dataplane.fastdp import FASTDP, SLEEVE, LocalConfig, PeerInfo, diff, plan
from meshnet.dataplane.fdb_delta import FdbPlanner
from meshnet.kernel.vxlan import VxlanKernel
from meshnet.runtime import fastdp_driver
from meshnet.testing.fakenetlink import FakeNetlink

LOCAL = LocalConfig(peer_id=1, bridge="meshnet", tap="mntap", vxlan="vxmesh", local_ip="192.168.90.1", mtu=1422)
OFF = LocalConfig(peer_id=1, bridge="meshnet", tap="mntap", vxlan=None, local_ip="192.168.90.1", mtu=1422)


def host() -> tuple[FakeNetlink, VxlanKernel]:
    nl = FakeNetlink()
    nl.add_link("meshnet", "bridge")
    nl.add_link("mntap", "tun", master="meshnet")
    kernel = VxlanKernel(nl)
    kernel.ensure_device(LOCAL)
    return nl, kernel


def mac(i: int) -> str:
    return "02:00:%02x:%02x:%02x:%02x" % tuple(i.to_bytes(4, "big"))


# A step: (peer 2..6, what) with what one of: ("peer", ip index or None, fastdp?), ("eps", [mac numbers]), ("gone",)
steps = st.lists(
    st.tuples(
        st.integers(2, 6),
        st.one_of(
            st.tuples(st.just("peer"), st.one_of(st.none(), st.integers(0, 3)), st.booleans()),
            st.tuples(st.just("eps"), st.lists(st.integers(0, 12), max_size=6)),
            st.tuples(st.just("gone")),
        ),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(steps, st.booleans())
def test_the_planner_agrees_with_the_full_plan_and_the_kernel_follows(sequence, fastdp_on):
    local = LOCAL if fastdp_on else OFF
    nl, kernel = host()
    planner = FdbPlanner(local)
    peers: dict[int, PeerInfo] = {}
    for pid, (what, *args) in sequence:
        if what == "peer":
            ip, fast = args
            info = PeerInfo(f"192.168.90.{10 + ip}" if ip is not None else "", FASTDP if fast and fastdp_on and ip is not None else SLEEVE)
            peers[pid] = info
            planner.set_peer(pid, info)
        elif what == "eps":
            planner.set_endpoints(pid, [mac(n) for n in args[0]])
        else:
            peers.pop(pid, None)
            planner.remove_peer(pid)
        want = planner.want()
        # the reference: the whole plan from the same peers and the planner's owners
        assert want == plan(local, peers, planner.owners())
        kernel.apply(local, planner.take_ops())
        if fastdp_on:
            assert kernel.dump(local) == want
            assert diff(want, kernel.dump(local)) == []


def test_the_earlier_claim_keeps_a_mac_and_the_next_takes_it_over():
    planner = FdbPlanner(LOCAL)
    planner.set_peer(2, PeerInfo("192.168.90.2", FASTDP))
    planner.set_peer(3, PeerInfo("192.168.90.3", SLEEVE))
    planner.set_endpoints(2, [mac(1)])
    planner.set_endpoints(3, [mac(1)])
    assert planner.owners() == {mac(1): 2}
    planner.take_ops()
    planner.set_endpoints(2, [])
    assert planner.owners() == {mac(1): 3}
    ops = planner.take_ops()
    assert [(o.action, o.entry) for o in ops] == [
        ("add", fastdp.BridgeFdb(mac(1), "mntap")),
        ("del", fastdp.BridgeFdb(mac(1), "vxmesh")),
        ("del", fastdp.VxlanFdb(mac(1), "192.168.90.2")),
    ]


def mesh(peers: int, macs: int) -> tuple[dict[int, str], dict[int, frozenset[str]]]:
    """`macs` endpoints spread over `peers` peers, as the router hands them to the driver
    ({peer id: the MACs it owns})."""
    ips = {pid: f"192.168.{90 + pid // 250}.{pid % 250 + 2}" for pid in range(2, peers + 2)}
    eps: dict[int, set[str]] = {pid: set() for pid in ips}
    for n in range(macs):
        eps[2 + n % peers].add(mac(n))
    return ips, {pid: frozenset(m) for pid, m in eps.items()}


class KernelThread:
    """The router's kernel thread, run inline: each call is timed."""

    def __init__(self):
        self.calls: list[tuple[str, float]] = []

    async def __call__(self, fn, *args):
        started = time.perf_counter()
        result = fn(*args)
        self.calls.append((getattr(fn, "__name__", str(fn)), time.perf_counter() - started))
        await asyncio.sleep(0)
        return result


@pytest.fixture
def driver(monkeypatch):
    nl, _ = host()
    monkeypatch.setattr(fastdp_driver, "esp_available", lambda: False)
    monkeypatch.setattr(fastdp_driver, "VxlanKernel", lambda: VxlanKernel(nl))

    class NoProbes:
        def __init__(self, *args):
            pass

        def fileno(self):
            return -1

    monkeypatch.setattr(fastdp_driver, "ProbeSocket", NoProbes)
    kernel = KernelThread()
    drv = fastdp_driver.FastdpDriver(kernel, peer_id=1, bridge="meshnet", tap="mntap", mtu=1422, no_fastdp=False, encrypted=False)
    return drv, nl, kernel


def test_an_update_with_20000_gossiped_macs_costs_only_its_changes(driver):
    drv, nl, kernel = driver

    async def run():
        await drv.start("192.168.90.1")
        ips, eps = mesh(50, 20000)
        drv.update(ips, eps)
        await drv.settled()
        assert sum(1 for c in nl.calls if c[0] == "fdb_add") >= 20000  # the first sync: every MAC
        dumps, ops_before = drv.sync_counts["reconciles"], nl.fdb_ops()
        kernel.calls.clear()
        await asyncio.sleep(1.0)  # the first sync was big: the next waits for it (rate bound)
        eps = dict(eps)
        eps[7] = eps[7] | {mac(999999)}  # one container more on one peer
        started = time.perf_counter()
        drv.update(ips, eps)
        await drv.settled()
        took = time.perf_counter() - started
        assert nl.fdb_ops() - ops_before == 1  # its bridge entry (the peer is still on the sleeve)
        assert drv.sync_counts["reconciles"] == dumps  # no dump
        assert max(t for _, t in kernel.calls) < 0.05, kernel.calls  # no kernel-thread call is long
        sync = drv.sync_stats()["coalesce_last_run_s"]
        print(f"\none update with 20,000 gossiped MACs: {took * 1000:.1f} ms end to end, the sync {sync * 1000:.1f} ms, "
              f"{nl.fdb_ops() - ops_before} netlink op(s), longest kernel-thread call {max(t for _, t in kernel.calls) * 1000:.1f} ms")
        assert took < 0.5
        # a whole peer going away costs its own MACs, not the mesh's
        ops_before = nl.fdb_ops()
        gone = {p: ip for p, ip in ips.items() if p != 9}
        drv.update(gone, {p: e for p, e in eps.items() if p != 9})
        await drv.settled()
        assert nl.fdb_ops() - ops_before == len(eps[9]) + 1 == 401  # its MACs and its probe entry

    asyncio.run(run())


def test_changes_during_a_sync_make_one_more_sync(driver):
    drv, nl, kernel = driver

    async def run():
        await drv.start("192.168.90.1")
        ips, eps = mesh(5, 50)
        for i in range(20):  # a burst of topology changes
            eps = {**eps, 2: eps[2] | {mac(1000 + i)}}
            drv.update(ips, eps)
        await drv.settled()
        stats = drv.sync_stats()
        assert stats["coalesce_requests"] == 20 and stats["coalesce_runs"] <= 2
        assert {m for m, e in nl.bridge_fdb[nl.link("meshnet").index].items()} >= {mac(1000 + i) for i in range(20)}

    asyncio.run(run())
