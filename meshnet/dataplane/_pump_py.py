"""The pure-Python twin of the sleeve pump: the executable specification.

`meshnet._fastpath.Pump` must behave exactly like this class: same API, same
forwarding, crypto and drop decisions, same datagrams on the wire, same counters. The
tests run both through the same cases and compare them byte for byte. The compiled pump
adds what only changes *how many syscalls* it takes (UDP GSO/GRO, merging TCP segments
into one TAP write); docs/sleeve.md lists those differences.

Flow of one `poll()`:

1. wait until the TAP fd, the UDP fd or the wake eventfd is readable;
2. TAP: read up to `batch` frames (one frame per read; with IFF_VNET_HDR each starts
   with a virtio_net_hdr). For each, forget its source MAC if it was learned as remote
   (the host is here now). A TSO frame (GSO_TCPV4/TCPV6) is cut into MSS segments, each
   with a partial checksum (CSUM); a frame marked NEEDS_CSUM keeps its partial checksum
   when the receiver can locate it from the IP header (CSUM), else it is completed here.
   Then pick destinations per frame (or segment): a known unicast MAC goes to its peer,
   multicast/broadcast and unknown unicast go to every peer that has a route and
   `flood=True` (one copy each, header dst = that peer, in peer-array order). Each copy
   is queued with the sleeve header in front (see `layout`), sealed on an encrypted pump
   with the send key of its next hop;
3. UDP: receive up to `batch` datagrams. Only datagrams from a known peer address are
   looked at. On an encrypted pump every datagram must be sealed, and is opened with the
   receive key (for its KEY_ID) of the peer the address belongs to (the lowest peer id
   with that address and keys), after a replay-window check. A datagram for us teaches
   "inner source MAC is behind header src" and its frame is written to the TAP (its
   checksum completed first when CSUM is set and the TAP takes no virtio_net_hdr); one
   for another peer is relayed with ttl - 1 (re-sealed for the next hop when encrypted);
4. the send queue holds up to `batch` datagrams; it is flushed when full and at the
   end of each read batch. A full socket (EAGAIN/ENOBUFS) drops the rest of that
   flush; any other send error drops just that datagram.

Routing: `set_peer(p, addr, via)` says frames for `p` go to the next hop `via`
(== p when direct), sent to the next hop's own address. A peer whose next hop is
unknown or has no address has no route. Peers live in a dense array: a new peer is
appended, a removed one is replaced by the last (floods walk the array in order). The
lock is held for one whole batch, so table updates from another thread land between
batches.

MTU: with `underlay_mtu` set, an IPv4 (DF) or IPv6 unicast frame that would not fit one
underlay datagram is answered with ICMP "fragmentation needed" / ICMPv6 "packet too big"
written back into the TAP, and not sent.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import threading
from dataclasses import dataclass, field

from meshnet.dataplane import sleeve_crypto
from meshnet.dataplane.counters import COUNTERS
from meshnet.dataplane.layout import (
    DEFAULT_TTL,
    ETH_HEADER_LEN,
    FLAG_CSUM,
    FLAG_KEY_ID,
    FLAG_SEALED,
    HEADER_LEN,
    MAC_TABLE_MAX,
    MAX_BATCH,
    MAX_FRAME,
    MAX_SEALED_FRAME,
    MAX_SLEEVE_FRAME,
    MIN_DATAGRAM,
    MIN_SEALED,
    PEER_TABLE_MAX,
    REKEY_AFTER_MESSAGES,
    SEALED_HEADER_LEN,
    TAG_LEN,
    TYPE_FRAME,
    VERSION,
    VNET_F_NEEDS_CSUM,
    VNET_GSO_ECN,
    VNET_GSO_NONE,
    VNET_GSO_TCPV4,
    VNET_GSO_TCPV6,
    VNET_HDR_LEN,
    wire_overhead,
)
from meshnet.dataplane.offloads import Offloads


_HEADER = struct.Struct("!BBBBII")
_VNET = struct.Struct("<BBHHHH")
_SOCKET_FULL = (errno.EAGAIN, errno.ENOBUFS)
_ZERO_VNET = bytes(VNET_HDR_LEN)


@dataclass
class _Peer:
    addr: tuple[str, int] | None
    via: int
    flood: bool = True
    tx_frames: int = 0
    tx_bytes: int = 0
    rx_frames: int = 0
    rx_bytes: int = 0
    tx: sleeve_crypto.TxKey | None = None
    rx: list = field(default_factory=lambda: [None, None])  # RxKey per KEY_ID


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


# -- inner packets: checksums, the CSUM rule, TSO segmentation, ICMP ------------------


def csum_add(data: bytes, start: int = 0) -> int:
    """Ones' complement sum (not folded to 16 bits) of data, big-endian 16-bit words."""
    if len(data) & 1:
        data = data + b"\0"
    return start + sum(struct.unpack(f"!{len(data) // 2}H", data))


