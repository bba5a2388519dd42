"""How much of the gossiped topology a router stores: the peer table and the endpoint quotas.

Limits (settings `--max-peers`, `--max-endpoints`, `--max-peer-endpoints`):

- A peer's entry keeps at most `max_peer_endpoints` endpoints: the first ones in the order
  its owner lists them. The rest are neither stored nor forwarded (the entry is stored and
  passed on without them, under the same version), counted, and shown per peer. Every
  router applies the same rule, so with the same limits they all hold the same entry.
- All remote entries together keep at most `max_endpoints` endpoints; an entry that would
  pass it keeps what still fits (counted as `endpoints_table_full`).
- The topology holds at most `max_peers` entries; an entry of a new peer beyond that is not
  stored (`peers_table_full`). Its name and version are remembered (bounded) and listed in
  our digest as if we held it, so that anti-entropy neither asks for it nor sends it to us
  again every round; once an entry leaves the topology they are forgotten.

Our own entry is bounded where it is made (the local endpoint registry), not here.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any, Iterable

from meshnet.mesh.topology import PeerEntry, Topology

REFUSED_NAMES = 8192  # refused peers remembered (the protocol's bound on peers)


@dataclass(frozen=True)
class Limits:
    max_peers: int = 4096  # entries in the topology, ours included
    max_endpoints: int = 131072  # endpoints of all remote entries together
    max_peer_endpoints: int = 1024  # endpoints stored per peer: its share


class Quota:
    def __init__(self, limits: Limits):
        self.limits = limits
        self.dropped: dict[bytes, int] = {}  # peer -> endpoints of its current entry not stored
        self.counters = {"endpoints_over_quota": 0, "endpoints_table_full": 0, "peers_table_full": 0}
        self._stored: dict[bytes, int] = {}  # peer -> endpoints stored from its entry
        self._total = 0
        self._refused: OrderedDict[bytes, int] = OrderedDict()  # name -> version refused

    @property
    def stored_endpoints(self) -> int:
        return self._total

    def refused(self, name: bytes) -> bool:
        return name in self._refused

    @property
    def refusing(self) -> bool:
        """Whether some entry is refused (then the digest is more than the topology's)."""
        return bool(self._refused)

    def select(self, entries: Iterable[PeerEntry], topology: Topology, *, sender: bytes, neighbours: Iterable[bytes]) -> list[PeerEntry]:
        """The entries of one TOPOLOGY message that are news: the newest per peer, newer than
        ours, never our own, and never a neighbour's from anyone but that neighbour (it
        sends us its changes itself; a copy from elsewhere at a higher version is forged)."""
        direct = set(neighbours)
        newest: dict[bytes, PeerEntry] = {}
        for e in entries:
            known = newest.get(e.name) or topology.entries.get(e.name)
            if e.name == topology.local_name or (e.name in direct and e.name != sender):
                continue
            if known is None or e.version > known.version:
                newest[e.name] = e
        return list(newest.values())

    def wanted(self, theirs: dict[bytes, int], topology: Topology, *, sender: bytes, neighbours: Iterable[bytes]) -> list[bytes]:
        """What to REQUEST after a neighbour's digest: what it holds newer than we do and we
        would take from it (not refused for a full table, not another neighbour's entry)."""
        mine, direct = topology.entries, set(neighbours)
        return [
            n
            for n, v in theirs.items()
            if n != topology.local_name
            and (n not in mine or mine[n].version < v)
            and not self.refused(n)
            and (n == sender or n not in direct)
        ]

    def admit(self, entries: Iterable[PeerEntry], known: dict[bytes, PeerEntry]) -> list[PeerEntry]:
        """The entries (news: newer than what `known` holds) as they may be stored."""
        out = []
        peers = len(known)
        for entry in entries:
            if entry.name not in known:
                if peers >= self.limits.max_peers:
                    self.counters["peers_table_full"] += 1
                    self._refused[entry.name] = max(entry.version, self._refused.get(entry.name, 0))
                    while len(self._refused) > REFUSED_NAMES:
                        self._refused.popitem(last=False)
                    continue
                peers += 1
            out.append(self._trim(entry))
        return out

    def digest(self, topology: Topology) -> list[list[Any]]:
        """The topology's digest, with the refused entries listed as held."""
        pairs = topology.digest()
        if not self._refused:
            return pairs
        return sorted(pairs + [[name, version] for name, version in self._refused.items() if name not in topology.entries])

    def _trim(self, entry: PeerEntry) -> PeerEntry:
        eps = entry.data.get("eps")
        count = len(eps) if isinstance(eps, list) else 0
        room = self.limits.max_endpoints - (self._total - self._stored.get(entry.name, 0))
        keep = max(0, min(count, self.limits.max_peer_endpoints, room))
        over_quota = max(0, count - self.limits.max_peer_endpoints)
        self.counters["endpoints_over_quota"] += over_quota
        self.counters["endpoints_table_full"] += count - keep - over_quota
        self._total += keep - self._stored.get(entry.name, 0)
        self._stored[entry.name] = keep
        if keep == count:
            self.dropped.pop(entry.name, None)
            return entry
        self.dropped[entry.name] = count - keep
        assert isinstance(eps, list)
        return replace(entry, data={**entry.data, "eps": eps[:keep]})

    def forget(self, name: bytes) -> None:
        """The entry was removed from the topology: there is room again for refused peers."""
        self._total -= self._stored.pop(name, 0)
        self.dropped.pop(name, None)
        self._refused.clear()
