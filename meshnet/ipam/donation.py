"""Space donation: which peer to ask, and what a donor carves out of its ranges.

A peer with no free address in the subnet it needs asks one reachable owner of that subnet
(`want`). The donor gives the largest free run it has there, but at most half its free space
in the subnet (at least one address): it splits its own range by inserting tokens and hands
the piece over. The requester never changes the ring itself. Pure functions over ring and
space.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from meshnet.ipam.ring import Entry, Ring, host_count
from meshnet.ipam.space import Space


@dataclass
class DonorChoice:
    donor: bytes | None = None
    unreachable: set[bytes] = field(default_factory=set)  # owners with space we cannot reach
    silent: set[bytes] = field(default_factory=set)  # owners with space that did not answer lately
    settling: bool = False  # part of the subnet awaits an rmpeer confirmation

    @property
    def exhausted(self) -> bool:
        return self.donor is None and not (self.unreachable or self.silent or self.settling)


def fingerprint(ring: Ring, peer: bytes) -> frozenset[tuple[int, int]]:
    """Changes whenever `peer` changes any of its entries (e.g. a new free hint)."""
    return frozenset((start, e.version) for start, _, e in ring.owned(peer))


def choose_donor(
    ring: Ring,
    me: bytes,
    lo: int,
    hi: int,
    reachable: set[bytes],
    denied: dict[bytes, frozenset[tuple[int, int]]],
    silent: set[bytes],
) -> DonorChoice:
    """Pick the reachable owner with the most free space (by hint) inside `[lo, hi)`.

    Hints can be stale; a donor that denied us is not asked again until it changes one of its
    entries (`denied` holds its fingerprint then), one that did not answer (`silent`) is
    skipped for a while. Ties go to the lowest name, so the choice is deterministic.
    """
    choice = DonorChoice()
    score: dict[bytes, int] = {}
    for start, end, entry in ring.overlapping(lo, hi):
        if entry.reclaim:
            choice.settling = True
        elif entry.owner == me or entry.free == 0:
            continue
        elif entry.owner not in reachable:
            choice.unreachable.add(entry.owner)
        elif entry.owner in silent:
            choice.silent.add(entry.owner)
        elif entry.owner not in denied or denied[entry.owner] != fingerprint(ring, entry.owner):
            overlap = min(end, hi) - max(start, lo)
            score[entry.owner] = score.get(entry.owner, 0) + min(entry.free, overlap)
    if score:
        choice.donor = min(score, key=lambda peer: (-score[peer], peer))
    return choice


def free_count(ring: Ring, space: Space, start: int, end: int) -> int:
    return host_count(start, end, ring.universe) - space.count(start, end)


def carve(ring: Ring, space: Space, me: bytes, lo: int, hi: int) -> tuple[int, int] | None:
    """The block `[a, b)` we would give away from our usable ranges inside `[lo, hi)`."""
    ulo, uhi = ring.universe.usable
    runs: list[tuple[int, int]] = []
    for start, end, entry in ring.overlapping(lo, hi):
        if entry.owner == me and not entry.reclaim:
            runs.extend(space.free_runs(max(start, lo, ulo), min(end, hi, uhi)))
    total = sum(b - a for a, b in runs)
    if total == 0:
        return None
    a, b = max(runs, key=lambda run: (run[1] - run[0], run[0]))
    size = min(b - a, max(1, total // 2))
    return b - size, b  # the top of the run, so the rest of our range stays one piece


def give(ring: Ring, space: Space, me: bytes, to: bytes, block: tuple[int, int]) -> dict[int, Entry]:
    """Ring changes that hand `block` (inside one of our ranges) to `to`. Not yet applied."""
    a, b = block
    token = ring.token_at(a)
    end = ring.end_of(token)
    ours = ring.get(token)
    assert ours is not None and ours.owner == me and not ours.reclaim and b <= end
    changes: dict[int, Entry] = {}
    if b < end:  # keep the part above the block: a new token of ours
        changes[b] = Entry(me, 1, free_count(ring, space, b, end))
    block_free = host_count(a, b, ring.universe)
    if a == token:
        changes[token] = Entry(to, ours.version + 1, block_free)
    else:
        changes[a] = Entry(to, 1, block_free)
        changes[token] = Entry(me, ours.version + 1, free_count(ring, space, token, a))
    return changes
