"""Runs fastdp for the router: the VXLAN device, per-peer path probes, and the FDB plan.

Owns a `PathHealth` (which peers may use VXLAN), a `ProbeSocket` (probes over the VXLAN
path itself) and a `VxlanKernel` (plan -> diff -> apply). The router calls `update()`
whenever the mesh changes and `tick()` at `next_deadline()`; every kernel call goes
through the router's kernel thread (pyroute2 must not run on the asyncio thread).
When fastdp is disabled (--no-fastdp, or an encrypted mesh on a kernel without ESP) the
driver still plans the bridge entries that send remote MACs to the TAP.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable

from meshnet.dataplane import fastdp
from meshnet.dataplane.fastdp import LocalConfig, PathHealth, PeerInfo
from meshnet.kernel.errors import KernelError
from meshnet.kernel.vxlan import ProbeSocket, VxlanKernel, esp_available
from meshnet.kernel.vxlan_stats import VxlanStats, device_counters

log = logging.getLogger("meshnet.fastdp")

VXLAN_DEVICE = "vxmesh"

KernelCall = Callable[..., Awaitable[Any]]


class FastdpDriver:
    def __init__(self, kernel: KernelCall, *, peer_id: int, bridge: str, tap: str, mtu: int, no_fastdp: bool, encrypted: bool):
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

    async def update(self, peers: dict[int, str | None], endpoints: dict[str, int], peers_off: set[int] | None = None) -> None:
        """Follow the mesh: {peer id: underlay IP if directly connected}, {MAC: peer id},
        and the peers that announced fastdp off."""
        self._peers, self._endpoints = peers, endpoints
        self._peers_off = set(peers_off or ())
        self.health.set_peers([pid for pid, ip in peers.items() if ip], time.monotonic())
        await self._converge()

    async def _converge(self) -> None:
        if self.local is None:
            return
        infos = {pid: PeerInfo(ip or "", self.health.mode(pid)[0] if ip else fastdp.SLEEVE) for pid, ip in self._peers.items()}
        want = fastdp.plan(self.local, infos, self._endpoints)
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
        return self.health.next_deadline()

    async def tick(self) -> None:
        now = time.monotonic()
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
                    self._probe.send_reply(probe)
                else:
                    self.health.on_probe_reply(probe.sender, probe.seq, time.monotonic())
        except KernelError as exc:
            log.warning("probe socket: %s", exc)
