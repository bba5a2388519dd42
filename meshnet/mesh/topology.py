"""Peer entries and the graph they describe: merge, reachability, routes, spanning trees.

Every peer owns exactly one entry and is the only one that changes it. An entry carries
a version that only grows; merging keeps, per peer name, the entry with the highest
version. That makes the topology a CRDT: merges commute, repeat and reorder freely, so
gossip may lose, duplicate and reorder messages and every peer still converges once
the network heals (tests/unit/mesh/test_convergence.py).

Versions are taken from the owner's clock in milliseconds (the `now` the runtime passes:
its monotonic clock; +1 when the clock has not moved). A restarted peer whose clock went
back is outranked by its own earlier entry at first, and then outranks it (core.py).
Versions stop at 2^63 - 1, the bound every peer accepts (bounds.py).

Edges: A-B is usable only when A lists B *and* B lists A (symmetric), so a connection
one side has already dropped is not used for routing.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Iterable

import msgpack

from meshnet.mesh.bounds import MAX_U63
BFS_CACHE = 64  # spanning trees kept per graph version (the busiest sources)


@dataclass(frozen=True)
class Link:
    """One of a peer's established control connections, as that peer sees it."""

    peer: bytes  # the remote peer's name
    ip: str  # the remote's IP as seen on this connection
    outbound: bool  # this peer dialled it


@dataclass(frozen=True)
class PeerEntry:
    name: bytes
    nick: str
    uid: int  # incarnation: random per process start
    version: int
    port: int  # TCP control port it listens on
    udp_port: int  # sleeve port
    links: tuple[Link, ...] = ()
    data: dict[str, Any] = field(default_factory=dict, compare=False)  # per-feature data (endpoints, ...)

    def encode(self) -> dict[str, Any]:
        return {
            "n": self.name,
            "k": self.nick,
            "u": self.uid,
            "v": self.version,
            "p": self.port,
            "d": self.udp_port,
            "c": [[link.peer, link.ip, link.outbound] for link in self.links],
            "x": self.data,
        }

    @cached_property
    def peers(self) -> frozenset[bytes]:
        """The names this entry lists as connected (computed once: entries never change)."""
        return frozenset(link.peer for link in self.links)

    @cached_property
    def wire_size(self) -> int:
        """Bytes of the encoded entry (msgpack), computed once: TOPOLOGY messages are cut
        by it so that a frame never exceeds its limit."""
        return len(msgpack.packb(self.encode(), use_bin_type=True))


