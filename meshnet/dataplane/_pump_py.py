"""The pure-Python twin of the sleeve pump: the executable specification.

`meshnet._fastpath.Pump` must behave exactly like this class: same API, same
forwarding decisions, same datagrams on the wire, same counters. The tests run both
through the same cases and compare them byte for byte.

Flow of one `poll()`:

1. wait until the TAP fd, the UDP fd or the wake eventfd is readable;
2. TAP: read up to `batch` frames (one frame per read). For each, forget its source
   MAC if it was learned as remote (the host is here now), then pick destinations:
   a known unicast MAC goes to its peer, multicast/broadcast and unknown unicast go
   to every peer that has a route (one copy each, header dst = that peer). Each copy
   is queued with the sleeve header in front (see `layout`);
3. UDP: receive up to `batch` datagrams. Only datagrams from a known peer address are
   looked at. A datagram for us teaches "inner source MAC is behind header src" and
   its frame is written to the TAP; one for another peer is relayed with ttl - 1;
4. the send queue holds up to `batch` datagrams; it is flushed when full and at the
   end of each read batch. A full socket (EAGAIN/ENOBUFS) drops the rest of that
   flush; any other send error drops just that datagram.

Routing: `set_peer(p, addr, via)` says frames for `p` go to the next hop `via`
(== p when direct), sent to the next hop's own address. A peer whose next hop is
unknown or has no address has no route. The lock is held for one whole batch, so
table updates from another thread land between batches.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import threading
from dataclasses import dataclass

from meshnet.dataplane.layout import (
    DEFAULT_TTL,
    ETH_HEADER_LEN,
    HEADER_LEN,
    MAC_TABLE_MAX,
    MAX_FRAME,
    MAX_SLEEVE_FRAME,
    MIN_DATAGRAM,
    PEER_TABLE_MAX,
    TYPE_FRAME,
    VERSION,
)

COUNTERS = (
    "tap_rx",
    "tap_rx_bytes",
    "tap_tx",
    "tap_tx_bytes",
    "udp_rx",
    "udp_rx_bytes",
    "udp_tx",
    "udp_tx_bytes",
    "flood_tx",
    "unknown_unicast",
    "relayed",
    "learned",
    "unlearned",
    "learn_table_full",
    "drop_short_frame",
    "drop_oversize",
    "drop_no_route",
    "drop_unknown_sender",
    "drop_short",
    "drop_version",
    "drop_type",
    "drop_unknown_peer",
    "drop_ttl",
    "drop_send_error",
    "drop_tap_write",
)

MAX_BATCH = 1024  # the kernel's UIO_MAXIOV caps one sendmmsg/recvmmsg call

_HEADER = struct.Struct("!BBBBII")
_SOCKET_FULL = (errno.EAGAIN, errno.ENOBUFS)


@dataclass
class _Peer:
    addr: tuple[str, int] | None
    via: int


@dataclass
class _Mac:
    peer: int
    static: bool


def _check_id(value: int, what: str) -> int:
    if not isinstance(value, int) or not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"{what} must be a 32-bit unsigned int, got {value!r}")
    return value


def _check_mac(mac: bytes) -> bytes:
    mac = bytes(mac)
    if len(mac) != 6:
        raise ValueError(f"a MAC is 6 bytes, got {len(mac)}")
    return mac


def _check_addr(addr: tuple[str, int]) -> tuple[str, int]:
    """Return the canonical (dotted quad, port) that recvfrom will report for addr."""
    host, port = addr
    try:
        packed = socket.inet_pton(socket.AF_INET, host)
    except (OSError, TypeError):
        raise ValueError(f"peer address must be an IPv4 literal, got {host!r}") from None
    if not isinstance(port, int) or not 0 < port <= 0xFFFF:
        raise ValueError(f"peer port must be 1..65535, got {port!r}")
    return socket.inet_ntop(socket.AF_INET, packed), port


class Pump:
    """Moves frames between a TAP fd and a UDP socket; see the module docstring."""

    def __init__(self, tap_fd: int, udp_fd: int, local_id: int, *, batch: int = 32) -> None:
        self._local = _check_id(local_id, "local_id")
        if not 1 <= batch <= MAX_BATCH:
            raise ValueError(f"batch must be 1..{MAX_BATCH}, got {batch}")
        dup = os.dup(udp_fd)  # the pump's own socket object; the caller keeps udp_fd
        try:
            udp = socket.socket(fileno=dup)
        except OSError:
            os.close(dup)
            raise ValueError("udp_fd must be an IPv4 UDP socket") from None
        if udp.family != socket.AF_INET or udp.type != socket.SOCK_DGRAM:
            udp.close()
            raise ValueError("udp_fd must be an IPv4 UDP socket")
        try:
            udp.setblocking(False)
            os.set_blocking(tap_fd, False)
        except OSError:
            udp.close()
            raise
        self._tap = tap_fd
        self._udp = udp
        self._batch = batch
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._poller = select.poll()
        for fd in (tap_fd, udp_fd, self._wake):
            self._poller.register(fd, select.POLLIN)
        self._udp_fd = udp_fd
        self._stopping = False
        self._lock = threading.Lock()
        self._peers: dict[int, _Peer] = {}
        self._addr_refs: dict[tuple[str, int], int] = {}  # peers per address
        self._macs: dict[bytes, _Mac] = {}
        self._count = dict.fromkeys(COUNTERS, 0)
        self._out: list[tuple[tuple[str, int], bytes]] = []

    # -- tables (any thread) -------------------------------------------------

    def set_peer(self, peer_id: int, addr: tuple[str, int] | None, via: int) -> None:
        _check_id(peer_id, "peer_id")
        _check_id(via, "via")
        if self._local in (peer_id, via):
            raise ValueError("the local peer has no route entry")
        if addr is not None:
            addr = _check_addr(addr)
        with self._lock:
            old = self._peers.get(peer_id)
            if old is None and len(self._peers) >= PEER_TABLE_MAX:
                raise OverflowError(f"peer table full ({PEER_TABLE_MAX} peers)")
            if old is not None:
                self._release_addr(old.addr)
            if addr is not None:
                self._addr_refs[addr] = self._addr_refs.get(addr, 0) + 1
            self._peers[peer_id] = _Peer(addr, via)

    def remove_peer(self, peer_id: int) -> None:
        _check_id(peer_id, "peer_id")
        with self._lock:
            old = self._peers.pop(peer_id, None)
            if old is not None:
                self._release_addr(old.addr)
            self._macs = {m: e for m, e in self._macs.items() if e.peer != peer_id}

    def set_mac(self, mac: bytes, peer_id: int) -> None:
        mac = _check_mac(mac)
        _check_id(peer_id, "peer_id")
        if peer_id == self._local:
            raise ValueError("local MACs are not in the pump's table")
        with self._lock:
            if mac not in self._macs and len(self._macs) >= MAC_TABLE_MAX:
                raise OverflowError(f"MAC table full ({MAC_TABLE_MAX} entries)")
            self._macs[mac] = _Mac(peer_id, True)

    def forget_mac(self, mac: bytes) -> None:
        mac = _check_mac(mac)
        with self._lock:
            self._macs.pop(mac, None)

    def macs(self) -> dict[bytes, int]:
        with self._lock:
            return {m: e.peer for m, e in self._macs.items()}

    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self._count)

    def _release_addr(self, addr: tuple[str, int] | None) -> None:
        if addr is None:
            return
        left = self._addr_refs[addr] - 1
        if left:
            self._addr_refs[addr] = left
        else:
            del self._addr_refs[addr]

    # -- loop ----------------------------------------------------------------

    def poll(self, timeout_ms: int) -> int:
        if self._wake < 0:
            raise ValueError("pump is closed")
        ready = dict(self._poller.poll(timeout_ms))
        if any(ev & select.POLLNVAL for ev in ready.values()):
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        if self._wake in ready:
            try:
                os.eventfd_read(self._wake)
            except BlockingIOError:
                pass  # another poll() drained it first
        handled = 0
        with self._lock:
            if self._tap in ready:
                handled += self._tap_batch()
            if self._udp_fd in ready:
                handled += self._udp_batch()
        return handled

    def run(self) -> None:
        try:
            while not self._stopping:
                self.poll(-1)
        finally:
            self._stopping = False

    def stop(self) -> None:
        self._stopping = True
        if self._wake >= 0:
            os.eventfd_write(self._wake, 1)

    def close(self) -> None:
        """Release the pump's own fds (not tap_fd/udp_fd); call after run() returned."""
        if self._wake >= 0:
            os.close(self._wake)
            self._wake = -1
            self._udp.close()

    def __del__(self) -> None:
        if getattr(self, "_wake", -1) >= 0:
            self.close()

    # -- per batch, lock held ------------------------------------------------

    def _tap_batch(self) -> int:
        n = 0
        failure = None
        while n < self._batch:
            try:
                frame = os.read(self._tap, MAX_FRAME + 1)
            except BlockingIOError:
                break
            except OSError as e:  # the TAP itself is broken: report it, after sending
                failure = e
                break
            n += 1
            self._tap_frame(frame)
        self._flush()
        if failure is not None:
            raise failure
        return n

    def _udp_batch(self) -> int:
        n = 0
        while n < self._batch:
            try:
                data, addr = self._udp.recvfrom(MAX_FRAME + 1)
            except OSError:  # EAGAIN, or a transient socket error: next poll
                break
            n += 1
            self._datagram(data, addr)
        self._flush()
        return n

    # -- per frame -----------------------------------------------------------

    def _tap_frame(self, frame: bytes) -> None:
        c = self._count
        c["tap_rx"] += 1
        c["tap_rx_bytes"] += len(frame)
        if len(frame) < ETH_HEADER_LEN:
            c["drop_short_frame"] += 1
            return
        src = self._macs.get(frame[6:12])
        if src is not None and not src.static:
            del self._macs[frame[6:12]]
            c["unlearned"] += 1
        if len(frame) > MAX_SLEEVE_FRAME:
            c["drop_oversize"] += 1
            return
        if frame[0] & 1:
            self._flood(frame)
            return
        dst = self._macs.get(frame[0:6])
        if dst is None:
            c["unknown_unicast"] += 1
            self._flood(frame)
            return
        to = self._next_hop(dst.peer)
        if to is None:
            c["drop_no_route"] += 1
            return
        self._queue(to, self._header(dst.peer) + frame)

    def _flood(self, frame: bytes) -> None:
        for peer_id, peer in self._peers.items():
            to = self._route(peer_id, peer)
            if to is not None:
                self._count["flood_tx"] += 1
                self._queue(to, self._header(peer_id) + frame)

    def _header(self, dst: int) -> bytes:
        return _HEADER.pack(VERSION, TYPE_FRAME, 0, DEFAULT_TTL, self._local, dst)

    def _datagram(self, data: bytes, sender: tuple[str, int]) -> None:
        c = self._count
        c["udp_rx"] += 1
        c["udp_rx_bytes"] += len(data)
        if sender not in self._addr_refs:
            c["drop_unknown_sender"] += 1
            return
        if len(data) < MIN_DATAGRAM:
            c["drop_short"] += 1
            return
        ver, typ, _flags, ttl, src, dst = _HEADER.unpack_from(data)
        if ver != VERSION:
            c["drop_version"] += 1
            return
        if typ != TYPE_FRAME:
            c["drop_type"] += 1
            return
        if dst == self._local:
            if src not in self._peers:
                c["drop_unknown_peer"] += 1
                return
            mac = data[HEADER_LEN + 6 : HEADER_LEN + 12]
            if not mac[0] & 1:
                self._learn(mac, src)
            try:
                os.write(self._tap, data[HEADER_LEN:])
            except OSError:
                c["drop_tap_write"] += 1
                return
            c["tap_tx"] += 1
            c["tap_tx_bytes"] += len(data) - HEADER_LEN
            return
        if ttl <= 1:
            c["drop_ttl"] += 1
            return
        to = self._next_hop(dst)
        if to is None:
            c["drop_no_route"] += 1
            return
        c["relayed"] += 1
        self._queue(to, data[:3] + bytes((ttl - 1,)) + data[4:])

    def _learn(self, mac: bytes, peer_id: int) -> None:
        entry = self._macs.get(mac)
        if entry is not None:
            if entry.static or entry.peer == peer_id:
                return
            entry.peer = peer_id
        elif len(self._macs) >= MAC_TABLE_MAX:
            self._count["learn_table_full"] += 1
            return
        else:
            self._macs[mac] = _Mac(peer_id, False)
        self._count["learned"] += 1

    def _next_hop(self, peer_id: int) -> tuple[str, int] | None:
        peer = self._peers.get(peer_id)
        return None if peer is None else self._route(peer_id, peer)

    def _route(self, peer_id: int, peer: _Peer) -> tuple[str, int] | None:
        hop = peer if peer.via == peer_id else self._peers.get(peer.via)
        return None if hop is None else hop.addr

    def _queue(self, to: tuple[str, int], datagram: bytes) -> None:
        if len(self._out) == self._batch:
            self._flush()
        self._out.append((to, datagram))

    def _flush(self) -> None:
        c = self._count
        out, self._out = self._out, []
        for i, (to, datagram) in enumerate(out):
            try:
                self._udp.sendto(datagram, to)
            except OSError as e:
                if e.errno in _SOCKET_FULL:  # the rest would fail too: drop them all
                    c["drop_send_error"] += len(out) - i
                    return
                c["drop_send_error"] += 1
                continue
            c["udp_tx"] += 1
            c["udp_tx_bytes"] += len(datagram)
