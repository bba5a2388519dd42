"""Runs fastdp for the router: the VXLAN device, per-peer path probes, and the FDB plan.

Owns a `PathHealth` (which peers may use VXLAN), a `ProbeSocket` (probes over the VXLAN
path itself) and a `VxlanKernel` (plan -> diff -> apply). The router calls `update()`
whenever the mesh changes and `tick()` at `next_deadline()`; every kernel call goes
through the router's kernel thread (pyroute2 must not run on the asyncio thread).
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
import time
from typing import Any, Awaitable, Callable

from meshnet.dataplane import fastdp, grace
from meshnet.dataplane.fastdp import LocalConfig, PathHealth, PeerInfo
from meshnet.kernel import responder
from meshnet.kernel.errors import KernelError
from meshnet.kernel.vxlan import ProbeSocket, VxlanKernel, esp_available
from meshnet.kernel.vxlan_stats import VxlanStats, device_counters

log = logging.getLogger("meshnet.fastdp")

VXLAN_DEVICE = "vxmesh"

KernelCall = Callable[..., Awaitable[Any]]


class FastdpDriver:
    def __init__(
        self, kernel: KernelCall, *, peer_id: int, bridge: str, tap: str, mtu: int, no_fastdp: bool, encrypted: bool, grace_period: float = 0.0
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
        self._peers_off: set[int] = set()  # peers whose FEATURES say fastdp is off there
        self._endpoints: dict[str, int] = {}
        self._departed: dict[int, str] = {}
        self._grace = grace_period
        self.adopted: dict[int, grace.Adopted] = {}
        self._adopted_until = 0.0
        self.responder = False  # the kernel answers probes (else we do, and restarts are not hitless)
        self._applying = asyncio.Lock()
        self._stats: VxlanStats | None = None  # per-peer VXLAN counters (nftables), fastdp on only
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
            await self._kernel_quiet(responder.remove)
            log.info("fastdp off: %s", self.disabled)
        else:
            self.local = LocalConfig(vxlan=VXLAN_DEVICE, local_ip=local_ip, **self._args)
            await self._kernel(self._vx.ensure_device, self.local)
            size = fastdp.probe_frame_size(self.local.mtu)
            self._probe = await self._kernel(ProbeSocket, VXLAN_DEVICE, self.local.peer_id, size)
            asyncio.get_running_loop().add_reader(self._probe.fileno(), self._on_probe)
            self._stats = VxlanStats(self.local.port)
            log.info("fastdp on: VXLAN %s (VNI %#x, UDP %d) from %s", VXLAN_DEVICE, self.local.vni, self.local.port, local_ip)
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
        await self._kernel_quiet(responder.remove)
        self.responder = False

    async def _kernel_quiet(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            await self._kernel(fn, *args)
        except KernelError as exc:
            log.debug("fastdp: %s", exc)

    async def stop(self) -> None:
        if self._probe is not None:
            asyncio.get_running_loop().remove_reader(self._probe.fileno())
            self._probe.close()
        if self._stats is not None:
            await self._kernel(self._stats.close)
            self._stats = None
        if self._vx is not None:
            await self._kernel(self._vx.close)

    def mode(self, peer_id: int) -> tuple[str, str]:
        if peer_id not in self._peers:
            return fastdp.SLEEVE, "relayed: no direct connection"
        mode, reason = self.health.mode(peer_id)
        if mode == fastdp.SLEEVE and self.disabled is None and peer_id in self._peers_off:
            return mode, fastdp.REASON_PEER_OFF
        return mode, reason

    def fastdp_peers(self) -> set[int]:
        return {pid for pid in self._peers if self.health.mode(pid)[0] == fastdp.FASTDP}

    async def update(
        self,
        peers: dict[int, str | None],
        endpoints: dict[str, int],
        peers_off: set[int] | None = None,
        departed: dict[int, str] | None = None,
        removed: set[int] | None = None,
    ) -> None:
        """Follow the mesh: {peer id: underlay IP if directly connected}, {MAC: peer id},
        the peers that announced fastdp off, {peer id: last underlay IP} of departed peers
        within grace, and the peers removed with rmpeer (never kept, even if adopted)."""
        self._peers, self._endpoints, self._departed = peers, endpoints, departed or {}
        self._peers_off = set(peers_off or ())
        self.adopted = grace.still_adopted(self.adopted, live=peers, departed=self._departed, removed=removed or set())
        self._follow_peers()
        await self._converge()

    def _follow_peers(self) -> None:
        self.health.set_peers(grace.probed(self._peers, self._departed, self.adopted), time.monotonic())

    async def _converge(self) -> None:
        if self.local is None:
            return
        infos, endpoints = grace.plan_inputs(
            live=self._peers, departed=self._departed, adopted=self.adopted, endpoints=self._endpoints, mode=lambda pid: self.health.mode(pid)[0]
        )
        want = fastdp.plan(self.local, infos, endpoints)
        async with self._applying:
            try:
                ops = await self._kernel(self._vx.converge, self.local, want)
            except KernelError as exc:
                log.warning("fastdp: programming the kernel failed: %s", exc)
                return
        if ops:
            log.debug("fastdp: applied %d FDB changes", len(ops))
        await self._count(infos)

    async def _count(self, infos: dict[int, PeerInfo]) -> None:
        """Per-peer VXLAN counters follow the directly connected peers; without nft, none."""
        if self._stats is None:
            return
        try:
            await self._kernel(self._stats.follow, {pid: i.underlay_ip for pid, i in infos.items() if i.underlay_ip})
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

    def next_deadline(self) -> float | None:
        deadline = self.health.next_deadline()
        if self.adopted:
            deadline = self._adopted_until if deadline is None else min(deadline, self._adopted_until)
        return deadline

    async def tick(self) -> None:
        now = time.monotonic()
        if self.adopted and now >= self._adopted_until:
            log.info("fastdp: grace over for %d adopted peer(s) the mesh did not name", len(self.adopted))
            self.adopted = {}
            self._follow_peers()
            await self._converge()
        if self._probe is not None:
            for pid, seq in self.health.probes_due(now):
                try:
                    self._probe.send_request(pid, seq)
                except KernelError as exc:
                    log.debug("probe to %08x failed: %s", pid, exc)
        changed = self.health.tick(now)
        for pid, mode, reason in changed:
            log.info("peer %08x now %s: %s", pid, mode, reason)
        if changed:
            await self._converge()
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
