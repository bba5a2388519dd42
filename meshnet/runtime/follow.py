"""The data paths, IPAM and the dialler follow the mesh: one coalesced re-planning.

A burst of topology changes (a join changes many entries) re-plans once (`Coalescer`,
at most every REPLAN_GAP s). On the loop only O(peers) work and C-level copies; what
costs O(endpoints) — who owns each gossiped MAC, grouped per peer, and the sleeve's tables
(0.2 s at 100,000 endpoints) — is computed on a planning thread from snapshots and applied
in slices between other work.

Whom the data paths serve: reachable peers, never those removed with rmpeer (such a peer
must reset before its endpoints are served again), and departed peers (they left within
the grace period, their kernel may forward while they restart) with their last endpoints.
A MAC two peers claim goes to its owner (the earlier claim, `mesh/claims.py`); our own
MACs never go to another peer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Iterable

from meshnet.dataplane import layout, sleeve_plan
from meshnet.mesh.claims import FrozenOwners
from meshnet.mesh.departed import Departed
from meshnet.mesh.policy import ConnectionPolicy, peer_addresses
from meshnet.runtime.coalesce import Coalescer

if TYPE_CHECKING:
    from meshnet.runtime.router import Router

log = logging.getLogger("meshnet.router")

REPLAN_GAP = 0.1  # seconds between two runs of the re-planning, at the least
SLEEVE_SLICE = 2048  # pump table operations applied per turn of the loop


def endpoint_tables(
    owners: FrozenOwners, served: Iterable[bytes], departed: dict[bytes, list[str]]
) -> tuple[dict[int, frozenset[str]], dict[str, int]]:
    """({peer id: the MACs it owns}, {MAC: peer id}) of the served peers, and the last MACs
    of departed peers that nobody else owns. Pure; runs on the planning thread."""
    served = set(served)
    per_peer: dict[bytes, set[str]] = {}
    for mac, peer in owners.items():
        if peer in served:
            per_peer.setdefault(peer, set()).add(mac)
    for peer, macs in departed.items():
        kept = {mac for mac in macs if owners.get(mac) in (None, peer)}
        per_peer.setdefault(peer, set()).update(kept)
    by_peer = {layout.peer_id(peer): frozenset(macs) for peer, macs in per_peer.items()}
    by_mac = {mac: pid for pid, macs in by_peer.items() for mac in macs}
    return by_peer, by_mac


class MeshFollower:
    def __init__(self, router: Router, *, full_mesh_limit: int, degree: int):
        self._router = router
        self.policy = ConnectionPolicy(full_mesh_limit=full_mesh_limit, degree=degree)
        self.removed: frozenset[bytes] = frozenset()  # peers removed with rmpeer (IPAM)
        self.neighbour_limit: int | None = None  # the kernel's ARP table size, when known
        self._neighbour_warned = False
        self._planning = ThreadPoolExecutor(1, thread_name_prefix="meshnet-plan")  # pure planning off the loop
        self.coalescer = Coalescer("data path re-planning", self._replan, spawn=router.spawn, min_gap=REPLAN_GAP)

    def request(self) -> None:
        self.coalescer.request()

    def close(self) -> None:
        self._planning.shutdown(wait=False)

    def routes(self) -> dict[bytes, bytes]:
        """The next hop towards every served peer: paths never run through (nor end at) a
        peer removed with rmpeer; it is not served, so it relays nothing either. The pump's
        tables and `status` both read this."""
        return self._router.core.topology.routes(avoid=self.removed)

    def departed(self) -> list[Departed]:
        """Peers that left within the grace period (not removed): their kernel may forward."""
        return [d for d in self._router.core.departed if d.entry.name not in self.removed]

    async def _replan(self) -> None:
        r = self._router
        core, loop = r.core, asyncio.get_running_loop()
        topo = core.topology
        reachable = topo.reachable()
        r.ipam.peers_changed(reachable, set(core.by_peer()))
        served = reachable - self.removed
        self._check_neighbour_room(len(served))
        departed = self.departed()
        last = {d.entry.name: [ep[0] for ep in d.entry.data.get("eps", [])] for d in departed}
        by_peer, by_mac = await loop.run_in_executor(self._planning, endpoint_tables, core.claims.frozen_owners("mac"), served, last)
        r.fastdp.update(
            self._peer_ips(served),
            by_peer,
            r.fastdp_off(),
            departed={layout.peer_id(d.entry.name): d.ip for d in departed},
            removed={layout.peer_id(p) for p in self.removed},
        )
        connected = {c.peer: (c.outbound, c.since) for c in core.conns.values()}
        plan = self.policy.plan(topo, connected=connected, now=time.monotonic(), failing=r.control.targets.failing())
        r.control.follow(plan)
        r.dial_book.remember(plan)
        routes = self.routes()
        inputs = (core.name, routes, r.control.direct(), r.fastdp.fastdp_peers(), by_mac)
        ops = await loop.run_in_executor(self._planning, self._plan_sleeve, *inputs)
        for start in range(0, len(ops), SLEEVE_SLICE):
            r.sleeve.apply_ops(ops[start : start + SLEEVE_SLICE])
            await asyncio.sleep(0)

    def _check_neighbour_room(self, peers: int) -> None:
        """Peers on our link each hold an ARP entry that traffic keeps fresh, and a fresh entry
        is never reclaimed: a full table leaves new peers unresolvable. Warn once, early."""
        limit = self.neighbour_limit
        if limit is None or self._neighbour_warned or peers < limit // 2:
            return
        self._neighbour_warned = True
        log.warning(
            "%d peers and the kernel keeps at most %d neighbour entries (net.ipv4.neigh.default.gc_thresh3): "
            "if the peers share this host's link, raise gc_thresh2/gc_thresh3 (docs/scaling.md)",
            peers,
            limit,
        )

    def _plan_sleeve(self, local: bytes, routes: Any, direct: Any, fastdp: set[int], endpoints: dict[str, int]) -> list[Any]:
        """The pump's tables for this mesh, as operations (runs on the planning thread)."""
        want = sleeve_plan.plan(local=local, routes=routes, direct=direct, fastdp=fastdp, endpoints=endpoints)
        return self._router.sleeve.ops_for(want)

    def _peer_ips(self, served: set[bytes]) -> dict[int, str | None]:
        """Every served peer's id and underlay IP: the connection's when we hold one, else
        as its neighbours see it (gossiped); None when nobody says."""
        core = self._router.core
        ips: dict[bytes, str] = {c.peer: c.ip for c in core.conns.values()}
        seen = peer_addresses(core.topology)
        return {layout.peer_id(p): ips.get(p) or seen.get(p) for p in served}
