"""The node agent (meshnet/k8s/nodes.py) against the fake API server, with a fake mesh and
IPAM: deleted nodes' space reclaimed once, only when unreachable too, by one router;
rebooting nodes keep theirs; NetworkUnavailable set once ready and again if reset. No root."""

from __future__ import annotations

import asyncio

import pytest

from fakeapi import FakeApi, node_object

from meshnet.docker.testing import MemoryStore
from meshnet.errors import Unavailable
from meshnet.k8s.client import KubeClient, KubeConfig
from meshnet.k8s.nodes import NICKS_KEY, NodeAgent

A, B, C = bytes([1]) * 16, bytes([2]) * 16, bytes([3]) * 16
NICK = {A: "node-a", B: "node-b", C: "node-c"}


class FakeMesh:
    def __init__(self, me: bytes):
        self.name = me
        self.reachable = {A, B, C} - {me}
        self.known = {A, B, C}

    def peers(self):
        return [(p, NICK[p], p in self.reachable) for p in sorted(self.known)]


class FakeIpam:
    """One shared ring: owners and who reclaimed what (as the real ring converges to)."""

    def __init__(self, ring: dict, me: bytes, mesh: FakeMesh):
        self.ring, self.me, self.mesh = ring, me, mesh
        self.calls: list[bytes] = []
        self.state = "ready"

    def status(self):
        peers = {p.hex(): {"reachable": p == self.me or p in self.mesh.reachable} for p in self.ring["owners"]}
        return {"state": self.state, "peers": peers}

    def rmpeer(self, peer: bytes) -> int:
        if peer in self.mesh.reachable:
            raise Unavailable("reachable")
        self.calls.append(peer)
        self.ring["owners"].discard(peer)
        self.ring["reclaims"].append((self.me, peer))
        return 1024


