"""The control plane on real routers: multi-hop relay, passwords, identity, scale."""

import os
import subprocess
import time

import pytest

from meshnet.lab import Lab, block, ping, transfer, wait_for
from meshnet.state.statedir import StateDir

pytestmark = pytest.mark.netns


def reachable(lab, i):
    return {p["nick"] for p in lab.status(i)["peers"] if p["reachable"]}


def test_line_topology_relays_through_the_middle():
    """h1 - h2 - h3 with h1 <-> h3 dropped on the underlay: containers still talk, via h2.

    ::
        h1 ---- h2 ---- h3
         \\______x_______/     nftables in h1 and h3 drop each other's underlay address
    """
    lab = Lab(prefix="mnl", hosts=3)
    try:
        lab.up(start_routers=False)
        block(lab.host_ns(1), lab.host_ip(3))
        block(lab.host_ns(3), lab.host_ip(1))
        lab.start_router(1)
        lab.start_router(2)
        lab.start_router(3, peers=[lab.host_ip(2)])  # h3 cannot reach the seed h1
        lab.wait_mesh()
        (c1, ip1), (c3, ip3) = lab.add_container(1, 1), lab.add_container(3, 1)
        assert wait_for(lambda: ping(c1, ip3, wait=1), 10) is not None
        assert ping(c3, ip1)
        assert transfer(c1, c3, ip3, size=2 << 20)
        h1 = lab.status(1)
        h3_entry = next(p for p in h1["peers"] if p["nick"] == "mnl-h3")
        h2_name = next(p["name"] for p in h1["peers"] if p["nick"] == "mnl-h2")
        assert h3_entry["via"] == h2_name and h3_entry["mode"] == "sleeve"
        assert {c["nick"] for c in h1["connections"] if c["state"] == "established"} == {"mnl-h2"}
        assert lab.status(2)["dataplane"]["stats"]["relayed"] > 0
    finally:
        lab.down()


def test_wrong_password_is_refused_and_counted():
    lab = Lab(prefix="mnp", hosts=3, password="correct horse")
    try:
        lab.up(start_routers=False)
        lab.start_router(1)
        lab.start_router(2)
        lab.start_router(3, password="wrong horse")
        lab.wait_mesh_of([1, 2])
        assert wait_for(lambda: lab.status(1)["counters"]["wrong_password"] >= 1, 10) is not None
        time.sleep(1)
        assert "mnp-h3" not in reachable(lab, 1) and reachable(lab, 3) == {"mnp-h3"}
        refusals = lab.status(3)["refusals"]
        assert any("wrong password" in r["reason"] for r in refusals)
        assert any(r["address"] == lab.host_ip(3) for r in lab.status(1)["refusals"])
        assert lab.status(1)["router"]["encrypted"] is True
        (c1, _), (_, ip2) = lab.add_container(1, 1), lab.add_container(2, 1)
        assert wait_for(lambda: ping(c1, ip2, wait=1), 10) is not None  # the encrypted mesh works
        assert {c["mode"] for c in lab.status(1)["connections"] if c["state"] == "established"} == {"sleeve+encrypted"}
        log = open(f"{lab.run_dir(1)}/meshnet.log").read()
        assert "wrong password" in log and lab.host_ip(3) in log
    finally:
        lab.down()


def test_duplicate_peer_name_is_refused_on_both_sides():
    lab = Lab(prefix="mnd", hosts=3)
    try:
        lab.up(start_routers=False)
        lab.start_router(1)
        lab.start_router(2)
        lab.wait_mesh_of([1, 2])
        h1_name = lab.status(1)["router"]["name"]
        os.makedirs(lab.state_dir(3), exist_ok=True)
        clone = StateDir(lab.state_dir(3))  # a cloned VM: same persisted peer name as h1
        clone.put("peer_name", h1_name)
        clone.close()
        lab.start_router(3)
        assert wait_for(lambda: any("duplicate peer name" in r["reason"] for r in lab.status(3)["refusals"]), 10)
        assert any("duplicate peer name" in r["reason"] for r in lab.status(1)["refusals"])
        assert reachable(lab, 3) == {"mnd-h3"}
        assert lab.status(1)["router"]["nick"] == "mnd-h1" and "mnd-h2" in reachable(lab, 1)
    finally:
        lab.down()


@pytest.mark.slow
def test_thirty_routers_full_mesh_from_one_seed_and_idle_quietly():
    n = 30
    lab = Lab(prefix="mnz", hosts=n, extra_flags=["--no-fastdp"])
    try:
        lab.up(start_routers=False)
        for i in range(1, n + 1):
            lab.start_router(i)  # every router knows only h1
        started = time.monotonic()
        full = lambda: all(len([c for c in lab.status(i)["connections"] if c["state"] == "established"]) == n - 1 for i in range(1, n + 1))
        took = wait_for(full, 90, interval=1)
        assert took is not None, "no full mesh within 90 s"
        pids = [int(open(f"{lab.run_dir(i)}/meshnet.pid").read()) for i in range(1, n + 1)]
        cpu = lambda: sum(sum(int(x) for x in open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[11:13]) for p in pids)
        before, t0 = cpu(), time.monotonic()
        time.sleep(10)
        per_router = (cpu() - before) / os.sysconf("SC_CLK_TCK") / (time.monotonic() - t0) / n
        rss = [int(next(l for l in open(f"/proc/{p}/status") if l.startswith("VmRSS")).split()[1]) for p in pids]
        print(f"\n{n} routers: full mesh {time.monotonic() - started:.1f}s after the last start; "
              f"idle CPU {per_router * 100:.2f}% per router; RSS {sum(rss) / n / 1024:.1f} MiB average")
        assert per_router < 0.05  # near zero: under 5% of a core each, with 29 connections (measured 1-4%)
    finally:
        lab.down()


def test_connect_and_forget_persist_across_restarts():
    lab = Lab(prefix="mnc", hosts=2)
    try:
        lab.up(start_routers=False)
        lab.start_router(1)
        lab.start_router(2, seed=False)
        assert reachable(lab, 2) == {"mnc-h2"}
        result = subprocess.run(lab.meshnet(2, "connect", lab.host_ip(1)), capture_output=True, text=True)
        assert result.returncode == 0 and f"{lab.host_ip(1)}:6783" in result.stdout
        lab.wait_mesh()
        lab.stop_router(2)
        lab.start_router(2, seed=False)  # no peers on the command line: the connect was kept
        lab.wait_mesh()
        result = subprocess.run(lab.meshnet(2, "forget", lab.host_ip(1)), capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert "mnc-h1" in reachable(lab, 2)  # forget does not cut a live connection
        lab.stop_router(2)
        lab.start_router(2, seed=False)
        time.sleep(3)
        assert reachable(lab, 2) == {"mnc-h2"}  # ... but it is not dialled again
        bad = subprocess.run(lab.meshnet(2, "connect", "host:notaport"), capture_output=True, text=True)
        assert bad.returncode == 2 and "HOST[:PORT]" in bad.stderr  # a usage error: exit 2, one line
    finally:
        lab.down()
