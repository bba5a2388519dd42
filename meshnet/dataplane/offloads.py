"""What the kernel does for one pump: the `Offloads` value both pumps are built with.

A plain value, so the pumps (sans-IO layer) need nothing from the kernel boundary:
`meshnet.kernel.offload.configure()` turns the offloads on and returns one of these.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Offloads:
    """What one pump's TAP and UDP socket were set up to do. The default (all off) is a
    TAP of plain frames and one datagram per receive, which is what any fd pair gives."""

    vnet_hdr: bool = False  # TAP frames start with a virtio_net_hdr (IFF_VNET_HDR)
    tap: tuple[str, ...] = ()  # TAP offloads on ("csum", "tso4", ...): TSO frames, partial checksums
    udp_gso: bool = False  # the socket takes UDP_SEGMENT sends (one message, many datagrams)
    udp_gro: bool = False  # UDP_GRO is on: one receive may hold many datagrams of one size
