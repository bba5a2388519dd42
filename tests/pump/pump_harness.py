"""Rigs for pump tests without root: a socketpair stands in for the TAP, UDP sockets on
127.0.0.1 for the underlay and for the remote peers. `offloads_for` gives a pump the
offloads the router would give it on those fds.

Loopback delivery is usually done before sendto() returns, but not on a busy machine
(softirqs deferred to ksoftirqd), so the rig counts what it injected and what the pump
sent, and waits for both instead of trusting one poll.
"""

from __future__ import annotations

import select
import socket
import struct
import time
from collections import defaultdict
from dataclasses import replace

from meshnet.dataplane.layout import DEFAULT_TTL, TYPE_FRAME, VERSION
from meshnet.kernel import offload

BROADCAST = b"\xff" * 6
HEADER = struct.Struct("!BBBBII")


def mac(n: int) -> bytes:
    """A locally administered unicast MAC numbered n."""
    return b"\x02" + n.to_bytes(5, "big")


def frame(dst: bytes, src: bytes, payload: bytes = b"\x00" * 46, ethertype: int = 0x0800) -> bytes:
    return dst + src + ethertype.to_bytes(2, "big") + payload


def header(src: int, dst: int, *, ttl: int = DEFAULT_TTL, ver: int = VERSION,
           typ: int = TYPE_FRAME, flags: int = 0) -> bytes:
    return HEADER.pack(ver, typ, flags, ttl, src, dst)


def _read_all(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(1 << 17))
        except BlockingIOError:
            return out


def offloads_for(pump_cls: type, tap_fd: int, udp_fd: int, *, enable: bool = True,
                 vnet_hdr: bool | None = None) -> offload.Offloads:
    """What the router gives this pump class on these fds: every offload the kernel accepts
    for the compiled pump (unless not enable), none turned on for the twin.

    A socketpair is no TAP: TUNGETIFF and TUNSETOFFLOAD fail on it, as on a kernel without
    them, so it gets plain frames and no TAP offloads. vnet_hdr=True makes the pump take
    virtio_net_hdrs on it anyway (the tests write and read them)."""
    compiled = pump_cls.__module__ == "meshnet._fastpath"
    found = offload.configure(tap_fd, udp_fd, enable=enable and compiled)
    return found if vnet_hdr is None else replace(found, vnet_hdr=vnet_hdr)


class Rig:
    """One pump under test, its fake TAP and a set of fake remote peers (one socket each).
    `offload` and `vnet_hdr` go to `offloads_for`, the rest to the pump."""

    def __init__(self, pump_cls: type, local_id: int, *, batch: int = 32, offload: bool = True,
                 vnet_hdr: bool | None = None, **pump_args) -> None:
        self.app, self.tap = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.app.setblocking(False)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.addr = self.udp.getsockname()
        self.local_id = local_id
        offloads = offloads_for(pump_cls, self.tap.fileno(), self.udp.fileno(), enable=offload, vnet_hdr=vnet_hdr)
        self.pump = pump_cls(self.tap.fileno(), self.udp.fileno(), local_id, batch=batch, offloads=offloads,
                             **pump_args)
        self.remotes: dict[int, socket.socket] = {}
        self._unhandled = 0  # frames and datagrams injected that the pump has not read yet
        self._inbox: defaultdict[int, list[bytes]] = defaultdict(list)
        self._delivered = 0  # datagrams the remotes have received from the pump
        self.clock = 0  # the pump's clock when a test froze it (pump._set_clock)
        self.refused = 0  # set_mac calls the pump refused (OverflowError: full of static entries)

    def remote(self, peer_id: int) -> socket.socket:
        """The socket playing remote peer `peer_id` (made on first use, not registered)."""
        if peer_id not in self.remotes:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
            s.setblocking(False)
            self.remotes[peer_id] = s
        return self.remotes[peer_id]

    def connect(self, peer_id: int) -> None:
        """Tell the pump `peer_id` is directly reachable at its remote socket."""
        self.pump.set_peer(peer_id, self.remote(peer_id).getsockname(), peer_id)

    def to_tap(self, data: bytes) -> None:
        self.app.send(data)
        self._unhandled += 1

    def send_from(self, peer_id: int, datagram: bytes) -> None:
        self.remote(peer_id).sendto(datagram, self.addr)
        self._unhandled += 1

    def run_until_idle(self, timeout_ms: int = 20) -> int:
        """Poll until everything injected was handled and an iteration handles nothing,
        then wait until the remotes hold every datagram the pump sent; return the frames
        handled."""
        deadline = time.monotonic() + 5
        total = 0
        while time.monotonic() < deadline:
            n = self.pump.poll(timeout_ms)
            total += n
            if n == 0 and total >= self._unhandled:
                break
        self._unhandled = max(0, self._unhandled - total)
        sent = self.pump.stats()["udp_tx"]
        while self._delivered < sent and time.monotonic() < deadline:
            if not select.select(list(self.remotes.values()), [], [], 0.05)[0]:
                continue
            for peer_id, sock in self.remotes.items():
                got = _read_all(sock)
                self._inbox[peer_id] += got
                self._delivered += len(got)
        return total

    def from_tap(self) -> list[bytes]:
        return _read_all(self.app)

    def received(self, peer_id: int) -> list[bytes]:
        """Datagrams the pump sent to remote `peer_id` since the last call."""
        got = _read_all(self.remote(peer_id))
        self._delivered += len(got)
        return self._inbox.pop(peer_id, []) + got

    def stats(self) -> dict[str, int]:
        return self.pump.stats()

    def close(self) -> None:
        self.pump.close()
        for s in (self.app, self.tap, self.udp, *self.remotes.values()):
            s.close()