def csum_fold(total: int) -> int:
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def pseudo_sum(frame: bytes, l4_len: int, proto: int) -> int:
    """Folded pseudo-header sum of the IPv4/IPv6 packet in frame, for an L4 of l4_len."""
    if frame[12:14] == b"\x08\x00":
        total = csum_add(frame[26:34]) + proto + l4_len
    else:
        total = csum_add(frame[22:54]) + proto + l4_len
    return csum_fold(total)


def l4_checksum_at(frame: bytes) -> tuple[int, int] | None:
    """(csum_start, csum_offset) of the inner TCP/UDP checksum as the receiver of a CSUM
    datagram locates it: L4 right after an IPv4 header (ihl) or a fixed IPv6 header, next
    protocol TCP (offset 16) or UDP (offset 6), the field inside the frame. Else None."""
    if len(frame) < ETH_HEADER_LEN + 20:
        return None
    ethertype = frame[12:14]
    if ethertype == b"\x08\x00":
        ihl = (frame[14] & 0x0F) * 4
        if frame[14] >> 4 != 4 or ihl < 20:
            return None
        start, proto = ETH_HEADER_LEN + ihl, frame[23]
    elif ethertype == b"\x86\xdd":
        if len(frame) < ETH_HEADER_LEN + 40 or frame[14] >> 4 != 6:
            return None
        start, proto = ETH_HEADER_LEN + 40, frame[20]
    else:
        return None
    offset = {6: 16, 17: 6}.get(proto)
    if offset is None or start + offset + 2 > len(frame):
        return None
    return start, offset


def complete_checksum(frame: bytes, start: int, offset: int) -> bytes:
    """Finish a partial checksum the NEEDS_CSUM way: fold the sum of frame[start:] (whose
    checksum field holds the pseudo-header sum) and store its complement (0 -> 0xFFFF)."""
    value = (~csum_fold(csum_add(frame[start:]))) & 0xFFFF or 0xFFFF
    at = start + offset
    return frame[:at] + value.to_bytes(2, "big") + frame[at + 2 :]


def _ipv4_header_checksum(header: bytearray) -> None:
    header[10:12] = b"\0\0"
    header[10:12] = ((~csum_fold(csum_add(bytes(header)))) & 0xFFFF).to_bytes(2, "big")


def segment_tso(frame: bytes, gso_type: int, mss: int) -> list[bytes] | None:
    """Cut a TSO frame into MSS segments; None if it is not a TCP frame we can cut.

    Each segment: the Ethernet, IP and TCP headers of the frame with the IPv4 total length,
    id (+k) and header checksum, or the IPv6 payload length, rewritten; TCP seq + offset;
    FIN and PSH only on the last segment, CWR only on the first; TCP checksum field =
    folded pseudo-header sum for the segment's TCP length (a partial checksum)."""
    kind = gso_type & ~VNET_GSO_ECN
    if mss <= 0 or len(frame) < ETH_HEADER_LEN + 20:
        return None
    if kind == VNET_GSO_TCPV4:
        if frame[12:14] != b"\x08\x00" or frame[14] >> 4 != 4 or frame[23] != 6:
            return None
        iphl = (frame[14] & 0x0F) * 4
        if iphl < 20:
            return None
    elif kind == VNET_GSO_TCPV6:
        if frame[12:14] != b"\x86\xdd" or len(frame) < 54 or frame[14] >> 4 != 6 or frame[20] != 6:
            return None
        iphl = 40
    else:
        return None
    l4 = ETH_HEADER_LEN + iphl
    if len(frame) < l4 + 20:
        return None
    thl = (frame[l4 + 12] >> 4) * 4
    hl = l4 + thl
    if thl < 20 or len(frame) <= hl:
        return None
    payload = frame[hl:]
    seq0 = int.from_bytes(frame[l4 + 4 : l4 + 8], "big")
    ip_id = int.from_bytes(frame[18:20], "big")
    segments = []
    for k, off in enumerate(range(0, len(payload), mss)):
        chunk = payload[off : off + mss]
        last = off + mss >= len(payload)
        head = bytearray(frame[:hl])
        if kind == VNET_GSO_TCPV4:
            head[16:18] = (iphl + thl + len(chunk)).to_bytes(2, "big")
            head[18:20] = ((ip_id + k) & 0xFFFF).to_bytes(2, "big")
            ip = head[14:l4]
            _ipv4_header_checksum(ip)
            head[14:l4] = ip
        else:
            head[18:20] = (thl + len(chunk)).to_bytes(2, "big")
        head[l4 + 4 : l4 + 8] = ((seq0 + off) & 0xFFFFFFFF).to_bytes(4, "big")
        flags = head[l4 + 13]
        if not last:
            flags &= ~0x09  # FIN, PSH
        if k:
            flags &= ~0x80  # CWR
        head[l4 + 13] = flags
        head[l4 + 16 : l4 + 18] = pseudo_sum(bytes(head), thl + len(chunk), 6).to_bytes(2, "big")
        segments.append(bytes(head) + chunk)
    return segments


