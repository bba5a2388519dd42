"""fastdp on a real kernel: two hosts (netns) over a veth underlay, a container on each.

    mnfdp-ca [eth0 10.40.0.1] -- mnfdp-va -- meshnet(bridge) -- vxmesh ==UDP 6784== ... host b
                                              `-- mntap (TAP, opened by the test)
    mnfdp-a [mnfdp-ua 192.168.77.1/24] <------ veth ------> mnfdp-b [mnfdp-ub 192.168.77.2/24]

Each host is driven the way the router will drive it: VxlanKernel.ensure_device, converge to
plan(), a ProbeSocket plus a PathHealth on a real clock, and a re-plan when a mode changes.
Every namespace is removed in the fixture's finally, also when a test fails; a SIGALRM
bounds the whole module.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import socket
import struct
import subprocess
import time
from dataclasses import dataclass

import pytest

from meshnet.dataplane.fastdp import (
    FASTDP,
    PROBE_ETHERTYPE,
    PROBE_REQUEST,
    SLEEVE,
    BridgeFdb,
    LocalConfig,
    PeerInfo,
    plan,
    probe_frame_size,
)
from meshnet.dataplane.path_health import PathHealth
from meshnet.kernel.vxlan import ProbeSocket, VxlanKernel, in_netns, probe_esp

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]

HOSTS = {"a": ("192.168.77.1", 1, "10.40.0.1", "02:00:00:40:00:01"), "b": ("192.168.77.2", 2, "10.40.0.2", "02:00:00:40:00:02")}
NAMESPACES = ["mnfdp-a", "mnfdp-b", "mnfdp-ca", "mnfdp-cb"]
UNDERLAY_MTU = 1500
OVERLAY_MTU = 1422  # layout.overlay_mtu(1500): the sleeve's overhead is the larger one


def sh(*args: str, check: bool = True, timeout: float = 10) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=check, timeout=timeout, capture_output=True, text=True)


def remove_namespaces() -> None:
    for ns in NAMESPACES:
        if os.path.exists(f"/run/netns/{ns}"):
            sh("ip", "netns", "del", ns, check=False)


def open_tap(ns: str, name: str) -> int:
    """Attach to the persistent TAP so it has carrier, as the pump would."""
    with in_netns(ns):
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH", name.encode(), 0x0002 | 0x1000))  # TUNSETIFF TAP|NO_PI
    return fd


def drain(fd: int) -> list[bytes]:
    frames = []
    while True:
        try:
            frames.append(os.read(fd, 65536))
        except BlockingIOError:
            return frames


@dataclass
class Host:
    name: str
    local: LocalConfig
    peer: int
    peer_ip: str
    container_mac: str  # the other host's container, learned from "gossip"
    kernel: VxlanKernel
    sock: ProbeSocket | None = None
    health: PathHealth | None = None
    tap_fd: int | None = None

    def want(self):
        mode, _ = self.health.mode(self.peer) if self.health else (FASTDP, "")
        return plan(self.local, {self.peer: PeerInfo(self.peer_ip, mode)}, {self.container_mac: self.peer})

    def step(self, now: float) -> None:
        """One turn of the router's fastdp loop."""
        for pid, seq in self.health.probes_due(now):
            self.sock.send_request(pid, seq)
        while (probe := self.sock.recv()) is not None:
            if probe.kind == PROBE_REQUEST:
                self.sock.send_reply(probe)
            else:
                self.health.on_probe_reply(probe.sender, probe.seq, now)
        if self.health.tick(now):
            self.kernel.converge(self.local, self.want())


