"""Peer entries and the graph they describe: merge, reachability, routes, spanning trees.

Every peer owns exactly one entry and is the only one that changes it. An entry carries
a version that only grows; merging keeps, per peer name, the entry with the highest
version. That makes the topology a CRDT: merges commute, repeat and reorder freely, so
gossip may lose, duplicate and reorder messages and every peer still converges once
the network heals (tests/unit/mesh/test_convergence.py).

Versions are taken from the owner's wall clock in milliseconds (and +1 when the clock has
not moved), so a restarted peer's first entry outranks everything it published before.

Edges: A-B is usable only when A lists B *and* B lists A (symmetric), so a connection
one side has already dropped is not used for routing.
"""

from __future__ import annotations

import ipaddress
import re
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Iterable

from meshnet.errors import RemoteProtocolError

NAME_LEN = 16
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

    @classmethod
    def decode(cls, obj: Any) -> PeerEntry:
        """Raises RemoteProtocolError for anything that is not a well-formed entry."""
        try:
            name, nick, uid, version = obj["n"], obj["k"], obj["u"], obj["v"]
            port, udp_port, raw_links, data = obj["p"], obj["d"], obj["c"], obj["x"]
            ok = (
                isinstance(name, bytes)
                and len(name) == NAME_LEN
                and isinstance(nick, str)
                and all(type(v) is int for v in (uid, version, port, udp_port))
                and 0 < port < 65536
                and 0 < udp_port < 65536
                and isinstance(raw_links, list)
                and isinstance(data, dict)
            )
            if not ok:
                raise ValueError
            links = []
            for peer, ip, outbound in raw_links:
                if not (isinstance(peer, bytes) and len(peer) == NAME_LEN and isinstance(outbound, bool)):
                    raise ValueError
                if not isinstance(ip, str):
                    raise ValueError
                ipaddress.ip_address(ip)
                links.append(Link(peer, ip, outbound))
            _check_endpoints(data.get("eps", []))
        except (KeyError, TypeError, ValueError):
            raise RemoteProtocolError("malformed peer entry") from None
        return cls(name, nick, uid, version, port, udp_port, tuple(links), data)


_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def _check_endpoints(eps: Any) -> None:
    """`eps`: [[mac, [cidr, ...], name], ...]; raises ValueError otherwise."""
    if not isinstance(eps, list):
        raise ValueError
    for ep in eps:
        mac, cidrs, name = ep
        if not (isinstance(mac, str) and _MAC.match(mac) and isinstance(cidrs, list) and isinstance(name, str)):
            raise ValueError
        for cidr in cidrs:
            if not isinstance(cidr, str):
                raise ValueError
            ipaddress.ip_interface(cidr)


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
        entry = self.local
        version = max(entry.version + 1, now_ms)
        self.entries[self.local_name] = replace(entry, version=version, **changes)
        self.generation += 1
        self._invalidate()
        return self.entries[self.local_name]

    def _invalidate(self) -> None:
        self._graph_cache = None
        self._bfs_cache.clear()

    def merge(self, entries: Iterable[PeerEntry]) -> list[PeerEntry]:
        """Keep the newer of ours and theirs per peer; return the entries that were news.

        Our own entry is never replaced from outside: if someone holds a newer-looking
        entry under our name, a previous incarnation or an impostor published it, and we
        outrank it with our next update (the caller does that).
        """
        news = []
        graph_changed = False
        for entry in entries:
            if entry.name == self.local_name:
                continue
            known = self.entries.get(entry.name)
            if known is None or entry.version > known.version:
                self.entries[entry.name] = entry
                news.append(entry)
                graph_changed = graph_changed or known is None or known.links != entry.links
        if news:
            self.generation += 1
        if graph_changed:
            self._invalidate()
        return news

    def remove(self, name: bytes) -> None:
        if name != self.local_name and self.entries.pop(name, None) is not None:
            self.generation += 1
            self._invalidate()

    def digest(self) -> list[list[Any]]:
        return [[name, entry.version] for name, entry in sorted(self.entries.items())]

    def graph(self) -> dict[bytes, list[bytes]]:
        """Symmetric adjacency, neighbours sorted so every peer computes the same trees."""
        if self._graph_cache is None:
            listed = {name: {link.peer for link in e.links} for name, e in self.entries.items()}
            self._graph_cache = {
                name: sorted(p for p in peers if name in listed.get(p, ())) for name, peers in listed.items()
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

    def _compute_bfs(self, root: bytes) -> dict[bytes, bytes | None]:
        graph = self.graph()
        parent: dict[bytes, bytes | None] = {root: None}
        queue = deque([root])
        while queue:
            node = queue.popleft()
            for nxt in graph.get(node, ()):
                if nxt not in parent:
                    parent[nxt] = node
                    queue.append(nxt)
        return parent

    def reachable(self) -> set[bytes]:
        """Peers reachable from us over symmetric links (not including us)."""
        return set(self._bfs(self.local_name)) - {self.local_name}

    def routes(self) -> dict[bytes, bytes]:
        """Next hop towards every reachable peer, over shortest paths."""
        parent = self._bfs(self.local_name)
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
