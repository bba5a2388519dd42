"""Topologies that share memory while they agree: what lets one process simulate 5,000 routers.

A simulated router's `Topology` holds every peer's entry and caches the graph and its
spanning trees; 5,000 of them, each with its own copy of 5,000 entries and its own graph
caches, would need tens of GB. `share(topologies)` makes routers whose entries are the
same (a primed, converged mesh) hold *one* entries dict; the first change a router makes
copies it (copy on write). Graphs and spanning trees are shared by content: a router's
fingerprint is the XOR of one hash per entry's links, kept up to date by delta, and
routers with the same fingerprint use the same graph and the same tree from a given
root. The logic is the real `Topology`'s; only where the results live changes.
Simulation only (meshnet/testing/meshsim.py); the router uses `Topology` as it is.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Iterable

from meshnet.mesh.topology import PeerEntry, Topology

GRAPHS = 8  # distinct graphs kept (a mesh that is converging has a few)
TREES = 4096  # spanning trees kept, over all graphs


class _Shared:
    def __init__(self) -> None:
        self.graphs: OrderedDict[int, dict[bytes, list[bytes]]] = OrderedDict()
        self.trees: OrderedDict[tuple[int, bytes], dict[bytes, bytes | None]] = OrderedDict()


def _links_hash(entry: PeerEntry) -> int:
    return hash((entry.name, entry.links))


def version_hash(name: bytes, version: int) -> int:
    return hash((name, version)) & 0xFFFFFFFFFFFFFFFF


class CowTopology(Topology):
    """A `Topology` whose entries dict may be shared, and whose caches are shared by content."""

    _shared: _Shared
    _owns: bool
    _fp: int  # XOR of every entry's links hash: equal graphs, equal fingerprints
    vfp: int  # XOR of every entry's (name, version) hash: equal digests, equal fingerprints

    def _own(self) -> None:
        if not self._owns:
            self.entries = dict(self.entries)
            self._owns = True

    def update_local(self, *, now_ms: int, **changes: Any) -> PeerEntry:
        self._own()
        old = self.local
        entry = super().update_local(now_ms=now_ms, **changes)
        self._fp ^= _links_hash(old) ^ _links_hash(entry)
        self.vfp ^= version_hash(old.name, old.version) ^ version_hash(entry.name, entry.version)
        return entry

    def merge(self, entries: Iterable[PeerEntry]) -> list[PeerEntry]:
        entries = list(entries)
        if not any(e.name != self.local_name and (self.entries.get(e.name) is None or e.version > self.entries[e.name].version) for e in entries):
            return []
        self._own()
        before = {e.name: self.entries.get(e.name) for e in entries}
        news = super().merge(entries)
        for entry in news:
            old = before.get(entry.name)
            self._fp ^= (_links_hash(old) if old is not None else 0) ^ _links_hash(entry)
            self.vfp ^= (version_hash(old.name, old.version) if old is not None else 0) ^ version_hash(entry.name, entry.version)
        return news

    def remove(self, name: bytes) -> None:
        if name in self.entries and name != self.local_name:
            self._own()
            old = self.entries[name]
            self._fp ^= _links_hash(old)
            self.vfp ^= version_hash(old.name, old.version)
        super().remove(name)

    def _links_changed(self, name: bytes, old: PeerEntry | None, new: PeerEntry | None) -> None:
        self._graph_cache = None  # shared by content (never patched in place): looked up anew
        self._bfs_cache.clear()

    def graph(self) -> dict[bytes, list[bytes]]:
        graphs = self._shared.graphs
        graph = graphs.get(self._fp)
        if graph is None:
            self._graph_cache = None
            graph = graphs[self._fp] = super().graph()
            if len(graphs) > GRAPHS:
                graphs.popitem(last=False)
        self._graph_cache = graph
        return graph

    def _bfs(self, root: bytes) -> dict[bytes, bytes | None]:
        trees = self._shared.trees
        key = (self._fp, root)
        tree = trees.get(key)
        if tree is None:
            tree = trees[key] = self._compute_bfs(root)
            if len(trees) > TREES:
                trees.popitem(last=False)
        return tree


def share(topologies: list[Topology]) -> _Shared:
    """Make these topologies copy-on-write over one entries dict (the first one's; all must
    hold the same entries), with shared caches; return what they share (for `adopt`)."""
    shared = _Shared()
    if topologies:
        entries = topologies[0].entries
        for topo in topologies:
            topo.entries = entries
            adopt(topo, shared, owns=False)
    return shared


def adopt(topo: Topology, shared: _Shared, *, owns: bool = True) -> None:
    """Turn one more topology (a router that joins later) into a `CowTopology`."""
    fp = vfp = 0
    for entry in topo.entries.values():
        fp ^= _links_hash(entry)
        vfp ^= version_hash(entry.name, entry.version)
    topo.__class__ = CowTopology
    topo._owns = owns  # type: ignore[attr-defined]
    topo._shared = shared  # type: ignore[attr-defined]
    topo._fp = fp  # type: ignore[attr-defined]
    topo.vfp = vfp  # type: ignore[attr-defined]
    topo._graph_cache = None
    topo._bfs_cache = {}
    topo.generation += 1  # its entries may have been swapped: nothing cached from them holds
