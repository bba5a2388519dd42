"""The router's API handlers: JSON bodies in, meshnet errors or JSON out.

Each handler checks its body's fields (types, presence and bounds; every bad one is a
`UsageError` naming the field, so a 400) and calls the service that does the work. HTTP is not spoken here: the
transport (`meshnet/api/server.py`) maps errors to status codes. Integrations register
their own routes through the daemon.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from meshnet.config import IFNAME_RE
from meshnet.errors import NotFound, Unavailable, UsageError
from meshnet.runtime import status as status_mod
from meshnet.runtime.endpoints import MAX_ID, NAME_RE, Endpoint

if TYPE_CHECKING:
    from meshnet.runtime.router import Router

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


MAX_TEXT = 4096  # characters of any string parameter


def text(body: dict[str, Any], key: str, *, required: bool = True, default: str = "", max_len: int = MAX_TEXT) -> str:
    """A string field: present and non-empty if required, at most `max_len` characters."""
    value = body.get(key)
    if value is None or (value == "" and not required):
        if required:
            raise UsageError(f"{key!r} is required")
        return default
    if not isinstance(value, str) or not value:
        raise UsageError(f"{key!r} must be a non-empty string, got {_short(value)}")
    if len(value) > max_len:
        raise UsageError(f"{key!r} is longer than {max_len} characters")
    return value


def _short(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 80 else shown[:77] + "..."


def string_list(body: dict[str, Any], key: str, *, max_len: int = 64) -> list[str]:
    """A list of strings (absent: empty)."""
    value = body.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > max_len or not all(isinstance(v, str) and len(v) <= MAX_TEXT for v in value):
        raise UsageError(f"{key!r} must be a list of at most {max_len} strings, got {_short(value)}")
    return value


def optional_text(body: dict[str, Any], key: str) -> str | None:
    return text(body, key, required=False) or None


class RouterHandlers:
    def __init__(self, router: Router):
        self.router = router

    def routes(self) -> dict[tuple[str, str], Handler]:
        return {
            ("GET", "/status"): self.status,
            ("GET", "/health"): self.health,
            ("POST", "/connect"): self.connect,
            ("POST", "/forget"): self.forget,
            ("POST", "/attach"): self.attach,
            ("POST", "/detach"): self.detach,
            ("POST", "/endpoints/add"): self.endpoint_add,
            ("POST", "/endpoints/del"): self.endpoint_del,
            ("GET", "/endpoints"): self.endpoint_list,
            ("POST", "/stop"): self.stop,
            ("POST", "/ipam/allocate"): self.ipam_allocate,
            ("POST", "/ipam/release"): self.ipam_release,
            ("GET", "/ipam/owners"): self.ipam_owners,
            ("GET", "/ipam/status"): self.ipam_status,
            ("POST", "/ipam/rmpeer"): self.ipam_rmpeer,
            ("POST", "/ipam/reset"): self.ipam_reset,
        }

    # -- router ------------------------------------------------------------------------

    async def status(self, body: dict[str, Any]) -> dict[str, Any]:
        return status_mod.status(self.router)

    async def health(self, body: dict[str, Any]) -> dict[str, Any]:
        """200 when healthy; Unavailable (503) when the timer has stalled (the readiness probe)."""
        state = status_mod.health(self.router)
        if not state["healthy"]:
            raise Unavailable(f"unhealthy: {', '.join(state['reasons'])} (timer {state['timer_age_s']:.1f}s late)")
        return state

    async def stop(self, body: dict[str, Any]) -> dict[str, Any]:
        self.router.request_stop(delay=0.05)
        return {"stopping": True}

    async def connect(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"direct_peers": self.router.dial_book.connect(text(body, "address"))}

    async def forget(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"direct_peers": self.router.dial_book.forget(text(body, "address"))}

    # -- endpoints ---------------------------------------------------------------------

    async def attach(self, body: dict[str, Any]) -> dict[str, Any]:
        name = text(body, "name", required=False, max_len=63).lower()
        if name and not NAME_RE.match(name):
            raise UsageError(f"'name': {name!r} is not a DNS label (letters, digits and '-')")
        ifname = text(body, "ifname", required=False, default="mesh0")
        if not IFNAME_RE.match(ifname):
            raise UsageError(f"'ifname': {ifname!r} is not an interface name (1-15 letters, digits, '_', '.', '-')")
        return await self.router.endpoints.attach(
            text(body, "netns"),
            string_list(body, "cidrs", max_len=8),
            ep_id=text(body, "id", required=False, max_len=MAX_ID) or None,
            name=name,
            ifname=ifname,
        )

    async def detach(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self.router.endpoints.detach(netns=optional_text(body, "netns"), ep_id=optional_text(body, "id"))

    async def endpoint_add(self, body: dict[str, Any]) -> dict[str, Any]:
        ep = Endpoint.parse(body)
        self.router.endpoints.add(ep)
        return {"id": ep.id}

    async def endpoint_del(self, body: dict[str, Any]) -> dict[str, Any]:
        ep_id = text(body, "id")
        return {"id": ep_id, "removed": self.router.endpoints.remove(ep_id) is not None}

    async def endpoint_list(self, body: dict[str, Any]) -> dict[str, Any]:
        service = self.router.endpoints
        return {"local": [asdict(e) for e in service.local_endpoints()], "mesh": service.mesh(), "refused": service.refused()}

    # -- IPAM --------------------------------------------------------------------------

    async def ipam_allocate(self, body: dict[str, Any]) -> dict[str, Any]:
        owner = text(body, "owner")
        wait = body.get("wait", 30)
        if isinstance(wait, str):
            try:
                wait = float(wait)
            except ValueError:
                raise UsageError(f"'wait' must be a number of seconds, got {_short(wait)}") from None
        if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not 0 <= wait <= 600:
            raise UsageError(f"'wait' must be a number of seconds from 0 to 600, got {_short(wait)}")
        result = await self.router.endpoints.allocate(
            owner, subnet=optional_text(body, "subnet"), address=optional_text(body, "address"), wait=wait
        )
        return {"owner": owner, "address": result.address, "cidr": result.cidr}

    async def ipam_release(self, body: dict[str, Any]) -> dict[str, Any]:
        owner = text(body, "owner")
        return {"owner": owner, "released": self.router.endpoints.release(owner, optional_text(body, "address"))}

    async def ipam_owners(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"owners": self.router.endpoints.owners()}

    async def ipam_status(self, body: dict[str, Any]) -> dict[str, Any]:
        nicks = {e.name.hex(): e.nick for e in self.router.core.topology.entries.values()}
        return {**self.router.ipam.status(), "nicknames": nicks}

    async def ipam_rmpeer(self, body: dict[str, Any]) -> dict[str, Any]:
        """Known: a peer in the topology, or one the address ring knows (an owner, or one
        removed already: repeating rmpeer is safe and says so). Anything else: NotFound."""
        given = text(body, "peer", max_len=64)
        peer = self.peer_by_name_or_nick(given)
        known = self.router.ipam.knows(peer)
        if peer not in self.router.core.topology.entries and known is None:
            raise NotFound(f"no peer {given!r}: it is not in the topology, owns no addresses and was never removed")
        reclaimed = self.router.ipam.rmpeer(peer)
        return {"peer": peer.hex(), "reclaimed": reclaimed, "already_removed": known == "removed" and not reclaimed}

    async def ipam_reset(self, body: dict[str, Any]) -> dict[str, Any]:
        """Refused (Conflict) while addresses of this peer are in use, unless `release`."""
        release = body.get("release", False)
        if not isinstance(release, bool):
            raise UsageError(f"'release' must be true or false, got {release!r}")
        return await self.router.reset(release=release)

    def peer_by_name_or_nick(self, name: str) -> bytes:
        """A peer the topology or the address ring knows, by nickname or 32-hex-digit name.

        Raises:
            UsageError: a nickname several peers use.
            NotFound: neither a known nickname nor a peer name.
        """
        entries = self.router.core.topology.entries.values()
        found = [e.name for e in entries if e.name.hex() == name.lower() or e.nick == name]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise UsageError(f"nickname {name!r} names {len(found)} peers; give the 32-hex-digit peer name")
        try:
            peer = bytes.fromhex(name)
        except ValueError:
            peer = b""
        if len(peer) != 16:
            raise NotFound(f"no peer {name!r}: not a nickname in the topology, nor a 32-hex-digit peer name")
        return peer
