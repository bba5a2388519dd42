"""The pod network's node side (meshnet/k8s/podnet.py) with fake ports: the guard before
forwarding, a gateway from IPAM that stays the same across restarts, /podnet only when ready."""

from __future__ import annotations

import asyncio

import pytest

from meshnet.docker.testing import FakeEndpoints, MemoryStore
from meshnet.errors import Unavailable
from meshnet.k8s.podnet import BRIDGE_NF, GATEWAY_ENDPOINT, GATEWAY_OWNER, TABLE, PodNetwork


class FakePlumbing:
    mtu = 1376
    bridge = "meshnet"

    def __init__(self, bridge_nf: bool = True):
        self.log: list[tuple] = []
        self.sysctls = {"net.ipv4.ip_forward": "0", "net.ipv4.conf.all.send_redirects": "1", "net/ipv4/conf/meshnet/send_redirects": "1",
                        **({BRIDGE_NF: "0"} if bridge_nf else {})}

    async def set_bridge_address(self, cidr, present):
        self.log.append(("address", cidr, present))
        return True

    async def bridge_mac(self):
        return "02:00:00:00:00:01"

    async def set_nat(self, table, overlay, enabled, *, non_masquerade=()):
        self.log.append(("nat", table, overlay, enabled, non_masquerade))

    async def sysctl(self, key, value=None):
        old = self.sysctls.get(key)
        if value is not None and old is not None:
            self.sysctls[key] = value
            self.log.append(("sysctl", key, value))
        return old

    async def pin_forwarding(self):
        self.log.append(("forwarding",))
        return await self.sysctl("net.ipv4.ip_forward", "1")


class SlowEndpoints(FakeEndpoints):
    """IPAM without a ring for the first `busy` calls."""

    def __init__(self, busy: int):
        super().__init__()
        self.busy = busy

    async def allocate(self, owner, **kw):
        if self.busy:
            self.busy -= 1
            raise Unavailable("awaiting consensus (quorum: 2, known: 1)")
        return await super().allocate(owner, **kw)


def test_guard_first_then_forwarding_then_the_gateway(monkeypatch):
    monkeypatch.setattr("meshnet.k8s.podnet.RETRY", (0.01, 0.02))

    async def go():
        plumbing, endpoints, store = FakePlumbing(), SlowEndpoints(busy=2), MemoryStore()
        net = PodNetwork(endpoints=endpoints, plumbing=plumbing, store=store, universe="10.32.0.0/12", non_masquerade=("192.168.0.0/16",))
        await net.start()
        assert plumbing.log[0] == ("nat", TABLE, "10.32.0.0/12", True, ("192.168.0.0/16",))
        assert plumbing.log[1] == ("forwarding",)
        assert plumbing.sysctls == {"net.ipv4.ip_forward": "1", BRIDGE_NF: "1", "net.ipv4.conf.all.send_redirects": "0",
                                    "net/ipv4/conf/meshnet/send_redirects": "0"}
        with pytest.raises(Unavailable, match="consensus|waiting"):
            net.info()
        assert await net.wait_ready(5)
        info = net.info()
        assert info["gateway"] == "10.32.0.1" and info["mtu"] == 1376 and info["non_masquerade"] == ["10.32.0.0/12", "192.168.0.0/16"]
        assert ("address", "10.32.0.1/12", True) in plumbing.log
        assert endpoints.owners() == {GATEWAY_OWNER: ["10.32.0.1"]}
        assert endpoints.local[GATEWAY_ENDPOINT]["ips"] == ["10.32.0.1/12"]
        await net.stop()
        # a restarted router gets the same gateway (the same owner in IPAM)
        await endpoints.allocate("cni:x")  # another address taken meanwhile must not move it
        again = PodNetwork(endpoints=endpoints, plumbing=FakePlumbing(), store=store, universe="10.32.0.0/12")
        await again.start()
        assert await again.wait_ready(5) and again.gateway == "10.32.0.1/12"
        await again.stop()

    asyncio.run(go())


def test_without_br_netfilter_it_says_so():
    async def go():
        plumbing = FakePlumbing(bridge_nf=False)
        net = PodNetwork(endpoints=FakeEndpoints(), plumbing=plumbing, store=MemoryStore(), universe="10.32.0.0/12")
        await net.start()
        assert await net.wait_ready(5)
        assert net.info()["bridge_nf_call_iptables"] is False
        await net.stop()

    asyncio.run(go())
