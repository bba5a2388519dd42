"""What the Docker integration needs from the router, as narrow protocols.

`meshnet/daemon.py` hands the Docker service the router's `EndpointService` (addresses and
endpoints), its `Plumbing` (veths, the bridge's addresses, NAT) and its API server (to
register routes). Docker code sees only these methods; `meshnet/docker/testing.py` has
fakes of each for unit tests.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Protocol

from meshnet.ipam.outcome import Result
from meshnet.kernel.links import Attachment
from meshnet.runtime.endpoints import Endpoint


class Endpoints(Protocol):
    async def allocate(self, owner: str, *, subnet: str | None = None, address: str | None = None, wait: float = ...) -> Result: ...

    def release(self, owner: str, address: str | None = None) -> list[str]: ...

    def add(self, ep: Endpoint) -> None: ...

    def remove(self, ep_id: str) -> Endpoint | None: ...

    def get(self, ep_id: str) -> Endpoint | None: ...

    def local_endpoints(self) -> list[Endpoint]: ...

    def mesh(self) -> list[dict[str, Any]]: ...

    def publish_names(self, names: list[list[Any]]) -> None: ...

    def mesh_names(self) -> list[Any]: ...


class Plumbing(Protocol):
    mtu: int

    async def add_pod_veth(self, netns: str, *, host_if: str, ifname: str, cidrs: list[str], mac: str | None) -> Attachment: ...

    async def add_veth_pair(self, host: str, peer: str, *, mac: str | None) -> str: ...

    async def delete_link(self, name: str) -> bool: ...

    async def set_bridge_address(self, cidr: str, present: bool) -> bool: ...

    async def set_nat(self, table: str, overlay: str, enabled: bool) -> None: ...

    async def bridge_mac(self) -> str | None: ...


class Routes(Protocol):
    def add_routes(self, routes: dict[tuple[str, str], Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]]) -> None: ...


class Store(Protocol):
    def get(self, key: str, default: Any = None) -> Any: ...

    def put(self, key: str, value: Any) -> None: ...
