"""`MemoryStore`: the IPAM `Store` of tests and simulations, with kill -9 as a method.

`crash()` models kill -9: it returns a store that holds exactly what was committed, and
makes the old one refuse further commits (a dead process commits nothing).
"""

from __future__ import annotations

import copy

from meshnet.ipam.store import Changes, Snapshot


class MemoryStore:
    def __init__(self, snapshot: Snapshot | None = None):
        self._data = snapshot or Snapshot()
        self._dead = False
        self.commits = 0

    def load(self) -> Snapshot:
        return copy.deepcopy(self._data)

    def commit(self, changes: Changes, *, durable: bool = True) -> None:
        if self._dead:
            raise RuntimeError("commit to the store of a crashed allocator")
        _apply(self._data.meta, changes.meta)
        self._data.ring.update(changes.ring)
        _apply(self._data.allocations, changes.allocations)
        self.commits += 1

    def crash(self) -> MemoryStore:
        """Model kill -9: the process is gone, what it committed is what the next one sees."""
        self._dead = True
        return MemoryStore(copy.deepcopy(self._data))

    def close(self) -> None:
        self._dead = True


def _apply(target: dict, changes: dict) -> None:  # type: ignore[type-arg]
    for key, value in changes.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = value
