"""Fakes for unit tests of the Docker side: the router's API contract and the Engine.

`FakeRouter.call(method, path, body)` implements what the plugin and the container manager
use of the router (IPAM allocate/release/owners, attach/detach, endpoints) with the same
status codes: 409 address held by another owner, 400 outside the range, 404 not attached.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from meshnet.docker.engine import Container
from meshnet.errors import Conflict, MeshnetError, NotFound, Unavailable, UsageError


class MemoryStore:
    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        import json

        return json.loads(self.data[key]) if key in self.data else default

    def put(self, key: str, value: Any) -> None:
        import json

        self.data[key] = json.dumps(value)


class FakeRouter:
    def __init__(self, universe: str = "10.32.0.0/12"):
        self.universe = ipaddress.IPv4Network(universe)
        self.held: dict[str, str] = {}  # ip -> owner
        self.local: dict[str, dict[str, Any]] = {}  # endpoint id -> endpoint
        self.attached: dict[str, dict[str, Any]] = {}  # netns -> attachment
        self.log: list[tuple[str, str, dict[str, Any]]] = []
        self.fail_attach: str | None = None

    async def call(self, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.log.append((method, path, dict(body)))
        handler = {
            ("POST", "/ipam/allocate"): self.allocate,
            ("POST", "/ipam/release"): self.release,
            ("GET", "/ipam/owners"): self.owners,
            ("POST", "/attach"): self.attach,
            ("POST", "/detach"): self.detach,
            ("POST", "/endpoints/add"): self.ep_add,
            ("POST", "/endpoints/del"): self.ep_del,
            ("GET", "/endpoints"): self.ep_list,
        }.get((method, path))
        if handler is None:
            raise NotFound(f"no such endpoint: {method} {path}")
        return handler(body)

    def paths(self) -> list[str]:
        return [p for _, p, _ in self.log]

    def allocate(self, body: dict[str, Any]) -> dict[str, Any]:
        owner = body["owner"]
        net = ipaddress.IPv4Network(body["subnet"]) if body.get("subnet") else self.universe
        if body.get("address"):
            ip = ipaddress.IPv4Address(body["address"])
            if ip not in self.universe or ip in (self.universe.network_address, self.universe.broadcast_address):
                raise UsageError(f"address {ip} is outside the allocation range {self.universe}")
            holder = self.held.get(str(ip))
            if holder is not None and holder != owner:
                raise Conflict(f"address {ip} is held by {holder}")
            self.held[str(ip)] = owner
            return {"address": str(ip), "cidr": f"{ip}/{self.universe.prefixlen}", "owner": owner}
        mine = [ip for ip, o in self.held.items() if o == owner and ipaddress.IPv4Address(ip) in net]
        if mine:
            return {"address": mine[0], "cidr": f"{mine[0]}/{self.universe.prefixlen}", "owner": owner}
        for ip in net.hosts():
            if str(ip) not in self.held:
                self.held[str(ip)] = owner
                return {"address": str(ip), "cidr": f"{ip}/{self.universe.prefixlen}", "owner": owner}
        raise Unavailable("no free address")

    def release(self, body: dict[str, Any]) -> dict[str, Any]:
        owner, address = body["owner"], body.get("address")
        gone = [ip for ip, o in self.held.items() if o == owner and (address is None or ip == address)]
        for ip in gone:
            del self.held[ip]
        return {"released": gone}

    def owners(self, body: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, list[str]] = {}
        for ip, owner in sorted(self.held.items()):
            out.setdefault(owner, []).append(ip)
        return {"owners": out}

    def attach(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.fail_attach:
            raise MeshnetError(self.fail_attach)
        netns = body["netns"]
        if netns in self.attached:
            raise UsageError(f"namespace {netns!r} is already attached")
        for cidr in body["cidrs"]:
            ip = cidr.split("/")[0]
            if self.held.get(ip) not in (None, body.get("id")):
                raise Conflict(f"{ip} held by another owner")
        mac = "02:00:00:00:%02x:%02x" % divmod(len(self.attached) + 1, 256)
        att = {"netns": netns, "cidrs": list(body["cidrs"]), "ifname": body.get("ifname") or "mesh0", "mac": mac, "mtu": 1376}
        self.attached[netns] = att
        ep_id = body.get("id") or f"netns:{netns}"
        self.local[ep_id] = {"id": ep_id, "mac": mac, "ips": list(body["cidrs"]), "name": body.get("name", ""), "host_if": "mnv" + ep_id[-6:], "netns": netns}
        return dict(att)

    def detach(self, body: dict[str, Any]) -> dict[str, Any]:
        ep = self.local.pop(body.get("id", ""), None)
        netns = body.get("netns") or (ep or {}).get("netns")
        att = self.attached.pop(netns, None) if netns else None
        if ep is None and att is None:
            raise NotFound("not attached")
        return {"detached": True}

    def ep_add(self, body: dict[str, Any]) -> dict[str, Any]:
        self.local[body["id"]] = {"id": body["id"], "mac": body["mac"], "ips": list(body["ips"]), "name": body.get("name", ""), "host_if": body.get("host_if", "")}
        return {"id": body["id"]}

    def ep_del(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"id": body.get("id"), "removed": self.local.pop(body.get("id", ""), None) is not None}

    def ep_list(self, body: dict[str, Any]) -> dict[str, Any]:
        eps = [dict(e) for e in self.local.values()]
        return {"local": eps, "mesh": [{"peer": "self", "nick": "me", "mac": e["mac"], "ips": e["ips"], "name": e["name"]} for e in eps]}


class FakeKernel:
    def __init__(self) -> None:
        self.links: dict[str, str] = {}  # host_if -> mac
        self.netns: dict[str, str] = {}  # host_if -> netns (container attachments)
        self.fail: str | None = None

    async def attach(self, netns: str, host_if: str, ifname: str, cidrs: list[str], mac: str) -> str:
        if self.fail:
            raise MeshnetError(self.fail)
        if netns in self.netns.values() and self.netns.get(host_if) != netns:
            raise UsageError(f"{netns!r} already has an interface named {ifname}")
        self.links[host_if] = mac
        self.netns[host_if] = netns
        return mac

    async def add_veth(self, host: str, peer: str, mac: str | None) -> str:
        if self.fail:
            raise MeshnetError(self.fail)
        self.links[host] = mac or "02:11:22:33:44:55"
        return self.links[host]

    async def delete_link(self, name: str) -> bool:
        self.netns.pop(name, None)
        return self.links.pop(name, None) is not None


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
