"""The Docker network plugin: libnetwork's remote NetworkDriver and IpamDriver, one object.

Docker POSTs JSON to `/Plugin.Activate`, `/NetworkDriver.*` and `/IpamDriver.*` on our unix
socket (default /run/docker/plugins/meshnet.sock, so `-d meshnet --ipam-driver meshnet`
find it). Every handler returns a dict; a failure is `{"Err": message, "Error": message}` (the two
APIs name the field differently), which Docker shows to the user. Handlers never raise.

Dependencies are injected (the router's `Endpoints` and `Plumbing` ports, a `store` with
get/put, `universe()`), so every call Docker makes is unit-tested
without root (tests/unit/docker/test_docker_cnm.py).

State (store key `docker.cnm`), because Docker never replays CreateNetwork or RequestPool
after a dockerd restart: networks, endpoints (id -> network, address, MAC, veth) and the
IPAM owner of every address we handed out. Pool IDs describe themselves
(`meshnet:<pool>[:<subpool>]`), so a lost pool table costs nothing.

Docker's calls (docs/docker.md has the full list): network create = RequestPool,
RequestAddress (gateway), CreateNetwork; run/start = RequestAddress, CreateEndpoint, Join;
stop/rm = Leave, DeleteEndpoint, ReleaseAddress; network rm = ReleaseAddress (gateway),
ReleasePool, DeleteNetwork.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import re
import secrets
import time
from typing import Any, Awaitable, Callable

from meshnet.docker.engine import dns_label
from meshnet.docker.ports import Endpoints, Plumbing, Store
from meshnet.errors import Conflict, MeshnetError, NotFound, UsageError
from meshnet.runtime.endpoints import Endpoint

log = logging.getLogger("meshnet.docker.cnm")

KEY = "docker.cnm"
ADDRESS_SPACE = "meshnet"
GLOBAL_ADDRESS_SPACE = "meshnet-global"
GATEWAY_TYPE = "com.docker.network.gateway"
DST_PREFIX = "eth"
ALLOCATE_WAIT = 10.0  # below Docker's plugin timeout, so Docker gets our answer, not its own
POOL_LOOP_WINDOW, POOL_LOOP_LIMIT = 2.0, 20  # RequestPool calls in that many seconds: a loop
GC_GRACE = 120.0  # an address no container uses is reclaimed after this long (docs/docker.md)
DOCKER_ID = re.compile(r"^[0-9a-f]{1,64}$")  # libnetwork's network and endpoint ids


def docker_id(body: dict[str, Any], key: str) -> str:
    """A network or endpoint id from Docker's request; UsageError naming the field if not one."""
    value = body.get(key)
    if not isinstance(value, str) or not DOCKER_ID.match(value):
        raise UsageError(f"{key} must be a hex id, got {str(value)[:80]!r}")
    return value


def error(message: str) -> dict[str, str]:
    """A failure as Docker reads it: the NetworkDriver API's field is `Err`, the IpamDriver
    API's `Error` (libnetwork's remote/api and ipams/remote/api); we send both."""
    text = f"meshnet: {message}"
    return {"Err": text, "Error": text}


def endpoint_id(eid: str) -> str:
    return f"cnm:{eid}"


def veth_names(eid: str) -> tuple[str, str]:
    """Host end and container end (before Docker renames it) of an endpoint's veth."""
    return "mnd" + eid[:11], "mne" + eid[:11]


def mac_for(eid: str) -> str:
    """A locally administered unicast MAC derived from the endpoint id (stable across calls)."""
    digest = hashlib.sha256(eid.encode()).digest()
    return ":".join(f"{b:02x}" for b in (b"\x02" + digest[:5]))


def pool_id(pool: str, sub: str = "") -> str:
    return f"meshnet:{pool}" + (f":{sub}" if sub else "")


def parse_pool_id(pid: Any) -> tuple[ipaddress.IPv4Network, ipaddress.IPv4Network | None]:
    """Raises ValueError for an id we did not make."""
    if not isinstance(pid, str) or not pid.startswith("meshnet:"):
        raise ValueError(f"unknown pool id {pid!r}")
    parts = pid.split(":")[1:]
    if len(parts) not in (1, 2):
        raise ValueError(f"unknown pool id {pid!r}")
    pool = ipaddress.IPv4Network(parts[0])
    sub = ipaddress.IPv4Network(parts[1]) if len(parts) == 2 else None
    return pool, sub


