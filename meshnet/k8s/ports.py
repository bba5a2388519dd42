"""What the Kubernetes integration needs from the router, as narrow protocols.

`meshnet/daemon.py` hands `KubeService` the router's `EndpointService` (addresses and
endpoints), its `Plumbing` (bridge addresses, nftables, sysctls; as `PolicyKernel` the
policy table, its counters and the NFLOG socket of denied flows), its `IpamService`
(status and rmpeer), a view of the mesh's peers, the state store and the API route table.
Kubernetes code sees only these methods; the unit tests use fakes of each.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Protocol

from meshnet.ipam.outcome import Result
from meshnet.runtime.endpoints import Endpoint


class Endpoints(Protocol):
    async def allocate(self, owner: str, *, subnet: str | None = None, address: str | None = None, wait: float = ...) -> Result: ...

    def add(self, ep: Endpoint) -> None: ...

    def remove(self, ep_id: str) -> Endpoint | None: ...

    def local_endpoints(self) -> list[Endpoint]: ...


class Plumbing(Protocol):
    mtu: int
    bridge: str

    async def set_bridge_address(self, cidr: str, present: bool) -> bool: ...

    async def bridge_mac(self) -> str | None: ...

    async def set_nat(self, table: str, overlay: str, enabled: bool, *, non_masquerade: tuple[str, ...] = ()) -> None: ...

    async def sysctl(self, key: str, value: str | None = None) -> str | None: ...

    async def pin_forwarding(self) -> str | None: ...


class PolicyKernel(Protocol):
    """What the policy agent changes on the host: nftables, one sysctl, the NFLOG socket."""

    async def nft(self, script: str) -> None: ...

    async def nft_counters(self, family: str, table: str) -> dict[str, tuple[int, int]]: ...

    async def sysctl(self, key: str, value: str | None = None) -> str | None: ...

    def nflog(self, group: int) -> Any: ...  # a NflogSocket: fileno(), read(), close()


class Ipam(Protocol):
    def status(self) -> dict[str, Any]: ...

    def rmpeer(self, peer: bytes) -> int: ...


class Mesh(Protocol):
    """This router's name and the peers it knows: (name, nickname, reachable)."""

    name: bytes

    def peers(self) -> list[tuple[bytes, str, bool]]: ...


class Metrics(Protocol):
    """Add a section to the router's metrics snapshot: `fn()` is awaited on every scrape."""

    def __call__(self, name: str, fn: Callable[[], Awaitable[dict[str, Any]]]) -> None: ...


class Routes(Protocol):
    def add_routes(self, routes: dict[tuple[str, str], Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]]) -> None: ...


class Store(Protocol):
    def get(self, key: str, default: Any = None) -> Any: ...

    def put(self, key: str, value: Any) -> None: ...
