"""Docker integration inside the router: plugin socket, container tracking, DNS, expose/hide.

Built and started by the daemon (`meshnet/daemon.py`) once the router is up, stopped
before it. It is handed narrow ports (`ports.py`): the router's endpoints service, its
plumbing, its state store and its API route table. What it adds:

  * the network plugin (`cnm.CnmDriver`) on PLUGIN_DIR/meshnet.sock, up within the
    router's first second, removed on stop (so Docker is never left retrying a socket
    nobody listens on while the router runs; see docs/docker.md for the order at boot);
  * a thread that follows dockerd's container events (reconnecting with backoff; dockerd
    may start later or restart) and feeds them, in order, to `ContainerManager` and the
    plugin (names of CNM endpoints); every (re)connection runs a reconciliation;
  * the resolver (`meshnet.dns`) on the host's overlay addresses (`meshnet expose`);
  * API routes: /docker/attach, /docker/detach, /docker/ps, /docker/info, /expose, /hide.

Everything runs on the router's loop; docker-py calls run in a small thread pool, kernel
calls through the plumbing port. The event consumer, the address gc and the watch thread
run under the router's supervisor (`runtime/supervise.py`): a failure is logged, counted
and the loop started again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from meshnet.api.server import ApiServer
from meshnet.dns.answer import DEFAULT_DOMAIN, Records, normalize_domain, parse_upstreams
from meshnet.dns.server import DnsServer
from meshnet.docker.cnm import CnmDriver
from meshnet.docker.containers import ContainerManager, check_cidrs
from meshnet.docker.engine import DockerError, DockerUnavailable, Engine, find_docker_host
from meshnet.docker.inputs import container_ref, nat_flag
from meshnet.docker.listing import docker_endpoints, rows
from meshnet.docker.names import DnsNames, label_of
from meshnet.docker.nat import apply_nat
from meshnet.docker.ports import Endpoints, Plumbing, Routes, Store
from meshnet.errors import MeshnetError, NotFound, UsageError
from meshnet.kernel.errors import KernelError
from meshnet.runtime.endpoints import Endpoint
from meshnet.runtime.supervise import Supervisor

log = logging.getLogger("meshnet.docker")

DEFAULT_PLUGIN_DIR = "/run/docker/plugins"
PLUGIN_NAME = "meshnet"
DEFAULT_RANGE = "10.32.0.0/12"
EXPOSE_KEY = "docker.expose"
RECORDS_TTL = 0.5  # seconds the DNS name table is cached
GC_INTERVAL = 60.0
@dataclass(frozen=True)
class DockerSettings:
    """The Docker part of the router's configuration (RouterConfig fields of the same names)."""

    docker_socket: str | None = None
    plugin_dir: str | None = None
    docker_network: str = PLUGIN_NAME
    dns_domain: str = DEFAULT_DOMAIN
    dns_port: int = 53
    dns_upstream: str = ""
    ipalloc_range: str = DEFAULT_RANGE


