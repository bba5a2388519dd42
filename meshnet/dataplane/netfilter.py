"""meshnet's nftables tables, planned without I/O: what `expose --nat` and the pod network add.

One table per user (`ip meshnet-nat` for `expose --nat`, `ip meshnet-pods` for the pod
network), each rendered whole from a `NetfilterPlan` and replaced whole by
`meshnet.kernel.nft` (so a restart converges, never duplicates):

- **masquerade** (nat postrouting): traffic from the overlay range to a destination outside
  the range and outside the non-masquerade list, leaving through any interface but the
  bridge, gets this host's address (ip-masq-agent's rule: pods keep their address inside
  the cluster, take the node's outside it);
- **guard** (filter forward): a packet routed from any other interface into the bridge is
  accepted only if it belongs to a flow that exists (`ct state established,related`) or
  that a port forward made on purpose (`ct status dnat`: kube-proxy NodePort, portmap
  hostPort); everything else is dropped and counted. Frames bridged between the bridge's
  own ports (the overlay, pod veths; seen here with bridge-nf-call-iptables) never match:
  their output interface is a port, not the bridge. Without the guard, a host that
  forwards is a router into the overlay for any neighbour that adds a route to the range.

nftables runs every base chain of a hook: an accept here does not override another
table's drop (Docker's iptables FORWARD policy), and a drop here is final.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

TABLE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")
IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
MAX_CIDRS = 256  # non-masquerade entries: a list an admin writes, not a table


@dataclass(frozen=True)
class NetfilterPlan:
    table: str
    bridge: str
    overlay: str  # the range, e.g. 10.32.0.0/12
    masquerade: bool = True
    non_masquerade: tuple[str, ...] = ()  # beside the overlay itself
    guard: bool = True


def parse_cidrs(text: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """'10.0.0.0/8 192.168.0.0/16' (spaces or commas) -> normalised networks.

    Raises:
        ValueError: not an IPv4 network, or too many.
    """
    items = text.replace(",", " ").split() if isinstance(text, str) else list(text)
    if len(items) > MAX_CIDRS:
        raise ValueError(f"at most {MAX_CIDRS} CIDRs, got {len(items)}")
    out = []
    for item in items:
        try:
            out.append(str(ipaddress.IPv4Network(item, strict=False)))
        except ValueError:
            raise ValueError(f"{item!r} is not an IPv4 network (e.g. 10.0.0.0/8)") from None
    return tuple(dict.fromkeys(out))


def render(plan: NetfilterPlan) -> str:
    """The table's nft script (without the flush/delete preamble)."""
    if not TABLE_RE.match(plan.table) or not IFNAME_RE.match(plan.bridge):
        raise ValueError(f"bad table {plan.table!r} or bridge {plan.bridge!r}")
    overlay = str(ipaddress.IPv4Network(plan.overlay))
    keep = ", ".join(_collapse((overlay, *parse_cidrs(plan.non_masquerade))))
    br = plan.bridge
    lines = [f"table ip {plan.table} {{"]
    if plan.masquerade:
        lines += [
            f"  set no-masquerade {{ type ipv4_addr; flags interval; elements = {{ {keep} }} }}",
            "  chain postrouting {",
            "    type nat hook postrouting priority srcnat; policy accept;",
            f'    ip saddr {overlay} ip daddr != @no-masquerade oifname != "{br}" counter masquerade',
            "  }",
        ]
    if plan.guard:
        lines += [
            "  chain forward {",
            "    type filter hook forward priority filter; policy accept;",
            f'    oifname "{br}" iifname != "{br}" ct state established,related counter accept',
            f'    oifname "{br}" iifname != "{br}" ct status dnat counter accept',
            f'    oifname "{br}" iifname != "{br}" counter drop',
            "  }",
        ]
    lines.append("}")
    return "\n".join(lines) + "\n"


def _collapse(cidrs: tuple[str, ...]) -> list[str]:
    """Overlapping intervals are an error in an nft interval set: merge them first."""
    return [str(n) for n in ipaddress.collapse_addresses(ipaddress.IPv4Network(c) for c in cidrs)]


def replace_script(family: str, table: str, body: str | None) -> str:
    """Make the table exist, delete it, then (if `body`) create it anew: one atomic nft run."""
    script = f"table {family} {table}\ndelete table {family} {table}\n"
    return script + (body or "")
