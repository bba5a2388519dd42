"""Who holds each MAC and IP address among the gossiped endpoints, and the conflicts.

Every endpoint a peer's entry lists claims its MAC and the address of each of its CIDRs
for that peer. An address claimed by two peers is a **conflict**; the earlier claim keeps
it, and "earlier" is, in this order:

1. our own endpoints, on this router (a remote peer never takes a local container's MAC);
2. the claim this router saw first: claims are numbered by the topology update that
   brought them, so a peer that announces an address already in use never takes it;
3. for claims that arrived in the same update: the one whose entry had the lower
   version, then the lower peer name.

So the same history gives the same owner every time, and every router that already knew
the first claimant keeps it. A claim lasts while its peer's entry lists it: an owner that
restarts and lists the same endpoint again keeps its address; one that is forgotten (gone
for longer than the gc time) gives it up. The data path and DNS use only owners
(`owner`, `owners`); every conflict stays listed (`conflicts`) until one side withdraws.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

from meshnet.mesh.topology import PeerEntry

KINDS = ("mac", "ip")
RECENT = 256  # new conflicts kept until the runtime takes them (to log them)

Key = tuple[int, int, int, bytes]  # (0 local / 1 remote, update number, entry version, peer)


@dataclass(frozen=True)
class Conflict:
    kind: str  # "mac" or "ip"
    address: str
    owner: bytes  # the claim that keeps the address
    other: bytes  # the claim that does not get it


def address_of(cidr: str) -> str:
    """The address of a (checked) CIDR, in one spelling: "10.32.0.5/12" -> "10.32.0.5"."""
    address = cidr.split("/", 1)[0]
    return address if ":" not in address else ipaddress.ip_address(address).compressed


def claimed(entry: PeerEntry) -> tuple[frozenset[str], frozenset[str]]:
    """(MACs, IP addresses) an entry's endpoints claim."""
    eps = entry.data.get("eps")
    if not isinstance(eps, list):
        return frozenset(), frozenset()
    macs, ips = set(), set()
    for ep in eps:
        macs.add(ep[0])
        ips.update(address_of(cidr) for cidr in ep[1])
    return frozenset(macs), frozenset(ips)


@dataclass(frozen=True)
class FrozenOwners:
    """Who owns each address of one kind at one moment, readable on another thread."""

    table: dict[str, Any]  # a copy of Claims._by[kind]: (peer, key) or a live dict if contested
    contested: dict[str, bytes]  # the contested addresses' owners, resolved when copied

    def get(self, address: str) -> bytes | None:
        held = self.table.get(address)
        if held is None:
            return None
        return held[0] if isinstance(held, tuple) else self.contested[address]

    def items(self) -> Iterator[tuple[str, bytes]]:
        for address, held in self.table.items():
            yield address, held[0] if isinstance(held, tuple) else self.contested[address]


class Claims:
    def __init__(self, local: bytes):
        self.local = local
        self.detected = 0  # conflicts seen since start (an address and a second claimant)
        self._update = 0
        # kind -> address -> (peer, key) while one peer claims it, {peer: key} while several do
        self._by: dict[str, dict[str, Any]] = {kind: {} for kind in KINDS}
        self._of: dict[bytes, tuple[frozenset[str], frozenset[str]]] = {}
        self._contested: dict[tuple[str, str], None] = {}  # ordered: oldest first
        self._new: list[Conflict] = []

    def update(self, entries: Iterable[PeerEntry]) -> None:
        """Entries that were stored (one topology update): follow their endpoints."""
        self._update += 1
        for entry in entries:
            rank = 0 if entry.name == self.local else 1
            key: Key = (rank, self._update, entry.version, entry.name)
            old = self._of.get(entry.name, (frozenset(), frozenset()))
            new = claimed(entry)
            for kind, before, after in zip(KINDS, old, new):
                for address in before - after:
                    self._drop(kind, address, entry.name)
                for address in after - before:
                    self._add(kind, address, entry.name, key)
            if new[0] or new[1]:
                self._of[entry.name] = new
            else:
                self._of.pop(entry.name, None)

    def remove(self, peer: bytes) -> None:
        """The peer's entry left the topology: its claims end."""
        for kind, addresses in zip(KINDS, self._of.pop(peer, (frozenset(), frozenset()))):
            for address in addresses:
                self._drop(kind, address, peer)

    def owner(self, kind: str, address: str) -> bytes | None:
        held = self._by[kind].get(address)
        if held is None:
            return None
        return held[0] if isinstance(held, tuple) else min(held.items(), key=lambda kv: kv[1])[0]

    def owners(self, kind: str) -> Iterator[tuple[str, bytes]]:
        """(address, owner) for every claimed address of this kind."""
        for address, held in self._by[kind].items():
            yield address, held[0] if isinstance(held, tuple) else min(held.items(), key=lambda kv: kv[1])[0]

    def frozen_owners(self, kind: str) -> FrozenOwners:
        """`owners` as a snapshot, cheap on the loop: a C-level copy of the table, the
        contested few resolved now (their live dicts in the copy are never read)."""
        contested = {address: self.owner(kind, address) for k, address in self._contested if k == kind}
        return FrozenOwners(dict(self._by[kind]), contested)  # type: ignore[arg-type]

    def conflicts(self, limit: int = 64) -> list[dict[str, Any]]:
        """The current conflicts, oldest first: the address, who keeps it, who else claims it."""
        out = []
        for kind, address in list(self._contested)[:limit]:
            held = self._by[kind][address]
            ranked = sorted(held.items(), key=lambda kv: kv[1])
            out.append({"kind": kind, "address": address, "owner": ranked[0][0].hex(), "others": [p.hex() for p, _ in ranked[1:]]})
        return out

    @property
    def contested(self) -> int:
        return len(self._contested)

    def take_new(self) -> list[Conflict]:
        """Conflicts detected since the last call (for the log)."""
        new, self._new = self._new, []
        return new

    def _add(self, kind: str, address: str, peer: bytes, key: Key) -> None:
        table = self._by[kind]
        held = table.get(address)
        if held is None:
            table[address] = (peer, key)
            return
        if isinstance(held, tuple):
            held = table[address] = {held[0]: held[1]}
            self._contested[(kind, address)] = None
        held[peer] = key
        owner = min(held.items(), key=lambda kv: kv[1])[0]
        self.detected += 1
        if len(self._new) < RECENT:
            self._new.append(Conflict(kind, address, owner, peer if owner != peer else self._runner_up(held)))

    @staticmethod
    def _runner_up(held: dict[bytes, Key]) -> bytes:
        return sorted(held.items(), key=lambda kv: kv[1])[1][0]

    def _drop(self, kind: str, address: str, peer: bytes) -> None:
        table = self._by[kind]
        held = table.get(address)
        if isinstance(held, tuple):
            if held[0] == peer:
                del table[address]
        elif held is not None:
            held.pop(peer, None)
            if len(held) == 1:
                table[address] = next(iter(held.items()))
                self._contested.pop((kind, address), None)
