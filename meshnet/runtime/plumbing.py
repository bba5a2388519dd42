"""This host's overlay plumbing, as the router and the integrations see it.

`KernelThread` is the one thread every kernel call runs on: pyroute2 keeps state of its
own and must never run on the asyncio thread, and one thread serialises changes to the
same bridge. `Plumbing` is the narrow port over `kernel.links.Links` for one bridge and
one MTU: veths for containers and namespaces, the bridge's own addresses, NAT, nftables
scripts and counters (the NetworkPolicy table), the NFLOG socket of denied flows. The
Docker and Kubernetes integrations are handed a `Plumbing`, never the router.

Kernel failures arrive as `KernelError` (an `OSError` with its errno); the API transport
maps them to a status in its one place.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from meshnet.dataplane.netfilter import NetfilterPlan
from meshnet.kernel import nft
from meshnet.kernel.links import Attachment, Links
from meshnet.kernel.nflog import NflogSocket

FORWARD = "net.ipv4.ip_forward"


class KernelThread:
    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="meshnet-kernel")

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, lambda: fn(*args, **kwargs))

    def close(self) -> None:
        self._pool.shutdown(wait=False)


class Plumbing:
    def __init__(self, kernel: KernelThread, links: Links, *, bridge: str, mtu: int):
        self._kernel = kernel
        self._links = links
        self._nft = nft.Nft()
        self.bridge = bridge
        self.mtu = mtu
        self.forwarding_pinned = False

    async def attach_netns(self, netns: str, *, cidrs: list[str], ifname: str) -> Attachment:
        """A veth from the bridge into a namespace (name or path), with addresses."""
        return await self._kernel.call(self._links.attach, netns, bridge=self.bridge, cidrs=cidrs, mtu=self.mtu, ifname=ifname)

    async def attachment(self, netns: str, *, ifname: str) -> Attachment | None:
        """What an earlier `attach_netns` left for this namespace, if both ends remain."""
        return await self._kernel.call(self._links.attachment, netns, bridge=self.bridge, ifname=ifname)

    async def set_up(self, name: str, up: bool) -> bool:
        """A port up or down (a refused endpoint is taken off the overlay this way)."""
        return await self._kernel.call(self._links.set_up, name, up)

    async def detach_netns(self, netns: str) -> bool:
        return await self._kernel.call(self._links.detach, netns)

    async def add_pod_veth(self, netns: str, *, host_if: str, ifname: str, cidrs: list[str], mac: str | None) -> Attachment:
        """A container's veth: `ifname` inside `netns` with addresses, `host_if` on the bridge."""
        return await self._kernel.call(
            self._links.add_pod_veth, netns, host_if=host_if, ifname=ifname, bridge=self.bridge, cidrs=cidrs, mtu=self.mtu, mac=mac
        )

    async def add_veth_pair(self, host: str, peer: str, *, mac: str | None) -> str:
        """A veth pair with `host` on the bridge and `peer` left for Docker to move; its MAC."""
        return await self._kernel.call(self._links.add_veth_pair, host, peer, bridge=self.bridge, mtu=self.mtu, mac=mac)

    async def delete_link(self, name: str) -> bool:
        return await self._kernel.call(self._links.delete_link, name)

    async def ports(self) -> set[str]:
        """Interfaces enslaved to the bridge."""
        return set(await self._kernel.call(self._links.ports, self.bridge))

    async def set_bridge_address(self, cidr: str, present: bool) -> bool:
        return await self._kernel.call(self._links.set_bridge_address, self.bridge, cidr, present)

    async def set_nat(self, table: str, overlay: str, enabled: bool, *, non_masquerade: tuple[str, ...] = ()) -> None:
        """nftables table `table`: masquerade the overlay's egress and guard forwarding into
        the bridge (`meshnet.dataplane.netfilter`); removed when not enabled."""
        plan = NetfilterPlan(table, self.bridge, overlay, non_masquerade=non_masquerade) if enabled else None
        await self._kernel.call(nft.apply, plan, table=table)

    async def sysctl(self, key: str, value: str | None = None) -> str | None:
        """Read (or set, returning the old value) a sysctl of this host's namespace."""
        if value is None:
            return await self._kernel.call(nft.sysctl_get, key)
        return await self._kernel.call(nft.sysctl_set, key, value)

    async def set_forwarding(self, enabled: bool) -> str | None:
        """IPv4 forwarding on or off; returns the value found. Off is refused (a no-op) while
        the pod network pins it on: a node's pods need it whatever `hide` restores."""
        if not enabled and self.forwarding_pinned:
            return await self.sysctl(FORWARD)
        return await self.sysctl(FORWARD, "1" if enabled else "0")

    async def pin_forwarding(self) -> str | None:
        self.forwarding_pinned = True
        return await self.sysctl(FORWARD, "1")

    async def bridge_mac(self) -> str | None:
        return await self._kernel.call(self._links.mac_of, self.bridge)

    async def nft(self, script: str) -> None:
        """Run an nft script as one transaction."""
        await self._kernel.call(self._nft.apply, script)

    async def nft_counters(self, family: str, table: str) -> dict[str, tuple[int, int]]:
        """The table's named counters: name -> (packets, bytes); {} if there is no table."""
        if not await self._kernel.call(self._nft.has_table, family, table):
            return {}
        return await self._kernel.call(self._nft.counters, family, table)

    def nflog(self, group: int) -> NflogSocket:
        """A non-blocking reader of the packets nftables logs to `group` in this namespace."""
        return NflogSocket(group)

