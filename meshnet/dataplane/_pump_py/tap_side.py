"""Frames from the TAP: checks, TSO segmentation, ICMP for frames too big, forwarding.

Per frame (with IFF_VNET_HDR each starts with a virtio_net_hdr): forget its source MAC
if it was learned as remote (the host is here now). A TSO frame (GSO_TCPV4/TCPV6) is cut
into MSS segments, each with a partial checksum (CSUM); a frame marked NEEDS_CSUM keeps
its partial checksum when the receiver can locate it from the IP header (CSUM), else it
is completed here. Every datagram of the frame carries its flow hint (`layout.flow_hint`,
flags bits 3-7), taken from the frame before it is cut. Then pick destinations per frame
(or segment): a known unicast MAC
goes to its peer, multicast/broadcast and unknown unicast go to every peer that has a
route and `flood=True` (one copy each, header dst = that peer, in peer-array order).
Each copy is queued with the sleeve header in front, sealed on an encrypted pump with
the send key of its next hop.

MTU: with `underlay_mtu` set, an IPv4 (DF) or IPv6 unicast frame that would not fit one
underlay datagram is answered with ICMP "fragmentation needed" / ICMPv6 "packet too big"
written back into the TAP, and not sent.

The compiled pump's counterpart is `_fastpath/tap.pxi`.
"""

from __future__ import annotations

import os
import struct

from meshnet.dataplane._pump_py.checksums import (
    complete_checksum,
    csum_add,
    csum_fold,
    ipv4_header_checksum,
    l4_checksum_at,
    pseudo_sum,
)
from meshnet.dataplane._pump_py.peers import HEADER, Peer, PeerTable, seal
from meshnet.dataplane._pump_py.sendq import SendQueue
from meshnet.dataplane._pump_py.macs import MacTable
from meshnet.dataplane.layout import (
    DEFAULT_TTL,
    ETH_HEADER_LEN,
    FLAG_CSUM,
    HINT_SHIFT,
    MAX_SEALED_FRAME,
    MAX_SLEEVE_FRAME,
    TYPE_FRAME,
    VERSION,
    VNET_F_NEEDS_CSUM,
    VNET_GSO_ECN,
    VNET_GSO_NONE,
    VNET_GSO_TCPV4,
    VNET_GSO_TCPV6,
    VNET_HDR_LEN,
    flow_hint,
    wire_overhead,
)

VNET = struct.Struct("<BBHHHH")  # virtio_net_hdr: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
ZERO_VNET = bytes(VNET_HDR_LEN)


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
            ipv4_header_checksum(ip)
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
        ipv4_header_checksum(ip)
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


class TapSide:
    """Turns each frame read from the TAP into queued datagrams (see the module docstring)."""

    def __init__(
        self,
        *,
        tap_fd: int,
        local_id: int,
        crypto: bool,
        vnet: bool,
        underlay_mtu: int,
        macs: MacTable,
        peers: PeerTable,
        sendq: SendQueue,
        counters: dict[str, int],
    ) -> None:
        self._tap = tap_fd
        self._local = local_id
        self._crypto = crypto
        self._vnet = vnet
        self._underlay_mtu = underlay_mtu
        self._max_frame = MAX_SEALED_FRAME if crypto else MAX_SLEEVE_FRAME
        self._macs = macs
        self._peers = peers
        self._sendq = sendq
        self._count = counters

    def frame(self, data: bytes) -> None:
        """One read from the TAP (a virtio_net_hdr first when the TAP has them)."""
        c = self._count
        vflags = gso_type = gso_size = csum_start = csum_offset = 0
        if self._vnet:
            if len(data) >= VNET_HDR_LEN:
                vflags, gso_type, _hdr_len, gso_size, csum_start, csum_offset = VNET.unpack_from(data)
            frame = data[VNET_HDR_LEN:]
        else:
            frame = data
        c["tap_rx"] += 1
        c["tap_rx_bytes"] += len(frame)
        if len(frame) < ETH_HEADER_LEN:
            c["drop_short_frame"] += 1
            return
        self._macs.unlearn(frame[6:12])
        hint = flow_hint(frame) << HINT_SHIFT
        if gso_type != VNET_GSO_NONE:
            segments = segment_tso(frame, gso_type, gso_size)
            if segments is None:
                c["drop_bad_gso"] += 1
                return
            c["gso_segments"] += len(segments)
            for seg in segments:
                self._forward(seg, FLAG_CSUM | hint)
            return
        flags = hint
        if vflags & VNET_F_NEEDS_CSUM:
            if l4_checksum_at(frame) == (csum_start, csum_offset):
                flags |= FLAG_CSUM
            elif ETH_HEADER_LEN <= csum_start and csum_start + csum_offset + 2 <= len(frame):
                frame = complete_checksum(frame, csum_start, csum_offset)
            else:
                c["drop_bad_csum"] += 1
                return
        self._forward(frame, flags)

    def _forward(self, frame: bytes, flags: int) -> None:
        """Send one frame (or segment); flags: its CSUM and flow hint."""
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
                    os.write(self._tap, (ZERO_VNET if self._vnet else b"") + icmp)
                except OSError:
                    pass
                return
        if frame[0] & 1:
            self._flood(frame, flags)
            return
        dst = self._macs.peer_of(frame[0:6])
        if dst is None:
            c["unknown_unicast"] += 1
            self._flood(frame, flags)
            return
        peer = self._peers.get(dst)
        hop = None if peer is None else self._peers.hop(dst, peer)
        if hop is None:
            c["drop_no_route"] += 1
            return
        datagram = self._encap(dst, hop, frame, flags)
        if datagram is not None:
            peer.tx_frames += 1
            peer.tx_bytes += len(frame)
            self._sendq.queue(hop.addr, datagram)

    def _flood(self, frame: bytes, flags: int) -> None:
        for peer_id, peer in self._peers.in_order():
            if not peer.flood:
                continue
            hop = self._peers.hop(peer_id, peer)
            if hop is None:
                continue
            datagram = self._encap(peer_id, hop, frame, flags)
            if datagram is None:
                continue
            self._count["flood_tx"] += 1
            peer.tx_frames += 1
            peer.tx_bytes += len(frame)
            self._sendq.queue(hop.addr, datagram)

    def _encap(self, dst: int, hop: Peer, frame: bytes, flags: int) -> bytes | None:
        """The datagram carrying frame to dst through hop, or None (counted) if it cannot go."""
        if not self._crypto:
            return HEADER.pack(VERSION, TYPE_FRAME, flags, DEFAULT_TTL, self._local, dst) + frame
        return seal(self._count, hop, VERSION, TYPE_FRAME, flags, DEFAULT_TTL, self._local, dst, frame)
