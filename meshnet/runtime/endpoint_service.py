"""Endpoints and their addresses: the one service `attach`, Docker and Kubernetes go through.

An endpoint is an interface on this host's bridge (a namespace, a container, the host
itself). This service keeps the registry (persisted, gossiped as our `eps`), asks IPAM for
addresses and gives them back, and makes the veths through `Plumbing`. Integrations are
handed this object (see `meshnet/daemon.py`); they never reach the router's internals or
its HTTP routes.

Only endpoints whose addresses this peer owns are on the overlay (`endpoint_guard.py`):
the others are refused, taken down and not gossiped. `attach` is idempotent: asked again
for a namespace it attached (or half attached before the router died), it says what it
found instead of failing.

Everything runs on the asyncio loop. Errors are meshnet's own (`UsageError`, `Conflict`,
`NotFound`, `Unavailable`) or a `KernelError`.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import replace
from typing import Any, Awaitable, Callable

from meshnet.errors import Conflict, MeshnetError, NotFound, Unavailable, UsageError
from meshnet.ipam.outcome import Result
from meshnet.kernel.links import Attachment, netns_path, parse_cidrs
from meshnet.mesh.bounds import MAX_ENTRY_BYTES
from meshnet.mesh.claims import Claims, address_of
from meshnet.mesh.topology import Topology
from meshnet.runtime.endpoint_guard import EndpointGuard
from meshnet.runtime.endpoints import Endpoint, EndpointRegistry
from meshnet.runtime.ipam_service import DEFAULT_WAIT, IpamService
from meshnet.runtime.plumbing import Plumbing

log = logging.getLogger("meshnet.endpoints")

CLAIM_WAIT = 5.0  # seconds a given address may wait for IPAM to be ready
MAX_WAIT = 600.0  # seconds: the longest an allocation request may ask to wait


def netns_endpoint_id(netns: str) -> str:
    return f"netns:{netns if '/' in netns else f'/run/netns/{netns}'}"


class EndpointService:
    def __init__(
        self,
        *,
        registry: EndpointRegistry,
        ipam: IpamService,
        plumbing: Plumbing,
        universe: str,
        topology: Callable[[], Topology],
        publish: Callable[[list[list[Any]]], None],
        publish_names: Callable[[list[list[Any]]], None] = lambda names: None,
        claims: Callable[[], Claims | None] = lambda: None,
        guard: EndpointGuard | None = None,
        spawn: Callable[[Awaitable[Any]], None] | None = None,
    ):
        self.registry = registry
        self.guard = guard
        self._spawn = spawn
        self.ipam = ipam
        self.plumbing = plumbing
        self.universe = ipaddress.ip_network(universe)
        self._topology = topology
        self._claims = claims
        self._publish = publish
        self._publish_names = publish_names

    # -- addresses ---------------------------------------------------------------------

    async def allocate(self, owner: str, *, subnet: str | None = None, address: str | None = None, wait: float = DEFAULT_WAIT) -> Result:
        """An address for owner: the given one, or a free one (in `subnet` if given).

        Raises:
            UsageError: bad owner, subnet, address or wait.
            Conflict: the address is held by another owner or owned by another peer.
            Unavailable: no address became free within `wait` seconds.
        """
        if not isinstance(owner, str) or not owner:
            raise UsageError("an allocation needs an owner (e.g. container id + interface)")
        if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not 0 <= wait <= MAX_WAIT:
            raise UsageError(f"wait must be a number of seconds from 0 to {MAX_WAIT:.0f}, got {wait!r}")
        for name, value in (("subnet", subnet), ("address", address)):
            if value is not None and not isinstance(value, str):
                raise UsageError(f"{name} must be a string, got {value!r}")
        return await self.ipam.allocate(owner, subnet=subnet, address=address, wait=float(wait))

    def release(self, owner: str, address: str | None = None) -> list[str]:
        if not isinstance(owner, str) or not owner:
            raise UsageError("a release needs an owner")
        if address is not None and not isinstance(address, str):
            raise UsageError(f"address must be a string, got {address!r}")
        return self.ipam.release(owner, address)

    def owners(self) -> dict[str, list[str]]:
        return self.ipam.owners()

    async def claim(self, owner: str, cidrs: list[str]) -> list[str]:
        """Claim the addresses inside the IPAM range for owner (a fresh one if none given);
        all or nothing."""
        if not cidrs:
            return [(await self.allocate(owner)).cidr]
        claimed = []
        try:
            for cidr in cidrs:
                iface = ipaddress.ip_interface(cidr)
                if iface.ip in self.universe:
                    await self.allocate(owner, address=str(iface.ip), wait=CLAIM_WAIT)
                claimed.append(cidr)
        except MeshnetError:
            self.ipam.release(owner)
            raise
        return claimed

    # -- the registry ------------------------------------------------------------------

    def add(self, ep: Endpoint) -> None:
        """Register (or replace) an endpoint and gossip it.

        Raises:
            Unavailable: the registry is full (--max-peer-endpoints), or our gossiped entry
                would grow past what one control frame carries.
        """
        self.check_room(ep.id)
        local = self._topology().local
        gossip = [e.gossip() for e in self.registry.all() if e.id != ep.id] + [ep.gossip()]
        if replace(local, data={**local.data, "eps": gossip}).wire_size > MAX_ENTRY_BYTES:
            raise Unavailable(f"this host's endpoints would not fit in one gossip entry ({MAX_ENTRY_BYTES} bytes)")
        self.registry.add(ep)
        self.publish()
        self.check()  # an integration's endpoint is held to the same rule

    def check_room(self, ep_id: str) -> None:
        """Raises Unavailable if a new endpoint would be one too many (--max-peer-endpoints)."""
        registry = self.registry
        if registry.get(ep_id) is None and len(registry.all()) >= registry.limit:
            raise Unavailable(f"this host has {registry.limit} endpoints, the most it may announce (--max-peer-endpoints)")

    def remove(self, ep_id: str) -> Endpoint | None:
        ep = self.registry.remove(ep_id)
        if ep is not None:
            if self.guard is not None:
                self.guard.forget(ep_id, ep.host_if)
            self.publish()
        return ep

    def get(self, ep_id: str) -> Endpoint | None:
        return self.registry.get(ep_id)

    def local_endpoints(self) -> list[Endpoint]:
        return self.registry.all()

    def publish(self) -> None:
        """Gossip our endpoints: those the guard allows (their addresses are ours)."""
        eps = self.registry.all()
        blocked = self.guard.blocked(eps) if self.guard is not None else set()
        self._publish([ep.gossip() for ep in eps if ep.id not in blocked])

    def check(self) -> None:
        """IPAM moved: refuse (or let back) endpoints whose standing changed. Cheap when nothing did."""
        if self.guard is not None and self._spawn is not None and self.guard.stale(self.registry.all()):
            self._spawn(self.reconcile())

    async def reconcile(self) -> None:
        if self.guard is not None and await self.guard.reconcile(self.registry.all()):
            self.publish()

    def mesh(self) -> list[dict[str, Any]]:
        """Every reachable peer's gossiped endpoints, ours included. An endpoint whose MAC
        another peer holds (an address conflict the other claim won) is left out, and so
        are addresses another peer holds (`mesh/claims.py`): DNS answers only owners."""
        topo = self._topology()
        claims = self._claims()
        reachable = topo.reachable() | {topo.local.name}
        out = []
        for e in topo.entries.values():
            if e.name not in reachable:
                continue
            for ep in e.data.get("eps", []):
                mac, cidrs, name = ep[0], ep[1], ep[2]
                if claims is not None and claims.owner("mac", mac) not in (None, e.name):
                    continue
                if claims is not None:
                    cidrs = [c for c in cidrs if claims.owner("ip", address_of(c)) in (None, e.name)]
                out.append({"peer": e.name.hex(), "nick": e.nick, "mac": mac, "ips": cidrs, "name": name})
        return out

    def publish_names(self, names: list[list[Any]]) -> None:
        """Extra DNS records (`meshnet dns-add`), gossiped beside the endpoints as our `dns`.

        Raises:
            Unavailable: our gossiped entry would grow past what one control frame carries.
        """
        local = self._topology().local
        if replace(local, data={**local.data, "dns": names}).wire_size > MAX_ENTRY_BYTES:
            raise Unavailable(f"this host's DNS records would not fit in one gossip entry ({MAX_ENTRY_BYTES} bytes)")
        self._publish_names(names)

    def mesh_names(self) -> list[Any]:
        """Every reachable peer's gossiped `dns` data, unchecked (the reader checks it)."""
        topo = self._topology()
        reachable = topo.reachable() | {topo.local.name}
        return [e.data.get("dns") for e in topo.entries.values() if e.name in reachable and "dns" in e.data]

    async def restore(self, own_ports: set[str] = frozenset()) -> None:
        """At start: drop endpoints whose veth vanished while the router was down, refuse
        those whose addresses are not ours (and ports no endpoint names); publish."""
        ports = await self.plumbing.ports()
        for ep in self.registry.keep_only(ports):
            log.info("endpoint %s vanished while the router was down; dropped", ep.id)
        if self.guard is not None:
            await self.guard.reconcile(self.registry.all())
            await self.guard.isolate_orphans(ports, set(own_ports), self.registry.all())
        self.publish()

    def refused(self) -> dict[str, str]:
        """{endpoint id, or "orphan:PORT": why it is off the overlay}."""
        return dict(self.guard.refused) if self.guard is not None else {}

    async def detach_all(self) -> list[str]:
        """Take every endpoint off the bridge and release its addresses (reset --release)."""
        detached = []
        for ep in self.registry.all():
            if ep.host_if:
                await self.plumbing.delete_link(ep.host_if)
            self.registry.remove(ep.id)
            self.ipam.release(ep.id)
            if self.guard is not None:
                self.guard.forget(ep.id, ep.host_if)
            detached.append(ep.id)
        self.publish()
        return detached

    # -- namespaces --------------------------------------------------------------------

    async def attach(self, netns: str, cidrs: list[str], *, ep_id: str | None = None, name: str = "", ifname: str = "mesh0") -> dict[str, Any]:
        """Put a namespace on the bridge; addresses from IPAM unless given (then claimed)."""
        if not isinstance(netns, str) or not netns:
            raise UsageError("attach needs a network namespace (name or path)")
        if not isinstance(cidrs, list) or not all(isinstance(c, str) for c in cidrs):
            raise UsageError("cidrs must be a list of IP/CIDR")
        ep_id = ep_id or netns_endpoint_id(netns)
        try:
            parse_cidrs(cidrs)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        known = self.registry.get(ep_id)
        if known is not None:  # asked again (an interrupted CLI checks back): say so
            if cidrs and sorted(cidrs) != sorted(known.ips):
                raise Conflict(f"{netns!r} is already attached, with {', '.join(known.ips)}")
            return self._attached(ep_id, netns, ifname, known.mac, known.ips, "already attached")
        try:
            netns_path(netns)
        except OSError as exc:
            raise NotFound(exc.strerror or str(exc)) from None
        found = await self.plumbing.attachment(netns, ifname=ifname)
        if found is not None and self._completed_earlier(ep_id, found, cidrs):
            self.add(Endpoint(ep_id, found.mac, found.cidrs, name, found.host_if))
            return self._attached(ep_id, netns, ifname, found.mac, found.cidrs, "completed earlier")
        # Our veth for this namespace, half-made (a router killed before it was on the
        # bridge, or named inside) or foreign to what IPAM holds: start afresh.
        await self.plumbing.detach_netns(netns)
        self.check_room(ep_id)
        claimed = await self.claim(ep_id, cidrs)
        try:
            att = await self.plumbing.attach_netns(netns, cidrs=claimed, ifname=ifname)
        except ValueError as exc:
            self.ipam.release(ep_id)
            raise UsageError(str(exc)) from None
        except BaseException:
            self.ipam.release(ep_id)
            raise
        try:
            self.add(Endpoint(ep_id, att.mac, att.cidrs, name, att.host_if))
        except BaseException:
            await self.plumbing.delete_link(att.host_if)
            self.ipam.release(ep_id)
            raise
        return self._attached(ep_id, att.netns, att.ifname, att.mac, att.cidrs, "attached")

    def _completed_earlier(self, ep_id: str, found: Attachment, cidrs: list[str]) -> bool:
        """An attach that made the veth and addresses but died before it registered them:
        IPAM must hold every address for this very endpoint (and they match any asked for)."""
        if not found.cidrs or (cidrs and sorted(cidrs) != sorted(found.cidrs)):
            return False
        held = set(self.ipam.addresses(ep_id))
        inside = [c.split("/")[0] for c in found.cidrs if ipaddress.ip_interface(c).ip in self.universe]
        return all(ip in held for ip in inside)

    def _attached(self, ep_id: str, netns: str, ifname: str, mac: str, cidrs: tuple[str, ...], state: str) -> dict[str, Any]:
        path = netns if "/" in netns else f"/run/netns/{netns}"
        return {"id": ep_id, "netns": path, "ifname": ifname, "mac": mac, "cidrs": list(cidrs), "mtu": self.plumbing.mtu, "state": state}

    async def detach(self, *, netns: str | None = None, ep_id: str | None = None) -> dict[str, Any]:
        """Take a namespace (or an endpoint id) off the bridge and release its addresses."""
        if not (isinstance(netns, str) and netns) and not (isinstance(ep_id, str) and ep_id):
            raise UsageError("detach needs a network namespace (name or path) or an endpoint id")
        ep_id = ep_id or netns_endpoint_id(netns or "")
        ep = self.registry.get(ep_id)
        removed = False
        if ep is not None and ep.host_if:
            removed = await self.plumbing.delete_link(ep.host_if)
        elif netns:
            removed = await self.plumbing.detach_netns(netns)
        self.registry.remove(ep_id)
        if self.guard is not None:
            self.guard.forget(ep_id, ep.host_if if ep is not None else "")
        released = self.ipam.release(ep_id)
        self.publish()
        if not (removed or ep is not None or released):
            raise NotFound(f"{netns or ep_id!r} is not attached")
        return {"id": ep_id, "detached": True, "released": released}
