"""Peers: routes, sleeve addresses, link keys, and sealing a datagram for a next hop.

Routing: `set_peer(p, addr, via)` says frames for `p` go to the next hop `via`
(== p when direct), sent to the next hop's own address. A peer whose next hop is
unknown or has no address has no route. Peers live in a dense array (`order`): a new
peer is appended, a removed one is replaced by the last (floods walk the array in
order). A datagram is looked at only if its sender address belongs to a peer; on an
encrypted pump it is opened with the receive key of the address's *owner*, the lowest
peer id with that address and receive keys. Not locked: the pump holds its lock around
every call. The compiled pump's counterpart is `_fastpath/peers.pxi`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from meshnet.dataplane import sleeve_crypto
from meshnet.dataplane.layout import FLAG_KEY_ID, PEER_TABLE_MAX, REKEY_AFTER_MESSAGES

Addr = tuple[str, int]
HEADER = struct.Struct("!BBBBII")  # the sleeve header: ver, type, flags, ttl, src, dst


@dataclass
class Peer:
    addr: Addr | None
    via: int
    flood: bool = True
    tx_frames: int = 0
    tx_bytes: int = 0
    rx_frames: int = 0
    rx_bytes: int = 0
    tx: sleeve_crypto.TxKey | None = None
    rx: list = field(default_factory=lambda: [None, None])  # RxKey per KEY_ID


class PeerTable:
    def __init__(self) -> None:
        self._peers: dict[int, Peer] = {}
        self._order: list[int] = []  # the dense peer array
        self._addr_refs: dict[Addr, int] = {}  # peers per address
        self._owner: dict[Addr, int] = {}  # address -> peer whose keys open it

    def set(self, peer_id: int, addr: Addr | None, via: int, flood: bool) -> None:
        old = self._peers.get(peer_id)
        if old is None and len(self._peers) >= PEER_TABLE_MAX:
            raise OverflowError(f"peer table full ({PEER_TABLE_MAX} peers)")
        if old is not None:
            self._release_addr(old.addr)
            old_addr = old.addr
            old.addr, old.via, old.flood = addr, via, flood
            self._recompute_owner(old_addr)
        else:
            self._peers[peer_id] = Peer(addr, via, flood)
            self._order.append(peer_id)
        if addr is not None:
            self._addr_refs[addr] = self._addr_refs.get(addr, 0) + 1
            self._recompute_owner(addr)

    def remove(self, peer_id: int) -> None:
        old = self._peers.pop(peer_id, None)
        if old is not None:
            self._release_addr(old.addr)
            self._recompute_owner(old.addr)
            i = self._order.index(peer_id)
            last = self._order.pop()
            if i < len(self._order):
                self._order[i] = last

    def set_keys(self, peer_id: int, tx_key: bytes, rx_key: bytes, epoch: int) -> None:
        """See Pump.set_peer_keys: the same key again keeps its counter and window."""
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
        return sorted(
            pid for pid, p in self._peers.items() if p.tx is not None and p.tx.counter >= REKEY_AFTER_MESSAGES
        )

    def set_tx_counter(self, peer_id: int, counter: int) -> None:
        peer = self._peers.get(peer_id)
        if peer is None or peer.tx is None:
            raise ValueError("no send key for that peer")
        peer.tx.counter = counter

    def stats(self) -> dict[int, dict[str, int]]:
        return {
            pid: {"tx_frames": p.tx_frames, "tx_bytes": p.tx_bytes, "rx_frames": p.rx_frames, "rx_bytes": p.rx_bytes}
            for pid, p in self._peers.items()
        }

    def size(self) -> int:
        return len(self._peers)

    def get(self, peer_id: int) -> Peer | None:
        return self._peers.get(peer_id)

    def in_order(self) -> Iterator[tuple[int, Peer]]:
        """Every peer, in peer-array order (the order floods go out in)."""
        for peer_id in self._order:
            yield peer_id, self._peers[peer_id]

    def hop(self, peer_id: int, peer: Peer) -> Peer | None:
        """The next hop towards peer (itself when direct) if it has an address, else None."""
        hop = peer if peer.via == peer_id else self._peers.get(peer.via)
        return None if hop is None or hop.addr is None else hop

    def knows(self, addr: Addr) -> bool:
        """Does some peer have this sleeve address?"""
        return addr in self._addr_refs

    def owner(self, addr: Addr) -> Peer | None:
        """The peer whose receive keys open datagrams from addr, if any."""
        owner = self._owner.get(addr)
        return None if owner is None else self._peers[owner]

    def _release_addr(self, addr: Addr | None) -> None:
        if addr is None:
            return
        left = self._addr_refs[addr] - 1
        if left:
            self._addr_refs[addr] = left
        else:
            del self._addr_refs[addr]

    def _recompute_owner(self, addr: Addr | None) -> None:
        if addr is None:
            return
        holders = [pid for pid, p in self._peers.items() if p.addr == addr and (p.rx[0] or p.rx[1])]
        if holders:
            self._owner[addr] = min(holders)
        else:
            self._owner.pop(addr, None)


def seal(
    counters: dict[str, int], hop: Peer, ver: int, typ: int, flags: int, ttl: int, src: int, dst: int, frame: bytes
) -> bytes | None:
    """The datagram carrying frame sealed with hop's send key (KEY_ID from its epoch), or
    None (counted) when hop has no send key or it is used up."""
    if hop.tx is None:
        counters["drop_tx_no_key"] += 1
        return None
    flags = (flags & ~FLAG_KEY_ID) | sleeve_crypto.key_id_flags(hop.tx.epoch)
    datagram = hop.tx.seal(HEADER.pack(ver, typ, flags, ttl, src, dst), frame)
    if datagram is None:
        counters["drop_key_exhausted"] += 1
    return datagram