@pytest.fixture
def fake():
    api = FakeApi(bookmark_interval=None, rules=[{"apiGroups": [""], "resources": ["nodes"], "verbs": ["list", "watch"]},
                                                 {"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["patch"]}])
    api.start()
    for peer, nick in NICK.items():
        api.create("nodes", node_object(nick, f"192.0.2.{peer[0]}"))
    yield api
    api.stop()


def agents(fake, ring, ready=lambda: True, fallback=30.0, clock=None):
    out = []
    for me in (A, B, C):
        mesh = FakeMesh(me)
        ipam = FakeIpam(ring, me, mesh)
        kw = {"clock": clock} if clock else {}
        out.append(NodeAgent(KubeClient(KubeConfig(fake.url), timeout=5), node_name=NICK[me], mesh=mesh, ipam=ipam,
                             store=MemoryStore(), ready=ready, fallback=fallback, reconcile=0.1, **kw))
    return out


async def until(predicate, timeout=10.0):
    end = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


def test_a_deleted_unreachable_node_is_reclaimed_once_by_one_router(fake):
    ring = {"owners": {A, B, C}, "reclaims": []}

    async def go():
        a, b, c = agents(fake, ring)
        tasks = [asyncio.ensure_future(x.run()) for x in (a, b)]  # C is the node that goes away
        try:
            await until(lambda: a.informer.synced and b.informer.synced)
            await asyncio.sleep(0.3)
            # C unreachable but its Node is there (a reboot): nothing happens
            for x in (a, b):
                x.mesh.reachable.discard(C)
            await asyncio.sleep(0.5)
            assert ring["reclaims"] == [] and not a.pending
            # the Node is deleted: the lowest-named reachable router (A) reclaims, once
            fake.delete("nodes", "node-c")
            await until(lambda: ring["reclaims"])
            await asyncio.sleep(0.5)
            assert ring["reclaims"] == [(A, C)]
            assert a.reclaimed == {C.hex(): 1024} and b.reclaimed == {}
        finally:
            for t in tasks:
                t.cancel()

    asyncio.run(go())


def test_a_deleted_node_whose_router_is_still_reachable_is_left_alone(fake):
    ring = {"owners": {A, B, C}, "reclaims": []}

    async def go():
        a, b, _ = agents(fake, ring)
        tasks = [asyncio.ensure_future(x.run()) for x in (a, b)]
        try:
            await until(lambda: a.informer.synced and b.informer.synced)
            fake.delete("nodes", "node-c")
            await asyncio.sleep(0.8)
            assert ring["reclaims"] == []
            # ... until it is gone too
            for x in (a, b):
                x.mesh.reachable.discard(C)
            await until(lambda: ring["reclaims"] == [(A, C)])
        finally:
            for t in tasks:
                t.cancel()

    asyncio.run(go())


def test_the_others_step_in_after_the_fallback_when_the_chosen_one_is_silent(fake):
    ring = {"owners": {A, B, C}, "reclaims": []}
    now = [1000.0]

    async def go():
        _, b, _ = agents(fake, ring, fallback=30.0, clock=lambda: now[0])
        b.mesh.reachable.discard(C)
        task = asyncio.ensure_future(b.run())  # A (the chosen one) runs no agent
        try:
            await until(lambda: b.informer.synced)
            fake.delete("nodes", "node-c")
            await until(lambda: C.hex() in b.pending)
            await asyncio.sleep(0.3)
            assert ring["reclaims"] == []
            now[0] += 31
            await until(lambda: ring["reclaims"] == [(B, C)])
        finally:
            task.cancel()

    asyncio.run(go())


def test_nicknames_outlive_the_topology_entry(fake):
    """The mesh forgets an unreachable peer after a while; the agent still maps it."""
    ring = {"owners": {A, B, C}, "reclaims": []}

    async def go():
        a, _, _ = agents(fake, ring)
        a.reconcile()
        assert a.store.get(NICKS_KEY)[C.hex()] == "node-c"
        a.mesh.reachable.discard(C)
        a.mesh.known.discard(C)  # gone from the topology
        task = asyncio.ensure_future(a.run())
        try:
            await until(lambda: a.informer.synced)
            fake.delete("nodes", "node-c")
            await until(lambda: ring["reclaims"] == [(A, C)])
        finally:
            task.cancel()

    asyncio.run(go())


def test_network_unavailable_false_once_ready_and_again_if_reset(fake):
    ring = {"owners": {A, B, C}, "reclaims": []}
    ready = [False]

    def cond(name):
        return next((c for c in fake.get("nodes", name)["status"]["conditions"] if c["type"] == "NetworkUnavailable"), None)

    async def go():
        a, _, _ = agents(fake, ring, ready=lambda: ready[0])
        task = asyncio.ensure_future(a.run())
        try:
            await until(lambda: a.informer.synced)
            await asyncio.sleep(0.3)
            assert cond("node-a") is None  # not ready: not claimed
            ready[0] = True
            await until(lambda: cond("node-a") is not None)
            got = cond("node-a")
            assert got["status"] == "False" and got["reason"] == "MeshnetIsUp"
            assert cond("node-b") is None  # only its own node
            patches = [x for x in fake.audit if x[0] == "patch"]
            # something sets it True again (a node re-registered): set back to False
            node = fake.get("nodes", "node-a")
            node["status"]["conditions"] = [dict(c, status="True") if c["type"] == "NetworkUnavailable" else c for c in node["status"]["conditions"]]
            fake.update("nodes", node)
            await until(lambda: cond("node-a")["status"] == "False")
            assert len([x for x in fake.audit if x[0] == "patch"]) == len(patches) + 1
            # everything it did is within the manifest's RBAC (the fake answers 403 otherwise)
            assert {(v, r) for v, _, r in fake.audit} <= {("list", "nodes"), ("watch", "nodes"), ("patch", "nodes/status")}
        finally:
            task.cancel()

    asyncio.run(go())
