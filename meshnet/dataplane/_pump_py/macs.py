"""The MAC table: which peer each remote MAC is behind, and the policy that bounds it.

Two kinds of entry share one capacity (`mac_table_max`):

- *static* entries come from `set_mac` (gossiped endpoints). Learning never overwrites
  nor evicts them; they never age.
- *learned* entries: a datagram for us teaches "its inner source MAC is behind its src
  peer" (learning happens on the UDP side only: the TAP side learns nothing, local MACs
  are the bridge's business). Each carries the second it was last confirmed (`stamp`);
  a frame from our TAP with that source MAC forgets it (the host is here now).

The rules, in the order they apply:

- **Ageing.** A learned entry with `now - stamp >= mac_age` is *expired*: it is as good
  as absent. Whatever touches it (a lookup, learning, `set_mac`, `forget_mac`,
  `remove_peer`) removes it first and counts `learned_aged`; the loop removes the rest
  (`reclaim`), so that `stats()` and `macs()` never show an expired entry.
- **Quota.** A peer has at most `learn_quota` learned entries. A new MAC from a peer at
  its quota is not learned (`learn_over_quota`); if that MAC was learned behind another
  peer, that entry goes (it is wrong now) and the frames to it are flooded.
- **Capacity.** A new learned MAC that finds the table full is not learned
  (`learn_table_full`). A new static entry that finds it full evicts the learned entry
  seen longest ago (ties: the lowest MAC; `learned_evicted`); with no learned entry left
  `set_mac` raises OverflowError.
- Before deciding "over quota" or "full", expired entries are reclaimed, so both
  decisions count live entries only. A reclaim happens at most once per clock second:
  after one, nothing else can expire before the clock moves, so this only saves work.

`now` is whole seconds of CLOCK_MONOTONIC, read once per batch (the pump's `clock`).
Not locked: the pump holds its lock around every call. The compiled pump's counterpart
is `_fastpath/macs.pxi`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class _Mac:
    peer: int
    static: bool
    stamp: int = 0  # learned: the second it was last confirmed


class MacTable:
    def __init__(self, counters: dict[str, int], *, capacity: int, quota: int, age: int) -> None:
        self._entries: dict[bytes, _Mac] = {}
        self._learned: dict[int, int] = {}  # peer id -> its learned entries
        self._count = counters
        self.capacity = capacity
        self.quota = quota
        self.age = age
        self.now = 0  # set by the pump before every use
        self._reclaimed_at: int | None = None

    # -- the policy's helpers ------------------------------------------------------

    def _expired(self, entry: _Mac) -> bool:
        return not entry.static and self.now - entry.stamp >= self.age

    def _remove(self, mac: bytes) -> None:
        entry = self._entries.pop(mac)
        if not entry.static:
            left = self._learned[entry.peer] - 1
            if left:
                self._learned[entry.peer] = left
            else:
                del self._learned[entry.peer]

    def _live(self, mac: bytes) -> _Mac | None:
        """The entry for mac, after removing it if it has expired."""
        entry = self._entries.get(mac)
        if entry is not None and self._expired(entry):
            self._remove(mac)
            self._count["learned_aged"] += 1
            return None
        return entry

    def reclaim(self) -> None:
        """Remove every expired entry (once per clock second at most: see above)."""
        if self._reclaimed_at == self.now:
            return
        self._reclaimed_at = self.now
        for mac in [m for m, e in self._entries.items() if self._expired(e)]:
            self._remove(mac)
            self._count["learned_aged"] += 1

    # -- control (set_mac, forget_mac, remove_peer, macs) ----------------------------

    def set_static(self, mac: bytes, peer_id: int) -> None:
        entry = self._live(mac)
        if entry is None and len(self._entries) >= self.capacity:
            self.reclaim()
            if len(self._entries) >= self.capacity:
                self._evict_one()
        if entry is not None and not entry.static:
            self._remove(mac)
        self._entries[mac] = _Mac(peer_id, True)

    def _evict_one(self) -> None:
        learned = [(e.stamp, m) for m, e in self._entries.items() if not e.static]
        if not learned:
            raise OverflowError(f"MAC table full ({self.capacity} gossiped entries)")
        self._remove(min(learned)[1])
        self._count["learned_evicted"] += 1

    def forget(self, mac: bytes) -> None:
        if self._live(mac) is not None:
            self._remove(mac)

    def forget_peer(self, peer_id: int) -> None:
        for mac in [m for m, e in self._entries.items() if e.peer == peer_id]:
            if self._live(mac) is not None:
                self._remove(mac)

    def snapshot(self) -> dict[bytes, int]:
        self.reclaim()
        return {m: e.peer for m, e in self._entries.items()}

    def sizes(self) -> dict[str, int]:
        return {"macs": len(self._entries), "learned": sum(self._learned.values())}

    def has_learned(self) -> bool:
        return bool(self._learned)

    # -- the data path -----------------------------------------------------------------

    def peer_of(self, mac: bytes) -> int | None:
        entry = self._live(mac)
        return None if entry is None else entry.peer

    def unlearn(self, mac: bytes) -> None:
        """A frame from our TAP comes from mac: forget it if it was learned as remote."""
        entry = self._live(mac)
        if entry is not None and not entry.static:
            self._remove(mac)
            self._count["unlearned"] += 1

    def learn(self, mac: bytes, peer_id: int) -> None:
        """A datagram from peer_id (a known peer) carries a frame from mac."""
        entry = self._live(mac)
        if entry is not None:
            if entry.static:
                return
            if entry.peer == peer_id:
                entry.stamp = self.now
                return
            self._remove(mac)  # it moved: the old entry is wrong whatever happens next
        if self._learned.get(peer_id, 0) >= self.quota:
            self.reclaim()
            if self._learned.get(peer_id, 0) >= self.quota:
                self._count["learn_over_quota"] += 1
                return
        if len(self._entries) >= self.capacity:
            self.reclaim()
            if len(self._entries) >= self.capacity:
                self._count["learn_table_full"] += 1
                return
        self._entries[mac] = _Mac(peer_id, False, self.now)
        self._learned[peer_id] = self._learned.get(peer_id, 0) + 1
        self._count["learned"] += 1
