"""The addresses this peer has handed out, indexed by address and by owner.

Only addresses inside ranges this peer owns are ever added here; the ring says which ranges
those are. Free space is everything else in those ranges, so it needs no separate structure:
free runs are the gaps between sorted allocated addresses.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Mapping


class Space:
    def __init__(self, allocations: Mapping[int, str] | None = None):
        self._holder: dict[int, str] = {}
        self._sorted: list[int] = []
        self._by_owner: dict[str, set[int]] = {}
        for address, owner in (allocations or {}).items():
            self.add(address, owner)

    def __len__(self) -> int:
        return len(self._sorted)

    def items(self) -> Iterator[tuple[int, str]]:
        for address in self._sorted:
            yield address, self._holder[address]

    def holder(self, address: int) -> str | None:
        return self._holder.get(address)

    def of(self, owner: str) -> list[int]:
        return sorted(self._by_owner.get(owner, ()))

    def add(self, address: int, owner: str) -> None:
        assert address not in self._holder, "address handed out twice"
        self._holder[address] = owner
        bisect.insort(self._sorted, address)
        self._by_owner.setdefault(owner, set()).add(address)

    def remove(self, address: int) -> None:
        owner = self._holder.pop(address)
        del self._sorted[bisect.bisect_left(self._sorted, address)]
        addresses = self._by_owner[owner]
        addresses.discard(address)
        if not addresses:
            del self._by_owner[owner]

    def clear(self) -> None:
        self._holder.clear()
        self._sorted.clear()
        self._by_owner.clear()

    def count(self, lo: int, hi: int) -> int:
        """How many addresses in `[lo, hi)` are handed out."""
        return bisect.bisect_left(self._sorted, hi) - bisect.bisect_left(self._sorted, lo)

    def free_runs(self, lo: int, hi: int) -> Iterator[tuple[int, int]]:
        """Maximal runs `[a, b)` of addresses in `[lo, hi)` that are not handed out."""
        i = bisect.bisect_left(self._sorted, lo)
        a = lo
        while a < hi:
            nxt = self._sorted[i] if i < len(self._sorted) else hi
            b = min(nxt, hi)
            if b > a:
                yield a, b
            a = b + 1
            i += 1

    def first_free(self, intervals: list[tuple[int, int]], *, after: int) -> int | None:
        """The first free address after `after` (wrapping) in the sorted `intervals`.

        Starting after the last address handed out, instead of at the lowest free one, keeps a
        just-released address out of use for as long as possible: a container being torn down
        may still be using it (weave #2744).
        """
        for lo, hi in intervals:
            found = self._first_free_in(max(lo, after + 1), hi)
            if found is not None:
                return found
        for lo, hi in intervals:
            found = self._first_free_in(lo, min(hi, after + 1))
            if found is not None:
                return found
        return None

    def _first_free_in(self, lo: int, hi: int) -> int | None:
        i = bisect.bisect_left(self._sorted, lo)
        a = lo
        while i < len(self._sorted) and self._sorted[i] == a:
            a += 1
            i += 1
        return a if a < hi else None