class Topology:
    """All peer entries this router knows, and the graph they form."""

    def __init__(self, local: PeerEntry):
        self.local_name = local.name
        self.entries: dict[bytes, PeerEntry] = {local.name: local}
        self.generation = 0  # counts changes to the entries: what is derived from them can be cached
        self._graph_cache: dict[bytes, list[bytes]] | None = None
        self._bfs_cache: dict[bytes, dict[bytes, bytes | None]] = {}

    @property
    def local(self) -> PeerEntry:
        return self.entries[self.local_name]

    def update_local(self, *, now_ms: int, **changes: Any) -> PeerEntry:
        """A new version of our entry. Versions stop at the bound every peer accepts
        (2^63 - 1): past it our entry would be refused everywhere."""
        entry = self.local
        version = min(max(entry.version + 1, now_ms), MAX_U63)
        new = self.entries[self.local_name] = replace(entry, version=version, **changes)
        self.generation += 1
        if new.links != entry.links:
            self._links_changed(self.local_name, entry, new)
        return new

    def _links_changed(self, name: bytes, old: PeerEntry | None, new: PeerEntry | None) -> None:
        """Entry `name` went from old to new (None: absent): patch the graph, drop the trees.

        Only edges between `name` and the peers either version lists can change, so the
        graph is patched in O(degree), not rebuilt in O(peers x degree): in a full mesh
        that forms, nearly every TOPOLOGY message changes some entry's links."""
        self._bfs_cache.clear()
        graph = self._graph_cache
        if graph is None:
            return
        before = old.peers if old is not None else frozenset()
        after = new.peers if new is not None else frozenset()
        mine = []
        for peer in before | after:
            other = self.entries.get(peer)
            linked = peer in after and other is not None and name in other.peers
            row = graph.get(peer)
            if row is not None:
                at = bisect.bisect_left(row, name)
                present = at < len(row) and row[at] == name
                if linked and not present:
                    row.insert(at, name)
                elif present and not linked:
                    del row[at]
            if linked:
                mine.append(peer)
        if new is None:
            graph.pop(name, None)
        else:
            graph[name] = sorted(mine)

    def merge(self, entries: Iterable[PeerEntry]) -> list[PeerEntry]:
        """Keep the newer of ours and theirs per peer; return the entries that were news.

        Our own entry is never replaced from outside: if someone holds a newer-looking
        entry under our name, a previous incarnation or an impostor published it, and we
        outrank it with our next update (the caller does that).
        """
        news = []
        for entry in entries:
            if entry.name == self.local_name:
                continue
            known = self.entries.get(entry.name)
            if known is None or entry.version > known.version:
                self.entries[entry.name] = entry
                news.append(entry)
                if known is None or known.links != entry.links:
                    self._links_changed(entry.name, known, entry)
        if news:
            self.generation += 1
        return news

    def remove(self, name: bytes) -> None:
        old = self.entries.pop(name, None) if name != self.local_name else None
        if old is not None:
            self.generation += 1
            self._links_changed(name, old, None)

    def digest(self) -> list[list[Any]]:
        return [[name, entry.version] for name, entry in sorted(self.entries.items())]

    def graph(self) -> dict[bytes, list[bytes]]:
        """Symmetric adjacency, neighbours sorted so every peer computes the same trees."""
        if self._graph_cache is None:
            entries = self.entries
            self._graph_cache = {
                name: sorted(p for p in e.peers if p in entries and name in entries[p].peers) for name, e in entries.items()
            }
        return self._graph_cache

    def _bfs(self, root: bytes) -> dict[bytes, bytes | None]:
        """Parent of every node reachable from root (root's parent is None); cached."""
        cached = self._bfs_cache.get(root)
        if cached is None:
            if len(self._bfs_cache) >= BFS_CACHE:
                self._bfs_cache.clear()
            cached = self._bfs_cache[root] = self._compute_bfs(root)
        return cached

    def _compute_bfs(self, root: bytes, avoid: frozenset[bytes] = frozenset()) -> dict[bytes, bytes | None]:
        graph = self.graph()
        parent: dict[bytes, bytes | None] = {root: None}
        queue = deque([root])
        while queue:
            node = queue.popleft()
            for nxt in graph.get(node, ()):
                if nxt not in parent and nxt not in avoid:
                    parent[nxt] = node
                    queue.append(nxt)
        return parent

    def reachable(self) -> set[bytes]:
        """Peers reachable from us over symmetric links (not including us)."""
        return set(self._bfs(self.local_name)) - {self.local_name}

    def routes(self, avoid: frozenset[bytes] = frozenset()) -> dict[bytes, bytes]:
        """Next hop towards every reachable peer, over shortest paths; paths through the
        peers in `avoid` are not taken (nor are they destinations)."""
        parent = self._bfs(self.local_name) if not avoid else self._compute_bfs(self.local_name, avoid)
        hops = {}
        for dst in parent:
            if dst == self.local_name:
                continue
            node = dst
            while parent[node] != self.local_name:
                node = parent[node]  # type: ignore[assignment]
            hops[dst] = node
        return hops

    def tree_children(self, source: bytes) -> list[bytes] | None:
        """Our children in the shortest-path spanning tree rooted at source.

        None when source is not reachable in our view (the caller then floods).
        """
        parent = self._bfs(source)
        if self.local_name not in parent:
            return None
        return [node for node, up in parent.items() if up == self.local_name]
