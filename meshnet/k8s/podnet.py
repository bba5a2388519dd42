"""The pod network on a node: what Kubernetes' network model asks of the node beside the pods.

- **A gateway on the bridge.** The bridge gets an address from IPAM (owner
  `host:pod-gateway`: held like a container's, so nothing reclaims it while this peer
  lives, and the same address comes back after a restart). The CNI plugin reads it from
  `GET /podnet` and gives every pod a default route via it. The node reaches every pod
  through the bridge (the range is routed there, `Links.set_bridge_address`), so probes
  and host-network pods work.
- **Netfilter sees pod traffic.** Pod traffic to anything outside the range is routed by
  the node (default route), so kube-proxy's DNAT and portmap's rules apply. Replies from a
  pod on another node come back bridged, not routed: `net.bridge.bridge-nf-call-iptables=1`
  makes the node's conntrack undo the DNAT on them (kubeadm requires the same setting).
- **No redirects.** Pod traffic to a ClusterIP comes in on the bridge and, translated,
  leaves on it again: the node would send the pod ICMP redirects to bypass it (and with it
  the translation). `send_redirects` is off on the bridge and for `all` (the kernel sends
  them if either is on).
- **Forwarding and masquerade.** IPv4 forwarding is pinned on; the table `ip meshnet-pods`
  masquerades pod egress to anything outside the range and the non-masquerade list, and
  guards the bridge against new flows routed in from outside (`dataplane/netfilter.py`).

`ready` turns true once the gateway is on the bridge; until then `GET /podnet` answers
Unavailable and the plugin says "try again later" (the kubelet retries).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from meshnet.errors import MeshnetError, Unavailable
from meshnet.k8s.ports import Endpoints, Plumbing, Store
from meshnet.kernel.errors import KernelError
from meshnet.runtime.endpoints import Endpoint

log = logging.getLogger("meshnet.k8s")

GATEWAY_OWNER = "host:pod-gateway"
GATEWAY_ENDPOINT = "host:pod-gateway"
TABLE = "meshnet-pods"
STORE_KEY = "k8s.podnet"
BRIDGE_NF = "net.bridge.bridge-nf-call-iptables"
RETRY = (0.5, 10.0)  # seconds: first and largest wait between gateway attempts


class PodNetwork:
    def __init__(self, *, endpoints: Endpoints, plumbing: Plumbing, store: Store, universe: str, non_masquerade: tuple[str, ...] = ()):
        self.endpoints = endpoints
        self.plumbing = plumbing
        self.store = store
        self.universe = universe
        self.non_masquerade = non_masquerade
        self.gateway: str | None = None  # CIDR on the bridge, once ready
        self.bridge_nf: bool | None = None
        self.last_error = ""
        self.on_ready: Callable[[], None] | None = None  # told once the gateway is up
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    @property
    def ready(self) -> bool:
        return self.gateway is not None

    async def start(self, spawn: Callable[[str, Any], asyncio.Task[Any]] | None = None) -> None:
        """The table first (guard before forwarding), then forwarding and bridge netfilter;
        the gateway comes when IPAM can give it (a task; `spawn(name, coro)`: the router's
        supervisor, which logs and counts a failure)."""
        await self.plumbing.set_nat(TABLE, self.universe, True, non_masquerade=self.non_masquerade)
        await self.plumbing.pin_forwarding()
        self.bridge_nf = await self.plumbing.sysctl(BRIDGE_NF, "1") is not None
        # a node routes pod traffic (to Services) back out of the bridge it came in on; ICMP
        # redirects would tell pods to bypass it, and the kernel sends them unless both are off
        for key in ("net.ipv4.conf.all.send_redirects", f"net/ipv4/conf/{self.plumbing.bridge}/send_redirects"):
            await self.plumbing.sysctl(key, "0")
        if not self.bridge_nf:
            log.warning("no %s (br_netfilter not loaded): Service replies between pods will not be translated; modprobe br_netfilter", BRIDGE_NF)
        self._task = spawn("k8s-pod-gateway", self._gateway()) if spawn else asyncio.ensure_future(self._gateway())

    async def stop(self) -> None:
        """The kernel state stays: pods keep working and a restart adopts it."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def wait_ready(self, timeout: float | None = None) -> bool:
        try:
            async with asyncio.timeout(timeout):
                await self._ready.wait()
        except TimeoutError:
            return False
        return True

    async def _gateway(self) -> None:
        delay = RETRY[0]
        while True:
            try:
                got = await self.endpoints.allocate(GATEWAY_OWNER, wait=30.0)
                await self.plumbing.set_bridge_address(got.cidr, True)
                mac = await self.plumbing.bridge_mac()
                self.endpoints.add(Endpoint(GATEWAY_ENDPOINT, str(mac), (got.cidr,), ""))
                self.store.put(STORE_KEY, {"gateway": got.cidr})
                self.gateway = got.cidr
                self.last_error = ""
                self._ready.set()
                if self.on_ready is not None:
                    self.on_ready()
                log.info("pod network ready: gateway %s on %s, MTU %d", got.cidr, self.plumbing.bridge, self.plumbing.mtu)
                return
            except asyncio.CancelledError:
                raise
            except (MeshnetError, KernelError) as exc:
                text = getattr(exc, "message", None) or str(exc)
                if text != self.last_error:
                    log.info("pod gateway not yet: %s", text)
                self.last_error = text
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY[1])

    def info(self) -> dict[str, Any]:
        """What the CNI plugin asks (`GET /podnet`). Raises Unavailable until ready."""
        if self.gateway is None:
            raise Unavailable(f"the pod gateway is not ready yet: {self.last_error or 'waiting for IPAM'}")
        return {
            "gateway": self.gateway.split("/")[0],
            "cidr": self.gateway,
            "range": self.universe,
            "mtu": self.plumbing.mtu,
            "non_masquerade": [self.universe, *self.non_masquerade],
            "bridge_nf_call_iptables": self.bridge_nf,
        }
