"""TAP and UDP offloads for the sleeve pump: turn on what the kernel accepts, say what is on.

Owns the ioctls and socket options that change how many syscalls the pump needs to move
the same frames (docs/sleeve.md, "What the pump does with the TAP"); knows nothing about
frames. The router calls `configure()` once per pump and hands the resulting `Offloads`
(a plain value, `meshnet.dataplane.offloads`) to the pump's constructor, so neither pump
probes anything. A missing offload is never an error: it only costs syscalls.
"""

from __future__ import annotations

import fcntl
import socket
import struct

from meshnet.dataplane.offloads import Offloads

# include/uapi/linux/if_tun.h
TUNSETOFFLOAD = 0x400454D0
TUNGETIFF = 0x800454D2
IFF_VNET_HDR = 0x4000  # frames carry a virtio_net_hdr: the pump then enables TAP offloads
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
# include/uapi/linux/udp.h (the socket module does not name them)
UDP_SEGMENT = 103
UDP_GRO = 104

# Asked for in this order; the first set the TAP accepts stays on.
_TAP_WANTED = (
    TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN,
    TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6,
    TUN_F_CSUM,
)
_TAP_NAMES = ((TUN_F_CSUM, "csum"), (TUN_F_TSO4, "tso4"), (TUN_F_TSO6, "tso6"), (TUN_F_TSO_ECN, "tso_ecn"))


def tap_names(bits: int) -> tuple[str, ...]:
    """TUN_F_* bits by name, as `Offloads.tap`, `features()` and `meshnet status` say them."""
    return tuple(name for bit, name in _TAP_NAMES if bits & bit)


def has_vnet_hdr(tap_fd: int) -> bool:
    """True if fd is a TUN/TAP opened with IFF_VNET_HDR (False for anything else)."""
    try:
        ifr = fcntl.ioctl(tap_fd, TUNGETIFF, bytes(40))
    except OSError:
        return False
    return bool(struct.unpack_from("H", ifr, 16)[0] & IFF_VNET_HDR)


def configure(tap_fd: int, udp_fd: int, *, enable: bool = True) -> Offloads:
    """Turn on every offload the kernel accepts on these fds (enable), or turn them off
    (for comparisons, and for the pure-Python pump, which uses none); return what is on.

    Only a TAP with IFF_VNET_HDR takes TUNSETOFFLOAD: without the header the kernel could
    not say which frames are TSO frames or carry partial checksums.
    """
    vnet = has_vnet_hdr(tap_fd)
    tap = 0
    if vnet:
        for wanted in _TAP_WANTED if enable else (0,):
            try:
                fcntl.ioctl(tap_fd, TUNSETOFFLOAD, wanted)
            except OSError:
                continue
            tap = wanted
            break
    if not enable:
        _set_udp(udp_fd, UDP_GRO, 0)
        return Offloads(vnet_hdr=vnet)
    # UDP_SEGMENT with size 0 only asks whether the socket takes it; sends say the size.
    gso = _set_udp(udp_fd, UDP_SEGMENT, 0)
    return Offloads(vnet_hdr=vnet, tap=tap_names(tap), udp_gso=gso, udp_gro=_set_udp(udp_fd, UDP_GRO, 1))


def _set_udp(udp_fd: int, option: int, value: int) -> bool:
    # fromfd() works on a duplicate: the option lands on the caller's socket, whose fd
    # stays open when the duplicate is closed.
    try:
        sock = socket.fromfd(udp_fd, socket.AF_INET, socket.SOCK_DGRAM)
    except OSError:
        return False
    with sock:
        try:
            sock.setsockopt(socket.IPPROTO_UDP, option, value)
        except OSError:
            return False
    return True
