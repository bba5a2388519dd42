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

Supervision (`supervise.py`): every task the router starts (dials, connections, fastdp
updates, the timer) runs under `self.supervisor`, which logs and counts what escapes them
and restarts the timer; what escapes callbacks and threads is caught by the loop's
exception handler and `threading.excepthook` it installs.

Start order: run-dir lock and pid file, state-dir lock, network-namespace lock (a second
router on the same run or state dir, or in the same namespace, stops here and touches
nothing of the first one's), bridge
and TAP, sleeve socket and pump thread, mesh core, TCP listener, API socket, endpoints,
then the timer (dialling starts there). Stop runs it backwards; the bridge, TAP, VXLAN
device, FDB and attached containers stay, so the kernel forwards while no router runs and a
restart adopts them (docs/concepts.md, "Restarts and upgrades").

Peers removed with rmpeer (IPAM's `removed()`) are left out of the data path on every
router: such a peer must reset before its endpoints are served again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from typing import Any, Awaitable, Callable

from meshnet.api.server import ApiServer
from meshnet.config import RouterConfig
from meshnet.dataplane import layout
from meshnet.errors import Conflict, UsageError
from meshnet.kernel.links import Links
from meshnet.kernel.netns_lock import NetnsLock
from meshnet.kernel.nft import sysctl_get
from meshnet.mesh.core import Deliver, MeshCore
from meshnet.mesh.quota import Limits
from meshnet.mesh.targets import Targets
from meshnet.runtime.control import ControlPlane
from meshnet.runtime.dial_book import DialBook
from meshnet.runtime.endpoint_guard import EndpointGuard
from meshnet.runtime.endpoint_service import EndpointService
from meshnet.runtime.endpoints import EndpointRegistry
from meshnet.runtime.fastdp_driver import VXLAN_DEVICE, FastdpDriver
from meshnet.runtime.follow import MeshFollower
from meshnet.runtime.handlers import RouterHandlers
from meshnet.runtime.ipam_service import CHANNEL as IPAM_CHANNEL
from meshnet.runtime.ipam_service import IpamService, default_init
from meshnet.runtime.metrics import MetricsServer
from meshnet.runtime.plumbing import KernelThread, Plumbing
from meshnet.runtime.ratelimit import RateLimitedLog
from meshnet.runtime.sleeve_driver import SleeveDriver
from meshnet.runtime.status import status
from meshnet.runtime.supervise import Supervisor
from meshnet.runtime.timer import Job, TimerLoop
from meshnet.state.rundir import RunDir
from meshnet.state.statedir import StateDir

log = logging.getLogger("meshnet.router")
SECTION_TIMEOUT = 3.0  # seconds an integration's metrics section may take (a scrape waits 5)

REKEY_CHECK = 5.0  # seconds between two looks at the sleeve keys' datagram counters


class Router:
    def __init__(self, config: RouterConfig):
        self.config = config
        self.encrypted = config.secret is not None
        self.started = time.time()
        self.kernel = KernelThread()
        self.run_dir = RunDir(config.run_dir)
        self.netns_lock = NetnsLock()
        self.state: StateDir | None = None
        self._links: Links | None = None
        self._tap_fds: list[int] = []
        self._server: asyncio.AbstractServer | None = None
        self._metrics: MetricsServer | None = None
        self.supervisor = Supervisor()
        self.conflict_log = RateLimitedLog(log)
        self._stopping = asyncio.Event()
        self.api = ApiServer(config.socket)
        self.timer = TimerLoop([])
        self._metric_sections: dict[str, Callable[[], Awaitable[dict[str, Any]]]] = {}  # integrations' parts of /metrics
        self._next_rekey_check = 0.0
        self.follower = MeshFollower(self, full_mesh_limit=config.full_mesh_limit, degree=config.mesh_degree)
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
        self.supervisor.install(asyncio.get_running_loop())
        self.run_dir.acquire()  # first: nothing in a run dir another router holds is touched
        try:
            self.state = StateDir(self.config.state_dir)
            self.netns_lock.acquire()  # before the kernel: the namespace's data path is one router's
        except BaseException:
            if self.state is not None:
                self.state.close()
                self.state = None
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
        limit = await self.kernel.call(sysctl_get, "net.ipv4.neigh.default.gc_thresh3")  # initial namespace only
        self.follower.neighbour_limit = int(limit) if limit and limit.isdigit() else None
        if self.mtu > layout.overlay_mtu(underlay):
            log.warning("MTU %d exceeds what the underlay (MTU %d) carries in every mode", self.mtu, underlay)
        await self.kernel.call(self._links.ensure_bridge, cfg.bridge, self.mtu)
        threads = 1 if cfg.pure_python_pump else cfg.pump_threads  # a TAP queue per pump thread
        self._tap_fds = await self.kernel.call(self._links.open_tap_queues, cfg.tap, cfg.bridge, self.mtu, threads)
        if len(self._tap_fds) < threads:
            log.warning("the TAP has %d queue(s), not %d: %d pump thread(s)", len(self._tap_fds), threads, len(self._tap_fds))
        self.plumbing = Plumbing(self.kernel, self._links, bridge=cfg.bridge, mtu=self.mtu)

        self.fastdp = FastdpDriver(
            self.kernel.call,
            peer_id=layout.peer_id(name),
            bridge=cfg.bridge,
            tap=cfg.tap,
            mtu=self.mtu,
            no_fastdp=cfg.no_fastdp,
            encrypted=self.encrypted,
            grace_period=cfg.restart_grace,
            spawn=self.spawn,
        )
        self.fastdp.on_modes_changed = self.follower.request
        underlay_ip = cfg.host if cfg.host not in ("0.0.0.0", "") else await self.kernel.call(self._links.underlay_ip)
        await self.fastdp.start(underlay_ip)
        self.sleeve = SleeveDriver(
            local_id=layout.peer_id(name),
            host=cfg.host,
            udp_port=cfg.udp_port,
            tap_fds=self._tap_fds,
            underlay_mtu=underlay,
            encrypted=self.encrypted,
            pure_python=cfg.pure_python_pump,
            mac_limits={"mac_table_max": cfg.mac_table_max, "learn_quota": cfg.mac_learn_quota, "mac_age": cfg.mac_age},
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
            limits=Limits(cfg.max_peers, cfg.max_endpoints, cfg.max_peer_endpoints),
            departed_grace=cfg.restart_grace,
        )
        targets = Targets()
        self.dial_book = DialBook(self.state, targets, wake=self.timer.wake)
        self.control = ControlPlane(
            core=self.core,
            targets=targets,
            password=cfg.secret,
            features=self._features(),
            on_deliver=self.supervisor.guard("deliver", self._on_deliver),
            on_changed=self.supervisor.guard("topology-changed", self._topology_changed),
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
            accept = self.supervisor.handler("connection", self.control.accept)
            self._server = await asyncio.start_server(accept, cfg.host, cfg.port, reuse_address=True)
        except OSError as exc:
            raise UsageError(f"cannot listen on TCP {cfg.host}:{cfg.port}: {exc.strerror}") from None
        self.api.add_routes(RouterHandlers(self).routes())
        await self.api.start()
        self._metrics = MetricsServer(cfg.metrics_addr, self._metrics_snapshot)
        self._metrics.start()
        self.endpoints = EndpointService(
            registry=EndpointRegistry(self.state, limit=cfg.max_peer_endpoints),
            ipam=self.ipam,
            plumbing=self.plumbing,
            universe=cfg.ipalloc_range,
            topology=lambda: self.core.topology,
            publish=self._publish_endpoints,
            publish_names=lambda names: self.control.handle(self.core.set_data("dns", names, now=time.monotonic())),
            claims=lambda: self.core.claims,
            guard=EndpointGuard(self.state, self.plumbing, self.ipam.standing),
            spawn=self.spawn,
        )
        self.follower.removed = frozenset(self.ipam.removed())
        self.ipam.on_changed = self._ipam_changed
        await self.endpoints.restore(own_ports={cfg.tap, VXLAN_DEVICE})
        self.timer.add(Job("mesh", lambda now: self.control.tick(now=now), self.core.next_deadline))
        self.timer.add(Job("dial", lambda now: self.control.dial_due(now=now), self.control.next_deadline))
        self.timer.add(Job("fastdp", lambda now: self.fastdp.tick(), self.fastdp.next_deadline))
        self.timer.add(Job("ipam", lambda now: self.ipam.tick(), self.ipam.next_deadline))
        self.timer.add(Job("policy", lambda now: self.follower.request(), lambda: self.control.plan.recheck if self.control.plan else None))
        self.timer.add(Job("rekey", lambda now: self._rekey(now), lambda: self._next_rekey_check))
        self.timer.add(Job("dial-book", self.dial_book.flush, self.dial_book.next_deadline))
        self.supervisor.keep("timer", self.timer.run)
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
        self.supervisor.cancel_all()
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
        for fd in self._tap_fds:
            os.close(fd)
        self._tap_fds = []
        if self._links is not None:
            await self.kernel.call(self._links.close)
        self.kernel.close()
        self.follower.close()
        if self.state is not None:
            if getattr(self, "dial_book", None) is not None:
                self.dial_book.flush(time.monotonic(), force=True)
            self.state.close()
            self.state = None
        self.netns_lock.release()
        self.run_dir.release()
        self.supervisor.uninstall()
        log.info("router stopped")

    def spawn(self, coro: Any, name: str = "task") -> None:
        self.supervisor.spawn(name, coro)

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
        self.follower.request()
        self._log_conflicts()

    def _log_conflicts(self) -> None:
        entries = self.core.topology.entries
        nick = lambda peer: entries[peer].nick if peer in entries else peer.hex()  # noqa: E731
        for c in self.core.claims.take_new():
            self.conflict_log.warning(
                "address-conflict",
                "address conflict: %s %s is claimed by %s and by %s; %s keeps it (the earlier claim)",
                c.kind.upper(), c.address, nick(c.owner), nick(c.other), nick(c.owner),
            )

    def _ipam_changed(self) -> None:
        """IPAM moved: peers removed with rmpeer leave the data path; endpoints whose
        addresses are no longer ours are refused."""
        removed = frozenset(self.ipam.removed())
        if removed != self.follower.removed:
            self.follower.removed = removed
            self.core.forget_departed(set(removed))
            self._topology_changed()
        self.endpoints.check()

    def fastdp_off(self) -> set[int]:
        """Directly connected peers whose FEATURES say they run without fastdp."""
        return {layout.peer_id(c.peer) for c in self.core.conns.values() if isinstance(c.features, dict) and c.features.get("fastdp") == 0}

    async def reset(self, *, release: bool) -> dict[str, Any]:
        """Hand this peer's address space to a reachable peer before it leaves for good.

        Raises:
            Conflict: addresses of this peer are in use and `release` was not given.
            IpamError: no peer can take the space, or an rmpeer is being confirmed.
        """
        in_use = self.ipam.owners()
        if in_use and not release:
            held = sum(len(a) for a in in_use.values())
            names = ", ".join(sorted(in_use)[:5]) + (", ..." if len(in_use) > 5 else "")
            raise Conflict(
                f"{held} address(es) of this peer are in use ({names}): handing them to another peer would "
                "duplicate them; detach those first, or reset --release to detach them now"
            )
        self.ipam.check_reset()
        detached = await self.endpoints.detach_all() if release else []
        self.ipam.reset()
        await self.fastdp.leave()  # peers stop forwarding to this host's kernel at once
        return {"handed_off": True, "detached": detached, "released": sum(len(a) for a in in_use.values())}

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

    def add_metrics_section(self, name: str, fn: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        """An integration's part of the snapshot: `snap[name] = await fn()` on every scrape."""
        self._metric_sections[name] = fn

    async def _metrics_snapshot(self) -> dict[str, Any]:
        """What /metrics shows, read on the loop thread (meshnet/runtime/metrics.py)."""
        snap = status(self)
        snap["ipam"] = self.ipam.status()
        snap["peer_stats"] = self.sleeve.peer_stats()
        snap["vxlan_stats"] = await self.fastdp.stats()
        for name, fn in self._metric_sections.items():
            try:
                async with asyncio.timeout(SECTION_TIMEOUT):
                    snap[name] = await fn()
            except Exception as exc:  # noqa: BLE001 - a section that fails is left out, the rest is served
                log.warning("metrics section %s: %s", name, exc)
        return snap