def run_until(hosts: list[Host], done, timeout: float) -> float:
    """Drive every host until done() holds; return the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        now = time.monotonic()
        for h in hosts:
            h.step(now)
        if done():
            return time.monotonic() - start
        deadlines = [h.health.next_deadline() for h in hosts]
        wait = min([d - time.monotonic() for d in deadlines if d is not None] + [0.05])
        select.select([h.sock for h in hosts], [], [], max(0.0, wait))
    raise AssertionError(f"not done after {timeout}s: {[h.health.modes() for h in hosts]}")


def ping(src: str, dst: str, *, size: int = 56, count: int = 3) -> bool:
    r = sh("ip", "netns", "exec", src, "ping", "-c", str(count), "-i", "0.2", "-W", "1", "-M", "do", "-s", str(size), dst, check=False, timeout=15)
    return r.returncode == 0


def vxlan_stats(ns: str) -> dict:
    link = json.loads(sh("ip", "-n", ns, "-s", "-j", "link", "show", "vxmesh").stdout)[0]
    return link["stats64"]


def block(ns: str) -> None:
    sh("ip", "netns", "exec", ns, "nft", "add table inet mnfdp")
    sh("ip", "netns", "exec", ns, "nft", "add chain inet mnfdp in { type filter hook input priority 0; }")
    sh("ip", "netns", "exec", ns, "nft", "add rule inet mnfdp in udp dport 6784 drop")


def unblock(ns: str) -> None:
    sh("ip", "netns", "exec", ns, "nft", "delete table inet mnfdp")


@pytest.fixture(scope="module")
def testbed():
    def expired(signum, frame):
        raise TimeoutError("netns fastdp tests took longer than 180 s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(180)
    hosts: list[Host] = []
    try:
        remove_namespaces()  # left over from a killed run: only our own names
        for ns in NAMESPACES:
            sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", "mnfdp-ua", "netns", "mnfdp-a", "type", "veth", "peer", "name", "mnfdp-ub", "netns", "mnfdp-b")
        for n, (ul_ip, pid, ct_ip, ct_mac) in HOSTS.items():
            ns, ct = f"mnfdp-{n}", f"mnfdp-c{n}"
            sh("ip", "-n", ns, "addr", "add", f"{ul_ip}/24", "dev", f"mnfdp-u{n}")
            sh("ip", "-n", ns, "link", "set", f"mnfdp-u{n}", "mtu", str(UNDERLAY_MTU), "up")
            sh("ip", "-n", ns, "link", "add", "meshnet", "type", "bridge")
            sh("ip", "-n", ns, "link", "set", "meshnet", "mtu", str(OVERLAY_MTU), "up")
            sh("ip", "-n", ns, "tuntap", "add", "mode", "tap", "name", "mntap")
            sh("ip", "-n", ns, "link", "set", "mntap", "master", "meshnet", "mtu", str(OVERLAY_MTU), "up")
            sh("ip", "-n", ns, "link", "add", f"mnfdp-v{n}", "mtu", str(OVERLAY_MTU), "type", "veth", "peer", "name", "eth0", "netns", ct)
            sh("ip", "-n", ns, "link", "set", f"mnfdp-v{n}", "master", "meshnet", "up")
            sh("ip", "-n", ct, "link", "set", "eth0", "address", ct_mac, "mtu", str(OVERLAY_MTU), "up")
            sh("ip", "-n", ct, "addr", "add", f"{ct_ip}/24", "dev", "eth0")
        for n, (ul_ip, pid, _, _) in HOSTS.items():
            other = "b" if n == "a" else "a"
            local = LocalConfig(pid, "meshnet", "mntap", "vxmesh", ul_ip, OVERLAY_MTU)
            h = Host(f"mnfdp-{n}", local, HOSTS[other][1], HOSTS[other][0], HOSTS[other][3], VxlanKernel(netns=f"mnfdp-{n}"))
            h.kernel.ensure_device(local)
            h.tap_fd = open_tap(h.name, "mntap")
            hosts.append(h)
        yield hosts
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        for h in hosts:
            for close in (h.kernel.close, h.sock.close if h.sock else None, lambda: h.tap_fd is not None and os.close(h.tap_fd)):
                try:
                    close and close()
                except OSError:
                    pass
        remove_namespaces()


def test_planned_state_is_applied_and_restart_converges(testbed):
    for h in testbed:
        want = h.want()
        h.kernel.converge(h.local, want)
        assert h.kernel.dump(h.local) == want
        h.kernel.ensure_device(h.local)  # a restarted router: same device, nothing to change
        again = VxlanKernel(netns=h.name)
        try:
            assert again.converge(h.local, want) == []
        finally:
            again.close()
    bridge = sh("bridge", "-n", "mnfdp-a", "fdb", "show", "dev", "vxmesh").stdout
    assert "00:00:00:00:00:00 dst 192.168.77.2 self permanent" in bridge
    assert "02:00:00:40:00:02 master meshnet static" in bridge.replace("sticky ", "")
    links = sh("bridge", "-n", "mnfdp-a", "-d", "link", "show").stdout
    for port in ("vxmesh", "mntap"):
        line = links[links.index(f": {port}:"):]
        assert "isolated on" in line.split("\n", 2)[1]


def test_containers_ping_over_vxlan(testbed):
    before = vxlan_stats("mnfdp-a")
    drain(testbed[0].tap_fd)
    drain(testbed[1].tap_fd)
    assert ping("mnfdp-ca", "10.40.0.2")
    assert ping("mnfdp-ca", "10.40.0.2", size=OVERLAY_MTU - 28, count=2)  # full-size, DF
    after = vxlan_stats("mnfdp-a")
    assert after["tx"]["packets"] >= before["tx"]["packets"] + 5
    assert after["rx"]["packets"] >= before["rx"]["packets"] + 5
    # split horizon: ca's ARP broadcast is flooded to a's TAP (a local port may reach the
    # sleeve), but at b it arrived over VXLAN and must not be flooded on to b's TAP
    from_ca = bytes.fromhex("020000400001")
    assert [f for f in drain(testbed[0].tap_fd) if f[6:12] == from_ca]
    assert not [f for f in drain(testbed[1].tap_fd) if f[6:12] == from_ca]


def test_probes_are_answered_and_peers_move_to_fastdp(testbed):
    for h in testbed:
        h.sock = ProbeSocket("vxmesh", h.local.peer_id, probe_frame_size(OVERLAY_MTU), netns=h.name)
        h.health = PathHealth([h.peer], now=time.monotonic())
        assert h.health.mode(h.peer)[0] == SLEEVE
        h.kernel.converge(h.local, h.want())  # unverified peers start on the sleeve
        assert BridgeFdb(h.container_mac, "mntap") in h.kernel.dump(h.local).bridge_fdb
    with in_netns("mnfdp-cb"):
        spy = socket.socket(socket.AF_PACKET, socket.SOCK_RAW | socket.SOCK_NONBLOCK, socket.htons(PROBE_ETHERTYPE))
    try:
        spy.bind(("eth0", PROBE_ETHERTYPE))
        took = run_until(testbed, lambda: all(h.health.mode(h.peer)[0] == FASTDP for h in testbed), timeout=6)
        print(f"sleeve -> fastdp after {took:.2f}s")
        assert took < 4
        for h in testbed:
            assert BridgeFdb(h.container_mac, "vxmesh") in h.kernel.dump(h.local).bridge_fdb
        # the bridge drops probes at the VXLAN port: containers never see them
        with pytest.raises(BlockingIOError):
            spy.recv(65536)
    finally:
        spy.close()
    assert ping("mnfdp-ca", "10.40.0.2")
    for h in testbed:  # the BPF filter kept the pings out of the probe sockets
        h.step(time.monotonic())
        assert h.sock.dropped == 0


def test_blocked_vxlan_port_falls_back_to_sleeve_and_recovers(testbed):
    a, b = testbed
    run_until(testbed, lambda: all(h.health.mode(h.peer)[0] == FASTDP for h in testbed), timeout=6)
    block("mnfdp-b")
    try:
        took = run_until(testbed, lambda: a.health.mode(2)[0] == SLEEVE and b.health.mode(1)[0] == SLEEVE, timeout=8)
        print(f"UDP 6784 blocked: sleeve after {took:.2f}s")
        assert took <= 4.0, took
        assert a.health.mode(2) == (SLEEVE, "no vxlan probe reply for 3.0s")
        assert BridgeFdb(a.container_mac, "mntap") in a.kernel.dump(a.local).bridge_fdb
    finally:
        unblock("mnfdp-b")
    took = run_until(testbed, lambda: all(h.health.mode(h.peer)[0] == FASTDP for h in testbed), timeout=8)
    print(f"unblocked: fastdp after {took:.2f}s")
    assert took <= 4.0, took
    assert BridgeFdb(a.container_mac, "vxmesh") in a.kernel.dump(a.local).bridge_fdb
    assert ping("mnfdp-ca", "10.40.0.2")


def test_underlay_mtu_too_small_falls_back_to_sleeve(testbed):
    run_until(testbed, lambda: all(h.health.mode(h.peer)[0] == FASTDP for h in testbed), timeout=6)
    sh("ip", "-n", "mnfdp-b", "link", "set", "mnfdp-ub", "mtu", "1400")  # < 1422 + 50
    try:
        took = run_until(testbed, lambda: all(h.health.mode(h.peer)[0] == SLEEVE for h in testbed), timeout=8)
        print(f"underlay MTU 1400: sleeve after {took:.2f}s")
        assert took <= 4.0, took
    finally:
        sh("ip", "-n", "mnfdp-b", "link", "set", "mnfdp-ub", "mtu", str(UNDERLAY_MTU))
    run_until(testbed, lambda: all(h.health.mode(h.peer)[0] == FASTDP for h in testbed), timeout=8)


def test_esp_probe_answers_and_says_why(testbed):
    with in_netns("mnfdp-a"):
        available, why = probe_esp()
    assert isinstance(available, bool) and why
    if not available:
        assert "ESP" in why or "xfrm" in why
    print("ESP:", available, why)
