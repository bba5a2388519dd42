"""Fakes for unit tests of the Docker side: the router's ports (docker/ports.py) and the Engine."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from meshnet.docker.engine import Container
from meshnet.errors import Conflict, MeshnetError, Unavailable, UsageError
from meshnet.ipam.outcome import Result
from meshnet.kernel.links import Attachment
from meshnet.runtime.endpoints import Endpoint


class MemoryStore:
    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        import json

        return json.loads(self.data[key]) if key in self.data else default

    def put(self, key: str, value: Any) -> None:
        import json

        self.data[key] = json.dumps(value)


class FakeEndpoints:
    """The router's `Endpoints` port (docker/ports.py), in memory, with the real errors:
    Conflict for an address held by another owner, UsageError outside the range,
    Unavailable when the range is full."""

    def __init__(self, universe: str = "10.32.0.0/12"):
        self.universe = ipaddress.IPv4Network(universe)
        self.held: dict[str, str] = {}  # ip -> owner
        self.local: dict[str, dict[str, Any]] = {}  # endpoint id -> endpoint as a dict
        self.log: list[tuple[str, Any]] = []  # (method, first argument)

    def calls(self) -> list[str]:
        return [name for name, _ in self.log]

    async def allocate(self, owner: str, *, subnet: str | None = None, address: str | None = None, wait: float = 30.0) -> Result:
        self.log.append(("allocate", owner))
        net = ipaddress.IPv4Network(subnet) if subnet else self.universe
        if address:
            ip = ipaddress.IPv4Address(address)
            if ip not in self.universe or ip in (self.universe.network_address, self.universe.broadcast_address):
                raise UsageError(f"address {ip} is outside the allocation range {self.universe}")
            holder = self.held.get(str(ip))
            if holder is not None and holder != owner:
                raise Conflict(f"address {ip} is held by {holder}")
            self.held[str(ip)] = owner
            return Result(owner, str(ip), self.universe.prefixlen)
        mine = [ip for ip, o in self.held.items() if o == owner and ipaddress.IPv4Address(ip) in net]
        if mine:
            return Result(owner, mine[0], self.universe.prefixlen)
        for ip in net.hosts():
            if str(ip) not in self.held:
                self.held[str(ip)] = owner
                return Result(owner, str(ip), self.universe.prefixlen)
        raise Unavailable("no free address")

    def release(self, owner: str, address: str | None = None) -> list[str]:
        self.log.append(("release", owner))
        gone = [ip for ip, o in self.held.items() if o == owner and (address is None or ip == address)]
        for ip in gone:
            del self.held[ip]
        return gone

    def owners(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for ip, owner in sorted(self.held.items()):
            out.setdefault(owner, []).append(ip)
        return out

    def add(self, ep: Endpoint) -> None:
        self.log.append(("add", ep.id))
        self.local[ep.id] = {"id": ep.id, "mac": ep.mac, "ips": list(ep.ips), "name": ep.name, "host_if": ep.host_if}

    def remove(self, ep_id: str) -> Endpoint | None:
        self.log.append(("remove", ep_id))
        ep = self.local.pop(ep_id, None)
        return None if ep is None else self._endpoint(ep)

    def get(self, ep_id: str) -> Endpoint | None:
        ep = self.local.get(ep_id)
        return None if ep is None else self._endpoint(ep)

    def local_endpoints(self) -> list[Endpoint]:
        return [self._endpoint(e) for e in self.local.values()]

    def mesh(self) -> list[dict[str, Any]]:
        return [{"peer": "self", "nick": "me", "mac": e["mac"], "ips": e["ips"], "name": e["name"]} for e in self.local.values()]

    def publish_names(self, names: list[list[Any]]) -> None:
        self.names = names

    def mesh_names(self) -> list[Any]:
        return [getattr(self, "names", [])] + list(getattr(self, "remote_names", []))

    @staticmethod
    def _endpoint(ep: dict[str, Any]) -> Endpoint:
        return Endpoint(ep["id"], ep["mac"], tuple(ep["ips"]), ep.get("name", ""), ep.get("host_if", ""))


class FakePlumbing:
    """The router's `Plumbing` port: links by name, no kernel."""

    mtu = 1376

    def __init__(self) -> None:
        self.links: dict[str, str] = {}  # host_if -> mac
        self.netns: dict[str, str] = {}  # host_if -> netns (container attachments)
        self.bridge_addresses: set[str] = set()
        self.nat = False
        self.forwarding = "0"  # net.ipv4.ip_forward
        self.fail: str | None = None

    async def add_pod_veth(self, netns: str, *, host_if: str, ifname: str, cidrs: list[str], mac: str | None) -> Attachment:
        if self.fail:
            raise MeshnetError(self.fail)
        if netns in self.netns.values() and self.netns.get(host_if) != netns:
            raise UsageError(f"{netns!r} already has an interface named {ifname}")
        self.links[host_if] = mac or "02:11:22:33:44:55"
        self.netns[host_if] = netns
        return Attachment(netns, host_if, ifname, self.links[host_if], tuple(cidrs))

    async def add_veth_pair(self, host: str, peer: str, *, mac: str | None) -> str:
        if self.fail:
            raise MeshnetError(self.fail)
        self.links[host] = mac or "02:11:22:33:44:55"
        return self.links[host]

    async def delete_link(self, name: str) -> bool:
        self.netns.pop(name, None)
        return self.links.pop(name, None) is not None

    async def set_bridge_address(self, cidr: str, present: bool) -> bool:
        (self.bridge_addresses.add if present else self.bridge_addresses.discard)(cidr)
        return True

    async def set_nat(self, table: str, overlay: str, enabled: bool) -> None:
        self.nat = enabled

    async def set_forwarding(self, enabled: bool) -> str | None:
        found, self.forwarding = self.forwarding, "1" if enabled else "0"
        return found

    async def bridge_mac(self) -> str | None:
        return "02:00:00:00:00:01"


@dataclass
class FakeEngine:
    containers: dict[str, Container] = field(default_factory=dict)

    def add(self, cid: str, name: str, *, running: bool = True, pid: int = 100, networks: dict[str, Any] | None = None) -> Container:
        c = Container(id=cid, name=name, running=running, pid=pid if running else 0, status="running" if running else "exited", networks=networks or {})
        self.containers[cid] = c
        return c

    def inspect(self, ref: str) -> Container | None:
        for c in self.containers.values():
            if ref in (c.id, c.name) or (len(ref) >= 4 and c.id.startswith(ref)):
                return c
        return None

    def container_ids(self) -> list[str]:
        return list(self.containers)


async def direct(fn: Any, *args: Any) -> Any:
    """`blocking` for tests: call inline."""
    return fn(*args)
