"""Routers with `--pump-threads 2` on an encrypted sleeve: the TAP gets two queues, the
sleeve two steered UDP sockets, and flows spread over both pump threads.

::

    mnvt-h1 ---- mnvt-h2      kernel VXLAN off, a password: every frame is sealed
     c1             c1        iperf3 with 4 TCP flows between the containers

Seen from outside: the kernel shows a two-queue TAP and two pump threads per router
(their own names in /proc); four flows move data without reordering (the sender's TCP
counts reordering it saw: under 0.01% of the segments), with retransmissions under 0.1%
and no datagram dropped as a replay; each pump thread of the receiving router spends CPU on
them; pings and a single flow still work.
"""

from __future__ import annotations

import ipaddress
import json
import pathlib
import subprocess
import time

import pytest

from meshnet.dataplane.layout import flow_hint
from meshnet.lab import Lab, wait_for

pytestmark = pytest.mark.netns


def pump_threads(lab: Lab, i: int) -> dict[str, float]:
    """{thread name: CPU seconds} of host i's router threads named meshnet-pump*."""
    pid = int(pathlib.Path(f"{lab.run_dir(i)}/meshnet.pid").read_text())
    out = {}
    for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
        name = (task / "comm").read_text().strip()
        if name.startswith("meshnet-pump"):
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            out[name] = (int(fields[11]) + int(fields[12])) / 100
    return out


def spread_ports(src: str, dst: str, flows: int, threads: int = 2) -> int:
    """A first client port for `flows` consecutive ports to port 5201 whose connections'
    flow hints (layout.flow_hint) steer them to every one of `threads` threads."""
    head = bytes(12) + b"\x08\x00" + b"\x45" + bytes(8) + b"\x06" + bytes(2)
    head += ipaddress.ip_address(src).packed + ipaddress.ip_address(dst).packed
    for first in range(40000, 60000, flows):
        hints = {flow_hint(head + (first + k).to_bytes(2, "big") + (5201).to_bytes(2, "big") + bytes(16)) % threads
                 for k in range(flows)}
        if len(hints) == threads:
            return first
    raise AssertionError("no spread")


REORDER_COUNTERS = ("TCPReordSeen", "TCPSACKReorder", "TCPTSReorder", "TCPRenoReorder")


def reorderings(ns: str) -> int:
    """Reordering the TCP stacks in `ns` detected (TcpExt counters of /proc/net/netstat,
    which are per network namespace): segments that arrived after later ones."""
    lines = subprocess.run(["ip", "netns", "exec", ns, "cat", "/proc/net/netstat"], capture_output=True, text=True, check=True).stdout.splitlines()
    names, values = next((lines[k].split()[1:], lines[k + 1].split()[1:]) for k in range(0, len(lines), 2) if lines[k].startswith("TcpExt:"))
    counters = dict(zip(names, map(int, values)))
    return sum(counters.get(name, 0) for name in REORDER_COUNTERS)


def iperf(lab: Lab, src: str, dst: str, ip: str, *args: str) -> dict:
    server = subprocess.Popen(["ip", "netns", "exec", dst, "iperf3", "-s", "-1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        out = subprocess.run(["ip", "netns", "exec", src, "iperf3", "-c", ip, "-J", "-t", "4", *args],
                             capture_output=True, text=True, timeout=60)
        end = json.loads(out.stdout)["end"]
        return {**end["sum_received"], "retransmits": end["sum_sent"].get("retransmits", 0)}
    finally:
        server.kill()
        server.wait()


def assert_few_replay_drops(stats: dict) -> None:
    """Fresh datagrams dropped as replays: at most 1 in 10,000. (Not none: a peer's sending
    threads share its counter, and one preempted between taking counters and sending can
    still fall a window behind on a saturated 2-core machine; per-lane windows removed the
    thousands a second that came from the receiving threads.)"""
    assert stats["drop_replay"] <= stats["udp_rx"] / 10_000, (stats["drop_replay"], stats["udp_rx"])


@pytest.fixture(scope="module")
def lab():
    lab = Lab(prefix="mnvt", hosts=2, password="threads-not-secret", extra_flags=["--no-fastdp", "--pump-threads", "2"])
    try:
        lab.up()
        lab.wait_mesh()
        lab.ctrs = [lab.add_container(i, 1) for i in (1, 2)]
        assert wait_for(lambda: lab.ping(lab.ctrs[0][0], lab.ctrs[1][1], wait=1), 20) is not None
        yield lab
    finally:
        lab.down()


def test_two_pump_threads_carry_flows_between_containers(lab):
    (c1, ip1), (c2, ip2) = lab.ctrs
    for i in (1, 2):
        features = lab.status(i)["dataplane"]["pump"]["features"]
        assert features["threads"] == 2 and features["crypto"] == "AES-256-GCM"
        queues = subprocess.run(["ip", "netns", "exec", lab.host_ns(i), "ls", "/sys/class/net/mntap/queues"],
                                capture_output=True, text=True, check=True).stdout.split()
        assert sorted(q for q in queues if q.startswith("tx-")) == ["tx-0", "tx-1"]
        assert set(pump_threads(lab, i)) == {"meshnet-pump", "meshnet-pump-1"}
    before = pump_threads(lab, 2)
    first = spread_ports(ip1, ip2, 4)  # four connections, not all hashed to one thread
    reordered = reorderings(c1)
    four = iperf(lab, c1, c2, ip2, "-P", "4", "-C", "cubic", "--cport", str(first))
    reordered = reorderings(c1) - reordered
    spent = {name: cpu - before[name] for name, cpu in pump_threads(lab, 2).items()}
    print(f"\n4 flows: {four['bits_per_second'] / 1e9:.2f} Gbit/s, {four['retransmits']} retransmitted, "
          f"{reordered} reorderings seen; receiving pump threads CPU s: {spent}")
    assert four["bytes"] > 10 << 20
    # Each flow stays on one thread end to end: the sender's TCP sees no reordering; and the
    # receiver's threads drop nothing as a replay (its windows are per lane: a shared one
    # dropped thousands of fresh datagrams whenever one thread lagged the other).
    assert reordered <= four["bytes"] / 1400 / 10_000, reordered
    assert four["retransmits"] <= four["bytes"] / 1400 / 1000, four["retransmits"]
    assert_few_replay_drops(lab.status(2)["dataplane"]["stats"])
    assert all(cpu > 0 for cpu in spent.values()), spent  # both threads took their flows
    one = iperf(lab, c1, c2, ip2, "-C", "cubic")
    assert one["bytes"] > 10 << 20
    stats = lab.status(2)["dataplane"]["stats"]
    assert_few_replay_drops(stats)
    assert stats["drop_auth"] == 0
    assert lab.ping(c2, lab.ctrs[0][1])
