"""Extra DNS records (`meshnet dns-add` / `dns-remove` / `dns-lookup`), as Weave has them.

A record is a name in the resolver's domain with IPv4 addresses, added by hand beside the
names endpoints bring. This router keeps the ones added on this host (state key
`docker.dns`) and gossips them in its peer entry as `dns` = [[label, [ip, ...]], ...]
(docs/protocol.md), so every router's resolver answers them while this peer is reachable,
like the endpoints' names. What other peers gossip is checked and bounded before use.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Iterable

from meshnet.docker.ports import Endpoints, Store
from meshnet.errors import NotFound, UsageError
from meshnet.runtime.endpoints import NAME_RE

KEY = "docker.dns"
MAX_RECORDS = 1024  # per peer: names added by hand
MAX_ADDRESSES = 32  # per name


def label_of(name: Any, domain: str) -> str:
    """`web`, `web.meshnet.local` or `web.meshnet.local.` -> `web`. Raises UsageError."""
    if not isinstance(name, str) or not name.strip():
        raise UsageError("a DNS record needs a name (-h NAME)")
    text = name.strip().rstrip(".").lower()
    if text.endswith("." + domain):
        text = text[: -len(domain) - 1]
    if not NAME_RE.match(text):
        raise UsageError(f"{name!r} is not a name in {domain} (one DNS label, letters, digits and '-')")
    return text


def addresses_of(ips: Any) -> list[str]:
    """A list of IPv4 addresses (a /prefix is dropped). Raises UsageError."""
    if not isinstance(ips, list) or not all(isinstance(ip, str) for ip in ips):
        raise UsageError("ips must be a list of IPv4 addresses")
    out = []
    for ip in ips:
        try:
            addr = ipaddress.ip_interface(ip).ip
        except ValueError:
            raise UsageError(f"{ip!r} is not an IP address") from None
        if addr.version != 4:
            raise UsageError(f"{ip!r}: only IPv4 records are supported")
        if str(addr) not in out:
            out.append(str(addr))
    if len(out) > MAX_ADDRESSES:
        raise UsageError(f"at most {MAX_ADDRESSES} addresses per name")
    return out


def checked(raw: Any) -> Iterable[tuple[str, list[str]]]:
    """A peer's gossiped `dns` records, skipping anything malformed (remote input)."""
    if not isinstance(raw, list):
        return
    for item in raw[:MAX_RECORDS]:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str) and NAME_RE.match(item[0])):
            continue
        ips = item[1]
        if not isinstance(ips, list):
            continue
        good = []
        for ip in ips[:MAX_ADDRESSES]:
            try:
                if isinstance(ip, str) and ipaddress.ip_address(ip).version == 4:
                    good.append(ip)
            except ValueError:
                continue
        if good:
            yield item[0], good


class DnsNames:
    def __init__(self, endpoints: Endpoints, store: Store, domain: str):
        self.endpoints = endpoints
        self.store = store
        self.domain = domain
        saved = store.get(KEY, {}) or {}
        self.local: dict[str, list[str]] = {k: list(v) for k, v in saved.items() if isinstance(v, list)}

    def publish(self) -> None:
        self.store.put(KEY, self.local)
        self.endpoints.publish_names([[name, list(ips)] for name, ips in sorted(self.local.items())])

    def add(self, body: dict[str, Any]) -> dict[str, Any]:
        label = label_of(body.get("name"), self.domain)
        ips = addresses_of(body.get("ips"))
        if not ips:
            raise UsageError("dns-add needs at least one address")
        have = self.local.get(label, [])
        if label not in self.local and len(self.local) >= MAX_RECORDS:
            raise UsageError(f"at most {MAX_RECORDS} names may be added on one host")
        merged = have + [ip for ip in ips if ip not in have]
        if len(merged) > MAX_ADDRESSES:
            raise UsageError(f"at most {MAX_ADDRESSES} addresses per name")
        self.local[label] = merged
        self.publish()
        return {"name": f"{label}.{self.domain}", "ips": merged}

    def remove(self, body: dict[str, Any]) -> dict[str, Any]:
        label = label_of(body.get("name"), self.domain)
        ips = addresses_of(body.get("ips") or [])
        have = self.local.get(label)
        if have is None:
            raise NotFound(f"no record {label}.{self.domain} was added on this host")
        gone = [ip for ip in have if not ips or ip in ips]
        if not gone:
            raise NotFound(f"{label}.{self.domain} has none of {', '.join(ips)}")
        left = [ip for ip in have if ip not in gone]
        if left:
            self.local[label] = left
        else:
            del self.local[label]
        self.publish()
        return {"name": f"{label}.{self.domain}", "removed": gone}

    def mesh(self) -> list[tuple[str, list[str]]]:
        """Every reachable peer's records (ours included), checked."""
        out: list[tuple[str, list[str]]] = []
        for raw in self.endpoints.mesh_names():
            out.extend(checked(raw))
        return out
