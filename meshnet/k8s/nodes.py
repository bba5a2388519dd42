"""The node agent: follows the cluster's Node objects (an `Informer`) and acts on two things.

**Deleted nodes give their address space back, exactly once.** A peer maps to a Node by
its nickname (the DaemonSet sets `MESHNET_NICKNAME=$(NODE_NAME)`); nicknames are learned
from the topology while peers are known and kept in the state store, because the mesh
forgets an unreachable peer's entry after a while. A peer's space is reclaimed (`rmpeer`)
only when all of these hold: the node list is synced, IPAM is ready, the peer owns space,
it is unreachable, its nickname is known, and no Node of that name exists. A rebooting
node keeps its Node object, so it keeps its range, however long it is away. One router
acts: the reachable peer with the lowest name among those whose Node exists; the others
act only if the space is still unclaimed `FALLBACK` seconds later (rmpeer is safe twice,
`docs/ipam.md`, so a late second claim ends with one owner all the same). The check is
level-triggered (every `RECONCILE` seconds and on every node change), so a router that
restarts or misses a DELETED event still gets there, and never acts twice on one peer.

**NetworkUnavailable=False once ready.** When this router is ready (`ready()`: IPAM ready
and, with the pod network, its gateway on the bridge), its own Node (named by its
nickname) gets the condition through `PATCH nodes/NAME/status`; if anything sets it back,
it is set again.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from typing import Any, Callable

from meshnet.errors import MeshnetError
from meshnet.k8s.client import NODES, KubeApiError, KubeClient, KubeProtocolError, KubeUnreachable
from meshnet.k8s.informer import Informer
from meshnet.k8s.ports import Ipam, Mesh, Store

log = logging.getLogger("meshnet.k8s")

RECONCILE = 5.0  # seconds between checks when nothing changes
FALLBACK = 60.0  # seconds before a router that was not chosen reclaims a deleted node's space
NICKS_KEY = "k8s.nicks"
MAX_NICKS = 10_000
CONDITION = "NetworkUnavailable"
REASON = "MeshnetIsUp"


class NodeAgent:
    def __init__(self, client: KubeClient, *, node_name: str, mesh: Mesh, ipam: Ipam, store: Store,
                 ready: Callable[[], bool], fallback: float = FALLBACK, reconcile: float = RECONCILE,
                 clock: Callable[[], float] = time.monotonic):
        self.client = client
        self.node_name = node_name
        self.mesh = mesh
        self.ipam = ipam
        self.store = store
        self.ready = ready
        self.fallback = fallback
        self.interval = reconcile
        self.clock = clock
        self.informer = Informer(client, NODES, on_change=self._changed, on_synced=self._changed)
        self.nicks: dict[str, str] = dict(store.get(NICKS_KEY, {}) or {})
        self.pending: dict[str, float] = {}  # peer hex -> when first seen deletable
        self.reclaimed: dict[str, int] = {}  # peer hex -> addresses taken here
        self.condition_set = False
        self.last_error = ""
        self._patched_version: str | None = None
        self._wake = asyncio.Event()
        self._told_unmapped: set[str] = set()

    def _changed(self, *args: Any) -> None:
        self._wake.set()

    def wake(self) -> None:
        """Run a round now (this router just became ready, say)."""
        self._wake.set()

    async def run(self) -> None:
        """The watch and the rounds; if either fails, both end (the supervisor restarts them)."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self.informer.run())
            group.create_task(self._rounds())

    async def _rounds(self) -> None:
        while True:
            try:  # asyncio.timeout, not wait_for: 3.11's wait_for loses a cancel that lands as the event is set
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                self.reconcile()
                await self.assert_condition()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - one bad round must not end the agent
                log.exception("node agent round failed")

    # -- reclaim -------------------------------------------------------------------------

    def _learn_nicks(self) -> None:
        changed = False
        for name, nick, _ in self.mesh.peers():
            if nick and self.nicks.get(name.hex()) != nick:
                self.nicks[name.hex()] = nick[:253]
                changed = True
        if len(self.nicks) > MAX_NICKS:  # keep the peers that still own space, then the newest
            owners = set((self.ipam.status().get("peers") or {}))
            keep = {k: v for k, v in self.nicks.items() if k in owners}
            for k, v in reversed(list(self.nicks.items())):
                if len(keep) >= MAX_NICKS:
                    break
                keep.setdefault(k, v)
            self.nicks = keep
            changed = True
        if changed:
            self.store.put(NICKS_KEY, self.nicks)

    def deletable(self) -> list[str]:
        """Peers (hex) that own space, are unreachable and whose Node is gone."""
        status = self.ipam.status()
        if not self.informer.synced or status.get("state") != "ready":
            return []
        nodes = set(self.informer.cache)
        out = []
        for peer, info in sorted((status.get("peers") or {}).items()):
            if info.get("reachable") or peer == self.mesh.name.hex():
                continue
            nick = self.nicks.get(peer)
            if nick is None:
                if peer not in self._told_unmapped:
                    self._told_unmapped.add(peer)
                    log.info("peer %s owns address space but its node name is unknown: not reclaimed (meshnet rmpeer if it is gone)", peer)
                continue
            if nick not in nodes:
                out.append(peer)
        return out

    def chosen(self) -> bool:
        """Are we the router that reclaims: the lowest-named reachable peer with a Node?"""
        nodes = set(self.informer.cache)
        eligible = [name for name, nick, reachable in self.mesh.peers() if (reachable or name == self.mesh.name) and nick in nodes]
        return bool(eligible) and min(eligible) == self.mesh.name

    def reconcile(self) -> None:
        self._learn_nicks()
        now = self.clock()
        gone = self.deletable()
        for peer in list(self.pending):
            if peer not in gone:
                del self.pending[peer]
        chosen = self.chosen()
        for peer in gone:
            first = self.pending.setdefault(peer, now)
            if peer in self.reclaimed or not (chosen or now - first >= self.fallback):
                continue
            try:
                taken = self.ipam.rmpeer(bytes.fromhex(peer))
            except MeshnetError as exc:
                log.warning("cannot reclaim the space of deleted node %s (peer %s) yet: %s", self.nicks[peer], peer, exc.message)
                continue
            self.reclaimed[peer] = taken
            log.info("node %s was deleted and its router %s is unreachable: reclaimed %d addresses", self.nicks[peer], peer, taken)

    # -- NetworkUnavailable ------------------------------------------------------------------

    def _condition_ok(self) -> bool:
        node = self.informer.cache.get(self.node_name)
        if node is None:
            return True  # not registered (yet): nothing to set
        for cond in (node.get("status") or {}).get("conditions") or []:
            if isinstance(cond, dict) and cond.get("type") == CONDITION:
                return cond.get("status") == "False"
        return False

    async def assert_condition(self) -> None:
        if not self.informer.synced or not self.ready() or self._condition_ok():
            return
        node = self.informer.cache[self.node_name]
        version = (node.get("metadata") or {}).get("resourceVersion")
        if version is not None and version == self._patched_version:
            return  # our patch has not come back through the watch yet
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        cond = {"type": CONDITION, "status": "False", "reason": REASON, "message": "the meshnet router is up on this node",
                "lastTransitionTime": now, "lastHeartbeatTime": now}
        try:
            await self.client.patch(NODES, self.node_name, {"status": {"conditions": [cond]}}, subresource="status")
        except (KubeApiError, KubeUnreachable, KubeProtocolError) as exc:
            if str(exc) != self.last_error:
                log.warning("cannot set %s=False on node %s: %s", CONDITION, self.node_name, exc)
            self.last_error = str(exc)
            return
        self.condition_set = True
        self._patched_version = version
        log.info("node %s: %s=False", self.node_name, CONDITION)

    def status(self) -> dict[str, Any]:
        return {"node": self.node_name, "nodes": sorted(self.informer.cache), "condition_set": self.condition_set,
                "waiting_to_reclaim": sorted(self.pending), "reclaimed": dict(self.reclaimed), "watch": self.informer.status()}
