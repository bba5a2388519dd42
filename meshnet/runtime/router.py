"""The router daemon: wires the sans-IO mesh core to sockets, timers, the kernel and the pump.

Threads: the asyncio loop owns every core and all kernel calls (blocking netlink calls
run in the default executor but are issued only from the loop); the pump owns its own
struct and runs in one thread without the GIL. They meet only through the pump's
locked table setters (`set_peer`, `set_mac`, ...).

Start order: state-dir lock (a second router on the same state dir stops here), bridge
and TAP, UDP socket and pump thread, TCP listener, API socket, then dialling. Stop runs
it backwards; the bridge and attached containers stay, so a restart picks them up.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import os
import secrets
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any

from meshnet.dataplane import layout
from meshnet.dataplane.pump import load_pump
from meshnet.errors import Conflict, HandshakeRefused, MeshnetError, NotFound, Refusal, RemoteProtocolError, UsageError
from meshnet.kernel.errors import KernelError
from meshnet.kernel.links import Links, netns_path, parse_cidrs
from meshnet.mesh import targets as targets_mod
from meshnet.mesh.connection import ControlConnection, State
from meshnet.mesh.core import Changed, Close, Deliver, MeshCore, Send
from meshnet.mesh.targets import Targets
from meshnet.api.server import ApiServer
from meshnet.runtime.config import RouterConfig
from meshnet.runtime.endpoints import Endpoint, EndpointRegistry
from meshnet.runtime.metrics import MetricsServer
from meshnet.runtime.fastdp_driver import FastdpDriver
from meshnet.runtime.ipam_service import CHANNEL as IPAM_CHANNEL
from meshnet.runtime.ipam_service import IpamService, default_init
from meshnet.runtime.state import StateDir

log = logging.getLogger("meshnet.router")

HANDSHAKE_TIMEOUT = 10.0  # seconds for a dialled or accepted connection to finish its handshake


def _describe_pump(compiled: bool, f: dict[str, Any]) -> str:
    """One line for `meshnet status`: which pump, and which offloads it uses."""
    if not compiled:
        return "PURE-PYTHON TWIN (slow; the compiled pump is not built): no batching, no offloads"
    used = [f"batch {f.get('batch')}"] if f else []
    if f.get("tap_offload"):
        used.append("TAP " + "/".join(f["tap_offload"]))
    elif f:
        used.append("no TAP offloads" + ("" if f.get("vnet_hdr") else " (no IFF_VNET_HDR)"))
    used += [name for key, name in (("udp_gso", "UDP GSO"), ("udp_gro", "UDP GRO"), ("gro_merge", "TCP merging"), ("gro_merge_udp", "UDP merging")) if f.get(key)]
    if f.get("udp_gso_error"):
        used.append(f"UDP GSO off after error: {f['udp_gso_error']}")
    used.append(f"sleeve {f['crypto']}" if f.get("crypto") else "sleeve unencrypted")
    return "compiled: " + ", ".join(used)


class _Link:
    """Runtime side of one TCP control connection."""

    def __init__(self, conn_id: int, proto: ControlConnection, writer: asyncio.StreamWriter, address: str | None):
        self.id = conn_id
        self.proto = proto
        self.writer = writer
        self.address = address  # the target we dialled, None for inbound

    def flush(self) -> None:
        data = self.proto.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)


class Router:
    def __init__(self, config: RouterConfig):
        self.config = config
        self.state: StateDir | None = None
        self.links: Links | None = None
        self.core: MeshCore | None = None
        self.targets = Targets()
        self._conns: dict[int, _Link] = {}
        self._next_conn = 1
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pump: Any = None
        self._pump_thread: threading.Thread | None = None
        self._udp: socket.socket | None = None
        self._tap_fd: int | None = None
        self._server: asyncio.AbstractServer | None = None
        self._api: ApiServer | None = None
        self._pump_peers: dict[int, tuple[Any, int, bool]] = {}
        self._pump_macs: dict[bytes, int] = {}
        self.fastdp: FastdpDriver | None = None
        self.ipam: IpamService | None = None
        self.refusals: list[dict[str, Any]] = []  # recent handshake refusals, newest last
        self.counters = {"handshake_failures": 0, "wrong_password": 0}
        self.started = time.time()
        # pyroute2 runs an event loop of its own, so every kernel call is made from this
        # one thread, never from the asyncio loop's thread.
        self._kernel_thread = ThreadPoolExecutor(1, thread_name_prefix="meshnet-kernel")

    async def _kernel(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._kernel_thread, lambda: fn(*args, **kwargs))

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        self.state = StateDir(cfg.state_dir)
        try:
            await self._start_rest()
        except BaseException:
            await self.stop()
            raise

    async def _start_rest(self) -> None:
        cfg = self.config
        os.makedirs(cfg.run_dir, exist_ok=True)
        with open(cfg.pid_file, "w") as f:
            f.write(f"{os.getpid()}\n")
        name = self.state.peer_name()
        self.links = await self._kernel(Links)
        underlay = await self._kernel(self.links.underlay_mtu)
        self.mtu = cfg.mtu or layout.overlay_mtu(underlay)
        if self.mtu > layout.overlay_mtu(underlay):
            log.warning("MTU %d exceeds what the underlay (MTU %d) carries in every mode", self.mtu, underlay)
        await self._kernel(self.links.ensure_bridge, cfg.bridge, self.mtu)
        self._tap_fd = await self._kernel(self.links.open_tap, cfg.tap, cfg.bridge, self.mtu)
        self.fastdp = FastdpDriver(
            self._kernel,
            peer_id=layout.peer_id(name),
            bridge=cfg.bridge,
            tap=cfg.tap,
            mtu=self.mtu,
            no_fastdp=cfg.no_fastdp,
            encrypted=cfg.password is not None,
        )
        self.fastdp.on_modes_changed = self._program_pump
        underlay_ip = cfg.host if cfg.host not in ("0.0.0.0", "") else await self._kernel(self.links.underlay_ip)
        await self.fastdp.start(underlay_ip)

        self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self._udp.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        try:
            self._udp.bind((cfg.host, cfg.udp_port))
        except OSError as exc:
            raise UsageError(f"cannot bind UDP {cfg.host}:{cfg.udp_port} for the sleeve: {exc.strerror}") from None
        self._udp.setblocking(False)
        pump_cls, self.pump_compiled = load_pump(prefer_compiled=not cfg.pure_python_pump)
        if not self.pump_compiled:
            log.warning("the compiled pump is NOT in use: the sleeve runs the slow pure-Python twin")
        self._pump = pump_cls(
            self._tap_fd,
            self._udp.fileno(),
            layout.peer_id(name),
            batch=int(os.environ.get("MESHNET_PUMP_BATCH", "64")),  # frames per read batch
            crypto=cfg.password is not None,  # an encrypted mesh never sends nor accepts plaintext
            underlay_mtu=underlay,  # frames that do not fit get ICMP "fragmentation needed"
            # after traffic the pump polls without sleeping this long: lower latency for CPU
            spin_us=int(os.environ.get("MESHNET_PUMP_SPIN_US", "0")),
            offload=os.environ.get("MESHNET_PUMP_OFFLOAD", "1") != "0",  # 0: for comparisons
        )
        self._pump_keys: dict[int, tuple[bytes, bytes, int]] = {}
        self._pump_thread = threading.Thread(target=self._pump.run, name="meshnet-pump", daemon=True)
        self._pump_thread.start()

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
        self.ipam = IpamService(
            name=name,
            universe=cfg.ipalloc_range,
            init=cfg.ipalloc_init or default_init(cfg.peers),
            state_dir=cfg.state_dir,
            send=self._send_ipam,
        )
        self.ipam.peers_changed(set(), set())
        for address in [*self.state.get("direct_peers", []), *cfg.peers]:
            self.targets.add_direct(targets_mod.normalize(address))
        # Peers we knew before a restart: dial them at once rather than wait to be found.
        forgotten = set(self.state.get("forgotten_peers", []))
        self.targets.add_known([a for a in self.state.get("known_peers", []) if a not in forgotten])
        self._persist_targets()
        try:
            self._server = await asyncio.start_server(self._accept, cfg.host, cfg.port, reuse_address=True)
        except OSError as exc:
            raise UsageError(f"cannot listen on TCP {cfg.host}:{cfg.port}: {exc.strerror}") from None
        self._api = ApiServer(cfg.socket)
        self._api.add_routes(self._routes())
        await self._api.start()
        self._metrics = MetricsServer(cfg.metrics_addr, self._metrics_snapshot)
        self._metrics.start()
        self.endpoints = EndpointRegistry(self.state)
        await self._restore_endpoints()
        from meshnet.docker.service import DockerService  # plugin socket, Docker events, DNS, expose

        self.docker = DockerService(self)
        await self.docker.start()
        self._spawn(self._timer())
        log.info(
            "router %s (%s) up: TCP %d, UDP %d, bridge %s, MTU %d, %s, pump %s",
            name.hex(),
            self.core.topology.local.nick,
            cfg.port,
            cfg.udp_port,
            cfg.bridge,
            self.mtu,
            "encrypted" if cfg.password else "UNENCRYPTED (no password)",
            "compiled" if self.pump_compiled else "pure-Python twin",
        )

    async def run(self) -> None:
        await self.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        await self._stopping.wait()
        await self.stop()

    async def stop(self) -> None:
        if getattr(self, "docker", None) is not None:
            await self.docker.stop()
        for link in list(self._conns.values()):
            link.writer.close()
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            self._server.close()
        if self._api is not None:
            await self._api.close()
        if getattr(self, "_metrics", None) is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._metrics.stop)
            self._metrics = None
        if self._pump is not None:
            self._pump.stop()
            if self._pump_thread is not None:
                await asyncio.get_running_loop().run_in_executor(None, self._pump_thread.join, 5)
        if self.fastdp is not None:
            await self.fastdp.stop()
        if getattr(self, "ipam", None) is not None:
            self.ipam.close()
            self.ipam = None
        if self._udp is not None:
            self._udp.close()
        if self._tap_fd is not None:
            os.close(self._tap_fd)
            self._tap_fd = None
        if self.links is not None:
            await self._kernel(self.links.close)
        self._kernel_thread.shutdown(wait=False)
        if os.path.exists(self.config.pid_file):
            os.unlink(self.config.pid_file)
        if self.state is not None:
            self.state.close()
            self.state = None
        log.info("router stopped")

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- connections -------------------------------------------------------------------

    def _features(self) -> dict[str, Any]:
        local = self.core.topology.local
        return {
            "name": local.name,
            "nick": local.nick,
            "uid": local.uid,
            "port": self.config.port,
            "udp_port": self.config.udp_port,
            "features": {"sleeve": 1},
        }

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._run_connection(reader, writer, address=None)

    async def _dial(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        self.targets.dialling(address)
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), HANDSHAKE_TIMEOUT)
        except (OSError, asyncio.TimeoutError) as exc:
            self.targets.failed(address, f"connect: {exc.__class__.__name__} {exc}", now=time.monotonic())
            self._wake.set()
            return
        await self._run_connection(reader, writer, address=address)

    async def _run_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, address: str | None
    ) -> None:
        peer_ip = writer.get_extra_info("peername")[0]
        proto = ControlConnection(initiator=address is not None, password=self.config.password, features=self._features())
        link = _Link(self._next_conn, proto, writer, address)
        self._next_conn += 1
        admitted = False
        benign = False  # ended on purpose, nothing to retry or report
        error = ""
        retry = True
        try:
            link.flush()
            early = await asyncio.wait_for(self._handshake(link, reader), HANDSHAKE_TIMEOUT)
            refused, events = self.core.add_connection(
                link.id, remote=proto.remote, ip=peer_ip, outbound=address is not None, now=time.monotonic()
            )
            if refused is not None and refused.refusal.benign:  # both sides dialled; the other connection stays
                proto.refuse(refused.refusal, refused.reason)
                link.flush()
                if address is not None:
                    self.targets.succeeded(address, proto.remote["name"])
                    benign = True
                return
            if refused is not None:
                self._note_refusal(peer_ip, proto.remote, refused.reason)
                proto.refuse(refused.refusal, refused.reason)
                link.flush()
                # A name clash may clear (a stale incarnation times out): only our own address is hopeless.
                error, retry = f"refused by us: {refused.reason}", refused.refusal is not Refusal.SELF
                return
            admitted = True
            self._conns[link.id] = link
            if address is not None:
                self.targets.succeeded(address, proto.remote["name"])
            log.info(
                "connected to %s (%s) at %s, %s%s",
                proto.remote["nick"],
                proto.remote["name"].hex(),
                peer_ip,
                "outbound" if address else "inbound",
                ", encrypted" if proto.encrypted else "",
            )
            self._handle(events)
            for message in early:
                self._handle(self.core.receive(link.id, message, now=time.monotonic()))
            while True:
                data = await reader.read(65536)
                if not data:
                    error = "connection closed by peer"
                    break
                for message in proto.receive_data(data):
                    self._handle(self.core.receive(link.id, message, now=time.monotonic()))
                link.flush()
        except HandshakeRefused as exc:
            error, retry = exc.reason, exc.retry
            if exc.refusal.benign:
                benign = address is not None
                if benign:
                    self.targets.succeeded(address, proto.remote["name"])
                return
            self.counters["handshake_failures"] += 1
            if exc.refusal is Refusal.WRONG_PASSWORD:
                self.counters["wrong_password"] += 1
            self._note_refusal(peer_ip, proto.remote, exc.reason)
            log.warning("connection with %s refused: %s", peer_ip, exc.reason)
        except RemoteProtocolError as exc:
            error = f"protocol error: {exc}"
            if proto.state is not State.ESTABLISHED or not admitted:
                self.counters["handshake_failures"] += 1
            log.warning("closing connection with %s: %s", peer_ip, error)
        except asyncio.TimeoutError:
            error = "handshake timed out"
            self.counters["handshake_failures"] += 1
        except (ConnectionError, OSError) as exc:
            error = f"{exc.__class__.__name__}: {exc}"
        finally:
            writer.close()
            now = time.monotonic()
            if admitted:
                self._conns.pop(link.id, None)
                log.info("disconnected from %s at %s: %s", proto.remote.get("nick"), peer_ip, error)
                self._handle(self.core.remove_connection(link.id, now=now))
            if address is not None and not benign:
                if admitted:
                    self.targets.disconnected(address, now=now)
                else:
                    self.targets.failed(address, error, now=now, retry=retry)
            self._wake.set()

    async def _handshake(self, link: _Link, reader: asyncio.StreamReader) -> list[Any]:
        """Run the handshake; return messages that arrived in the same read as its end."""
        while link.proto.state is not State.ESTABLISHED:
            data = await reader.read(65536)
            if not data:
                raise ConnectionResetError("closed during handshake")
            early = link.proto.receive_data(data)
            link.flush()
        return early

    def _note_refusal(self, ip: str, remote: dict[str, Any], reason: str) -> None:
        self.refusals.append(
            {"time": time.time(), "address": ip, "peer": remote.get("name", b"").hex(), "nick": remote.get("nick", ""), "reason": reason}
        )
        del self.refusals[:-20]

    # -- events ------------------------------------------------------------------------

    def _handle(self, events: list[Any]) -> None:
        """Carry out core events. The timer is woken only when deadlines or targets may
        have moved (a close, a topology change): heartbeats alone must not spin it."""
        changed = closed = False
        for event in events:
            if isinstance(event, Send):
                link = self._conns.get(event.conn)
                if link is not None and link.proto.state is State.ESTABLISHED:
                    link.proto.send(event.kind, *event.fields)
                    link.flush()
            elif isinstance(event, Close):
                link = self._conns.get(event.conn)
                if link is not None:
                    log.info("closing connection %d: %s", event.conn, event.reason)
                    link.proto.refuse(event.refusal, event.reason)
                    link.flush()
                    link.writer.close()
                closed = True
            elif isinstance(event, Deliver):
                self._on_deliver(event)
            elif isinstance(event, Changed):
                changed = True
        if changed:
            self._topology_changed()
        if changed or closed:
            self._wake.set()

    def _on_deliver(self, event: Deliver) -> None:
        if event.channel == IPAM_CHANNEL and self.ipam is not None:
            self.ipam.on_message(event.src, event.payload, unicast=event.unicast)
        else:
            log.debug("no handler for channel %r from %s", event.channel, event.src.hex())

    def _send_ipam(self, outgoing: list[Any]) -> None:
        self._wake.set()  # IPAM activity may have set an earlier deadline (donation timeouts)
        now = time.monotonic()
        for message in outgoing:
            if message[0] == "broadcast":
                self._handle(self.core.broadcast(IPAM_CHANNEL, message[1], now=now))
            else:
                self._handle(self.core.unicast(message[1], IPAM_CHANNEL, message[2], now=now))

    def _topology_changed(self) -> None:
        self._program_pump()
        if self.ipam is not None:
            self.ipam.peers_changed(self.core.topology.reachable(), set(self.core.by_peer()))
        self._spawn(self.fastdp.update(self._direct_ips(), self._remote_endpoints()))
        self.targets.set_discovered(self.core.discovered_targets())
        self._persist_targets()

    def _persist_targets(self) -> None:
        """Keep direct peers, and every peer address we know of, for the next start.

        Addresses the user forgot stay out of both until `connect` names them again.
        """
        if self.state is None:
            return
        forgotten = set(self.state.get("forgotten_peers", []))
        known = {targets_mod.normalize(f"{c.ip}:{c.port}") for c in self.core.conns.values()} if self.core else set()
        known |= set(self.core.discovered_targets()) if self.core else set()
        self.state.put("direct_peers", self.targets.direct())
        if known - forgotten:
            self.state.put("known_peers", sorted(known - forgotten))

    def _direct_ips(self) -> dict[int, str | None]:
        """Every reachable peer's id, with its underlay IP when we connect to it directly."""
        direct = {c.peer: c.ip for c in self.core.conns.values()}
        return {layout.peer_id(p): direct.get(p) for p in self.core.topology.reachable()}

    def _remote_endpoints(self) -> dict[str, int]:
        topo = self.core.topology
        return {
            mac: layout.peer_id(peer)
            for peer in topo.reachable()
            for mac, *_ in topo.entries[peer].data.get("eps", [])
        }

    def _program_pump(self) -> None:
        """Mirror reachability, routes and gossiped endpoints into the pump's tables."""
        topo = self.core.topology
        routes = topo.routes()
        direct = {c.peer: c for c in self.core.conns.values()}
        wanted: dict[int, tuple[Any, int, bool]] = {}
        for peer, hop in routes.items():
            pid = layout.peer_id(peer)
            if pid == layout.peer_id(self.core.name) or pid in wanted:
                log.error("peer id collision for %s; its traffic is not forwarded", peer.hex())
                continue
            conn = direct.get(peer)
            addr = (conn.ip, conn.udp_port) if conn is not None else None
            # Peers on kernel VXLAN get floods from the VXLAN device; the sleeve must not copy them.
            flood = self.fastdp is None or self.fastdp.mode(pid)[0] != "fastdp"
            wanted[pid] = (addr, layout.peer_id(hop), flood)
        macs = {bytes.fromhex(m.replace(":", "")): pid for m, pid in self._remote_endpoints().items() if pid in wanted}
        # Direct peers first, so a relayed peer's next hop already exists.
        for pid, (addr, via, flood) in sorted(wanted.items(), key=lambda kv: kv[1][0] is None):
            if self._pump_peers.get(pid) != (addr, via, flood):
                self._pump.set_peer(pid, addr, via, flood=flood)
        for pid in set(self._pump_peers) - set(wanted):
            self._pump.remove_peer(pid)
            self._pump_keys.pop(pid, None)
        self._program_pump_keys(wanted)
        for mac, pid in macs.items():
            if self._pump_macs.get(mac) != pid:
                self._pump.set_mac(mac, pid)
        for mac in set(self._pump_macs) - set(macs):
            self._pump.forget_mac(mac)
        self._pump_peers, self._pump_macs = wanted, macs

    def _program_pump_keys(self, peers: dict[int, Any]) -> None:
        """Give the pump the sleeve keys of every directly connected peer's session.

        Encryption is per link (hop by hop), so only peers with a control connection have
        keys. The epoch (its low bit is the datagrams' KEY_ID) must be the same on both
        sides: it is derived from the pair of keys itself, which both sides share."""
        if self.config.password is None:
            return
        for conn_id, c in self.core.conns.items():
            pid = layout.peer_id(c.peer)
            link = self._conns.get(conn_id)
            session = getattr(getattr(link, "proto", None), "session", None)
            if pid not in peers or session is None:
                continue
            tx, rx = session.sleeve_keys(self.core.name, c.peer)
            epoch = hashlib.sha256(min(tx, rx) + max(tx, rx)).digest()[0]
            if self._pump_keys.get(pid) != (tx, rx, epoch):
                self._pump.set_peer_keys(pid, tx, rx, epoch=epoch)
                self._pump_keys[pid] = (tx, rx, epoch)

    def _rekey(self) -> None:
        """A sleeve key near its datagram limit: reconnect, and the new handshake rekeys."""
        due = set(self._pump.rekey_due())
        for conn, c in self.core.conns.items():
            if layout.peer_id(c.peer) in due and conn in self._conns:
                log.info("rekeying the sleeve with %s: reconnecting", c.nick)
                self._handle([Close(conn, "rekeying the sleeve", Refusal.CLOSING)])

    async def _timer(self) -> None:
        while True:
            now = time.monotonic()
            self._handle(self.core.tick(now=now))
            connected = set(self.core.by_peer())
            for address in self.targets.due(now, connected):
                self._spawn(self._dial(address))
            await self.fastdp.tick()
            self.ipam.tick()
            self._rekey()
            deadlines = [self.core.next_deadline(), self.targets.next_deadline(connected) or now + 60]
            deadlines += [self.fastdp.next_deadline() or now + 60, self.ipam.next_deadline()]
            self._wake.clear()
            delay = max(0.05, min(deadlines) - time.monotonic())
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except asyncio.TimeoutError:
                pass

    # -- endpoints ---------------------------------------------------------------------

    def _publish_endpoints(self) -> None:
        self._handle(self.core.set_data("eps", self.endpoints.gossip(), now=time.monotonic()))

    async def _restore_endpoints(self) -> None:
        ports = set(await self._kernel(self.links.ports, self.config.bridge))
        for ep in self.endpoints.keep_only(ports):
            log.info("endpoint %s vanished while the router was down; dropped", ep.id)
        self._publish_endpoints()

    async def _attach(self, body: dict[str, Any]) -> dict[str, Any]:
        """Put a namespace on the bridge; addresses from IPAM unless given (then claimed)."""
        netns = body.get("netns")
        cidrs = body.get("cidrs") or []
        if not isinstance(netns, str) or not netns:
            raise UsageError("attach needs a network namespace (name or path)")
        if not isinstance(cidrs, list):
            raise UsageError("cidrs must be a list of IP/CIDR")
        path = netns if "/" in netns else f"/run/netns/{netns}"
        ep_id = str(body.get("id") or f"netns:{path}")
        if self.endpoints.get(ep_id) is not None:
            raise Conflict(f"{netns!r} is already attached")
        try:
            parse_cidrs(cidrs)
            netns_path(netns)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        except KernelError as exc:
            raise UsageError(exc.strerror or str(exc)) from None
        claimed = await self._claim_addresses(ep_id, cidrs)
        try:
            att = await self._kernel(
                self.links.attach, netns, bridge=self.config.bridge, cidrs=claimed, mtu=self.mtu, ifname=body.get("ifname") or "mesh0"
            )
        except ValueError as exc:
            self.ipam.release(ep_id)
            raise UsageError(str(exc)) from None
        except KernelError:
            self.ipam.release(ep_id)
            raise
        self.endpoints.add(Endpoint(ep_id, att.mac, att.cidrs, str(body.get("name") or ""), att.host_if))
        self._publish_endpoints()
        return {"id": ep_id, "netns": att.netns, "ifname": att.ifname, "mac": att.mac, "cidrs": list(att.cidrs), "mtu": self.mtu}

    async def _claim_addresses(self, owner: str, cidrs: list[str]) -> list[str]:
        """Addresses inside the IPAM range are claimed for owner (a fresh one if none given)."""
        if not cidrs:
            return [(await self.ipam.allocate(owner)).cidr]
        universe = ipaddress.ip_network(self.config.ipalloc_range)
        claimed = []
        try:
            for cidr in cidrs:
                iface = ipaddress.ip_interface(cidr)
                if iface.ip in universe:
                    await self.ipam.allocate(owner, address=str(iface.ip), wait=5)
                claimed.append(cidr)
        except MeshnetError:
            self.ipam.release(owner)
            raise
        return claimed

    async def _detach(self, body: dict[str, Any]) -> dict[str, Any]:
        """Take a namespace (or an endpoint id) off the bridge and release its addresses."""
        netns, ep_id = body.get("netns"), body.get("id")
        if not (isinstance(netns, str) and netns) and not (isinstance(ep_id, str) and ep_id):
            raise UsageError("detach needs a network namespace (name or path) or an endpoint id")
        if not ep_id:
            ep_id = f"netns:{netns if '/' in netns else f'/run/netns/{netns}'}"
        ep = self.endpoints.get(ep_id)
        removed = False
        if ep is not None and ep.host_if:
            removed = await self._kernel(self.links.delete_link, ep.host_if)
        elif netns:
            removed = await self._kernel(self.links.detach, netns)
        self.endpoints.remove(ep_id)
        released = self.ipam.release(ep_id)
        self._publish_endpoints()
        if not (removed or ep is not None or released):
            raise NotFound(f"{netns or ep_id!r} is not attached")
        return {"id": ep_id, "detached": True, "released": released}

    # -- IPAM API ----------------------------------------------------------------------

    async def _ipam_allocate(self, body: dict[str, Any]) -> dict[str, Any]:
        owner = body.get("owner")
        if not isinstance(owner, str) or not owner:
            raise UsageError("an allocation needs an owner (e.g. container id + interface)")
        wait = float(body.get("wait", 30))
        result = await self.ipam.allocate(owner, subnet=body.get("subnet"), address=body.get("address"), wait=wait)
        return {"owner": owner, "address": result.address, "cidr": result.cidr}

    async def _ipam_release(self, body: dict[str, Any]) -> dict[str, Any]:
        owner = body.get("owner")
        if not isinstance(owner, str) or not owner:
            raise UsageError("a release needs an owner")
        return {"owner": owner, "released": self.ipam.release(owner, body.get("address"))}

    async def _ipam_owners(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"owners": self.ipam.owners()}

    async def _ipam_status(self, body: dict[str, Any]) -> dict[str, Any]:
        status = self.ipam.status()
        nicks = {e.name.hex(): e.nick for e in self.core.topology.entries.values()}
        return {**status, "nicknames": nicks}

    async def _ipam_rmpeer(self, body: dict[str, Any]) -> dict[str, Any]:
        peer = self._peer_by_name_or_nick(str(body.get("peer", "")))
        return {"peer": peer.hex(), "reclaimed": self.ipam.rmpeer(peer)}

    async def _ipam_reset(self, body: dict[str, Any]) -> dict[str, Any]:
        self.ipam.reset()
        return {"handed_off": True}

    def _peer_by_name_or_nick(self, text: str) -> bytes:
        entries = self.core.topology.entries.values()
        found = [e.name for e in entries if e.name.hex() == text.lower() or e.nick == text]
        if len(found) == 1:
            return found[0]
        try:
            name = bytes.fromhex(text)
        except ValueError:
            name = b""
        if len(name) == 16:
            return name
        raise UsageError(f"{text!r} is neither a known nickname nor a 32-hex-digit peer name")

    async def _endpoint_add(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            ep = Endpoint.parse(body)
        except UsageError as exc:
            raise UsageError(str(exc)) from None
        self.endpoints.add(ep)
        self._publish_endpoints()
        return {"id": ep.id}

    async def _endpoint_del(self, body: dict[str, Any]) -> dict[str, Any]:
        removed = self.endpoints.remove(str(body.get("id", ""))) is not None
        if removed:
            self._publish_endpoints()
        return {"id": body.get("id"), "removed": removed}

    async def _endpoint_list(self, body: dict[str, Any]) -> dict[str, Any]:
        topo = self.core.topology
        reachable = topo.reachable() | {self.core.name}
        mesh = [
            {"peer": e.name.hex(), "nick": e.nick, "mac": mac, "ips": ips, "name": name}
            for e in topo.entries.values()
            if e.name in reachable
            for mac, ips, name in e.data.get("eps", [])
        ]
        return {"local": [asdict(e) for e in self.endpoints.all()], "mesh": mesh}

    # -- API ---------------------------------------------------------------------------

    def _routes(self) -> dict[tuple[str, str], Any]:
        return {
            ("GET", "/status"): self._status,
            ("POST", "/connect"): self._connect,
            ("POST", "/forget"): self._forget,
            ("POST", "/attach"): self._attach,
            ("POST", "/detach"): self._detach,
            ("POST", "/endpoints/add"): self._endpoint_add,
            ("POST", "/endpoints/del"): self._endpoint_del,
            ("GET", "/endpoints"): self._endpoint_list,
            ("POST", "/stop"): self._stop_request,
            ("POST", "/ipam/allocate"): self._ipam_allocate,
            ("POST", "/ipam/release"): self._ipam_release,
            ("GET", "/ipam/owners"): self._ipam_owners,
            ("GET", "/ipam/status"): self._ipam_status,
            ("POST", "/ipam/rmpeer"): self._ipam_rmpeer,
            ("POST", "/ipam/reset"): self._ipam_reset,
        }

    async def _stop_request(self, body: dict[str, Any]) -> dict[str, Any]:
        asyncio.get_running_loop().call_later(0.05, self._stopping.set)
        return {"stopping": True}

    async def _connect(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            address = targets_mod.normalize(str(body.get("address", "")))
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        self.targets.add_direct(address)
        self.state.put("forgotten_peers", [a for a in self.state.get("forgotten_peers", []) if a != address])
        self._persist_targets()
        self._wake.set()
        return {"direct_peers": self.targets.direct()}

    async def _forget(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            address = targets_mod.normalize(str(body.get("address", "")))
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if not self.targets.forget(address):
            raise NotFound(f"{address} is not a known peer address")
        self.state.put("forgotten_peers", sorted({*self.state.get("forgotten_peers", []), address}))
        self.state.put("known_peers", [a for a in self.state.get("known_peers", []) if a != address])
        self._persist_targets()
        return {"direct_peers": self.targets.direct()}

    async def _metrics_snapshot(self) -> dict[str, Any]:
        """What /metrics shows, read on the loop thread (meshnet/runtime/metrics.py)."""
        snap = await self._status({})
        snap["ipam"] = await self._ipam_status({})
        snap["peer_stats"] = self._pump.peer_stats()
        return snap

    def _mode(self, peer: bytes) -> dict[str, str]:
        """The data path towards a peer and why: fastdp, sleeve or sleeve+encrypted."""
        mode, reason = self.fastdp.mode(layout.peer_id(peer))
        if mode == "sleeve" and self.config.password is not None:
            mode = "sleeve+encrypted"
        return {"mode": mode, "mode_reason": reason}

    async def _status(self, body: dict[str, Any]) -> dict[str, Any]:
        core = self.core
        topo = core.topology
        reachable = topo.reachable()
        routes = topo.routes()
        encrypted = self.config.password is not None
        conns = [
            {
                "peer": c.peer.hex(),
                "nick": c.nick,
                "address": c.ip,
                "direction": "outbound" if c.outbound else "inbound",
                "state": "established",
                **self._mode(c.peer),
                "since": round(time.monotonic() - c.since, 1),
            }
            for c in core.conns.values()
        ]
        pending = [
            {"address": t["address"], "state": "retrying" if t["failures"] else "connecting", "last_error": t["last_error"]}
            for t in self.targets.status()
            if t["failures"] or t["last_error"]
        ]
        peers = [
            {
                "name": e.name.hex(),
                "nick": e.nick,
                "id": layout.peer_id(e.name),
                "reachable": e.name == core.name or e.name in reachable,
                "via": None if e.name == core.name or routes.get(e.name) in (None, e.name) else routes[e.name].hex(),
                "connections": len(e.links),
                "endpoints": len(e.data.get("eps", [])),
                **(self._mode(e.name) if e.name in reachable else {}),
            }
            for e in sorted(topo.entries.values(), key=lambda e: e.nick)
        ]
        local = topo.local
        return {
            "router": {
                "name": local.name.hex(),
                "nick": local.nick,
                "id": layout.peer_id(local.name),
                "uptime": round(time.time() - self.started, 1),
                "port": self.config.port,
                "udp_port": self.config.udp_port,
                "bridge": self.config.bridge,
                "mtu": self.mtu,
                "encryption": "enabled (X25519 + HKDF + AES-256-GCM on control connections)"
                if encrypted
                else "DISABLED: the mesh is unencrypted (no --password)",
            },
            "dataplane": {
                "fastdp": self.fastdp.disabled or "enabled (kernel VXLAN, UDP 6784, per-peer health probes)",
                "pump": "compiled" if self.pump_compiled else "PURE-PYTHON TWIN (slow; the compiled pump is not built)",
                "pump_offloads": _describe_pump(self.pump_compiled, self._pump.features()),
                "pump_features": self._pump.features(),
                "rekey_due": [f"{pid:08x}" for pid in self._pump.rekey_due()],
                "stats": self._pump.stats(),
            },
            "peers": peers,
            "connections": conns + pending,
            "targets": self.targets.status(),
            "refusals": self.refusals,
            "counters": {**core.counters, **self.counters},
        }
