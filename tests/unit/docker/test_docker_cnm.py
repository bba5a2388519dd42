"""The libnetwork remote driver + IPAM driver, call by call, as dockerd 20.10 makes them
(the sequence recorded from a real dockerd 20.10), against a fake router and kernel."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from meshnet.docker.cnm import KEY, CnmDriver, mac_for, parse_pool_id, veth_names
from meshnet.docker.testing import FakeEndpoints, FakePlumbing, MemoryStore

NID = "8b9a971cad296dff2f534f8f069a2c9adcfa1604c30b731aad5ca1cb4cbe3148"
EID = "0c8fa41cdc21e802b7a1b8f0c2a5d1e4f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5"
EID2 = "9d50dd48313851cf7a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6071"


def run(coro):
    return asyncio.run(coro)


class Rig:
    def __init__(self, store: MemoryStore | None = None, router: FakeEndpoints | None = None, clock=None):
        self.router = router or FakeEndpoints()
        self.kernel = FakePlumbing()
        self.store = store or MemoryStore()
        self.now = 1000.0
        self.driver = CnmDriver(
            self.router, self.kernel, self.store, universe=lambda: "10.32.0.0/12", clock=lambda: self.now
        )

    async def __call__(self, path: str, body: dict | None = None) -> dict:
        return await self.driver.call_path(path, body or {})

    async def create_network(self, nid: str = NID, pool_req: str = "") -> tuple[str, str, str]:
        assert await self("/Plugin.Activate") == {"Implements": ["NetworkDriver", "IpamDriver"]}
        assert (await self("/NetworkDriver.GetCapabilities"))["Scope"] == "local"
        assert "Err" not in await self("/IpamDriver.GetCapabilities")
        spaces = await self("/IpamDriver.GetDefaultAddressSpaces")
        pool = await self("/IpamDriver.RequestPool", {"AddressSpace": spaces["LocalDefaultAddressSpace"], "Pool": pool_req, "SubPool": "", "Options": {}, "V6": False})
        assert "Err" not in pool, pool
        gw = await self("/IpamDriver.RequestAddress", {"PoolID": pool["PoolID"], "Address": "", "Options": {"RequestAddressType": "com.docker.network.gateway"}})
        assert "Err" not in gw, gw
        created = await self(
            "/NetworkDriver.CreateNetwork",
            {
                "NetworkID": nid,
                "Options": {"com.docker.network.enable_ipv6": False, "com.docker.network.generic": {}},
                "IPv4Data": [{"AddressSpace": "meshnet", "Gateway": gw["Address"], "Pool": pool["Pool"]}],
                "IPv6Data": [],
            },
        )
        assert created == {}, created
        return pool["PoolID"], pool["Pool"], gw["Address"]

    async def run_container(self, pool_id: str, eid: str = EID, nid: str = NID) -> str:
        addr = await self("/IpamDriver.RequestAddress", {"PoolID": pool_id, "Address": "", "Options": None})
        assert "Err" not in addr, addr
        ep = await self("/NetworkDriver.CreateEndpoint", {"NetworkID": nid, "EndpointID": eid, "Interface": {"Address": addr["Address"], "AddressIPv6": "", "MacAddress": ""}, "Options": {}})
        assert ep == {"Interface": {"MacAddress": mac_for(eid)}}
        join = await self("/NetworkDriver.Join", {"NetworkID": nid, "EndpointID": eid, "SandboxKey": "/var/run/docker/netns/abc", "Options": {}})
        assert join["DisableGatewayService"] is True
        assert join["Gateway"] == ""
        assert join["InterfaceName"]["SrcName"] == veth_names(eid)[1]
        for _ in range(2):
            assert "Value" in await self("/NetworkDriver.EndpointOperInfo", {"NetworkID": nid, "EndpointID": eid})
        return addr["Address"]

    async def stop_container(self, pool_id: str, address: str, eid: str = EID, nid: str = NID) -> None:
        assert await self("/NetworkDriver.Leave", {"NetworkID": nid, "EndpointID": eid}) == {}
        assert await self("/NetworkDriver.DeleteEndpoint", {"NetworkID": nid, "EndpointID": eid}) == {}
        assert await self("/IpamDriver.ReleaseAddress", {"PoolID": pool_id, "Address": address.split("/")[0]}) == {}


def test_full_lifecycle_as_observed():
    async def main():
        rig = Rig()
        pool_id, pool, gw = await rig.create_network()
        assert pool == "10.32.0.0/12"
        assert parse_pool_id(pool_id) == (ipaddress.IPv4Network(pool), None)
        address = await rig.run_container(pool_id)
        ip = address.split("/")[0]
        assert address.endswith("/12") and ip != gw.split("/")[0]
        # the endpoint is on the bridge and gossiped with its MAC and address
        host_if = veth_names(EID)[0]
        assert rig.kernel.links[host_if] == mac_for(EID)
        assert rig.router.local[f"cnm:{EID}"]["ips"] == [address]
        assert rig.router.local[f"cnm:{EID}"]["host_if"] == host_if
        # disconnect / connect / stop / start / rm -f: Leave, DeleteEndpoint, ReleaseAddress each time
        await rig.stop_container(pool_id, address)
        assert host_if not in rig.kernel.links and f"cnm:{EID}" not in rig.router.local
        assert ip not in rig.router.held
        address2 = await rig.run_container(pool_id, EID2)
        await rig.stop_container(pool_id, address2, EID2)
        # network rm: ReleaseAddress (gateway), ReleasePool, DeleteNetwork
        assert await rig("/IpamDriver.ReleaseAddress", {"PoolID": pool_id, "Address": gw.split("/")[0]}) == {}
        assert await rig("/IpamDriver.ReleasePool", {"PoolID": pool_id}) == {}
        assert await rig("/NetworkDriver.DeleteNetwork", {"NetworkID": NID}) == {}
        assert rig.router.held == {}, "every address handed out came back"
        assert rig.driver.networks == {} and rig.driver.endpoints == {} and rig.driver.addresses == {}

    run(main())


def test_calls_never_made_on_local_networks_still_answer():
    async def main():
        rig = Rig()
        for path in (
            "/NetworkDriver.ProgramExternalConnectivity",
            "/NetworkDriver.RevokeExternalConnectivity",
            "/NetworkDriver.DiscoverNew",
            "/NetworkDriver.DiscoverDelete",
            "/NetworkDriver.AllocateNetwork",
            "/NetworkDriver.FreeNetwork",
        ):
            assert await rig(path, {"NetworkID": NID}) == {}
        assert "Err" in await rig("/NetworkDriver.Bogus", {})

    run(main())


def test_dockerd_restart_without_create_network_replay():
    """After a dockerd restart Docker sends RequestAddress/CreateEndpoint/Join for a network
    whose CreateNetwork and RequestPool it does not replay; and after a router restart the
    plugin has only its persisted state."""

    async def main():
        store = MemoryStore()
        router = FakeEndpoints()
        rig = Rig(store, router)
        pool_id, _, _ = await rig.create_network()
        address = await rig.run_container(pool_id)
        # dockerd shuts down: Leave, DeleteEndpoint, ReleaseAddress
        await rig.stop_container(pool_id, address)
        # router restarts in between: a fresh driver on the same store
        rig2 = Rig(store, router)
        assert NID in rig2.driver.networks
        address2 = await rig2.run_container(pool_id, EID2)  # no CreateNetwork/RequestPool
        assert ipaddress.IPv4Interface(address2).ip in ipaddress.IPv4Network("10.32.0.0/12")
        # and a third driver (router restarted again) can still tear it down
        rig3 = Rig(store, router)
        await rig3.stop_container(pool_id, address2, EID2)
        assert veth_names(EID2)[0] not in rig3.kernel.links
        assert list(router.held.values()) == [o for o in router.held.values() if o.startswith("docker-gw:")]

    run(main())


def test_state_is_persisted_under_one_key():
    async def main():
        rig = Rig()
        pool_id, _, _ = await rig.create_network()
        await rig.run_container(pool_id)
        state = rig.store.get(KEY)
        assert set(state) == {"networks", "endpoints", "addresses"}
        assert state["endpoints"][EID]["joined"] is True
        assert len(state["addresses"]) == 2  # gateway + endpoint

    run(main())


def test_release_is_idempotent():
    async def main():
        rig = Rig()
        pool_id, _, _ = await rig.create_network()
        address = await rig.run_container(pool_id)
        await rig.stop_container(pool_id, address)
        await rig.stop_container(pool_id, address)  # Docker may repeat after a crash
        assert await rig("/IpamDriver.ReleaseAddress", {"PoolID": pool_id, "Address": "10.99.0.1"}) == {}

    run(main())


def test_user_subnet_and_static_address():
    async def main():
        rig = Rig()
        pool_id, pool, _ = await rig.create_network(pool_req="10.33.0.0/16")
        assert pool == "10.33.0.0/16"
        got = await rig("/IpamDriver.RequestAddress", {"PoolID": pool_id, "Address": "10.33.0.50", "Options": {}})
        assert got["Address"] == "10.33.0.50/16"
        again = await rig("/IpamDriver.RequestAddress", {"PoolID": pool_id, "Address": "10.33.0.50", "Options": {}})
        assert "already in use" in again["Err"]
        other = await rig("/IpamDriver.RequestAddress", {"PoolID": pool_id, "Address": "", "Options": None})
        assert ipaddress.IPv4Interface(other["Address"]).ip in ipaddress.IPv4Network("10.33.0.0/16")
        outside = await rig("/IpamDriver.RequestAddress", {"PoolID": pool_id, "Address": "10.34.0.5", "Options": {}})
        assert "not in subnet" in outside["Err"]

    run(main())


@pytest.mark.parametrize(
    "body, message",
    [
        ({"Pool": "192.168.5.0/24"}, "outside meshnet's allocation range"),
        ({"Pool": "10.32.0.0/33"}, "bad subnet"),
        ({"Pool": "10.32.0.0/16", "SubPool": "10.40.0.0/24"}, "not inside subnet"),
        ({"V6": True}, "IPv6"),
    ],
)
def test_bad_pools(body, message):
    rig = Rig()
    got = run(rig("/IpamDriver.RequestPool", {"AddressSpace": "meshnet", "Pool": "", "SubPool": "", "Options": {}, **body}))
    assert message in got["Err"]


def test_network_with_docker_default_ipam_is_refused():
    rig = Rig()
    got = run(
        rig(
            "/NetworkDriver.CreateNetwork",
            {"NetworkID": NID, "Options": {}, "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "172.18.0.0/16", "Gateway": "172.18.0.1/16"}], "IPv6Data": []},
        )
    )
    assert "--ipam-driver meshnet" in got["Err"]
    assert rig.driver.networks == {}


def test_address_in_use_by_another_owner():
    async def main():
        router = FakeEndpoints()
        router.held["10.32.0.9"] = "docker:someone-else"
        rig = Rig(router=router)
        pool_id, _, _ = await rig.create_network()
        got = await rig("/IpamDriver.RequestAddress", {"PoolID": pool_id, "Address": "10.32.0.9", "Options": {}})
        assert "already in use" in got["Err"]
        assert router.held["10.32.0.9"] == "docker:someone-else"

    run(main())


def test_join_failure_leaves_nothing():
    async def main():
        rig = Rig()
        pool_id, _, _ = await rig.create_network()
        addr = await rig("/IpamDriver.RequestAddress", {"PoolID": pool_id, "Address": "", "Options": None})
        await rig("/NetworkDriver.CreateEndpoint", {"NetworkID": NID, "EndpointID": EID, "Interface": {"Address": addr["Address"]}})
        rig.kernel.fail = "no bridge"
        got = await rig("/NetworkDriver.Join", {"NetworkID": NID, "EndpointID": EID, "SandboxKey": "/x"})
        assert "no bridge" in got["Err"]
        assert rig.kernel.links == {} and f"cnm:{EID}" not in rig.router.local
        assert "Err" in await rig("/NetworkDriver.Join", {"NetworkID": NID, "EndpointID": "unknown"})

    run(main())


@pytest.mark.parametrize(
    "path, body",
    [
        ("/NetworkDriver.CreateEndpoint", {}),
        ("/NetworkDriver.CreateEndpoint", {"NetworkID": NID, "EndpointID": EID, "Interface": {"Address": "bogus"}}),
        ("/NetworkDriver.CreateEndpoint", {"NetworkID": NID, "EndpointID": EID, "Interface": None}),
        ("/IpamDriver.RequestAddress", {"PoolID": "tbpool-10.40.0.0/16"}),
        ("/IpamDriver.RequestAddress", {"PoolID": 7}),
        ("/IpamDriver.ReleaseAddress", {"PoolID": "meshnet:10.32.0.0/12", "Address": "x"}),
        ("/NetworkDriver.Join", {"EndpointID": None}),
    ],
)
def test_malformed_calls_get_err_not_exceptions(path, body):
    got = run(Rig()(path, body))
    assert set(got) == {"Err", "Error"} and got["Err"].startswith("meshnet: ") and got["Error"] == got["Err"]


def test_given_mac_is_kept_and_names_follow_container_start():
    async def main():
        rig = Rig()
        pool_id, _, _ = await rig.create_network()
        addr = await rig("/IpamDriver.RequestAddress", {"PoolID": pool_id, "Address": "", "Options": None})
        mac = "02:42:0a:20:00:07"
        got = await rig("/NetworkDriver.CreateEndpoint", {"NetworkID": NID, "EndpointID": EID, "Interface": {"Address": addr["Address"], "MacAddress": mac}})
        assert got == {"Interface": None}
        await rig("/NetworkDriver.Join", {"NetworkID": NID, "EndpointID": EID, "SandboxKey": "/x"})
        assert rig.router.local[f"cnm:{EID}"]["mac"] == mac
        await rig.driver.name_endpoints("/Web_1", {"n": {"EndpointID": EID}})
        assert rig.router.local[f"cnm:{EID}"]["name"] == "web-1"

    run(main())


def test_garbage_collection_after_grace():
    async def main():
        rig = Rig()
        pool_id, _, gw = await rig.create_network()
        address = await rig.run_container(pool_id)
        leaked = await rig("/IpamDriver.RequestAddress", {"PoolID": pool_id, "Address": "", "Options": None})
        in_use = {gw.split("/")[0], address.split("/")[0]}
        assert await rig.driver.collect_garbage(in_use) == []  # too young
        rig.now += 1000
        gone = await rig.driver.collect_garbage(in_use)
        assert gone == [leaked["Address"].split("/")[0]]
        assert set(rig.router.held) == in_use

    run(main())


def test_the_gateway_is_never_collected_while_its_network_exists():
    """Docker lists no gateway in the IPAM config of a network created with a subnet (the
    router's own network is), so Docker's in-use set lacks it; the driver keeps the gateway
    CreateNetwork named until the network is gone, and never gives it to a container."""

    async def main():
        rig = Rig()
        pool_id, _, gw = await rig.create_network()
        gw_ip = gw.split("/")[0]
        address = await rig.run_container(pool_id)
        in_use = {address.split("/")[0]}  # what Docker reports: containers only
        rig.now += 1000
        assert await rig.driver.collect_garbage(in_use, networks={NID}) == []
        assert await rig.driver.collect_garbage(in_use) == []  # without Docker's list: every network we know
        assert rig.router.held[gw_ip].startswith("docker-gw:")
        second = await rig.run_container(pool_id, eid=EID2)
        assert second.split("/")[0] != gw_ip
        # the network went away while we were not told (dockerd killed): now it is garbage
        assert await rig.driver.collect_garbage(in_use | {second.split("/")[0]}, networks=set()) == [gw_ip]
        assert gw_ip not in rig.router.held

    run(main())


def test_request_pool_loop_is_broken_with_advice():
    """libnetwork re-asks forever while the default pool overlaps a host route."""

    async def main():
        rig = Rig()
        body = {"AddressSpace": "meshnet", "Pool": "", "SubPool": "", "Options": {}, "V6": False}
        answers = [await rig("/IpamDriver.RequestPool", body) for _ in range(25)]
        errors = [a for a in answers if "Err" in a]
        assert len(errors) == 1 and "--subnet 10.32.0.0/12" in errors[0]["Error"]
        rig.now += 10  # a later, normal create is not affected
        assert "Err" not in await rig("/IpamDriver.RequestPool", body)
        named = {**body, "Pool": "10.32.0.0/16"}
        for _ in range(30):
            assert "Err" not in await rig("/IpamDriver.RequestPool", named)

    run(main())
