"""Every path the suite knows: its name, the bed it lives in, its group and what it is.

Groups, in the order the table shows them: `ctr` (container to container on two hosts, the
headline), `host` (host to host: the underlay, kernel VXLAN, meshnet's exposed host
address, the peers), `multi` (more than two hosts: all pairs at once, and a relayed path).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from bench.tools import Pair

GROUPS = {
    "ctr": "Container to container (two hosts)",
    "host": "Host to host (two hosts)",
    "multi": "More hosts: all pairs at once, and relayed through a third host",
}


@dataclass(frozen=True)
class PathSpec:
    name: str
    bed: str  # bare, sleeve, aes, fastdp, multi-sleeve, multi-fastdp, relay
    group: str
    family: str  # meshnet, baseline, peer
    about: str


SPECS = [
    PathSpec("sleeve-ctr", "sleeve", "ctr", "meshnet", "container veth -> bridge -> TAP -> sleeve pump -> UDP, plain"),
    PathSpec("sleeve-aes-ctr", "aes", "ctr", "meshnet", "the same, mesh password set: AES-256-GCM per datagram"),
    PathSpec("fastdp-ctr", "fastdp", "ctr", "meshnet", "container veth -> bridge -> kernel VXLAN programmed by meshnet"),
    PathSpec("kvxlan-ctr", "bare", "ctr", "baseline", "container veth -> bridge -> kernel VXLAN configured by hand (static FDB)"),
    PathSpec("raw", "bare", "host", "baseline", "the underlay itself (veth -> bridge -> veth)"),
    PathSpec("kvxlan-host", "bare", "host", "baseline", "kernel VXLAN by hand, address on the VXLAN device"),
    PathSpec("sleeve-host", "sleeve", "host", "meshnet", "host address on the meshnet bridge (`meshnet expose`) -> TAP -> pump"),
    PathSpec("sleeve-aes-host", "aes", "host", "meshnet", "the same, encrypted"),
    PathSpec("fastdp-host", "fastdp", "host", "meshnet", "host address on the meshnet bridge -> kernel VXLAN"),
    PathSpec("tinc-null", "bare", "host", "peer", "tinc 1.0, switch mode (TAP), Cipher/Digest none"),
    PathSpec("tinc-aes", "bare", "host", "peer", "tinc 1.0, switch mode (TAP), default cipher and digest"),
    PathSpec("nebula", "bare", "host", "peer", "nebula (TUN, AES-256-GCM), static host map, no lighthouse"),
    PathSpec("fastd-null", "bare", "host", "peer", "fastd, TAP mode, method null"),
    PathSpec("fastd-salsa", "bare", "host", "peer", "fastd, TAP mode, method salsa2012+umac"),
    PathSpec("wggo", "bare", "host", "peer", "wireguard-go from the distribution, configured with wg"),
    PathSpec("wggo-bin", "bare", "host", "peer", "a wireguard-go binary given by path (--wireguard-go / MESHNET_BENCH_WIREGUARD_GO)"),
    PathSpec("multi-sleeve-ctr", "multi-sleeve", "multi", "meshnet", "N hosts, a container each, every pair at once, sleeve plain"),
    PathSpec("multi-fastdp-ctr", "multi-fastdp", "multi", "meshnet", "N hosts, a container each, every pair at once, fastdp"),
    PathSpec("relay-sleeve-ctr", "relay", "multi", "meshnet", "h1 -> h3 with their direct underlay path dropped (nftables): relayed by h2's sleeve"),
]
BY_NAME = {s.name: s for s in SPECS}
NAMES = [s.name for s in SPECS]
PEERS = [s.name for s in SPECS if s.family == "peer"]
MESHNET = [s.name for s in SPECS if s.family == "meshnet"]


@dataclass
class Path:
    """A path that is up and can be measured."""

    name: str
    pairs: list[Pair]
    daemons: dict[str, int]  # label -> PID whose CPU is counted
    mtu: int
    note: str
    checks: dict = field(default_factory=dict)
    verify: Callable[[], str | None] | None = None  # after each round: None, or why the path changed

    def as_dict(self) -> dict:
        spec = BY_NAME[self.name]
        return {
            "name": self.name,
            "group": spec.group,
            "family": spec.family,
            "about": spec.about,
            "pairs": [[p.src_ns, p.dst_ns, p.dst_ip] for p in self.pairs],
            "daemons": self.daemons,
            "mtu": self.mtu,
            "note": self.note,
            "checks": self.checks,
        }


class Skip(Exception):
    """A path that cannot be set up here (a peer not installed, a setup that failed)."""


def select(names: list[str] | None, skip: list[str] | None = None) -> list[str]:
    """The paths asked for, in catalogue order; unknown names are a usage error."""
    unknown = [n for n in (names or []) + (skip or []) if n not in BY_NAME]
    if unknown:
        raise ValueError(f"unknown path(s) {', '.join(unknown)}; known: {', '.join(NAMES)}")
    chosen = [n for n in NAMES if (not names or n in names) and n not in (skip or [])]
    return chosen


def all_pairs(n: int) -> list[tuple[int, int]]:
    """Every pair of n hosts once, as (sender, receiver): i sends to j when i + j is odd,
    else j sends to i. For 3 hosts that is the ring 1->2->3->1 (each sends and receives once)."""
    out = []
    for i in range(1, n + 1):
        for j in range(i + 1, n + 1):
            out.append((i, j) if (i + j) % 2 else (j, i))
    return out