class DockerService:
    def __init__(self, settings: DockerSettings, *, endpoints: Endpoints, plumbing: Plumbing, store: Store, api: Routes, host_owner: str,
                 supervisor: Supervisor | None = None):
        """`host_owner`: the IPAM owner of this host's own overlay addresses (`expose`);
        `supervisor`: the router's (failures show in its status)."""
        self.supervisor = supervisor or Supervisor()
        self.endpoints = endpoints
        self.plumbing = plumbing
        self.store = store
        self.api = api
        self.host_owner = host_owner
        self.range = settings.ipalloc_range
        self.domain = normalize_domain(settings.dns_domain or DEFAULT_DOMAIN)
        self.url = find_docker_host(settings.docker_socket)
        self.disabled = str(settings.docker_socket or "").lower() == "none"
        self.plugin_dir_given = bool(settings.plugin_dir)
        self.plugin_path = os.path.join(settings.plugin_dir or DEFAULT_PLUGIN_DIR, f"{PLUGIN_NAME}.sock")
        self.network_name = settings.docker_network
        self.engine = Engine(self.url) if self.url else None
        self._pool = ThreadPoolExecutor(4, thread_name_prefix="meshnet-docker")
        self.plugin: ApiServer | None = None
        self.cnm: CnmDriver | None = None
        self.containers: ContainerManager | None = None
        self.dns = DnsServer(
            self.records,
            port=settings.dns_port or 53,
            upstreams=parse_upstreams(settings.dns_upstream or ""),
        )
        self.names = DnsNames(endpoints, store, self.domain)
        self.connected = False
        self._told_unreachable = False
        self._records: tuple[float, Records] | None = None
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._stop = threading.Event()
        self._stream: Any = None
        self._watcher: threading.Thread | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.cnm = CnmDriver(self.endpoints, self.plumbing, self.store, universe=self.universe)
        self.containers = ContainerManager(self.endpoints, self.engine, self.blocking, self.store, self.plumbing)
        self.api.add_routes(self.routes())
        if self.names.local:
            self.names.publish()
        if not self.disabled and (self.url or self.plugin_dir_given):
            self.plugin = ApiServer(self.plugin_path)
            self.plugin.add_routes(self.cnm.routes())
            try:
                await self.plugin.start()
            except OSError as exc:
                self.plugin = None
                raise UsageError(f"cannot serve the Docker network plugin on {self.plugin_path}: {exc.strerror or exc} (--plugin-dir)") from None
            log.info("Docker network plugin %r on %s", PLUGIN_NAME, self.plugin_path)
        try:
            await self._restore_exposure()
        except (MeshnetError, KernelError) as exc:
            log.warning("could not restore the host's overlay address: %s", getattr(exc, "message", exc))
        if self.engine is not None and not self.disabled:
            self._tasks.append(self.supervisor.keep("docker-events", self._consume))
            self._tasks.append(self.supervisor.keep("docker-gc", self._gc_loop))
            self._watcher = self.supervisor.thread("docker-watch", self._watch, self._stop)
            log.info("following Docker at %s", self.url)
        else:
            log.info("no Docker socket (--docker-socket, DOCKER_HOST): meshnet attach/run of containers is off")

    async def stop(self) -> None:
        self._stop.set()
        stream = self._stream
        if stream is not None:
            try:
                stream.close()
            except Exception:
                pass
        for task in self._tasks:
            task.cancel()
        if self.plugin is not None:
            await self.plugin.close()
        await self.dns.close()
        if self._watcher is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._watcher.join, 3)
        self._pool.shutdown(wait=False)

    # -- plumbing --------------------------------------------------------------------------

    async def blocking(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, lambda: fn(*args))

    def universe(self) -> str:
        return self.range

    def records(self) -> Records:
        """The DNS name table: every reachable peer's gossiped endpoints (cached briefly)."""
        now = time.monotonic()
        if self._records is not None and now - self._records[0] < RECORDS_TTL:
            return self._records[1]
        entries = [(ep["name"], ep["ips"]) for ep in self.endpoints.mesh()] + self.names.mesh()
        rec = Records.build(self.domain, entries)
        self._records = (now, rec)
        return rec

    # -- Docker events ---------------------------------------------------------------------

    def _watch(self) -> None:
        """Thread: follow dockerd's events; reconnect with backoff until stopped."""
        delay = 0.2
        engine = Engine(self.url)  # its own client: the stream blocks a connection
        while not self._stop.is_set():
            try:
                self._stream = engine.events()
                self._post(("connected", None))
                delay = 0.2
                for event in self._stream:
                    if self._stop.is_set():
                        break
                    self._post(("event", event))
                if not self._stop.is_set():
                    self._post(("disconnected", "event stream ended"))
            except Exception as exc:  # DockerUnavailable, a closed stream, a dockerd restart
                if not self._stop.is_set():
                    self._post(("disconnected", str(exc)))
            finally:
                self._stream = None
                engine.close()
            self._stop.wait(delay)
            delay = min(delay * 2, 5.0)

    def _post(self, item: tuple[str, Any]) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._queue.put_nowait, item)
            except RuntimeError:
                pass

    async def _consume(self) -> None:
        while True:
            kind, data = await self._queue.get()
            try:
                if kind == "connected":
                    if not self.connected:
                        log.info("connected to Docker at %s", self.url)
                    self.connected = True
                    await self._on_connect()
                elif kind == "disconnected":
                    if self.connected:
                        log.warning("lost Docker at %s: %s; reconnecting", self.url, data)
                    elif not self._told_unreachable:
                        log.info("Docker at %s not reachable yet (%s); will keep trying", self.url, data)
                    self._told_unreachable = True
                    self.connected = False
                elif kind == "event":
                    await self.containers.on_event(data)
                    if data.get("Action") == "start":
                        await self._name_cnm(str((data.get("Actor") or {}).get("ID") or ""))
            except asyncio.CancelledError:
                raise
            except (MeshnetError, DockerError, DockerUnavailable, KernelError) as exc:
                log.warning("Docker %s: %s", kind, getattr(exc, "message", exc))
            except Exception as exc:
                self.supervisor.failed(f"docker-{kind}", exc)

    async def _on_connect(self) -> None:
        await self.containers.reconcile()
        if self.network_name and self.plugin is not None:
            await self._ensure_network()
        for cid in await self.blocking(self.engine.container_ids):
            await self._name_cnm(cid)

    async def _ensure_network(self) -> None:
        nets = await self.blocking(self.engine.networks, PLUGIN_NAME)
        if any(n.get("Name") == self.network_name for n in nets):
            return
        try:
            await self.blocking(self.engine.create_network, self.network_name, PLUGIN_NAME, PLUGIN_NAME, self.universe())
            log.info("created Docker network %r (driver and IPAM meshnet)", self.network_name)
        except DockerError as exc:
            log.warning("could not create Docker network %r: %s", self.network_name, exc)

    async def _name_cnm(self, cid: str) -> None:
        if not cid or not self.cnm.endpoints:
            return
        info = await self.blocking(self.engine.inspect, cid)
        if info is not None and info.running:
            await self.cnm.name_endpoints(info.name, info.networks)

    async def _gc_loop(self) -> None:
        while True:
            await asyncio.sleep(GC_INTERVAL)
            if self.connected and self.cnm.addresses:
                try:
                    used = await self.blocking(self._docker_addresses)
                    networks = {n["Id"] for n in await self.blocking(self.engine.networks, PLUGIN_NAME)}
                    await self.cnm.collect_garbage(used, networks)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("address garbage collection skipped: %s", exc)

    def _docker_addresses(self) -> set[str]:
        """Thread: every address Docker uses on meshnet networks (containers and gateways)."""
        used: set[str] = set()
        nets = self.engine.networks(PLUGIN_NAME)
        ids = {n["Id"] for n in nets}
        for n in nets:
            for conf in (n.get("IPAM") or {}).get("Config") or []:
                if conf.get("Gateway"):
                    used.add(conf["Gateway"].split("/")[0])
        for cid in self.engine.container_ids():
            info = self.engine.inspect(cid)
            for net in (info.networks if info else {}).values():
                if net.get("NetworkID") in ids and net.get("IPAddress"):
                    used.add(net["IPAddress"])
        return used

    # -- expose / hide ---------------------------------------------------------------------

    def _exposure(self) -> dict[str, Any]:
        return dict(self.store.get(EXPOSE_KEY, {}) or {"cidrs": [], "nat": False})

    async def _apply_exposure(self, exp: dict[str, Any], old: dict[str, Any] | None = None) -> None:
        for cidr in (old or {}).get("cidrs", []):
            if cidr not in exp["cidrs"]:
                await self.plumbing.set_bridge_address(cidr, False)
        for cidr in exp["cidrs"]:
            await self.plumbing.set_bridge_address(cidr, True)
        await apply_nat(self.plumbing, self.universe(), exp, old or {})
        if exp["cidrs"]:
            mac = await self.plumbing.bridge_mac()
            self.endpoints.add(Endpoint("host:bridge", str(mac), tuple(exp["cidrs"]), ""))
        else:
            self.endpoints.remove("host:bridge")
        await self.dns.set_addresses([c.split("/")[0] for c in exp["cidrs"]])

    async def _restore_exposure(self) -> None:
        exp = self._exposure()
        if exp["cidrs"]:
            await self._apply_exposure(exp)

    async def expose(self, body: dict[str, Any]) -> dict[str, Any]:
        wanted = check_cidrs(body.get("cidrs") or [])
        nat = body.get("nat")
        old = self._exposure()
        owner = self.host_owner
        new = {"cidrs": list(old["cidrs"]), "nat": old.get("nat", False) if nat is None else bool(nat)}
        claimed: list[str] = []
        try:
            if not wanted and not old["cidrs"]:
                got = await self._allocate_again(owner, old.get("last") or [])
                claimed.append(got.address)
                new["cidrs"].append(got.cidr)
            for cidr in wanted:
                if cidr in new["cidrs"]:
                    continue
                ip = cidr.split("/")[0]
                try:
                    await self.endpoints.allocate(owner, address=ip)
                except MeshnetError as exc:
                    raise type(exc)(f"address {ip}: {exc.message}") from None
                claimed.append(ip)
                new["cidrs"].append(cidr)
            await self._apply_exposure(new, old)
        except BaseException as exc:
            for ip in claimed:
                self.endpoints.release(owner, ip)
            try:
                await self._apply_exposure(old, new)
            except Exception:
                log.exception("could not roll back a failed expose")
            if isinstance(exc, KernelError):
                raise MeshnetError(exc.strerror or str(exc)) from None
            raise
        self.store.put(EXPOSE_KEY, new)
        return self._exposure_info(new)

    async def _allocate_again(self, owner: str, last: list[str]) -> Any:
        """The address this host had before `hide` while it is free (containers keep their DNS server), else any."""
        for cidr in last[:4]:
            try:
                return await self.endpoints.allocate(owner, address=str(cidr).split("/")[0])
            except MeshnetError:
                continue
        return await self.endpoints.allocate(owner, wait=15.0)

    async def hide(self, body: dict[str, Any]) -> dict[str, Any]:
        which = check_cidrs(body.get("cidrs") or [])
        old = self._exposure()
        gone = [c for c in old["cidrs"] if not which or c in which]
        unknown = [c for c in which if c not in old["cidrs"]]
        if unknown:
            raise NotFound(f"not exposed: {', '.join(unknown)}")
        new = {"cidrs": [c for c in old["cidrs"] if c not in gone], "nat": old.get("nat", False)}
        if not new["cidrs"]:
            new["nat"], new["last"] = False, gone  # a later bare `expose` asks for these again
        try:
            await self._apply_exposure(new, old)
        except KernelError as exc:
            raise MeshnetError(exc.strerror or str(exc)) from None
        for cidr in gone:
            self.endpoints.release(self.host_owner, cidr.split("/")[0])
        self.store.put(EXPOSE_KEY, new)
        return {**self._exposure_info(new), "hidden": gone}

    def _exposure_info(self, exp: dict[str, Any]) -> dict[str, Any]:
        return {"cidrs": list(exp["cidrs"]), "nat": bool(exp.get("nat")), "dns": self.dns.addresses}

    # -- API -------------------------------------------------------------------------------

    def routes(self) -> dict[tuple[str, str], Any]:
        return {
            ("POST", "/docker/attach"): lambda b: self.containers.attach(container_ref(b), b.get("cidrs")),
            ("POST", "/docker/detach"): lambda b: self.containers.detach(container_ref(b)),
            ("GET", "/docker/ps"): self._ps,
            ("GET", "/docker/info"): self._info,
            ("POST", "/expose"): lambda b: self.expose(nat_flag(b)),
            ("POST", "/hide"): self.hide,
            ("GET", "/expose"): self._expose_status,
            ("POST", "/dns/add"): self._dns_add,
            ("POST", "/dns/remove"): self._dns_remove,
            ("POST", "/dns/lookup"): self._dns_lookup,
            ("GET", "/dns/records"): self._dns_records,
        }

    async def _dns_records(self, body: dict[str, Any]) -> dict[str, Any]:
        self._records = None
        rec = self.records()
        return {"domain": self.domain, "records": rec.by_name, "added_here": dict(self.names.local)}

    async def _dns_add(self, body: dict[str, Any]) -> dict[str, Any]:
        result = self.names.add(body)
        self._records = None
        return result

    async def _dns_remove(self, body: dict[str, Any]) -> dict[str, Any]:
        result = self.names.remove(body)
        self._records = None
        return result

    async def _dns_lookup(self, body: dict[str, Any]) -> dict[str, Any]:
        """What the resolver answers for a name in the domain (A records)."""
        label = label_of(body.get("name"), self.domain)
        self._records = None
        return {"name": f"{label}.{self.domain}", "ips": list(self.records().by_name.get(label, []))}

    async def _ps(self, body: dict[str, Any]) -> dict[str, Any]:
        current = None
        if self.engine is not None and self.connected and self.cnm.endpoints:
            try:
                current = await self.blocking(docker_endpoints, self.engine)
            except (DockerError, DockerUnavailable) as exc:
                log.info("ps: Docker did not answer (%s); showing the plugin's records as they are", exc)
        endpoints = rows(containers=await self.containers.ps(), cnm=self.cnm.rows(), local=self.endpoints.local_endpoints(), current=current)
        return {"endpoints": endpoints}

    async def _info(self, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "docker": self.url,
            "connected": self.connected,
            "plugin": self.plugin_path if self.plugin is not None else None,
            "plugin_calls": dict(self.cnm.calls),
            "network": self.network_name,
            "range": self.universe(),
            "dns": {"domain": self.domain, "addresses": self.dns.addresses, "port": self.dns.port, "counters": self.dns.counters},
            "exposed": self._exposure(),
        }

    async def _expose_status(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._exposure_info(self._exposure())

