"""No duplicate address from this host: endpoints may only use addresses this peer owns.

An endpoint's addresses are checked against IPAM (`Allocator.standing`): each one inside
the range must be allocated on this peer, in a range this peer owns, and this peer must
not have been removed with rmpeer. That fails after a `reset` or an `rmpeer` of this peer
(its space went to others), or when the state dir was lost. A refused endpoint is taken
off the overlay: its veth goes down (the container cannot answer ARP or send), it is not
gossiped, and `GET /endpoints` and the log say why. When IPAM says it may use its
addresses again (it claimed them back), it comes back.

Orphans: at start, a veth on the bridge that no endpoint of ours names (the state dir was
removed, or an older router's reset) holds addresses nobody here owns. It is taken down
the same way and reported; `meshnet detach` or a new `attach` of its namespace clears it.

The refused set is persisted, so a router restarted while an endpoint was down brings it
back up once it may. Decisions are pure (`verdicts`); kernel work goes through `Plumbing`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from meshnet.kernel.errors import KernelError
from meshnet.runtime.endpoints import Endpoint
from meshnet.runtime.plumbing import Plumbing
from meshnet.state.statedir import StateDir

log = logging.getLogger("meshnet.endpoints")

KEY = "refused_endpoints"
ORPHAN = "orphan:"  # refused-set key prefix of a port no endpoint names


def verdicts(eps: Iterable[Endpoint], standing: Callable[[str], str | None]) -> dict[str, str]:
    """{endpoint id: why it may not be on the overlay} for the endpoints that may not."""
    out: dict[str, str] = {}
    for ep in eps:
        for cidr in ep.ips:
            why = standing(cidr.split("/")[0])
            if why is not None:
                out[ep.id] = why
                break
    return out


class EndpointGuard:
    def __init__(self, state: StateDir, plumbing: Plumbing, standing: Callable[[str], str | None]):
        self._state = state
        self._plumbing = plumbing
        self._standing = standing
        self.refused: dict[str, str] = dict(state.get(KEY, {}) or {})  # endpoint id (or orphan:port) -> why

    def stale(self, eps: Iterable[Endpoint]) -> bool:
        """Whether the refused set no longer matches what IPAM says (cheap; no I/O)."""
        wanted = verdicts(eps, self._standing)
        return wanted != {k: v for k, v in self.refused.items() if not k.startswith(ORPHAN)}

    def allowed(self, ep: Endpoint) -> bool:
        return ep.id not in self.refused

    def blocked(self, eps: list[Endpoint]) -> set[str]:
        """Ids not to gossip: refused already, or refused as soon as `reconcile` runs."""
        return set(self.refused) | set(verdicts(eps, self._standing))

    async def reconcile(self, eps: list[Endpoint]) -> bool:
        """Take refused endpoints off the overlay, bring back the ones that may return.
        Returns whether the refused set changed (the caller then gossips again)."""
        wanted = verdicts(eps, self._standing)
        by_id = {ep.id: ep for ep in eps}
        changed = False
        for ep_id, why in wanted.items():
            if self.refused.get(ep_id) != why:
                log.error("endpoint %s refused: %s; its interface is taken off the overlay", ep_id, why)
                await self._port(by_id[ep_id].host_if, up=False)
                self.refused[ep_id] = why
                changed = True
        for ep_id in [k for k in self.refused if not k.startswith(ORPHAN) and k not in wanted]:
            ep = by_id.get(ep_id)
            if ep is not None:
                log.info("endpoint %s may use its addresses again; back on the overlay", ep_id)
                await self._port(ep.host_if, up=True)
            del self.refused[ep_id]
            changed = True
        if changed:
            self._save()
        return changed

    async def isolate_orphans(self, ports: set[str], ours: set[str], eps: list[Endpoint]) -> None:
        """Take down bridge ports that are neither ours (TAP, VXLAN) nor an endpoint's veth."""
        named = {ep.host_if for ep in eps if ep.host_if}
        orphans = sorted(ports - ours - named)
        for port in orphans:
            key = ORPHAN + port
            if key not in self.refused:
                log.error("port %s is on the bridge but no endpoint of this router names it: taken down (detach or re-attach it)", port)
            self.refused[key] = "on the bridge, but no endpoint of this router: its addresses are not this peer's"
            await self._port(port, up=False)
        for key in [k for k in self.refused if k.startswith(ORPHAN) and k[len(ORPHAN) :] not in orphans]:
            del self.refused[key]  # gone, or registered since
        self._save()

    def forget(self, ep_id: str, host_if: str = "") -> None:
        """The endpoint (or port) was detached: nothing to refuse any more."""
        if self.refused.pop(ep_id, None) is not None or self.refused.pop(ORPHAN + host_if, None) is not None:
            self._save()

    async def _port(self, host_if: str, *, up: bool) -> None:
        if not host_if:
            return  # not ours to switch (the host's own address, a CNI endpoint without a port)
        try:
            await self._plumbing.set_up(host_if, up)
        except KernelError as exc:
            log.warning("cannot set %s %s: %s", host_if, "up" if up else "down", exc)

    def _save(self) -> None:
        self._state.put(KEY, self.refused)