def frag_needed(frame: bytes, mtu: int) -> bytes | None:
    """The ICMP error telling the sender of frame that only `mtu` bytes of IP fit, or None
    if frame gets none (not IPv4 with DF, nor IPv6; or too short to answer)."""
    ethertype = frame[12:14]
    eth = frame[6:12] + frame[0:6] + ethertype
    if ethertype == b"\x08\x00" and len(frame) >= 34 and frame[14] >> 4 == 4:
        ihl = (frame[14] & 0x0F) * 4
        if ihl < 20 or len(frame) < 14 + ihl or not frame[20] & 0x40:
            return None
        quote = frame[14 : 14 + ihl + 8]
        icmp = bytearray(b"\x03\x04\0\0\0\0" + mtu.to_bytes(2, "big") + quote)
        icmp[2:4] = ((~csum_fold(csum_add(bytes(icmp)))) & 0xFFFF).to_bytes(2, "big")
        ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 0, 0, 64, 1, 0, frame[30:34], frame[26:30]))
        _ipv4_header_checksum(ip)
        return eth + bytes(ip) + bytes(icmp)
    if ethertype == b"\x86\xdd" and len(frame) >= 54 and frame[14] >> 4 == 6:
        quote = frame[14 : 14 + 1280 - 48]
        icmp = bytearray(b"\x02\x00\0\0" + mtu.to_bytes(4, "big") + quote)
        src, dst = frame[38:54], frame[22:38]
        total = csum_add(src + dst) + len(icmp) + 58
        icmp[2:4] = ((~csum_fold(csum_add(bytes(icmp), total))) & 0xFFFF).to_bytes(2, "big")
        ip = b"\x60\0\0\0" + len(icmp).to_bytes(2, "big") + b"\x3a\x40" + src + dst
        return eth + ip + bytes(icmp)
    return None


