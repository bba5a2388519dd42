"""Rigs for pump tests without root: a socketpair stands in for the TAP, UDP sockets on
127.0.0.1 for the underlay and for the remote peers.

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

from meshnet.dataplane.layout import DEFAULT_TTL, TYPE_FRAME, VERSION

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


class Rig:
    """One pump under test, its fake TAP and a set of fake remote peers (one socket each)."""

    def __init__(self, pump_cls: type, local_id: int, *, batch: int = 32) -> None:
        self.app, self.tap = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.app.setblocking(False)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.addr = self.udp.getsockname()
        self.local_id = local_id
        self.pump = pump_cls(self.tap.fileno(), self.udp.fileno(), local_id, batch=batch)
        self.remotes: dict[int, socket.socket] = {}
        self._unhandled = 0  # frames and datagrams injected that the pump has not read yet
        self._inbox: defaultdict[int, list[bytes]] = defaultdict(list)
        self._delivered = 0  # datagrams the remotes have received from the pump

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
