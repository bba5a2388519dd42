"""Datagrams from the UDP socket: checks, opening, delivery to the TAP, relaying.

Only datagrams from a known peer address are looked at. On an encrypted pump every
datagram must be sealed, and is opened with the receive key (for its KEY_ID) of the peer
the address belongs to (the lowest peer id with that address and keys), after a
replay-window check. A datagram for us teaches "inner source MAC is behind header src"
and its frame is written to the TAP (its checksum completed first when CSUM is set and
the TAP takes no virtio_net_hdr; else handed over as NEEDS_CSUM); one for another peer
is relayed with ttl - 1 (re-sealed for the next hop when encrypted). Each datagram is
counted once: delivered, relayed, or dropped by reason.

The compiled pump's counterpart is `_fastpath/udp.pxi` (and `gro.pxi`, which merges
what this side writes one frame at a time).
"""

from __future__ import annotations

import os

from meshnet.dataplane._pump_py.checksums import complete_checksum, l4_checksum_at
from meshnet.dataplane._pump_py.peers import HEADER, Addr, PeerTable, seal
from meshnet.dataplane._pump_py.sendq import SendQueue
from meshnet.dataplane._pump_py.macs import MacTable
from meshnet.dataplane._pump_py.tap_side import VNET, ZERO_VNET
from meshnet.dataplane.layout import (
    FLAG_CSUM,
    FLAG_KEY_ID,
    FLAG_SEALED,
    HEADER_LEN,
    MIN_DATAGRAM,
    MIN_SEALED,
    TYPE_FRAME,
    VERSION,
    VNET_F_NEEDS_CSUM,
    VNET_GSO_NONE,
)


class UdpSide:
    """Handles each datagram received (see the module docstring)."""

    def __init__(
        self,
        *,
        tap_fd: int,
        local_id: int,
        crypto: bool,
        vnet: bool,
        macs: MacTable,
        peers: PeerTable,
        sendq: SendQueue,
        counters: dict[str, int],
    ) -> None:
        self._tap = tap_fd
        self._local = local_id
        self._crypto = crypto
        self._vnet = vnet
        self._macs = macs
        self._peers = peers
        self._sendq = sendq
        self._count = counters

    def datagram(self, data: bytes, sender: Addr) -> None:
        c = self._count
        c["udp_rx"] += 1
        c["udp_rx_bytes"] += len(data)
        if not self._peers.knows(sender):
            c["drop_unknown_sender"] += 1
            return
        if len(data) < MIN_DATAGRAM:
            c["drop_short"] += 1
            return
        ver, typ, flags, ttl, src, dst = HEADER.unpack_from(data)
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
            owner = self._peers.owner(sender)
            key = None if owner is None else owner.rx[1 if flags & FLAG_KEY_ID else 0]
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
                self._macs.learn(mac, src)
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
        hop = None if peer is None else self._peers.hop(dst, peer)
        if hop is None:
            c["drop_no_route"] += 1
            return
        if sealed:
            out = seal(c, hop, ver, typ, flags, ttl - 1, src, dst, frame)
            if out is None:
                return
        else:
            out = data[:3] + bytes((ttl - 1,)) + data[4:]
        c["relayed"] += 1
        self._sendq.queue(hop.addr, out)

    def _write_tap(self, frame: bytes, csum: bool) -> None:
        if self._vnet:
            if csum:
                start, offset = l4_checksum_at(frame)
                head = VNET.pack(VNET_F_NEEDS_CSUM, VNET_GSO_NONE, 0, 0, start, offset)
            else:
                head = ZERO_VNET
            os.write(self._tap, head + frame)
            return
        if csum:
            frame = complete_checksum(frame, *l4_checksum_at(frame))
        os.write(self._tap, frame)