class Pump:
    """Moves frames between a TAP fd and a UDP socket; see the module docstring."""

    def __init__(
        self,
        tap_fd: int,
        udp_fd: int,
        local_id: int,
        *,
        batch: int = 32,
        crypto: bool = False,
        offloads: Offloads | None = None,
        underlay_mtu: int = 0,
        spin_us: int = 0,
    ) -> None:
        self._local = _check_id(local_id, "local_id")
        if not 1 <= batch <= MAX_BATCH:
            raise ValueError(f"batch must be 1..{MAX_BATCH}, got {batch}")
        if underlay_mtu and not 576 <= underlay_mtu <= 65535:
            raise ValueError(f"underlay_mtu must be 0 or 576..65535, got {underlay_mtu}")
        if not 0 <= spin_us <= 100000:
            raise ValueError(f"spin_us must be 0..100000, got {spin_us}")
        # spin_us is accepted for API parity; the twin always sleeps in poll()
        offloads = Offloads() if offloads is None else offloads
        if offloads.udp_gro:  # recvfrom() would return many datagrams as one
            raise ValueError("the pure-Python pump reads one datagram per receive: UDP_GRO must be off")
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
        self._crypto = bool(crypto)
        self._offloads = offloads
        self._vnet = bool(offloads.vnet_hdr)
        self._underlay_mtu = underlay_mtu
        self._max_frame = MAX_SEALED_FRAME if self._crypto else MAX_SLEEVE_FRAME
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._poller = select.poll()
        for fd in (tap_fd, udp_fd, self._wake):
            self._poller.register(fd, select.POLLIN)
        self._udp_fd = udp_fd
        self._stopping = False
        self._lock = threading.Lock()
        self._peers: dict[int, _Peer] = {}
        self._order: list[int] = []  # the dense peer array (see the module docstring)
        self._addr_refs: dict[tuple[str, int], int] = {}  # peers per address
        self._owner: dict[tuple[str, int], int] = {}  # address -> peer whose keys open it
        self._macs: dict[bytes, _Mac] = {}
        self._count = dict.fromkeys(COUNTERS, 0)
        self._out: list[tuple[tuple[str, int], bytes]] = []

    # -- tables (any thread) -------------------------------------------------

    def set_peer(self, peer_id: int, addr: tuple[str, int] | None, via: int, *, flood: bool = True) -> None:
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
                old_addr = old.addr
                old.addr, old.via, old.flood = addr, via, bool(flood)
                self._recompute_owner(old_addr)
            else:
                self._peers[peer_id] = _Peer(addr, via, bool(flood))
                self._order.append(peer_id)
            if addr is not None:
                self._addr_refs[addr] = self._addr_refs.get(addr, 0) + 1
                self._recompute_owner(addr)

    def remove_peer(self, peer_id: int) -> None:
        _check_id(peer_id, "peer_id")
        with self._lock:
            old = self._peers.pop(peer_id, None)
            if old is not None:
                self._release_addr(old.addr)
                self._recompute_owner(old.addr)
                i = self._order.index(peer_id)
                last = self._order.pop()
                if i < len(self._order):
                    self._order[i] = last
            self._macs = {m: e for m, e in self._macs.items() if e.peer != peer_id}

    def set_peer_keys(self, peer_id: int, tx_key: bytes, rx_key: bytes, *, epoch: int) -> None:
        """Install the sleeve keys shared with a directly connected peer.

        Datagrams to it are sealed with tx_key from now on (header KEY_ID = epoch & 1);
        rx_key opens its datagrams carrying that KEY_ID, while the key of the other KEY_ID
        stays for datagrams of the previous epoch still in flight. Installing the same key
        again keeps its counter and replay window (a nonce is never reused)."""
        _check_id(peer_id, "peer_id")
        tx_key = sleeve_crypto.check_key(tx_key, "tx_key")
        rx_key = sleeve_crypto.check_key(rx_key, "rx_key")
        if not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
        with self._lock:
            peer = self._peers.get(peer_id)
            if peer is None:
                raise ValueError(f"unknown peer {peer_id}: set_peer first")
            if peer.tx is not None and peer.tx.key == tx_key:
                peer.tx.epoch = epoch
            else:
                peer.tx = sleeve_crypto.TxKey(tx_key, epoch)
            slot = epoch & 1
            old = peer.rx[slot]
            if old is not None and old.key == rx_key:
                old.epoch = epoch
            else:
                peer.rx[slot] = sleeve_crypto.RxKey(rx_key, epoch)
            self._recompute_owner(peer.addr)

    def rekey_due(self) -> list[int]:
        """Peers whose send key has sealed REKEY_AFTER_MESSAGES datagrams: new keys needed."""
        with self._lock:
            return sorted(
                pid for pid, p in self._peers.items() if p.tx is not None and p.tx.counter >= REKEY_AFTER_MESSAGES
            )

    def _set_tx_counter(self, peer_id: int, counter: int) -> None:
        """Tests only: jump a send key's counter (to reach the rekey and reject limits)."""
        peer = self._peers.get(peer_id)
        if peer is None or peer.tx is None:
            raise ValueError("no send key for that peer")
        peer.tx.counter = counter

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

    def peer_stats(self) -> dict[int, dict[str, int]]:
        """Per peer: frames/bytes sent to it from our TAP, and received from it to our TAP."""
        with self._lock:
            return {
                pid: {"tx_frames": p.tx_frames, "tx_bytes": p.tx_bytes, "rx_frames": p.rx_frames, "rx_bytes": p.rx_bytes}
                for pid, p in self._peers.items()
            }

    def features(self) -> dict[str, object]:
        """What this pump uses; the router shows it in `meshnet status`."""
        return {
            "implementation": "python",
            "crypto": sleeve_crypto_name() if self._crypto else None,
            "vnet_hdr": self._vnet,
            "tap_offload": list(self._offloads.tap),
            "udp_gso": False,
            "udp_gro": False,
            "gro_merge": False,
            "gro_merge_udp": False,
            "batch": self._batch,
            "syscall_batching": False,
            "threads": 1,
            "spin_us": 0,
            "underlay_mtu": self._underlay_mtu,
        }

    def _release_addr(self, addr: tuple[str, int] | None) -> None:
        if addr is None:
            return
        left = self._addr_refs[addr] - 1
        if left:
            self._addr_refs[addr] = left
        else:
            del self._addr_refs[addr]

    def _recompute_owner(self, addr: tuple[str, int] | None) -> None:
        if addr is None:
            return
        holders = [pid for pid, p in self._peers.items() if p.addr == addr and (p.rx[0] or p.rx[1])]
        if holders:
            self._owner[addr] = min(holders)
        else:
            self._owner.pop(addr, None)

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
        extra = VNET_HDR_LEN if self._vnet else 0
        while n < self._batch:
            try:
                data = os.read(self._tap, MAX_FRAME + 1 + extra)
            except BlockingIOError:
                break
            except OSError as e:  # the TAP itself is broken: report it, after sending
                failure = e
                break
            n += 1
            self._tap_frame(data)
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

    def _tap_frame(self, data: bytes) -> None:
        c = self._count
        vflags = gso_type = gso_size = csum_start = csum_offset = 0
        if self._vnet:
            if len(data) >= VNET_HDR_LEN:
                vflags, gso_type, _hdr_len, gso_size, csum_start, csum_offset = _VNET.unpack_from(data)
            frame = data[VNET_HDR_LEN:]
        else:
            frame = data
        c["tap_rx"] += 1
        c["tap_rx_bytes"] += len(frame)
        if len(frame) < ETH_HEADER_LEN:
            c["drop_short_frame"] += 1
            return
        src = self._macs.get(frame[6:12])
        if src is not None and not src.static:
            del self._macs[frame[6:12]]
            c["unlearned"] += 1
        if gso_type != VNET_GSO_NONE:
            segments = segment_tso(frame, gso_type, gso_size)
            if segments is None:
                c["drop_bad_gso"] += 1
                return
            c["gso_segments"] += len(segments)
            for seg in segments:
                self._forward(seg, True)
            return
        csum = False
        if vflags & VNET_F_NEEDS_CSUM:
            if l4_checksum_at(frame) == (csum_start, csum_offset):
                csum = True
            elif ETH_HEADER_LEN <= csum_start and csum_start + csum_offset + 2 <= len(frame):
                frame = complete_checksum(frame, csum_start, csum_offset)
            else:
                c["drop_bad_csum"] += 1
                return
        self._forward(frame, csum)

    def _forward(self, frame: bytes, csum: bool) -> None:
        c = self._count
        if len(frame) > self._max_frame:
            c["drop_oversize"] += 1
            return
        if (
            self._underlay_mtu
            and not frame[0] & 1
            and len(frame) + wire_overhead(self._crypto) > self._underlay_mtu
        ):
            icmp = frag_needed(frame, self._underlay_mtu - wire_overhead(self._crypto) - ETH_HEADER_LEN)
            if icmp is not None:
                c["frag_needed"] += 1
                try:
                    os.write(self._tap, (_ZERO_VNET if self._vnet else b"") + icmp)
                except OSError:
                    pass
                return
        if frame[0] & 1:
            self._flood(frame, csum)
            return
        dst = self._macs.get(frame[0:6])
        if dst is None:
            c["unknown_unicast"] += 1
            self._flood(frame, csum)
            return
        peer = self._peers.get(dst.peer)
        hop = None if peer is None else self._hop(dst.peer, peer)
        if hop is None:
            c["drop_no_route"] += 1
            return
        datagram = self._encap(dst.peer, hop, frame, csum)
        if datagram is not None:
            peer.tx_frames += 1
            peer.tx_bytes += len(frame)
            self._queue(hop.addr, datagram)

    def _flood(self, frame: bytes, csum: bool) -> None:
        for peer_id in self._order:
            peer = self._peers[peer_id]
            if not peer.flood:
                continue
            hop = self._hop(peer_id, peer)
            if hop is None:
                continue
            datagram = self._encap(peer_id, hop, frame, csum)
            if datagram is None:
                continue
            self._count["flood_tx"] += 1
            peer.tx_frames += 1
            peer.tx_bytes += len(frame)
            self._queue(hop.addr, datagram)

    def _encap(self, dst: int, hop: _Peer, frame: bytes, csum: bool) -> bytes | None:
        """The datagram carrying frame to dst through hop, or None (counted) if it cannot go."""
        flags = FLAG_CSUM if csum else 0
        if not self._crypto:
            return _HEADER.pack(VERSION, TYPE_FRAME, flags, DEFAULT_TTL, self._local, dst) + frame
        return self._seal(hop, VERSION, TYPE_FRAME, flags, DEFAULT_TTL, self._local, dst, frame)

    def _seal(self, hop: _Peer, ver: int, typ: int, flags: int, ttl: int, src: int, dst: int, frame: bytes) -> bytes | None:
        if hop.tx is None:
            self._count["drop_tx_no_key"] += 1
            return None
        flags = (flags & ~FLAG_KEY_ID) | sleeve_crypto.key_id_flags(hop.tx.epoch)
        datagram = hop.tx.seal(_HEADER.pack(ver, typ, flags, ttl, src, dst), frame)
        if datagram is None:
            self._count["drop_key_exhausted"] += 1
        return datagram

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
        ver, typ, flags, ttl, src, dst = _HEADER.unpack_from(data)
        if ver != VERSION:
            c["drop_version"] += 1
            return
        if typ != TYPE_FRAME:
            c["drop_type"] += 1
            return
        sealed = bool(flags & FLAG_SEALED)
        if self._crypto and not sealed:
            c["drop_plaintext"] += 1
            return
        if sealed and not self._crypto:
            c["drop_sealed"] += 1
            return
        if sealed:
            if len(data) < MIN_SEALED:
                c["drop_short"] += 1
                return
            owner = self._owner.get(sender)
            key = None if owner is None else self._peers[owner].rx[1 if flags & FLAG_KEY_ID else 0]
            if key is None:
                c["drop_no_key"] += 1
                return
            verdict, frame = key.open(data)
            if frame is None:
                c["drop_" + verdict] += 1
                return
        else:
            frame = data[HEADER_LEN:]
        if dst == self._local:
            peer = self._peers.get(src)
            if peer is None:
                c["drop_unknown_peer"] += 1
                return
            if flags & FLAG_CSUM and l4_checksum_at(frame) is None:
                c["drop_bad_csum"] += 1
                return
            mac = frame[6:12]
            if not mac[0] & 1:
                self._learn(mac, src)
            try:
                self._write_tap(frame, bool(flags & FLAG_CSUM))
            except OSError:
                c["drop_tap_write"] += 1
                return
            c["tap_tx"] += 1
            c["tap_tx_bytes"] += len(frame)
            peer.rx_frames += 1
            peer.rx_bytes += len(frame)
            return
        if ttl <= 1:
            c["drop_ttl"] += 1
            return
        peer = self._peers.get(dst)
        hop = None if peer is None else self._hop(dst, peer)
        if hop is None:
            c["drop_no_route"] += 1
            return
        if sealed:
            out = self._seal(hop, ver, typ, flags, ttl - 1, src, dst, frame)
            if out is None:
                return
        else:
            out = data[:3] + bytes((ttl - 1,)) + data[4:]
        c["relayed"] += 1
        self._queue(hop.addr, out)

    def _write_tap(self, frame: bytes, csum: bool) -> None:
        if self._vnet:
            if csum:
                start, offset = l4_checksum_at(frame)
                head = _VNET.pack(VNET_F_NEEDS_CSUM, VNET_GSO_NONE, 0, 0, start, offset)
            else:
                head = _ZERO_VNET
            os.write(self._tap, head + frame)
            return
        if csum:
            frame = complete_checksum(frame, *l4_checksum_at(frame))
        os.write(self._tap, frame)

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

    def _hop(self, peer_id: int, peer: _Peer) -> _Peer | None:
        """The next hop towards peer (itself when direct) if it has an address, else None."""
        hop = peer if peer.via == peer_id else self._peers.get(peer.via)
        return None if hop is None or hop.addr is None else hop

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


def sleeve_crypto_name() -> str:
    from meshnet.dataplane.layout import AEAD

    return AEAD


__all__ = ["Pump"]
