"""Departed peers: routers that left our reachable set, remembered for a grace period.

A router that stops, crashes or is being upgraded leaves its kernel data path behind
(bridge, VXLAN device, FDB, container veths), and that path goes on carrying its
containers' traffic. So when a peer we held a direct connection to becomes unreachable,
the mesh core keeps its last entry here with the underlay address we reached it at. The
data-path planners go on programming it for as long as its data path answers probes
(`meshnet/dataplane/grace.py`). A record ends when the peer is reachable again, when
`grace` seconds have passed, or when the runtime says the peer was removed (rmpeer).

Sans-IO like the core: `now` comes in, deadlines go out. Bounded: at most `limit`
records; beyond that the oldest departure is dropped first.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from meshnet.mesh.topology import PeerEntry

MAX_DEPARTED = 1024  # records kept; a mesh losing more peers at once drops the oldest


@dataclass(frozen=True)
class Departed:
    entry: PeerEntry  # its last entry: nickname, endpoints ("eps")
    ip: str  # underlay address of our last direct connection to it
    since: float  # monotonic time it became unreachable


class DepartedPeers:
    def __init__(self, grace: float, limit: int = MAX_DEPARTED):
        assert grace >= 0 and limit >= 1
        self.grace = grace
        self.limit = limit
        self._peers: dict[bytes, Departed] = {}  # insertion order: oldest departure first

    def __contains__(self, name: object) -> bool:
        return name in self._peers

    def __iter__(self) -> Iterator[Departed]:
        return iter(list(self._peers.values()))

    def __len__(self) -> int:
        return len(self._peers)

    def get(self, name: bytes) -> Departed | None:
        return self._peers.get(name)

    def left(self, entry: PeerEntry, ip: str, now: float) -> None:
        """`entry`'s peer became unreachable; we last reached it directly at `ip`."""
        if self.grace <= 0:
            return
        self._peers.pop(entry.name, None)
        self._peers[entry.name] = Departed(entry, ip, now)
        while len(self._peers) > self.limit:
            del self._peers[next(iter(self._peers))]

    def back(self, name: bytes) -> bool:
        """The peer is reachable again: no longer departed. True if it was."""
        return self._peers.pop(name, None) is not None

    def forget(self, names: Iterable[bytes]) -> bool:
        """Gone for good (removed with rmpeer): stop keeping them. True if any was kept."""
        return any([self._peers.pop(name, None) is not None for name in names])

    def expire(self, now: float) -> list[bytes]:
        """Drop the records whose grace has run out; return their names."""
        gone = [name for name, d in self._peers.items() if now >= d.since + self.grace]
        for name in gone:
            del self._peers[name]
        return gone

    def next_deadline(self) -> float | None:
        if not self._peers:
            return None
        return min(d.since for d in self._peers.values()) + self.grace
