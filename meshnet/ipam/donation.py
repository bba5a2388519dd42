"""Space donation: which peer to ask, and what a donor carves out of its ranges.

A peer with no free address in the subnet it needs asks one reachable owner of that subnet
(`want`). The donor gives the largest free run it has there, but at most half its free space
in the subnet (at least one address): it splits its own range by inserting tokens and hands
the piece over. The requester never changes the ring itself.

Donors are chosen by the free-space hints in the ring, which the owner of each range keeps
up to date (`hint_changes`): at once when a range goes from full to not full or back
(`crossed_full`), otherwise debounced.

The donor side, the hints and `heir` (who takes our ranges on reset) are pure functions
over ring and space. The requesting side is `Seeker`: at most one donor asked at a time,
another asked when one denies us or stays silent; it sets why each waiting allocation
waits, and `seek` says which `want` to send and which requests can never be served.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from meshnet.ipam.addr import Block
from meshnet.ipam.errors import RangeExhausted
from meshnet.ipam.outcome import Request
from meshnet.ipam.ring import Entry, Ring, host_count, next_version
from meshnet.ipam.space import Space

WANT_TIMEOUT = 3.0  # s to wait for a donor's answer before asking another
SILENT_BACKOFF = 5.0  # s before asking a donor again that did not answer


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
        changes[token] = Entry(to, next_version(ours.version), block_free)
    else:
        changes[a] = Entry(to, 1, block_free)
        changes[token] = Entry(me, next_version(ours.version), free_count(ring, space, token, a))
    return changes


def heir(ring: Ring, reachable: set[bytes]) -> bytes | None:
    """Who takes our ranges on reset: the reachable peer with the most free space (by hint),
    ties to the lowest name; None if nobody is reachable."""
    if not reachable:
        return None
    free: dict[bytes, int] = {p: 0 for p in reachable}
    for _, _, e in ring.ranges():
        if e.owner in free:
            free[e.owner] += e.free + 1  # +1: an owner of a full range still beats a non-owner
    return min(free, key=lambda p: (-free[p], p))


# ---- free-space hints -------------------------------------------------------------------


def crossed_full(ring: Ring, space: Space, me: bytes, addresses: Iterable[int]) -> bool:
    """Whether a usable range of ours holding one of `addresses` went from full to not full,
    or back, against its hint: full ranges are never asked, so that must be told at once."""
    for addr in addresses:
        start = ring.token_at(addr)
        e = ring.get(start)
        if e is None or e.owner != me or e.reclaim:
            continue
        free = free_count(ring, space, start, ring.end_of(start))
        if (free == 0) != (e.free == 0):
            return True
    return False


def hint_changes(ring: Ring, space: Space, me: bytes) -> dict[int, Entry]:
    """New entries for our usable ranges whose hint is not their free count any more."""
    changes: dict[int, Entry] = {}
    for start, end, e in ring.owned(me):
        free = free_count(ring, space, start, end)
        if not e.reclaim and free != e.free:
            changes[start] = Entry(me, next_version(e.version), free)
    return changes


# ---- the requesting side ----------------------------------------------------------------


def exhausted(block: Block) -> RangeExhausted:
    return RangeExhausted(f"no free address in {block.cidr}: every reachable peer that owns part of it is full")


@dataclass
class Asking:
    """The one donor we asked for space in `block` (a `want` with this id in flight)."""

    id: int
    donor: bytes
    block: Block
    deadline: float


@dataclass
class Sought:
    ask: Asking | None = None  # a new want: send it to `ask.donor`
    exhausted: list[Request] = field(default_factory=list)  # end them with `exhausted(block)`


class Seeker:
    def __init__(self) -> None:
        self.want: Asking | None = None
        self.denied: dict[bytes, frozenset[tuple[int, int]]] = {}  # donor -> its fingerprint then
        self.silent: dict[bytes, float] = {}  # donor that did not answer -> not before

    def choice(self, ring: Ring, me: bytes, block: Block, reachable: set[bytes], now: float) -> DonorChoice:
        lo, hi = block.usable
        silent = {p for p, t in self.silent.items() if t > now}
        return choose_donor(ring, me, lo, hi, reachable, self.denied, silent)

    def seek(
        self,
        ring: Ring,
        me: bytes,
        waiting: list[Request],
        reachable: set[bytes],
        now: float,
        new_id: Callable[[], int],
    ) -> Sought:
        """Ask a donor for space for the oldest waiting allocation that has one; one at a time.

        Sets the reason of every waiting allocation (claims are not served by donation).
        """
        sought = Sought()
        if self.want is not None and now >= self.want.deadline:
            self.silent[self.want.donor] = now + SILENT_BACKOFF  # try someone else meanwhile
            self.want = None
        blocks = list(dict.fromkeys(r.block for r in waiting if r.address is None))
        for block in blocks:
            same = [r for r in waiting if r.address is None and r.block == block]
            if self.want is not None and self.want.block == block:
                continue  # asked already; its reason stands
            choice = self.choice(ring, me, block, reachable, now)
            if choice.exhausted:
                sought.exhausted.extend(same)
                continue
            if choice.donor is not None and self.want is None:
                self.want = sought.ask = Asking(new_id(), choice.donor, block, now + WANT_TIMEOUT)
                reason = f"asking peer {choice.donor.hex()} for space in {block.cidr}"
            elif choice.donor is not None and self.want is not None:
                reason = f"queued behind a request for space in {self.want.block.cidr}"
            elif choice.unreachable:
                names = ", ".join(sorted(p.hex() for p in choice.unreachable))
                reason = (
                    f"all free space in {block.cidr} is owned by unreachable peers ({names}); "
                    "use rmpeer if they are gone for good"
                )
            elif choice.silent:
                names = ", ".join(sorted(p.hex() for p in choice.silent))
                reason = f"peers with space in {block.cidr} did not answer ({names}); retrying"
            else:
                reason = f"waiting for an rmpeer in {block.cidr} to be confirmed"
            for r in same:
                r.reason = reason
        return sought

    def expire(self, now: float) -> None:
        """Silent donors may be asked again once their back-off is over."""
        self.silent = {p: t for p, t in self.silent.items() if t > now}

    def lost(self, reachable: set[bytes]) -> None:
        """The donor we asked is unreachable: its answer will not come."""
        if self.want is not None and self.want.donor not in reachable:
            self.want = None

    def denied_by(self, ring: Ring, src: bytes, want_id: int) -> None:
        """`src` has nothing to give: not asked again until it changes one of its entries."""
        if self.want is not None and self.want.id == want_id and self.want.donor == src:
            self.denied[src] = fingerprint(ring, src)
            self.want = None

    def answered(self, src: bytes, re: int) -> None:
        """`src` answered our want with its state (with the donation, if it gave any)."""
        if self.want is not None and re == self.want.id and src == self.want.donor:
            self.want = None

    def deadline(self, waiting: bool) -> float | None:
        """The want's timeout, or the end of a back-off while requests wait."""
        deadlines = []
        if self.want is not None:
            deadlines.append(self.want.deadline)
        if waiting and self.silent:
            deadlines.append(min(self.silent.values()))
        return min(deadlines) if deadlines else None
