"""Checks on a lab's namespaces for end-to-end tests: ping, TCP transfers, waits, firewalls,
loss over time (`Pinger`) and who answers ARP for an address (`arp_macs`).

Plain functions on namespace names (no `Lab` needed); `block`/`unblock` own the nft table
`inet meshnet_test` inside the namespace they are given.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from typing import Callable

# Runs inside the receiving namespace: accept one connection, hash everything it sends.
_SINK = """
import hashlib, socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(1)
print("ready", flush=True)
c, _ = s.accept(); h = hashlib.sha256(); n = 0
while chunk := c.recv(1 << 16):
    h.update(chunk); n += len(chunk)
print(n, h.hexdigest(), flush=True)
"""

_SOURCE = """
import socket, sys
data = open(sys.argv[3], "rb").read()
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
s.sendall(data); s.close()
"""


def in_ns(ns: str, *cmd: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *cmd]


def transfer(src_ns: str, dst_ns: str, dst_ip: str, size: int = 8 << 20, port: int = 5599, timeout: float = 60) -> bool:
    """Send `size` random bytes from src_ns to dst_ns over TCP; True if they arrive identical."""
    payload = os.urandom(size)
    path = f"/tmp/meshnet-transfer-{os.getpid()}"
    with open(path, "wb") as f:
        f.write(payload)
    sink = subprocess.Popen(in_ns(dst_ns, sys.executable, "-c", _SINK, str(port)), stdout=subprocess.PIPE, text=True)
    try:
        assert sink.stdout.readline().strip() == "ready"
        subprocess.run(in_ns(src_ns, sys.executable, "-c", _SOURCE, dst_ip, str(port), path), check=True, timeout=timeout)
        out, _ = sink.communicate(timeout=timeout)
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.wait()
        os.unlink(path)
    received, digest = out.split()
    return int(received) == size and digest == hashlib.sha256(payload).hexdigest()


# Runs inside a namespace: broadcast ARP probes for addresses, print every MAC that answers each.
_ARPING = r"""
import socket, struct, sys, time
ifname, wait, targets = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
s.bind((ifname, 0)); s.settimeout(0.05)
mac = s.getsockname()[4][:6]
src = socket.inet_aton("0.0.0.0")  # an ARP probe (RFC 5227): asks without claiming an address
def request(ip):
    return b"\xff" * 6 + mac + b"\x08\x06" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + src + bytes(6) + socket.inet_aton(ip)
wanted = {socket.inet_aton(ip): ip for ip in targets}
seen = {ip: set() for ip in targets}
end, sent = time.monotonic() + wait, 0.0
while time.monotonic() < end:
    if time.monotonic() - sent > 0.3:
        for ip in targets:
            s.send(request(ip))
        sent = time.monotonic()
    try:
        frame = s.recv(2048)
    except socket.timeout:
        continue
    if len(frame) >= 42 and frame[20:22] == b"\x00\x02" and frame[28:32] in wanted:
        seen[wanted[frame[28:32]]].add(frame[22:28].hex(":"))
for ip in targets:
    print(ip, *sorted(seen[ip]))
"""


def arp_table(ns: str, ips: list[str], *, ifname: str = "mesh0", wait: float = 1.5) -> dict[str, set[str]]:
    """{ip: the MACs that answer ARP for it}, asked from `ns` (its `ifname` is on the overlay)."""
    if not ips:
        return {}
    out = subprocess.run(in_ns(ns, sys.executable, "-c", _ARPING, ifname, str(wait), *ips), capture_output=True, text=True, timeout=wait + 30)
    table = {ip: set() for ip in ips}
    for line in out.stdout.splitlines():
        ip, *macs = line.split()
        table[ip] = set(macs)
    return table


def arp_macs(ns: str, ip: str, *, ifname: str = "mesh0", wait: float = 1.5) -> set[str]:
    """The MACs that answer ARP for `ip`, asked from `ns`."""
    return arp_table(ns, [ip], ifname=ifname, wait=wait)[ip]


class Pinger:
    """`ping -i 0.1` from `ns` to `ip` until `stop()`, which returns (sent, received)."""

    def __init__(self, ns: str, ip: str, interval: float = 0.1):
        self.interval = interval
        self._proc = subprocess.Popen(in_ns(ns, "ping", "-i", str(interval), "-W", "1", ip), stdout=subprocess.PIPE, text=True)

    def stop(self) -> tuple[int, int]:
        self._proc.send_signal(signal.SIGINT)
        out, _ = self._proc.communicate(timeout=30)
        found = re.search(r"(\d+) packets transmitted, (\d+) received", out)
        if found is None:
            raise RuntimeError(f"ping printed no summary: {out[-300:]!r}")
        sent, received = map(int, found.groups())
        return sent, received


def ping(ns: str, ip: str, *, count: int = 1, wait: float = 2) -> bool:
    result = subprocess.run(in_ns(ns, "ping", "-c", str(count), "-W", str(wait), "-q", ip), capture_output=True)
    return result.returncode == 0


def wait_for(check: Callable[[], bool], timeout: float, interval: float = 0.2) -> float | None:
    """Poll until check() is true; return the seconds it took, or None on timeout."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(interval)
    return None


def block(ns: str, peer_ip: str, *, udp_port: int | None = None) -> None:
    """Drop traffic to and from peer_ip inside ns: all of it, or only UDP to `udp_port`."""
    match = f"udp dport {udp_port} " if udp_port is not None else ""
    script = (
        "add table inet meshnet_test {"
        f" chain in {{ type filter hook input priority 0; ip saddr {peer_ip} {match}drop; }};"
        f" chain out {{ type filter hook output priority 0; ip daddr {peer_ip} {match}drop; }};"
        " }"
    )
    subprocess.run(["ip", "netns", "exec", ns, "nft", script], check=True)


def unblock(ns: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "nft", "delete table inet meshnet_test"], check=False, capture_output=True)
