"""`meshnet attach/detach CONTAINER`: Docker containers on the overlay, kept there by the router.

The router remembers every container it attached (state key `docker.containers`: id ->
name, addresses, the netns it was attached in) and follows Docker's events:

  * `die` (stop, crash, restart's first half): the veth died with the container's netns;
    its endpoint leaves the gossip (so DNS forgets it), its addresses stay reserved;
  * `start`: attached again with the same addresses (a restart keeps them);
  * `destroy` (`docker rm`): detached and its addresses released.

`reconcile()` applies the same rules to whatever happened while the router or dockerd was
down (run on every (re)connection to dockerd). One lock serialises API calls, events and
reconciliation, so they never interleave.

Addresses are IPAM allocations owned by `docker:<container id>`, the endpoint's id too.
The interface is `ethwe` inside, `mnk<id[:12]>` on the bridge, with a MAC derived from the
container id: a restarted container comes back with the same MAC and addresses, so its
peers' ARP caches stay right. Bad input fails before anything is made, and a failed attach
releases what it claimed.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
from typing import Any, Awaitable, Callable

from meshnet.docker.engine import Container, DockerError, DockerUnavailable, dns_label
from meshnet.docker.ports import Endpoints, Plumbing, Store
from meshnet.errors import Conflict, MeshnetError, NotFound, Unavailable, UsageError
from meshnet.runtime.endpoints import Endpoint

log = logging.getLogger("meshnet.docker")

Blocking = Callable[..., Awaitable[Any]]
KEY = "docker.containers"
IFNAME = "ethwe"
ALLOCATE_WAIT = 15.0


def owner_of(cid: str) -> str:
    return f"docker:{cid}"


def host_if_of(cid: str) -> str:
    return "mnk" + cid[:12]


def mac_of(cid: str) -> str:
    """Locally administered, unicast, stable per container."""
    digest = hashlib.sha256(f"docker:{cid}".encode()).digest()
    return ":".join(f"{b:02x}" for b in (b"\x02" + digest[:5]))


def check_cidrs(cidrs: Any) -> list[str]:
    """Raises UsageError unless a list of ADDRESS/PREFIX strings (IPv4)."""
    if cidrs is None:
        return []
    if not isinstance(cidrs, list):
        raise UsageError("cidrs must be a list of IP/CIDR")
    out = []
    for c in cidrs:
        if not isinstance(c, str) or "/" not in c:
            raise UsageError(f"{c!r} is not ADDRESS/PREFIX (e.g. 10.32.1.5/12)")
        try:
            iface = ipaddress.ip_interface(c)
        except ValueError:
            raise UsageError(f"{c!r} is not a valid IP/CIDR") from None
        if iface.version != 4:
            raise UsageError(f"{c!r}: only IPv4 addresses are supported")
        if iface.ip == iface.network.network_address or iface.ip == iface.network.broadcast_address:
            raise UsageError(f"{c!r} is the network or broadcast address of {iface.network}")
        out.append(str(iface))
    if len({ipaddress.ip_interface(c).ip for c in out}) != len(out):
        raise UsageError("the same address is given twice")
    return out


class ContainerManager:
    def __init__(self, endpoints: Endpoints, engine: Any, blocking: Blocking, store: Store, plumbing: Plumbing):
        self.endpoints = endpoints
        self.plumbing = plumbing
        self.engine = engine  # meshnet.docker.engine.Engine or a fake; None: no Docker
        self.blocking = blocking  # runs a blocking engine call off the loop
        self.store = store
        self.lock = asyncio.Lock()
        self.tracked: dict[str, dict[str, Any]] = dict(store.get(KEY, {}) or {})

    def _save(self) -> None:
        self.store.put(KEY, self.tracked)

    async def _inspect(self, ref: str) -> Container | None:
        if self.engine is None:
            raise Unavailable("the router has no Docker connection (meshnet launch --docker-socket PATH, or DOCKER_HOST)")
        try:
            return await self.blocking(self.engine.inspect, ref)
        except DockerUnavailable as exc:
            raise Unavailable(str(exc)) from None
        except DockerError as exc:
            raise MeshnetError(f"Docker: {exc}") from None

    # -- API -----------------------------------------------------------------------------

    async def attach(self, ref: Any, cidrs: Any) -> dict[str, Any]:
        if not isinstance(ref, str) or not ref.strip():
            raise UsageError("attach needs a container name or id")
        wanted = check_cidrs(cidrs)
        async with self.lock:
            info = await self._inspect(ref.strip())
            if info is None:
                raise NotFound(f"no such container: {ref}")
            if not info.running:
                raise Conflict(f"container {info.name} is not running (start it first)")
            cur = self.tracked.get(info.id)
            if cur is not None and cur.get("netns") == info.netns and await self._endpoint_live(info.id):
                if wanted and sorted(wanted) != sorted(cur["cidrs"]):
                    raise Conflict(f"container {info.name} is already attached with {', '.join(cur['cidrs'])}; detach it first")
                return self._row(info.id, cur, info)
            return await self._attach(info, wanted or (cur or {}).get("cidrs") or [], fresh=cur is None)

    async def detach(self, ref: Any) -> dict[str, Any]:
        if not isinstance(ref, str) or not ref.strip():
            raise UsageError("detach needs a container name or id")
        ref = ref.strip()
        async with self.lock:
            cid = self._find_tracked(ref)
            if cid is None:
                info = await self._inspect(ref)
                if info is None:
                    raise NotFound(f"no such container: {ref}")
                cid = info.id if info.id in self.tracked else None
                if cid is None:
                    raise NotFound(f"container {info.name} is not attached to meshnet")
            entry = self.tracked[cid]
            released = await self._forget(cid)
            return {"id": cid, "name": entry.get("name", ""), "detached": True, "released": released}

    def _find_tracked(self, ref: str) -> str | None:
        for cid, entry in self.tracked.items():
            if ref in (cid, entry.get("name")) or (len(ref) >= 4 and cid.startswith(ref)):
                return cid
        return None

    async def ps(self) -> list[dict[str, Any]]:
        live = {e.id: e for e in self.endpoints.local_endpoints()}
        rows = []
        for cid, entry in sorted(self.tracked.items(), key=lambda kv: kv[1].get("name", "")):
            ep = live.get(owner_of(cid))
            rows.append(
                {
                    "id": cid,
                    "name": entry.get("name", ""),
                    "mac": ep.mac if ep else entry.get("mac", ""),
                    "cidrs": list(ep.ips) if ep else list(entry.get("cidrs", [])),
                    "state": "attached" if ep else "stopped (addresses kept)",
                    "via": "meshnet attach",
                }
            )
        return rows

    # -- events --------------------------------------------------------------------------

    async def on_event(self, event: dict[str, Any]) -> None:
        action = str(event.get("Action") or event.get("status") or "")
        cid = str((event.get("Actor") or {}).get("ID") or event.get("id") or "")
        if cid not in self.tracked or action not in ("start", "die", "destroy"):
            return
        async with self.lock:
            if cid not in self.tracked:
                return
            try:
                if action == "die":
                    await self._down(cid)
                elif action == "destroy":
                    await self._forget(cid)
                else:
                    info = await self._inspect(cid)
                    if info is not None and info.running:
                        await self._bring_up(info)
            except MeshnetError as exc:
                log.warning("container %s: %s after %s", cid[:12], exc.message, action)

    async def reconcile(self) -> None:
        """Bring tracked containers in line with Docker: after a (re)connection to dockerd."""
        async with self.lock:
            for cid in list(self.tracked):
                try:
                    info = await self._inspect(cid)
                    if info is None:
                        log.info("container %s is gone; releasing its addresses", cid[:12])
                        await self._forget(cid)
                    elif not info.running:
                        await self._down(cid)
                    elif self.tracked[cid].get("netns") != info.netns or not await self._endpoint_live(cid):
                        await self._bring_up(info)
                except MeshnetError as exc:
                    if isinstance(exc, Unavailable):
                        raise
                    log.warning("container %s: %s", cid[:12], exc.message)

    # -- steps ---------------------------------------------------------------------------

    async def _endpoint_live(self, cid: str) -> bool:
        return self.endpoints.get(owner_of(cid)) is not None

    async def _bring_up(self, info: Container) -> None:
        entry = self.tracked[info.id]
        await self._detach_endpoint(info.id)
        await self._attach(info, entry["cidrs"], fresh=False)
        log.info("container %s (%s) attached again with %s", info.name, info.id[:12], ", ".join(entry["cidrs"]))

    async def _down(self, cid: str) -> None:
        entry = self.tracked[cid]
        await self._detach_endpoint(cid)  # idempotent: also mends a half-finished earlier attempt
        if entry.get("netns"):
            entry["netns"] = None
            self._save()

    async def _forget(self, cid: str) -> list[str]:
        await self._detach_endpoint(cid)
        released = self.endpoints.release(owner_of(cid))
        del self.tracked[cid]
        self._save()
        return released

    async def _detach_endpoint(self, cid: str) -> None:
        """Remove the veth (gone already if the container stopped) and the endpoint; idempotent."""
        await self.plumbing.delete_link(host_if_of(cid))
        self.endpoints.remove(owner_of(cid))

    async def _claim(self, owner: str, cidrs: list[str]) -> list[str]:
        if not cidrs:
            try:
                got = await self.endpoints.allocate(owner, wait=ALLOCATE_WAIT)
            except Unavailable as exc:
                raise Unavailable(f"no address free yet: {exc.message}") from None
            return [got.cidr]
        for cidr in cidrs:
            ip = cidr.split("/")[0]
            try:
                await self.endpoints.allocate(owner, address=ip)
            except Conflict as exc:
                raise Conflict(f"address {ip} is already in use: {exc.message}") from None
            except UsageError as exc:
                raise UsageError(f"address {ip}: {exc.message}") from None
        return cidrs

    async def _attach(self, info: Container, cidrs: list[str], *, fresh: bool) -> dict[str, Any]:
        owner = owner_of(info.id)
        name = dns_label(info.name)
        host_if = host_if_of(info.id)
        made = False
        try:
            cidrs = await self._claim(owner, cidrs)
            att = await self.plumbing.add_pod_veth(info.netns, host_if=host_if, ifname=IFNAME, cidrs=cidrs, mac=mac_of(info.id))
            mac = att.mac
            made = True
            self.endpoints.add(Endpoint(owner, mac, tuple(cidrs), name, host_if))
        except BaseException:
            if made:
                await self.plumbing.delete_link(host_if)
            if fresh:  # nothing half-made: give back what this attach claimed
                try:
                    self.endpoints.release(owner)
                except MeshnetError as exc:
                    log.warning("could not release %s after a failed attach: %s", owner, exc.message)
            raise
        entry = {"name": info.name, "cidrs": list(cidrs), "mac": mac, "netns": info.netns, "ifname": IFNAME}
        self.tracked[info.id] = entry
        self._save()
        return self._row(info.id, entry, info)

    def _row(self, cid: str, entry: dict[str, Any], info: Container) -> dict[str, Any]:
        return {"id": cid, "name": info.name, "mac": entry.get("mac", ""), "cidrs": list(entry["cidrs"]), "ifname": entry.get("ifname", IFNAME)}
