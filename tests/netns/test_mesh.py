"""The control plane on real routers: multi-hop relay, passwords, identity, scale."""

import os
import subprocess
import time

import pytest

from meshnet.lab import Lab, block, ping, transfer, wait_for
from meshnet.state.statedir import StateDir

pytestmark = pytest.mark.netns


def established(status) -> set[str]:
    return {c["nick"] for c in status["connections"] if c["state"] == "established"}


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


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return sum(int(x) for x in f.read().rsplit(")", 1)[1].split()[11:13])


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS")).split()[1]) / 1024


@pytest.mark.slow
def test_forty_routers_in_the_default_mode_converge_and_idle_quietly():
    """Forty, past 33: there the lab's hosts fill the machine's one neighbour table (every
    router keeps an entry for every other host fresh) unless the lab makes room for them."""
    n = 40
    lab = Lab(prefix="mnz", hosts=n)
    try:
        lab.up(start_routers=False)
        launched = time.monotonic()
        for i in range(1, n + 1):
            lab.start_router(i)  # every router knows only h1
        last = time.monotonic()
        full = lambda: all(len(established(lab.status(i))) == n - 1 for i in range(1, n + 1))
        took = wait_for(full, 120, interval=1)
        assert took is not None, "no full mesh within 120 s of the last launch"
        converged = time.monotonic() - last
        pids = [int(open(f"{lab.run_dir(i)}/meshnet.pid").read()) for i in range(1, n + 1)]
        time.sleep(5)  # probes find their rhythm
        before, t0 = sum(cpu_ticks(p) for p in pids), time.monotonic()
        time.sleep(15)
        per_router = (sum(cpu_ticks(p) for p in pids) - before) / os.sysconf("SC_CLK_TCK") / (time.monotonic() - t0) / n
        rss = [rss_mib(p) for p in pids]
        drops = sum(open(f"{lab.run_dir(i)}/meshnet.log").read().count("disconnected from") for i in range(1, n + 1))
        print(
            f"\n{n} routers (fastdp): {last - launched:.1f} s for {n} launches; full mesh {converged:.1f} s after the last; "
            f"idle CPU {per_router * 100:.2f}% of a core per router; RSS {sum(rss) / n:.1f} MiB average, {max(rss):.1f} max; "
            f"{drops} connection drops"
        )
        assert drops == 0, "a connection dropped while the mesh formed"
        assert per_router < 0.02  # generous for a shared machine; bench/router_scale.py measures it quietly
        assert max(rss) < 60
        modes = {p.get("mode") for p in lab.status(n)["peers"] if p["nick"] != f"mnz-h{n}"}
        assert modes == {"fastdp"}, modes
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