class CnmDriver:
    def __init__(
        self,
        endpoints: Endpoints,
        plumbing: Plumbing,
        store: Store,
        *,
        universe: Callable[[], str],
        clock: Callable[[], float] = time.time,
    ):
        self.service = endpoints
        self.plumbing = plumbing
        self.store = store
        self.universe = universe
        self.clock = clock
        state = store.get(KEY, {}) or {}
        self.networks: dict[str, dict[str, Any]] = state.get("networks", {})
        self.endpoints: dict[str, dict[str, Any]] = state.get("endpoints", {})
        self.addresses: dict[str, dict[str, Any]] = state.get("addresses", {})  # ip -> {owner, pool, since}
        self.calls: dict[str, int] = {}

    def _save(self) -> None:
        self.store.put(KEY, {"networks": self.networks, "endpoints": self.endpoints, "addresses": self.addresses})

    # -- dispatch --------------------------------------------------------------------------

    def routes(self) -> dict[tuple[str, str], Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]]:
        """For ApiServer: every path Docker may call, each wrapped so it never raises."""
        names = {
            "/Plugin.Activate": self.activate,
            "/NetworkDriver.GetCapabilities": self.net_capabilities,
            "/NetworkDriver.CreateNetwork": self.create_network,
            "/NetworkDriver.DeleteNetwork": self.delete_network,
            "/NetworkDriver.CreateEndpoint": self.create_endpoint,
            "/NetworkDriver.DeleteEndpoint": self.delete_endpoint,
            "/NetworkDriver.EndpointOperInfo": self.endpoint_info,
            "/NetworkDriver.Join": self.join,
            "/NetworkDriver.Leave": self.leave,
            "/NetworkDriver.DiscoverNew": self.nothing,
            "/NetworkDriver.DiscoverDelete": self.nothing,
            "/NetworkDriver.ProgramExternalConnectivity": self.nothing,
            "/NetworkDriver.RevokeExternalConnectivity": self.nothing,
            "/NetworkDriver.AllocateNetwork": self.nothing,
            "/NetworkDriver.FreeNetwork": self.nothing,
            "/IpamDriver.GetCapabilities": self.ipam_capabilities,
            "/IpamDriver.GetDefaultAddressSpaces": self.address_spaces,
            "/IpamDriver.RequestPool": self.request_pool,
            "/IpamDriver.ReleasePool": self.release_pool,
            "/IpamDriver.RequestAddress": self.request_address,
            "/IpamDriver.ReleaseAddress": self.release_address,
        }
        return {("POST", path): self._safe(path, fn) for path, fn in names.items()}

    def _safe(self, path: str, fn: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]):
        async def handler(body: dict[str, Any]) -> dict[str, Any]:
            self.calls[path] = self.calls.get(path, 0) + 1
            try:
                return await fn(body)
            except MeshnetError as exc:
                log.warning("%s failed: %s", path, exc.message)
                return error(exc.message)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:  # a field of the wrong shape
                log.warning("%s: bad request: %s: %s", path, exc.__class__.__name__, str(exc)[:200])
                return error(f"bad request to {path.lstrip('/')}: {exc.__class__.__name__}: {str(exc)[:200]}")
            except Exception as exc:
                log.exception("%s failed", path)
                return error(f"{path.lstrip('/')} failed: {exc.__class__.__name__}: {exc}")

        return handler

    async def call_path(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """Dispatch one call as Docker would (tests)."""
        handler = self.routes().get(("POST", path))
        if handler is None:
            return error(f"unsupported call {path}")
        return await handler(body)

    async def nothing(self, body: dict[str, Any]) -> dict[str, Any]:
        return {}

    async def activate(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"Implements": ["NetworkDriver", "IpamDriver"]}

    # -- IpamDriver ------------------------------------------------------------------------

    async def ipam_capabilities(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"RequiresMACAddress": False, "RequiresRequestReplay": False}

    async def address_spaces(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"LocalDefaultAddressSpace": ADDRESS_SPACE, "GlobalDefaultAddressSpace": GLOBAL_ADDRESS_SPACE}

    async def request_pool(self, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("V6"):
            raise UsageError("IPv6 pools are not supported (create the network without --ipv6)")
        universe = ipaddress.IPv4Network(self.universe())
        pool_text, sub_text = body.get("Pool") or "", body.get("SubPool") or ""
        try:
            pool = ipaddress.IPv4Network(pool_text, strict=True) if pool_text else universe
            sub = ipaddress.IPv4Network(sub_text, strict=True) if sub_text else None
        except ValueError as exc:
            raise UsageError(f"bad subnet: {exc}") from None
        if not pool.subnet_of(universe):
            raise UsageError(f"subnet {pool} is outside meshnet's allocation range {universe}")
        if not pool_text:
            self._loop_guard(universe)
        if sub is not None and not sub.subnet_of(pool):
            raise UsageError(f"ip-range {sub} is not inside subnet {pool}")
        return {"PoolID": pool_id(str(pool), str(sub) if sub else ""), "Pool": str(pool), "Data": {}}

    def _loop_guard(self, universe: ipaddress.IPv4Network) -> None:
        """libnetwork asks again, forever and at once, while the pool it got overlaps a route
        of the host's main table (unless the user chose the subnet). Break that loop with an
        error that says what to do, instead of leaving `docker network create` hanging."""
        now = self.clock()
        self._pool_asks = [t for t in getattr(self, "_pool_asks", []) if now - t < POOL_LOOP_WINDOW] + [now]
        if len(self._pool_asks) > POOL_LOOP_LIMIT:
            self._pool_asks = []
            raise Conflict(f"meshnet's range {universe} overlaps a route on this host, which Docker refuses for a pool it "
                f"did not ask for by name: give it, docker network create -d meshnet --ipam-driver meshnet "
                f"--subnet {universe} NAME (or a subnet inside it)",
            )

    async def release_pool(self, body: dict[str, Any]) -> dict[str, Any]:
        parse_pool_id(body.get("PoolID"))
        return {}

    async def request_address(self, body: dict[str, Any]) -> dict[str, Any]:
        pool, sub = parse_pool_id(body.get("PoolID"))
        options = body.get("Options") or {}
        gateway = options.get("RequestAddressType") == GATEWAY_TYPE
        owner = f"docker-{'gw' if gateway else 'ep'}:{secrets.token_hex(8)}"
        request: dict[str, Any] = {}
        wanted = body.get("Address") or ""
        if wanted:
            ip = ipaddress.IPv4Address(wanted)
            if ip not in pool:
                raise UsageError(f"address {ip} is not in subnet {pool}")
            held = self.addresses.get(str(ip))
            if held is not None:
                raise Conflict(f"address {ip} is already in use")
            request["address"] = str(ip)
        else:
            block = sub or pool
            if block != ipaddress.IPv4Network(self.universe()):
                request["subnet"] = str(block)
            request["wait"] = ALLOCATE_WAIT
        try:
            got = await self.service.allocate(owner, **request)
        except Conflict:
            raise Conflict(f"address {wanted} is already in use") from None
        ip = str(got.address)
        if ipaddress.IPv4Address(ip) not in pool:  # cannot happen with a correct IPAM; be safe
            self.service.release(owner)
            raise MeshnetError(f"IPAM gave {ip}, outside {pool}")
        self.addresses[ip] = {"owner": owner, "pool": str(pool), "since": self.clock(), "gateway": gateway}
        self._save()
        return {"Address": f"{ip}/{pool.prefixlen}", "Data": {}}

    async def release_address(self, body: dict[str, Any]) -> dict[str, Any]:
        parse_pool_id(body.get("PoolID"))
        ip = str(ipaddress.IPv4Address(str(body.get("Address") or "").split("/")[0]))
        await self._release(ip)
        return {}

    async def _release(self, ip: str) -> None:
        held = self.addresses.get(ip)
        if held is None:
            return  # twice, or never ours: idempotent
        self.service.release(held["owner"])
        self.addresses.pop(ip, None)
        self._save()

    # -- NetworkDriver ---------------------------------------------------------------------

    async def net_capabilities(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"Scope": "local", "ConnectivityScope": "global"}

    async def create_network(self, body: dict[str, Any]) -> dict[str, Any]:
        nid = docker_id(body, "NetworkID")
        if body.get("IPv6Data"):
            raise UsageError("IPv6 is not supported on meshnet networks")
        v4 = body.get("IPv4Data") or []
        if not v4 or any((d or {}).get("AddressSpace") != ADDRESS_SPACE for d in v4):
            raise UsageError("meshnet networks take their addresses from meshnet's IPAM: "
                "docker network create -d meshnet --ipam-driver meshnet NAME",
            )
        gateways = [str(d["Gateway"]).split("/")[0] for d in v4 if (d or {}).get("Gateway")]
        self.networks[nid] = {"pools": [d.get("Pool") for d in v4], "gateways": gateways, "created": self.clock()}
        self._save()
        return {}

    async def delete_network(self, body: dict[str, Any]) -> dict[str, Any]:
        self.networks.pop(docker_id(body, "NetworkID"), None)
        self._save()
        return {}

    async def create_endpoint(self, body: dict[str, Any]) -> dict[str, Any]:
        nid, eid = docker_id(body, "NetworkID"), docker_id(body, "EndpointID")
        iface = body.get("Interface") or {}
        address = iface.get("Address") or ""
        if not address:
            raise UsageError("the endpoint has no IPv4 address (use --ipam-driver meshnet)")
        if iface.get("AddressIPv6"):
            raise UsageError("IPv6 is not supported on meshnet networks")
        ipaddress.IPv4Interface(address)
        given_mac = (iface.get("MacAddress") or "").lower()
        mac = given_mac or mac_for(eid)
        host_if, peer_if = veth_names(eid)
        self.endpoints[eid] = {"network": nid, "address": address, "mac": mac, "host_if": host_if, "peer_if": peer_if, "name": ""}
        self._save()
        return {"Interface": None} if given_mac else {"Interface": {"MacAddress": mac}}

    async def endpoint_info(self, body: dict[str, Any]) -> dict[str, Any]:
        ep = self.endpoints.get(body.get("EndpointID", ""))
        if ep is None:
            return {"Value": {}}
        return {"Value": {"meshnet.host_if": ep["host_if"], "meshnet.mac": ep["mac"]}}

    async def join(self, body: dict[str, Any]) -> dict[str, Any]:
        eid = docker_id(body, "EndpointID")
        ep = self.endpoints.get(eid)
        if ep is None:
            raise NotFound(f"unknown endpoint {eid[:12]} (was it created while meshnet's state was lost?)")
        mac = await self.plumbing.add_veth_pair(ep["host_if"], ep["peer_if"], mac=ep["mac"])
        ep["mac"] = (mac or ep["mac"]).lower()
        try:
            await self._publish(eid, ep)
        except BaseException:
            await self.plumbing.delete_link(ep["host_if"])
            raise
        ep["joined"] = True
        self._save()
        return {
            "InterfaceName": {"SrcName": ep["peer_if"], "DstPrefix": DST_PREFIX},
            "Gateway": "",
            "StaticRoutes": [],
            "DisableGatewayService": True,
        }

    async def leave(self, body: dict[str, Any]) -> dict[str, Any]:
        eid = docker_id(body, "EndpointID")
        self.service.remove(endpoint_id(eid))
        ep = self.endpoints.get(eid)
        if ep is not None:
            ep["joined"] = False
            self._save()
        return {}

    async def delete_endpoint(self, body: dict[str, Any]) -> dict[str, Any]:
        eid = docker_id(body, "EndpointID")
        ep = self.endpoints.get(eid)
        host_if = ep["host_if"] if ep else veth_names(eid)[0]
        await self.plumbing.delete_link(host_if)
        self.service.remove(endpoint_id(eid))
        if self.endpoints.pop(eid, None) is not None:
            self._save()
        return {}

    # -- names and housekeeping (driven by Docker events, see service.py) ------------------

    async def _publish(self, eid: str, ep: dict[str, Any]) -> None:
        self.service.add(Endpoint(endpoint_id(eid), ep["mac"], (ep["address"],), ep.get("name", ""), ep["host_if"]))

    async def name_endpoints(self, container_name: str, networks: dict[str, dict[str, Any]]) -> None:
        """A container started: give its meshnet endpoints its name (DNS)."""
        label = dns_label(container_name)
        for net in networks.values():
            eid = (net or {}).get("EndpointID") or ""
            ep = self.endpoints.get(eid)
            if ep is None or not ep.get("joined") or ep.get("name") == label:
                continue
            ep["name"] = label
            self._save()
            await self._publish(eid, ep)

    def gateways(self, networks: set[str] | None = None) -> set[str]:
        """The gateway addresses of our networks (those of `networks` only, if given).

        Docker does not list a gateway it chose itself in a network's IPAM config when the
        subnet was given (as for the network the router creates), so the driver keeps the
        one CreateNetwork named: it is the network's as long as the network exists."""
        return {gw for nid, net in self.networks.items() if networks is None or nid in networks for gw in net.get("gateways", [])}

    async def collect_garbage(self, in_use: set[str], networks: set[str] | None = None) -> list[str]:
        """Release addresses no Docker container or network uses any more (e.g. after dockerd
        was killed and never called ReleaseAddress), once they are older than GC_GRACE.
        `networks`: the ids of our networks Docker still has; their gateways are never taken."""
        now = self.clock()
        in_use = in_use | self.gateways(networks)
        gone = [ip for ip, held in self.addresses.items() if ip not in in_use and now - held.get("since", now) > GC_GRACE]
        for ip in gone:
            log.info("releasing %s: no Docker container or network uses it", ip)
            await self._release(ip)
        return gone

    def rows(self) -> list[dict[str, Any]]:
        return [
            {"endpoint": eid, "network": ep["network"], "name": ep.get("name", ""), "mac": ep["mac"], "cidrs": [ep["address"]], "joined": bool(ep.get("joined"))}
            for eid, ep in sorted(self.endpoints.items())
        ]
