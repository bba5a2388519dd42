"""Per-peer counters of the kernel VXLAN path (fastdp), from nftables.

The kernel keeps no per-destination traffic counters for a VXLAN device: its FDB entries
carry only timestamps, and the device's own statistics add every peer together. So the
encapsulated packets themselves are counted where they pass the host's netfilter hooks:
an nftables table `ip meshnet-vxstats` with one named counter per peer and direction,
picked by an address -> counter map (one lookup per packet, whatever the number of peers):

    output hook: udp dport 6784  counter name ip daddr map @tx    (VXLAN packets sent to a peer)
    input hook:  udp dport 6784  counter name ip saddr map @rx    (VXLAN packets from a peer)

The VXLAN device's own packets pass these hooks (it sends through `ip_local_out`, and
received datagrams reach the UDP socket through INPUT). A counter's bytes are whole
IPv4 packets; the inner Ethernet frame is 36 bytes shorter (20 IP + 8 UDP + 8 VXLAN), so
`frames_bytes = bytes - 36 * packets`. The per-peer path probes are counted too: they are
traffic on that path. Counters survive peer changes (only the maps are rewritten) and
start at zero when the router creates the table. Drops on the VXLAN path are not known
per peer; the device's drop and error counters are (`device_counters`).
"""

from __future__ import annotations

import errno
import json
import subprocess
from typing import Any

from meshnet.kernel.errors import KernelError

TABLE = "meshnet-vxstats"
OUTER_OVERHEAD = 36  # bytes of IPv4 + UDP + VXLAN headers around an inner Ethernet frame
NFT_TIMEOUT = 10.0


def _nft(args: list[str], script: str | None = None) -> str:
    try:
        result = subprocess.run(["nft", *args], input=script, text=True, capture_output=True, timeout=NFT_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KernelError(errno.ENOENT, f"cannot run nft (install nftables): {exc}") from None
    if result.returncode != 0:
        raise KernelError(errno.EINVAL, f"nft failed: {result.stderr.strip()[:300]}")
    return result.stdout


def _ipv4(text: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(text).version == 4
    except ValueError:
        return False


def counter_name(direction: str, peer_id: int) -> str:
    return f"{direction}-{peer_id:08x}"


def script(peers: dict[int, str], port: int, stale: set[int]) -> str:
    """The nft script that makes the counters follow `peers` ({peer id: underlay IPv4})."""
    t = f"ip {TABLE}"
    lines = [
        f"add table {t}",
        f"add map {t} tx {{ type ipv4_addr : counter; }}",
        f"add map {t} rx {{ type ipv4_addr : counter; }}",
        f"add chain {t} count_out {{ type filter hook output priority 0; policy accept; }}",
        f"add chain {t} count_in {{ type filter hook input priority 0; policy accept; }}",
        f"flush chain {t} count_out",
        f"flush chain {t} count_in",
        f"flush map {t} tx",
        f"flush map {t} rx",
    ]
    for pid in sorted(stale):
        lines += [f"delete counter {t} {counter_name(d, pid)}" for d in ("tx", "rx")]
    for pid, ip in sorted(peers.items()):
        lines += [f"add counter {t} {counter_name(d, pid)}" for d in ("tx", "rx")]
    seen: set[str] = set()
    for pid, ip in sorted(peers.items()):
        if ip in seen:  # two peer ids on one address: the first keeps the counter
            continue
        seen.add(ip)
        lines.append(f'add element {t} tx {{ {ip} : "{counter_name("tx", pid)}" }}')
        lines.append(f'add element {t} rx {{ {ip} : "{counter_name("rx", pid)}" }}')
    lines.append(f"add rule {t} count_out udp dport {port} counter name ip daddr map @tx")
    lines.append(f"add rule {t} count_in udp dport {port} counter name ip saddr map @rx")
    return "\n".join(lines) + "\n"


class VxlanStats:
    """Owns the table; call from the kernel thread (it runs `nft`)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._peers: dict[int, str] = {}
        self._counted: set[int] = set()

    def follow(self, peers: dict[int, str]) -> None:
        """Count traffic to and from exactly these peers ({peer id: underlay IPv4})."""
        peers = {pid: ip for pid, ip in peers.items() if _ipv4(ip)}
        if peers == self._peers and self._counted:
            return
        stale = self._counted - set(peers)
        _nft(["-f", "-"], script(peers, self.port, stale))
        self._peers, self._counted = peers, set(peers)

    def read(self) -> dict[int, dict[str, int]]:
        """{peer id: {tx_packets, tx_bytes, rx_packets, rx_bytes}}, bytes of inner frames."""
        if not self._counted:
            return {}
        data = json.loads(_nft(["-j", "list", "counters", "table", "ip", TABLE]) or "{}")
        out: dict[int, dict[str, int]] = {}
        for item in data.get("nftables", []):
            counter = item.get("counter") if isinstance(item, dict) else None
            if not isinstance(counter, dict):
                continue
            direction, _, hexid = str(counter.get("name", "")).partition("-")
            try:
                pid = int(hexid, 16)
            except ValueError:
                continue
            if direction not in ("tx", "rx") or pid not in self._counted:
                continue
            packets, size = int(counter.get("packets", 0)), int(counter.get("bytes", 0))
            row = out.setdefault(pid, {"tx_packets": 0, "tx_bytes": 0, "rx_packets": 0, "rx_bytes": 0})
            row[f"{direction}_packets"] = packets
            row[f"{direction}_bytes"] = max(0, size - OUTER_OVERHEAD * packets)
        return out

    def close(self) -> None:
        if self._counted:
            try:
                _nft(["delete", "table", "ip", TABLE])
            except KernelError:
                pass
            self._counted = set()


def device_counters(ifname: str) -> dict[str, int]:
    """The VXLAN device's drop and error counters (all peers together), via netlink."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        links = ipr.link_lookup(ifname=ifname)
        if not links:
            return {}
        link = ipr.get_links(links[0])[0]
    stats = link.get_attr("IFLA_STATS64") or {}
    keys = ("rx_dropped", "tx_dropped", "rx_errors", "tx_errors", "tx_carrier_errors", "rx_frame_errors")
    return {k: int(stats.get(k, 0)) for k in keys}
