"""Endpoints may only use addresses this peer owns: the others are refused (taken down, not
gossiped) and come back when IPAM says they may; ports no endpoint names are taken down."""

import asyncio

from meshnet.runtime.endpoint_guard import EndpointGuard, verdicts
from meshnet.runtime.endpoint_service import EndpointService
from meshnet.runtime.endpoints import Endpoint, EndpointRegistry


class State:
    def __init__(self):
        self.data = {}

    def get(self, key, default=None):
        return self.data.get(key, default)

    def put(self, key, value):
        self.data[key] = value


class Ports:
    def __init__(self, ports=()):
        self.up = {p: True for p in ports}

    async def set_up(self, name, up):
        self.up[name] = up
        return True

    async def ports(self):
        return set(self.up)


class Ipam:
    """IPAM's `standing`: only the addresses in `ours` may be used; outside 10.32/12 is not IPAM's."""

    def __init__(self, ours):
        self.ours = set(ours)

    def standing(self, ip):
        if not ip.startswith("10.3"):
            return None
        return None if ip in self.ours else f"{ip} is not allocated on this peer"


A = Endpoint("netns:/run/netns/a", "02:00:00:00:00:0a", ("10.32.0.1/12",), "a", "mnva")
B = Endpoint("netns:/run/netns/b", "02:00:00:00:00:0b", ("10.32.0.2/12",), "b", "mnvb")
HOST = Endpoint("host:bridge", "02:00:00:00:00:0c", ("10.32.0.3/12",), "")
STATIC = Endpoint("netns:/run/netns/s", "02:00:00:00:00:0d", ("192.168.7.7/24",), "", "mnvs")


def test_verdicts_name_the_endpoints_whose_addresses_are_not_ours():
    ipam = Ipam({"10.32.0.1"})
    assert verdicts([A, B, HOST, STATIC], ipam.standing) == {
        B.id: "10.32.0.2 is not allocated on this peer",
        HOST.id: "10.32.0.3 is not allocated on this peer",
    }


def test_refused_endpoints_go_down_and_come_back_and_it_is_persisted():
    async def main():
        state, ports, ipam = State(), Ports(["mnva", "mnvb"]), Ipam({"10.32.0.1"})
        guard = EndpointGuard(state, ports, ipam.standing)
        assert guard.stale([A, B])
        assert await guard.reconcile([A, B]) is True
        assert ports.up == {"mnva": True, "mnvb": False} and not guard.allowed(B) and guard.allowed(A)
        assert not guard.stale([A, B]) and await guard.reconcile([A, B]) is False
        assert EndpointGuard(state, ports, ipam.standing).refused == {B.id: "10.32.0.2 is not allocated on this peer"}
        ipam.ours.add("10.32.0.2")  # claimed back
        assert guard.stale([A, B]) and await guard.reconcile([A, B]) is True
        assert ports.up["mnvb"] is True and guard.refused == {} and state.data["refused_endpoints"] == {}

    asyncio.run(main())


def test_orphan_ports_are_taken_down_and_forgotten_once_detached():
    async def main():
        state, ports = State(), Ports(["mntap", "vxmesh", "mnva", "mnvold"])
        guard = EndpointGuard(state, ports, Ipam({"10.32.0.1"}).standing)
        await guard.isolate_orphans(set(ports.up), {"mntap", "vxmesh"}, [A])
        assert ports.up == {"mntap": True, "vxmesh": True, "mnva": True, "mnvold": False}
        assert list(guard.refused) == ["orphan:mnvold"]
        guard.forget("netns:/run/netns/old", "mnvold")
        assert guard.refused == {}

    asyncio.run(main())


def test_refused_endpoints_are_not_gossiped():
    async def main():
        state, ports = State(), Ports(["mnva", "mnvb"])
        ipam = Ipam({"10.32.0.1"})
        registry = EndpointRegistry(state)
        gossiped = []
        service = EndpointService(
            registry=registry, ipam=ipam, plumbing=ports, universe="10.32.0.0/12", topology=lambda: None,
            publish=gossiped.append, guard=EndpointGuard(state, ports, ipam.standing), spawn=lambda coro: None,
        )
        registry.add(A)
        registry.add(B)
        await service.restore()
        assert gossiped[-1] == [A.gossip()]
        assert service.refused() == {B.id: "10.32.0.2 is not allocated on this peer"}

    asyncio.run(main())
