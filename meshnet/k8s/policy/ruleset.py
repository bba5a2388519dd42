"""The compiler's output: a declarative nftables ruleset for one node, as plain values.

One `inet` table holds everything. Its shape::

    chain forward   (hook forward, priority filter, policy accept)
        ct state established,related accept      replies and flows already allowed
        ip daddr vmap @ingress_pods              isolated local pod -> its ingress chain
        ip saddr vmap @egress_pods               isolated local pod -> its egress chain
    chain in_<hash> / eg_<hash>                  one per distinct list of rules
        <peer set> <ports> counter name a_in_<policy> return     allowed by that policy
        ...
        limit rate N/second log group G prefix "meshnet-deny-in"
        counter name d_in_<policy> ... drop                      denied (every isolating policy counts it)

A `return` from a pod chain means "this direction allows it"; the packet then meets the
other direction's check. Pods no policy isolates are in neither map and pass.

`render.py` turns a `Ruleset` into an nft script (whole, or the difference from the one
in force); `interpret.py` runs a packet through one in Python.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Verdict(str, enum.Enum):
    ACCEPT = "accept"
    DROP = "drop"
    RETURN = "return"


class Field(str, enum.Enum):
    SADDR = "saddr"
    DADDR = "daddr"


@dataclass(frozen=True)
class CtState:
    states: tuple[str, ...]  # e.g. ("established", "related")


@dataclass(frozen=True)
class AddrIn:
    """`ip saddr|daddr @set` (a named interval set of IPv4 addresses)."""

    field: Field
    set: str


@dataclass(frozen=True)
class PortIn:
    """`meta l4proto . th dport { tcp . 80, udp . 1000-2000 }`: (protocol, low, high)."""

    ports: tuple[tuple[str, int, int], ...]


@dataclass(frozen=True)
class DestIn:
    """`ip daddr . meta l4proto . th dport @set` (a named set of exact triples)."""

    set: str


@dataclass(frozen=True)
class VmapJump:
    """`ip saddr|daddr vmap @map`: jump to the chain the map names for that address."""

    field: Field
    map: str


Match = CtState | AddrIn | PortIn | DestIn


@dataclass(frozen=True)
class Log:
    prefix: str
    group: int
    rate: int  # per second, burst twice that


@dataclass(frozen=True)
class Rule:
    matches: tuple[Match, ...] = ()
    counters: tuple[str, ...] = ()
    verdict: Verdict | None = None
    vmap: VmapJump | None = None  # instead of a verdict
    log: Log | None = None


@dataclass(frozen=True)
class Chain:
    name: str
    rules: tuple[Rule, ...]
    hook: str | None = None  # a base chain: hook forward, priority filter, policy accept


@dataclass(frozen=True)
class AddrSet:
    """Disjoint IPv4 CIDRs, sorted (an nft interval set)."""

    name: str
    elements: tuple[str, ...]


@dataclass(frozen=True)
class DestSet:
    """(IPv4 address, protocol, port) triples, sorted."""

    name: str
    elements: tuple[tuple[str, str, int], ...]


@dataclass(frozen=True)
class VerdictMap:
    """IPv4 address -> chain to jump to."""

    name: str
    elements: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class PodView:
    """What status shows for one local pod: which policies isolate it, per direction."""

    pod: str  # "ns/name"
    ips: tuple[str, ...]
    ingress: tuple[str, ...]  # policy keys; empty = not isolated
    egress: tuple[str, ...]


@dataclass(frozen=True)
class Ruleset:
    table: str
    chains: tuple[Chain, ...]
    addr_sets: tuple[AddrSet, ...] = ()
    dest_sets: tuple[DestSet, ...] = ()
    maps: tuple[VerdictMap, ...] = ()
    counters: tuple[str, ...] = ()
    # for status and metrics, not for the kernel
    policy_ids: dict[str, str] = field(default_factory=dict, compare=False)  # counter id -> "ns/name"
    pods: tuple[PodView, ...] = field(default=(), compare=False)

    def chain(self, name: str) -> Chain:
        return next(c for c in self.chains if c.name == name)

    def objects(self) -> dict[tuple[str, str], object]:
        """Every named object, keyed (kind, name): what the diff compares."""
        out: dict[tuple[str, str], object] = {("counter", c): c for c in self.counters}
        out.update({("set", s.name): s for s in self.addr_sets})
        out.update({("destset", s.name): s for s in self.dest_sets})
        out.update({("map", m.name): m for m in self.maps})
        out.update({("chain", c.name): c for c in self.chains})
        return out
