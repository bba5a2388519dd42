"""The MAC table: which peer each remote MAC is behind, static or learned.

Static entries come from `set_mac` (gossiped endpoints) and are never overwritten by
learning. A datagram for us teaches "its inner source MAC is behind its src peer"; a
frame from our TAP forgets a learned entry for its source MAC (the host is here now).
At most MAC_TABLE_MAX entries: `set_mac` then refuses, learning counts
`learn_table_full`. Not locked: the pump holds its lock around every call. The compiled
pump's counterpart is the MAC part of `_fastpath/tables.pxi`.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshnet.dataplane.layout import MAC_TABLE_MAX


@dataclass
class _Mac:
    peer: int
    static: bool


class MacTable:
    def __init__(self, counters: dict[str, int]) -> None:
        self._entries: dict[bytes, _Mac] = {}
        self._count = counters

    def set_static(self, mac: bytes, peer_id: int) -> None:
        if mac not in self._entries and len(self._entries) >= MAC_TABLE_MAX:
            raise OverflowError(f"MAC table full ({MAC_TABLE_MAX} entries)")
        self._entries[mac] = _Mac(peer_id, True)

    def forget(self, mac: bytes) -> None:
        self._entries.pop(mac, None)

    def forget_peer(self, peer_id: int) -> None:
        self._entries = {m: e for m, e in self._entries.items() if e.peer != peer_id}

    def snapshot(self) -> dict[bytes, int]:
        return {m: e.peer for m, e in self._entries.items()}

    def peer_of(self, mac: bytes) -> int | None:
        entry = self._entries.get(mac)
        return None if entry is None else entry.peer

    def unlearn(self, mac: bytes) -> None:
        """A frame from our TAP comes from mac: forget it if it was learned as remote."""
        entry = self._entries.get(mac)
        if entry is not None and not entry.static:
            del self._entries[mac]
            self._count["unlearned"] += 1

    def learn(self, mac: bytes, peer_id: int) -> None:
        entry = self._entries.get(mac)
        if entry is not None:
            if entry.static or entry.peer == peer_id:
                return
            entry.peer = peer_id
        elif len(self._entries) >= MAC_TABLE_MAX:
            self._count["learn_table_full"] += 1
            return
        else:
            self._entries[mac] = _Mac(peer_id, False)
        self._count["learned"] += 1
