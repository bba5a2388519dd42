"""The router: one host's piece of the mesh, built from the cores and their drivers.

It owns the state dir, the bridge and TAP, the mesh core and its control plane
(`control.py`), both data paths (`sleeve_driver.py`, `fastdp_driver.py`), IPAM
(`ipam_service.py`), the endpoints (`endpoint_service.py`), the API and metrics servers
and one timer (`timer.py`). It knows nothing of Docker or Kubernetes: `meshnet/daemon.py`
builds those beside it and hands them `endpoints`, `plumbing`, `state` and `api`.

Threads: the asyncio loop owns every core; kernel calls run on one kernel thread
(`plumbing.KernelThread`); the sleeve's tables are planned on a planning thread (pure
functions of a snapshot; applied on the loop); the pump runs in its own thread without
the GIL.

Start order: run-dir lock and pid file, state-dir lock (a second router on the same run or
state dir stops here and touches nothing of the first one's), bridge
and TAP, sleeve socket and pump thread, mesh core, TCP listener, API socket, endpoints,
then the timer (dialling starts there). Stop runs it backwards; the bridge and attached
containers stay, so a restart picks them up.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from meshnet.api.server import ApiServer
from meshnet.config import RouterConfig
from meshnet.dataplane import layout, sleeve_plan
from meshnet.errors import UsageError
from meshnet.kernel.links import Links
from meshnet.mesh.core import Deliver, MeshCore
from meshnet.mesh.policy import ConnectionPolicy, peer_addresses
from meshnet.mesh.targets import Targets
from meshnet.runtime.coalesce import Coalescer
from meshnet.runtime.control import ControlPlane
from meshnet.runtime.dial_book import DialBook
from meshnet.runtime.endpoint_service import EndpointService
from meshnet.runtime.endpoints import EndpointRegistry
from meshnet.runtime.fastdp_driver import FastdpDriver
from meshnet.runtime.handlers import RouterHandlers
from meshnet.runtime.ipam_service import CHANNEL as IPAM_CHANNEL
from meshnet.runtime.ipam_service import IpamService, default_init
from meshnet.runtime.metrics import MetricsServer
from meshnet.runtime.plumbing import KernelThread, Plumbing
from meshnet.runtime.sleeve_driver import SleeveDriver
from meshnet.runtime.status import status
from meshnet.runtime.timer import Job, TimerLoop
from meshnet.state.rundir import RunDir
from meshnet.state.statedir import StateDir

log = logging.getLogger("meshnet.router")

REPLAN_GAP = 0.1  # seconds between two runs of the data paths' re-planning, at the least
REKEY_CHECK = 5.0  # seconds between two looks at the sleeve keys' datagram counters
SLEEVE_SLICE = 2048  # pump table operations applied per turn of the loop


class Router:
    def __init__(self, config: RouterConfig):
        self.config = config
        self.encrypted = config.secret is not None
        self.started = time.time()
        self.kernel = KernelThread()
        self.run_dir = RunDir(config.run_dir)
        self.state: StateDir | None = None
        self._links: Links | None = None
        self._tap_fd: int | None = None
        self._server: asyncio.AbstractServer | None = None
        self._metrics: MetricsServer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = asyncio.Event()
        self.api = ApiServer(config.socket)
        self.timer = TimerLoop([])
        self._next_rekey_check = 0.0
        self._planning = ThreadPoolExecutor(1, thread_name_prefix="meshnet-plan")  # pure planning off the loop
        self.policy = ConnectionPolicy(full_mesh_limit=config.full_mesh_limit, degree=config.mesh_degree)
        # A burst of topology changes (a join changes many entries) re-plans the data paths once.
        self.replan = Coalescer("data path re-planning", self._replan, spawn=self.spawn, min_gap=REPLAN_GAP)
        # Built in start(); typed here for readers.
        self.core: MeshCore
        self.control: ControlPlane
        self.dial_book: DialBook
        self.sleeve: SleeveDriver
        self.fastdp: FastdpDriver
        self.ipam: IpamService
        self.endpoints: EndpointService
        self.plumbing: Plumbing
        self.mtu = 0

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        self.run_dir.acquire()  # first: nothing in a run dir another router holds is touched
        try:
            self.state = StateDir(self.config.state_dir)
        except BaseException:
            self.run_dir.release()
            raise
        try:
            await self._start_rest()
        except BaseException:
            await self.stop()
            raise

    async def _start_rest(self) -> None:
        cfg = self.config
        assert self.state is not None
        name = self.state.peer_name()
        self._links = await self.kernel.call(Links)
        underlay = await self.kernel.call(self._links.underlay_mtu)
        self.mtu = cfg.mtu or layout.overlay_mtu(underlay)
        if self.mtu > layout.overlay_mtu(underlay):
            log.warning("MTU %d exceeds what the underlay (MTU %d) carries in every mode", self.mtu, underlay)
        await self.kernel.call(self._links.ensure_bridge, cfg.bridge, self.mtu)
        self._tap_fd = await self.kernel.call(self._links.open_tap, cfg.tap, cfg.bridge, self.mtu)
        self.plumbing = Plumbing(self.kernel, self._links, bridge=cfg.bridge, mtu=self.mtu)

        self.fastdp = FastdpDriver(
            self.kernel.call,
            peer_id=layout.peer_id(name),
            bridge=cfg.bridge,
            tap=cfg.tap,
            mtu=self.mtu,
            no_fastdp=cfg.no_fastdp,
            encrypted=self.encrypted,
            spawn=self.spawn,
        )
        self.fastdp.on_modes_changed = self.replan.request
        underlay_ip = cfg.host if cfg.host not in ("0.0.0.0", "") else await self.kernel.call(self._links.underlay_ip)
        await self.fastdp.start(underlay_ip)
        self.sleeve = SleeveDriver(
            local_id=layout.peer_id(name),
            host=cfg.host,
            udp_port=cfg.udp_port,
            tap_fd=self._tap_fd,
            underlay_mtu=underlay,
            encrypted=self.encrypted,
            pure_python=cfg.pure_python_pump,
        )
        self.sleeve.start()

        now = time.monotonic()
        self.core = MeshCore(
            name=name,
            nick=cfg.nickname or socket.gethostname(),
            uid=secrets.randbits(63),
            port=cfg.port,
            udp_port=cfg.udp_port,
            now=now,
            conn_limit=cfg.conn_limit,
        )
        targets = Targets()
        self.dial_book = DialBook(self.state, targets, wake=self.timer.wake)
        self.control = ControlPlane(
            core=self.core,
            targets=targets,
            password=cfg.secret,
            features=self._features(),
            on_deliver=self._on_deliver,
            on_changed=self._topology_changed,
            wake=self.timer.wake,
            spawn=self.spawn,
        )
        self.ipam = IpamService(
            name=name,
            universe=cfg.ipalloc_range,
            init=cfg.ipalloc_init or default_init(cfg.peers),
            state_dir=cfg.state_dir,
            send=self._send_ipam,
        )
        self.ipam.peers_changed(set(), set())
        self.dial_book.core = self.core
        self.dial_book.load(cfg.peers)
        try:
            self._server = await asyncio.start_server(self.control.accept, cfg.host, cfg.port, reuse_address=True)
        except OSError as exc:
            raise UsageError(f"cannot listen on TCP {cfg.host}:{cfg.port}: {exc.strerror}") from None
        self.api.add_routes(RouterHandlers(self).routes())
        await self.api.start()
        self._metrics = MetricsServer(cfg.metrics_addr, self._metrics_snapshot)
        self._metrics.start()
        self.endpoints = EndpointService(
            registry=EndpointRegistry(self.state),
            ipam=self.ipam,
            plumbing=self.plumbing,
            universe=cfg.ipalloc_range,
            topology=lambda: self.core.topology,
            publish=self._publish_endpoints,
            publish_names=lambda names: self.control.handle(self.core.set_data("dns", names, now=time.monotonic())),
        )
        await self.endpoints.restore()
        self.timer.add(Job("mesh", lambda now: self.control.tick(now=now), self.core.next_deadline))
        self.timer.add(Job("dial", lambda now: self.control.dial_due(now=now), self.control.next_deadline))
        self.timer.add(Job("fastdp", lambda now: self.fastdp.tick(), self.fastdp.next_deadline))
        self.timer.add(Job("ipam", lambda now: self.ipam.tick(), self.ipam.next_deadline))
        self.timer.add(Job("policy", lambda now: self.replan.request(), lambda: self.control.plan.recheck if self.control.plan else None))
        self.timer.add(Job("rekey", lambda now: self._rekey(now), lambda: self._next_rekey_check))
        self.spawn(self.timer.run())
        log.info(
            "router %s (%s) up: TCP %d, UDP %d, bridge %s, MTU %d, %s, pump %s",
            name.hex(),
            self.core.topology.local.nick,
            cfg.port,
            cfg.udp_port,
            cfg.bridge,
            self.mtu,
            "encrypted" if self.encrypted else "UNENCRYPTED (no password)",
            "compiled" if self.sleeve.compiled else "pure-Python twin",
        )

    def request_stop(self, delay: float = 0.0) -> None:
        asyncio.get_running_loop().call_later(delay, self._stopping.set)

    async def wait_stop_requested(self) -> None:
        await self._stopping.wait()

    async def stop(self) -> None:
        loop = asyncio.get_running_loop()
        if getattr(self, "control", None) is not None:
            self.control.close_all()
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            self._server.close()
        await self.api.close()
        if self._metrics is not None:
            await loop.run_in_executor(None, self._metrics.stop)
            self._metrics = None
        if getattr(self, "sleeve", None) is not None:
            await loop.run_in_executor(None, self.sleeve.stop)
        if getattr(self, "fastdp", None) is not None:
            await self.fastdp.stop()
        if getattr(self, "ipam", None) is not None:
            self.ipam.close()
        if self._tap_fd is not None:
            os.close(self._tap_fd)
            self._tap_fd = None
        if self._links is not None:
            await self.kernel.call(self._links.close)
        self.kernel.close()
        self._planning.shutdown(wait=False)
        if self.state is not None:
            self.state.close()
            self.state = None
        self.run_dir.release()
        log.info("router stopped")

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the mesh ----------------------------------------------------------------------

    def _features(self) -> dict[str, Any]:
        local = self.core.topology.local
        return {
            "name": local.name,
            "nick": local.nick,
            "uid": local.uid,
            "port": self.config.port,
            "udp_port": self.config.udp_port,
            "features": {"sleeve": 1, "fastdp": int(self.fastdp.disabled is None)},  # data paths this router runs
        }

    def _on_deliver(self, event: Deliver) -> None:
        if event.channel == IPAM_CHANNEL:
            self.ipam.on_message(event.src, event.payload, unicast=event.unicast)
            self.timer.wake()  # the message may have moved IPAM's deadline (a consensus grace period)
        else:
            log.debug("no handler for channel %r from %s", event.channel, event.src.hex())

    def _send_ipam(self, outgoing: list[Any]) -> None:
        self.timer.wake()  # IPAM activity may have set an earlier deadline (donation timeouts)
        now = time.monotonic()
        for message in outgoing:
            if message[0] == "broadcast":
                self.control.handle(self.core.broadcast(IPAM_CHANNEL, message[1], now=now))
            else:
                self.control.handle(self.core.unicast(message[1], IPAM_CHANNEL, message[2], now=now))

    def _publish_endpoints(self, eps: list[list[Any]]) -> None:
        self.control.handle(self.core.set_data("eps", eps, now=time.monotonic()))

    def _topology_changed(self) -> None:
        self.replan.request()

    async def _replan(self) -> None:
        """Make the data paths, IPAM and the dialler follow the mesh (coalesced: `replan`).
        On the loop only O(peers) work; the sleeve's tables (O(endpoints): 0.2 s at 100,000)
        are planned on the planning thread and applied in slices between other work."""
        topo = self.core.topology
        reachable = topo.reachable()
        self.ipam.peers_changed(reachable, set(self.core.by_peer()))
        eps = {layout.peer_id(p): topo.entries[p].data.get("eps") for p in reachable}
        self.fastdp.update(self._peer_ips(), eps, self._fastdp_off())
        connected = {c.peer: (c.outbound, c.since) for c in self.core.conns.values()}
        plan = self.policy.plan(topo, connected=connected, now=time.monotonic(), failing=self.control.targets.failing())
        self.control.follow(plan)
        self.dial_book.remember(plan)
        inputs = (self.core.name, topo.routes(), self.control.direct(), self.fastdp.fastdp_peers(), eps)
        ops = await asyncio.get_running_loop().run_in_executor(self._planning, self._plan_sleeve, *inputs)
        for start in range(0, len(ops), SLEEVE_SLICE):
            self.sleeve.apply_ops(ops[start : start + SLEEVE_SLICE])
            await asyncio.sleep(0)

    def _plan_sleeve(self, local: bytes, routes: Any, direct: Any, fastdp: set[int], eps: dict[int, Any]) -> list[Any]:
        """The pump's tables for this mesh, as operations (runs on the planning thread)."""
        endpoints = {}
        for pid, listed in eps.items():
            for ep in listed if isinstance(listed, list) else ():
                if isinstance(ep, list) and ep and isinstance(ep[0], str):
                    endpoints[ep[0]] = pid
        want = sleeve_plan.plan(local=local, routes=routes, direct=direct, fastdp=fastdp, endpoints=endpoints)
        return self.sleeve.ops_for(want)

    def _peer_ips(self) -> dict[int, str | None]:
        """Every reachable peer's id and underlay IP: the connection's when we hold one,
        else as its neighbours see it (gossiped); None when nobody says."""
        ips: dict[bytes, str] = {c.peer: c.ip for c in self.core.conns.values()}
        seen = peer_addresses(self.core.topology)
        return {layout.peer_id(p): ips.get(p) or seen.get(p) for p in self.core.topology.reachable()}

    def _fastdp_off(self) -> set[int]:
        """Directly connected peers whose FEATURES say they run without fastdp."""
        return {layout.peer_id(c.peer) for c in self.core.conns.values() if isinstance(c.features, dict) and c.features.get("fastdp") == 0}

    def _rekey(self, now: float) -> None:
        """A sleeve key near its datagram limit: reconnect, and the new handshake rekeys.
        Checked every REKEY_CHECK seconds: between the pump's rekey and reject marks there
        are 2^34 - 2^30 datagrams, hours at any rate."""
        self._next_rekey_check = now + REKEY_CHECK
        due = self.sleeve.rekey_due()
        peers = {c.peer for c in self.core.conns.values() if layout.peer_id(c.peer) in due}
        if peers:
            log.info("rekeying the sleeve with %d peer(s): reconnecting", len(peers))
            self.control.close_peers(peers, "rekeying the sleeve")

    # -- metrics -----------------------------------------------------------------------

    async def _metrics_snapshot(self) -> dict[str, Any]:
        """What /metrics shows, read on the loop thread (meshnet/runtime/metrics.py)."""
        snap = status(self)
        snap["ipam"] = self.ipam.status()
        snap["peer_stats"] = self.sleeve.peer_stats()
        snap["vxlan_stats"] = await self.fastdp.stats()
        return snap
