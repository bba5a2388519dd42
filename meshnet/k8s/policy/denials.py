"""A denied packet, as NFLOG hands it over, made into one log line's worth of facts.

The ruleset logs the first bytes of each denied packet to an NFLOG group with the prefix
`meshnet-deny-in` or `meshnet-deny-eg` (compile.LOG_PREFIX). This reads the IPv4 and
transport headers from those bytes (bounds-checked: a short or odd packet gives None,
never an exception) and names the pods from the agent's address book.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Callable

from meshnet.k8s.policy.compile import LOG_PREFIX

PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 132: "sctp"}


@dataclass(frozen=True)
class Denied:
    direction: str  # "ingress" or "egress"
    protocol: str
    src: str
    dst: str
    sport: int | None
    dport: int | None


def parse_denied(prefix: str, packet: bytes) -> Denied | None:
    if not prefix.startswith(LOG_PREFIX):
        return None
    direction = {"in": "ingress", "eg": "egress"}.get(prefix[len(LOG_PREFIX) :])
    if direction is None or len(packet) < 20 or packet[0] >> 4 != 4:
        return None
    ihl = (packet[0] & 0x0F) * 4
    if ihl < 20 or len(packet) < ihl:
        return None
    proto = packet[9]
    src, dst = str(ipaddress.IPv4Address(packet[12:16])), str(ipaddress.IPv4Address(packet[16:20]))
    sport = dport = None
    fragment_offset = struct.unpack_from("!H", packet, 6)[0] & 0x1FFF
    if proto in (6, 17, 132) and fragment_offset == 0 and len(packet) >= ihl + 4:
        sport, dport = struct.unpack_from("!HH", packet, ihl)
    return Denied(direction, PROTOCOLS.get(proto, str(proto)), src, dst, sport, dport)


def describe(d: Denied, pod_at: Callable[[str], str | None]) -> str:
    """One line: which pod's policy denied what. `pod_at(ip)` names the pod at an address."""
    mine = d.dst if d.direction == "ingress" else d.src
    other = d.src if d.direction == "ingress" else d.dst
    src = d.src if d.sport is None else f"{d.src}:{d.sport}"
    dst = d.dst if d.dport is None else f"{d.dst}:{d.dport}"
    who = pod_at(other)
    return (
        f"policy denied {d.direction} {'to' if d.direction == 'ingress' else 'from'} {pod_at(mine) or mine}: "
        f"{d.protocol} {src} -> {dst}" + (f" ({'from' if d.direction == 'ingress' else 'to'} pod {who})" if who else "")
    )


class LogBudget:
    """At most `rate` lines per second; how many were held back is reported once the budget
    is back (the kernel limits each chain already; this bounds the sum over chains)."""

    def __init__(self, clock: Callable[[], float], rate: int = 20):
        self.rate = rate
        self.clock = clock
        self.window = clock()
        self.used = 0
        self.suppressed = 0

    def take(self) -> tuple[bool, int]:
        """(may log now, lines suppressed since the last one that was logged)."""
        now = self.clock()
        if now - self.window >= 1.0:
            self.window, self.used = now, 0
        if self.used >= self.rate:
            self.suppressed += 1
            return False, 0
        self.used += 1
        held, self.suppressed = self.suppressed, 0
        return True, held
