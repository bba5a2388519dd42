"""Local endpoints: the container interfaces on this host's bridge, whoever made them.

`meshnet attach`, the CNI plugin and the Docker plugin all register their interfaces here
(id, MAC, addresses, optional DNS name). The registry persists in the state dir and is
gossiped in our peer entry as `eps`, so every router can program its forwarding tables
statically (floods become the exception) and answer name lookups.

Gossiped form (docs/protocol.md): `eps` = [[mac "aa:bb:..", [cidr, ...], name], ...].

Bounded: at most `limit` endpoints (`--max-peer-endpoints`, the share every peer accepts
from one router), each within the protocol's bounds (`mesh/bounds.py`), so what we
gossip is never refused or cut by a peer with the same settings.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import asdict, dataclass
from typing import Any

from meshnet.errors import Unavailable, UsageError
from meshnet.mesh import bounds
from meshnet.state.statedir import StateDir

MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
MAX_ID = 512  # characters of an endpoint id
MAX_IFNAME = 15  # Linux IFNAMSIZ with the NUL


@dataclass(frozen=True)
class Endpoint:
    id: str  # "netns:/run/netns/x", "cni:<container id>:<ifname>", "docker:<endpoint id>"
    mac: str
    ips: tuple[str, ...]  # CIDRs
    name: str = ""  # DNS label, "" for none
    host_if: str = ""  # our end of its veth, when we made it

    def gossip(self) -> tuple[Any, ...]:
        """As gossiped: the shape `mesh/schema.py` gives every decoded endpoint (tuples)."""
        return (self.mac, tuple(self.ips), self.name)

    @classmethod
    def parse(cls, body: dict[str, Any]) -> Endpoint:
        """Validate an API body. Raises UsageError naming the bad field."""
        ep_id, mac, ips = body.get("id"), body.get("mac"), body.get("ips", [])
        name, host_if = body.get("name") or "", body.get("host_if") or ""
        if not isinstance(ep_id, str) or not 0 < len(ep_id) <= MAX_ID:
            raise UsageError(f"'id' must be a non-empty string of at most {MAX_ID} characters")
        if not isinstance(mac, str) or not MAC_RE.match(mac.lower()):
            raise UsageError(f"'mac': {mac!r} is not a MAC address like 02:42:0a:20:00:05")
        if not isinstance(ips, list) or len(ips) > bounds.MAX_ADDRESSES:
            raise UsageError(f"'ips' must be a list of at most {bounds.MAX_ADDRESSES} IP/CIDR")
        for cidr in ips:
            if not isinstance(cidr, str) or len(cidr) > bounds.MAX_CIDR:
                raise UsageError(f"'ips': {cidr!r} is not a valid IP/CIDR")
            try:
                ipaddress.ip_interface(cidr)
            except ValueError:
                raise UsageError(f"'ips': {cidr!r} is not a valid IP/CIDR") from None
        if not isinstance(name, str) or (name and not NAME_RE.match(name.lower())):
            raise UsageError(f"'name': {name!r} is not a valid DNS label")
        if not isinstance(host_if, str) or len(host_if) > MAX_IFNAME:
            raise UsageError(f"'host_if': {host_if!r} is not an interface name")
        return cls(ep_id, mac.lower(), tuple(ips), name.lower(), host_if)


class EndpointRegistry:
    def __init__(self, state: StateDir, *, limit: int = bounds.MAX_ENDPOINTS):
        self._state = state
        self.limit = limit
        self._eps = {k: Endpoint(**{**v, "ips": tuple(v["ips"])}) for k, v in state.get("endpoints", {}).items()}

    def _save(self) -> None:
        self._state.put("endpoints", {k: asdict(v) for k, v in self._eps.items()})

    def add(self, ep: Endpoint) -> None:
        """Raises Unavailable when `limit` endpoints are registered already."""
        if ep.id not in self._eps and len(self._eps) >= self.limit:
            raise Unavailable(f"this host has {len(self._eps)} endpoints, the most it may announce (--max-peer-endpoints)")
        self._eps[ep.id] = ep
        self._save()

    def remove(self, ep_id: str) -> Endpoint | None:
        ep = self._eps.pop(ep_id, None)
        if ep is not None:
            self._save()
        return ep

    def get(self, ep_id: str) -> Endpoint | None:
        return self._eps.get(ep_id)

    def all(self) -> list[Endpoint]:
        return sorted(self._eps.values(), key=lambda e: e.id)

    def keep_only(self, alive_host_ifs: set[str]) -> list[Endpoint]:
        """Drop endpoints whose veth vanished while we were down; return them."""
        gone = [e for e in self._eps.values() if e.host_if and e.host_if not in alive_host_ifs]
        for e in gone:
            del self._eps[e.id]
        if gone:
            self._save()
        return gone

    def gossip(self) -> list[tuple[Any, ...]]:
        return [e.gossip() for e in self.all()]
