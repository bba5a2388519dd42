"""Local endpoints: the container interfaces on this host's bridge, whoever made them.

`meshnet attach`, the CNI plugin and the Docker plugin all register their interfaces here
(id, MAC, addresses, optional DNS name). The registry persists in the state dir and is
gossiped in our peer entry as `eps`, so every router can program its forwarding tables
statically (floods become the exception) and answer name lookups.

Gossiped form (docs/protocol.md): `eps` = [[mac "aa:bb:..", [cidr, ...], name], ...].
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import asdict, dataclass
from typing import Any

from meshnet.errors import UsageError
from meshnet.state.statedir import StateDir

MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class Endpoint:
    id: str  # "netns:/run/netns/x", "cni:<container id>:<ifname>", "docker:<endpoint id>"
    mac: str
    ips: tuple[str, ...]  # CIDRs
    name: str = ""  # DNS label, "" for none
    host_if: str = ""  # our end of its veth, when we made it

    def gossip(self) -> list[Any]:
        return [self.mac, list(self.ips), self.name]

    @classmethod
    def parse(cls, body: dict[str, Any]) -> Endpoint:
        """Validate an API body. Raises UsageError with a clear message."""
        ep_id, mac = body.get("id"), str(body.get("mac", "")).lower()
        ips, name = body.get("ips", []), str(body.get("name") or "").lower()
        if not isinstance(ep_id, str) or not ep_id:
            raise UsageError("an endpoint needs an id")
        if not MAC_RE.match(mac):
            raise UsageError(f"{body.get('mac')!r} is not a MAC address like 02:42:0a:20:00:05")
        if not isinstance(ips, list):
            raise UsageError("ips must be a list of IP/CIDR")
        for cidr in ips:
            try:
                ipaddress.ip_interface(cidr)
            except (TypeError, ValueError):
                raise UsageError(f"{cidr!r} is not a valid IP/CIDR") from None
        if name and not NAME_RE.match(name):
            raise UsageError(f"{name!r} is not a valid DNS label")
        return cls(ep_id, mac, tuple(ips), name, str(body.get("host_if") or ""))


class EndpointRegistry:
    def __init__(self, state: StateDir):
        self._state = state
        self._eps = {k: Endpoint(**{**v, "ips": tuple(v["ips"])}) for k, v in state.get("endpoints", {}).items()}

    def _save(self) -> None:
        self._state.put("endpoints", {k: asdict(v) for k, v in self._eps.items()})

    def add(self, ep: Endpoint) -> None:
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

    def gossip(self) -> list[list[Any]]:
        return [e.gossip() for e in self.all()]