# -- inner TCP/UDP packets and virtio_net_hdr, built independently of the pumps -----------

VNET = struct.Struct("<BBHHHH")


def inet_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def ipv4_tcp(payload: bytes, *, seq: int = 1000, flags: int = 0x18, ip_id: int = 7, df: bool = True,
             src: bytes = b"\x0a\x20\x01\x01", dst: bytes = b"\x0a\x20\x02\x01", options: bytes = b"",
             partial: bool = True, dst_mac: bytes = b"\x02\x00\x00\x00\x00\x01",
             src_mac: bytes = b"\x02\x00\x00\x00\x00\x32") -> bytes:
    """An Ethernet/IPv4/TCP frame; its TCP checksum partial (pseudo-header sum) or full."""
    thl = 20 + len(options)
    tcp = bytearray(struct.pack("!HHIIBBHHH", 40000, 5201, seq, 99, (thl // 4) << 4, flags, 512, 0, 0) + options)
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + thl + len(payload), ip_id, 0x4000 if df else 0,
                               64, 6, 0, src, dst))
    ip[10:12] = ((~inet_sum(bytes(ip))) & 0xFFFF).to_bytes(2, "big")
    pseudo = inet_sum(src + dst + struct.pack("!HH", 6, thl + len(payload)))
    if partial:
        tcp[16:18] = pseudo.to_bytes(2, "big")
    else:
        tcp[16:18] = ((~inet_sum(bytes(tcp) + payload + pseudo.to_bytes(2, "big"))) & 0xFFFF).to_bytes(2, "big")
    return dst_mac + src_mac + b"\x08\x00" + bytes(ip) + bytes(tcp) + payload


def ipv6_tcp(payload: bytes, *, seq: int = 1000, flags: int = 0x18, partial: bool = True,
             dst_mac: bytes = b"\x02\x00\x00\x00\x00\x01", src_mac: bytes = b"\x02\x00\x00\x00\x00\x32") -> bytes:
    src, dst = b"\xfd" + b"\x01" * 15, b"\xfd" + b"\x02" * 15
    tcp = bytearray(struct.pack("!HHIIBBHHH", 40000, 5201, seq, 99, 5 << 4, flags, 512, 0, 0))
    ip = b"\x60\0\0\0" + (20 + len(payload)).to_bytes(2, "big") + b"\x06\x40" + src + dst
    pseudo = inet_sum(src + dst + (20 + len(payload)).to_bytes(4, "big") + b"\0\0\0\x06")
    tcp[16:18] = pseudo.to_bytes(2, "big")
    if not partial:
        tcp[16:18] = ((~inet_sum(bytes(tcp) + payload)) & 0xFFFF).to_bytes(2, "big")
    return dst_mac + src_mac + b"\x86\xdd" + ip + bytes(tcp) + payload


def l4_valid(frame: bytes) -> bool:
    """Is the TCP/UDP checksum of this IPv4/IPv6 frame complete and right?"""
    if frame[12:14] == b"\x08\x00":
        ihl = (frame[14] & 15) * 4
        l4 = frame[14 + ihl : 14 + int.from_bytes(frame[16:18], "big")]
        pseudo = frame[26:34] + struct.pack("!HH", frame[23], len(l4))
    else:
        l4 = frame[54 : 54 + int.from_bytes(frame[18:20], "big")]
        pseudo = frame[22:54] + len(l4).to_bytes(4, "big") + b"\0\0\0" + bytes([frame[20]])
    return inet_sum(pseudo + l4) == 0xFFFF


def ipv4_ok(frame: bytes) -> bool:
    ihl = (frame[14] & 15) * 4
    return inet_sum(frame[14 : 14 + ihl]) == 0xFFFF


def vnet(flags: int = 0, gso_type: int = 0, hdr_len: int = 0, gso_size: int = 0, start: int = 0, offset: int = 0) -> bytes:
    return VNET.pack(flags, gso_type, hdr_len, gso_size, start, offset)
