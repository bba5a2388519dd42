"""Runs fastdp for the router: the VXLAN device, per-peer path probes, and the FDB by delta.

Owns a `PathHealth` (which peers may use VXLAN), a `ProbeSocket` (probes over the VXLAN
path itself), an `FdbPlanner` (the wanted FDB, kept up to date by delta) and a
`VxlanKernel`. Every kernel call goes through the router's kernel thread (pyroute2 and
netlink never run on the asyncio thread).

The kernel follows the mesh like this: `update()` (on the loop, O(peers), no kernel work)
records the mesh and asks the `Coalescer` for a sync; one sync runs at a time, and changes
during a sync make exactly one more. A sync hands the planner what changed (a peer's
address or mode, a peer's endpoint list: compared by identity, so an unchanged entry costs
nothing) on the kernel thread, and applies the resulting ops in chunks of `CHUNK`, so a
peer with 20,000 MACs never holds the kernel thread (and `attach`) for long. No dump per
update: the planner's state is the kept view. A reconcile (dump, diff against the
planner's whole state, apply) runs at start (adopting what a previous run left), after a
failed apply, and every `RECONCILE_EVERY` seconds; the dump is raw netlink (0.2 s for
40,000 rows).

When fastdp is disabled (--no-fastdp, or an encrypted mesh on a kernel without ESP) the
driver still plans the bridge entries that send remote MACs to the TAP.

Restarts (`dataplane/grace.py`): at start the driver adopts what an earlier run left on
fastdp (read back from the kernel) and installs the kernel's probe responder
(`kernel/responder.py`); peers the mesh saw leave come in through `update(departed=)`.
Both stay programmed within `grace` seconds while their path answers probes.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any, Awaitable, Callable

from meshnet.dataplane import fastdp, fdb_delta, grace
from meshnet.dataplane.fastdp import LocalConfig, PeerInfo
from meshnet.dataplane.fdb_delta import FdbPlanner
from meshnet.dataplane.path_health import PathHealth
from meshnet.kernel import responder
from meshnet.kernel.errors import KernelError
from meshnet.kernel.vxlan import ProbeSocket, VxlanKernel, esp_available
from meshnet.kernel.vxlan_stats import VxlanStats, device_counters
from meshnet.runtime.coalesce import Coalescer

log = logging.getLogger("meshnet.fastdp")

VXLAN_DEVICE = "vxmesh"
CHUNK = 512  # FDB ops per kernel-thread call: other kernel work waits at most one chunk
RECONCILE_EVERY = 600.0  # seconds between full reconciles against a dump (jittered)
MIN_GAP = 0.05  # seconds between two syncs at the least
QUANTUM = 0.25  # seconds: probe work is done in rounds this far apart (one timer wake each)

KernelCall = Callable[..., Awaitable[Any]]


class FastdpDriver:
    def __init__(
        self,
        kernel: KernelCall,
        *,
        peer_id: int,
        bridge: str,
        tap: str,
        mtu: int,
        no_fastdp: bool,
        encrypted: bool,
        grace_period: float = 0.0,
        spawn: Callable[[Any], Any] | None = None,
    ):
        self._kernel = kernel
        self._args = dict(peer_id=peer_id, bridge=bridge, tap=tap, mtu=mtu)
        self._no_fastdp = no_fastdp
        self._encrypted = encrypted
        self.disabled: str | None = None
        self.local: LocalConfig | None = None
        self.health = PathHealth(now=time.monotonic())
        self._vx: VxlanKernel | None = None
        self._probe: ProbeSocket | None = None
        self._peers: dict[int, str | None] = {}
        self._endpoints: dict[int, frozenset[str]] = {}  # peer id -> the MACs it owns (router: claims resolved)
        self._peers_off: set[int] = set()  # peers whose FEATURES say fastdp is off there
        self._departed: dict[int, str] = {}
        self._grace = grace_period
        self.adopted: dict[int, grace.Adopted] = {}
        self._adopted_until = 0.0
        self.responder = False  # the kernel answers probes (else we do, and restarts are not hitless)
        self._stats: VxlanStats | None = None  # per-peer VXLAN counters (nftables), fastdp on only
        self._planner: FdbPlanner | None = None
        self._seen_eps: dict[int, frozenset[str]] = {}  # what the planner was last given, per peer
        self._reconcile_at = 0.0  # at the first sync: adopt what the kernel holds
        self._last_tick = float("-inf")
        self._sync = Coalescer("fastdp kernel sync", self._sync_kernel, spawn=spawn or asyncio.ensure_future, min_gap=MIN_GAP)
        self.sync_counts = {"syncs": 0, "ops": 0, "reconciles": 0, "failures": 0}
        self.on_modes_changed: Callable[[], None] = lambda: None

    async def start(self, local_ip: str | None) -> None:
        esp = await self._kernel(esp_available)
        self.disabled = fastdp.fastdp_disabled_reason(no_fastdp=self._no_fastdp, encrypted=self._encrypted, esp_available=esp)
        if self.disabled is None and local_ip is None:
            self.disabled = "no IPv4 underlay address found for VXLAN"
        self._vx = await self._kernel(VxlanKernel)
        if self.disabled is not None:
            self.local = LocalConfig(vxlan=None, local_ip=local_ip or "0.0.0.0", **self._args)
            await self._kernel(self._vx.remove_device, VXLAN_DEVICE)
            log.info("fastdp off: %s", self.disabled)
        else:
            self.local = LocalConfig(vxlan=VXLAN_DEVICE, local_ip=local_ip, **self._args)
            await self._kernel(self._vx.ensure_device, self.local)
            size = fastdp.probe_frame_size(self.local.mtu)
            self._probe = await self._kernel(ProbeSocket, VXLAN_DEVICE, self.local.peer_id, size)
            self._stats = VxlanStats(self.local.port)
            log.info("fastdp on: VXLAN %s (VNI %#x, UDP %d) from %s", VXLAN_DEVICE, self.local.vni, self.local.port, local_ip)
        self._planner = FdbPlanner(self.local)
        self.health = PathHealth(now=time.monotonic(), disabled=self.disabled)
        if self.disabled is None:
            await self._adopt()

    async def _adopt(self) -> None:
        """Keep what an earlier run left on fastdp, and let the kernel answer probes."""
        assert self.local is not None and self._vx is not None
        try:
            await self._kernel(responder.install, VXLAN_DEVICE, self.local.peer_id)
            self.responder = True
        except KernelError as exc:
            log.warning("fastdp: the kernel cannot answer probes (%s): peers will drop this host while its router restarts", exc)
        if self._grace <= 0:
            return
        self.adopted = grace.adopt(self.local, await self._kernel(self._vx.dump, self.local))
        now = time.monotonic()
        self._adopted_until = now + self._grace
        self.health.adopt(self.adopted, now)
        if self.adopted:
            log.info("fastdp: adopted %d peer(s) from the kernel; kept while they answer probes", len(self.adopted))

    async def leave(self) -> None:
        """This router leaves for good (reset): stop answering probes, so peers let go at once."""
        try:
            await self._kernel(responder.remove)
        except KernelError as exc:
            log.debug("fastdp: %s", exc)
        self.responder = False

    async def stop(self) -> None:
        if self._probe is not None:
            self._probe.close()
        if self._stats is not None:
            await self._kernel(self._stats.close)
            self._stats = None
        if self._vx is not None:
            await self._kernel(self._vx.close)

    def mode(self, peer_id: int) -> tuple[str, str]:
        if not self._peers.get(peer_id):
            return fastdp.SLEEVE, "relayed: no direct path"
        mode, reason = self.health.mode(peer_id)
        if mode == fastdp.SLEEVE and self.disabled is None and peer_id in self._peers_off:
            return mode, fastdp.REASON_PEER_OFF
        return mode, reason

    def fastdp_peers(self) -> set[int]:
        return {pid for pid, ip in self._peers.items() if ip and self.health.mode(pid)[0] == fastdp.FASTDP}

    def update(
        self,
        peers: dict[int, str | None],
        endpoints: dict[int, frozenset[str]],
        peers_off: set[int] | None = None,
        departed: dict[int, str] | None = None,
        removed: set[int] | None = None,
    ) -> None:
        """Follow the mesh: {peer id: underlay IP, or None when there is no direct path},
        {peer id: the MACs it owns} (departed peers' last ones included), the peers that
        announced fastdp off, {peer id: last underlay IP} of departed peers within grace,
        and the peers removed with rmpeer (never kept, even if adopted). Cheap; the kernel
        follows in the background."""
        self._peers, self._endpoints, self._departed = peers, endpoints, departed or {}
        self._peers_off = set(peers_off or ())
        self.adopted = grace.still_adopted(self.adopted, live=peers, departed=self._departed, removed=removed or set())
        self._follow_peers()

    def _follow_peers(self) -> None:
        self.health.set_peers(grace.probed(self._peers, self._departed, self.adopted), time.monotonic())
        self._sync.request()

    async def settled(self) -> None:
        """Wait until the kernel has caught up with the last update (tests, benchmarks)."""
        await self._sync.settled()

    def sync_stats(self) -> dict[str, Any]:
        return {**self.sync_counts, **{f"coalesce_{k}": v for k, v in self._sync.stats.items()}}

    # -- the kernel, off the loop ------------------------------------------------------

    async def _sync_kernel(self) -> None:
        if self.local is None or self._planner is None or self._vx is None:
            return
        infos, endpoints = grace.plan_inputs(
            live=self._peers, departed=self._departed, adopted=self.adopted, endpoints=self._endpoints, mode=lambda pid: self.health.mode(pid)[0]
        )
        ops: list[fdb_delta.Change] = await self._kernel(self._plan, infos, endpoints)
        self.sync_counts["syncs"] += 1
        failed = False
        for start in range(0, len(ops), CHUNK):  # made kernel ops a chunk at a time: see take_changes
            try:
                await self._kernel(self._apply_changes, ops[start : start + CHUNK])
            except KernelError as exc:
                failed = True
                self.sync_counts["failures"] += 1
                log.warning("fastdp: programming the kernel failed: %s; reconciling", exc)
        self.sync_counts["ops"] += len(ops)
        if ops:
            log.debug("fastdp: applied %d FDB changes", len(ops))
        now = time.monotonic()
        if failed:
            self._reconcile_at = min(self._reconcile_at, now + 1.0)
        if now >= self._reconcile_at:
            await self._reconcile()
        await self._count({pid: ip for pid, ip in self._peers.items() if ip})

    async def _count(self, peers: dict[int, str]) -> None:
        """Per-peer VXLAN counters follow the peers with a direct path; without nft, none."""
        if self._stats is None:
            return
        try:
            await self._kernel(self._stats.follow, peers)
        except KernelError as exc:
            log.warning("fastdp: no per-peer VXLAN counters: %s", exc)
            self._stats = None

    async def stats(self) -> dict[str, Any]:
        """{"peers": {peer id: tx/rx packets and bytes on VXLAN}, "device": drops and errors}."""
        if self._stats is None or self.local is None or self.local.vxlan is None:
            return {}
        try:
            return {"peers": await self._kernel(self._stats.read), "device": await self._kernel(device_counters, self.local.vxlan)}
        except (KernelError, OSError, ValueError) as exc:
            log.debug("fastdp: reading VXLAN counters failed: %s", exc)
            return {}

    def _apply_changes(self, changes: list[fdb_delta.Change]) -> None:
        assert self._vx is not None and self.local is not None
        self._vx.apply(self.local, fdb_delta.as_ops(changes))

    def _plan(self, infos: dict[int, PeerInfo], endpoints: dict[int, frozenset[str]]) -> list[fdb_delta.Change]:
        """Tell the planner what changed; return the changes (runs on the kernel thread)."""
        planner = self._planner
        assert planner is not None
        for pid in set(planner.peers()) - infos.keys():
            planner.remove_peer(pid)
            self._seen_eps.pop(pid, None)
        for pid, info in infos.items():
            planner.set_peer(pid, info)
        for pid in infos:
            macs = endpoints.get(pid, frozenset())
            if self._seen_eps.get(pid) != macs:
                planner.set_endpoints(pid, macs)
                self._seen_eps[pid] = macs
        return planner.take_changes()

    async def _reconcile(self) -> None:
        """Dump our entries, apply what differs from the planner's whole state."""
        assert self._vx is not None and self._planner is not None and self.local is not None
        self._reconcile_at = time.monotonic() + RECONCILE_EVERY * random.uniform(0.8, 1.2)
        self.sync_counts["reconciles"] += 1
        have = await self._kernel(self._vx.dump, self.local)
        ops = fastdp.diff(self._planner.want(), have)
        for start in range(0, len(ops), CHUNK):
            try:
                await self._kernel(self._vx.apply, self.local, ops[start : start + CHUNK])
            except KernelError as exc:
                self.sync_counts["failures"] += 1
                log.warning("fastdp: reconciling the kernel failed: %s", exc)
        if ops:
            log.info("fastdp: reconcile corrected %d FDB entries", len(ops))

    # -- probes ------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """Probe work in rounds: the socket is read (replies, and other routers' requests to
        answer) and due probes are sent every QUANTUM seconds at most, in one timer wake,
        instead of one wake per probe frame (a wake costs more than a probe)."""
        if self._probe is not None and (self._peers or self._departed or self.adopted):
            deadline: float | None = self._last_tick + QUANTUM
        else:
            deadline = self.health.next_deadline()
        if self.adopted:
            deadline = self._adopted_until if deadline is None else min(deadline, self._adopted_until)
        return self._reconcile_at if deadline is None else min(deadline, self._reconcile_at)

    def tick(self) -> None:
        now = self._last_tick = time.monotonic()
        if self.adopted and now >= self._adopted_until:
            log.info("fastdp: grace over for %d adopted peer(s) the mesh did not name", len(self.adopted))
            self.adopted = {}
            self._follow_peers()
        if now >= self._reconcile_at and not self._sync.busy:
            self._sync.request()  # the sync reconciles: it is due
        if self._probe is not None:
            self._on_probe()
            for pid, seq in self.health.probes_due(now):
                try:
                    self._probe.send_request(pid, seq)
                except KernelError as exc:
                    log.debug("probe to %08x failed: %s", pid, exc)
        changed = self.health.tick(now)
        for pid, mode, reason in changed:
            log.info("peer %08x now %s: %s", pid, mode, reason)
        if changed:
            self._sync.request()
            self.on_modes_changed()

    def _on_probe(self) -> None:
        try:
            while (probe := self._probe.recv()) is not None:
                if probe.kind == fastdp.PROBE_REQUEST:
                    if not self.responder:  # else the kernel has answered it already
                        self._probe.send_reply(probe)
                else:
                    self.health.on_probe_reply(probe.sender, probe.seq, time.monotonic())
        except KernelError as exc:
            log.warning("probe socket: %s", exc)
