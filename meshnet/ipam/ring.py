"""The ownership ring: a CRDT that maps every address of the universe to exactly one peer.

Shape. The ring is a set of *tokens* (start addresses). A token's range runs up to the next
token, the last one up to the end of the universe; the universe's first address is always a
token, so the ranges tile the universe exactly once by construction. Each token carries an
`Entry(owner, version, free, reclaim)`; `free` is only a hint for choosing a donor.

Who may change what (the rule every safety argument rests on):
  * only the owner of a range changes it: bumps the version of its token (a new free hint, or
    a transfer to another peer), or inserts a new token inside its own range (a donation);
  * tokens are never deleted;
  * `rmpeer` is the one exception: a peer takes a dead peer's token at `version + 1` with the
    `reclaim` flag set. It must not use the range until it has exchanged rings with every
    reachable peer (see `allocator.py`), then it bumps the version again, clearing the flag.

Merge is per token: the union of tokens, and for a token present on both sides the entry with
the greater `rank` wins. The rank orders by version; at equal versions a normal entry beats a
reclaim (so a dead peer's own last change, unseen by the reclaimer, wins over the reclaim
instead of being stolen), and of two reclaims the lowest owner name wins (so concurrent
`rmpeer`s converge on one owner). Max over a total order is commutative, associative and
idempotent, so replicas converge whatever the order, loss or duplication of messages.

Why no address is ever owned twice. Messages always carry the sender's whole ring, so a
replica that learns an entry also learns every token its writer knew. Invariant: if peer P
believes it owns `[t, n)`, no token exists anywhere strictly inside `(t, n)`. Splitting keeps
it (the new token goes to the receiver together with the donor's full token set, so the
receiver's range ends where the donor's did or earlier); merging only adds tokens; only the
owner creates tokens inside a range. Two peers owning the same token at once would need two
writers of one version chain, which only `rmpeer` of a live peer (operator error) produces;
such a tie of two normal entries is counted as a conflict and resolved deterministically.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from meshnet.ipam.addr import Block

NAME_LEN = 16  # bytes in a peer name
_INVERT = bytes(range(255, -1, -1))  # byte-wise complement: a lower name ranks higher


@dataclass(frozen=True, slots=True)
class Entry:
    owner: bytes
    version: int
    free: int  # hint: allocatable addresses left in the range, as last reported by the owner
    reclaim: bool = False  # taken by rmpeer and not yet confirmed; unusable until confirmed

    def rank(self) -> tuple[int, bool, bytes, int]:
        return (self.version, not self.reclaim, self.owner.translate(_INVERT), self.free)


MAX_VERSION = (1 << 63) - 1  # the wire's bound on versions (wire.MAX_INT), and sqlite's INTEGER


def next_version(version: int) -> int:
    """The version of a change to an entry: one more, but never past the bound every peer
    accepts (a peer that sent the top version cannot make us write one nobody decodes)."""
    return min(version + 1, MAX_VERSION)


def conflicting(a: Entry, b: Entry) -> bool:
    """Two normal entries of one version with different owners: two writers of one chain."""
    return a.version == b.version and not a.reclaim and not b.reclaim and a.owner != b.owner


def host_count(start: int, end: int, universe: Block) -> int:
    """How many allocatable addresses `[start, end)` holds (the universe's ends are reserved)."""
    lo, hi = universe.usable
    return max(0, min(end, hi) - max(start, lo))


def genesis_id(kind: str, universe: Block, names: Sequence[bytes]) -> bytes:
    """Identify how a ring was born; rings of different births never merge."""
    h = hashlib.sha256(f"meshnet-ipam/{kind}/{universe.cidr}/".encode())
    for name in sorted(set(names)):
        h.update(name)
    return h.digest()[:16]


@dataclass(frozen=True, slots=True)
class Merged:
    changed: list[int]  # tokens whose entry changed or appeared
    conflicts: list[tuple[int, Entry, Entry]]  # (token, ours, theirs) that must not happen


class Ring:
    """One replica of the ring. Callers enforce who may `put`; `merge` takes anything."""

    def __init__(self, universe: Block, genesis: bytes, entries: Mapping[int, Entry]):
        assert universe.start in entries, "the universe's first address must be a token"
        assert all(universe.start <= t < universe.end for t in entries), "token outside the universe"
        self.universe = universe
        self.genesis = genesis
        self._entries = dict(entries)
        self._tokens = sorted(self._entries)
        self.version = 0  # counts changes (put): what was derived from the ring can be cached
        self._by_owner: dict[bytes, set[int]] = {}  # owner -> its tokens: `owned` in O(its ranges)
        for token, entry in self._entries.items():
            self._by_owner.setdefault(entry.owner, set()).add(token)

    @classmethod
    def split(cls, universe: Block, names: Sequence[bytes], genesis: bytes) -> Ring:
        """A fresh ring split evenly among `names` (sorted), each range version 1."""
        names = sorted(set(names))
        assert names, "a ring needs at least one owner"
        size = universe.end - universe.start
        entries: dict[int, Entry] = {}
        for i, name in enumerate(names):
            token = universe.start + size * i // len(names)
            entries.setdefault(token, Entry(name, 1, 0))
        tokens = sorted(entries)
        for token, end in zip(tokens, tokens[1:] + [universe.end]):
            e = entries[token]
            entries[token] = Entry(e.owner, 1, host_count(token, end, universe))
        return cls(universe, genesis, entries)

    def __len__(self) -> int:
        return len(self._tokens)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Ring):
            return NotImplemented
        return (self.universe, self.genesis, self._entries) == (other.universe, other.genesis, other._entries)

    def entries(self) -> dict[int, Entry]:
        return dict(self._entries)

    def get(self, token: int) -> Entry | None:
        return self._entries.get(token)

    def ranges(self) -> Iterator[tuple[int, int, Entry]]:
        """Every range as `(start, end, entry)`, in address order."""
        ends = self._tokens[1:] + [self.universe.end]
        for token, end in zip(self._tokens, ends):
            yield token, end, self._entries[token]

    def end_of(self, token: int) -> int:
        i = bisect.bisect_right(self._tokens, token)
        return self._tokens[i] if i < len(self._tokens) else self.universe.end

    def token_at(self, address: int) -> int:
        """The token whose range holds `address` (which must be inside the universe)."""
        return self._tokens[bisect.bisect_right(self._tokens, address) - 1]

    def owned(self, peer: bytes) -> list[tuple[int, int, Entry]]:
        return [(t, self.end_of(t), self._entries[t]) for t in sorted(self._by_owner.get(peer, ()))]

    def overlapping(self, lo: int, hi: int) -> Iterator[tuple[int, int, Entry]]:
        """The ranges that intersect `[lo, hi)`."""
        i = max(0, bisect.bisect_right(self._tokens, lo) - 1)
        while i < len(self._tokens) and self._tokens[i] < hi:
            token = self._tokens[i]
            yield token, self.end_of(token), self._entries[token]
            i += 1

    def put(self, token: int, entry: Entry) -> None:
        old = self._entries.get(token)
        if old is None:
            bisect.insort(self._tokens, token)
        elif old.owner != entry.owner:
            self._by_owner[old.owner].discard(token)
        self._by_owner.setdefault(entry.owner, set()).add(token)
        self._entries[token] = entry
        self.version += 1

    def diff(self, incoming: Mapping[int, Entry]) -> Merged:
        """What merging `incoming` would change, without changing anything."""
        changed: list[int] = []
        conflicts: list[tuple[int, Entry, Entry]] = []
        for token, theirs in incoming.items():
            ours = self._entries.get(token)
            if ours is not None and conflicting(ours, theirs):
                conflicts.append((token, ours, theirs))
            if ours is None or theirs.rank() > ours.rank():
                changed.append(token)
        return Merged(changed, conflicts)

    def merge(self, incoming: Mapping[int, Entry]) -> Merged:
        merged = self.diff(incoming)
        for token in merged.changed:
            self.put(token, incoming[token])
        return merged
