"""`meshnet attach/detach CONTAINER` and Docker's container events, against fakes."""

from __future__ import annotations

import asyncio

import pytest

from meshnet.docker.containers import KEY, ContainerManager, check_cidrs, host_if_of, mac_of
from meshnet.docker.testing import FakeEndpoints, FakeEngine, FakePlumbing, MemoryStore, direct
from meshnet.api.server import status_for
from meshnet.errors import MeshnetError

CID = "a" * 64
CID2 = "b" * 64


def run(coro):
    return asyncio.run(coro)


KERNEL = FakePlumbing()


def rig(store=None, router=None, engine=None, kernel=None):
    global KERNEL
    router = router or FakeEndpoints()
    engine = engine or FakeEngine()
    store = store or MemoryStore()
    KERNEL = kernel or FakePlumbing()
    return ContainerManager(router, engine, direct, store, KERNEL), router, engine, store


def netns(cid: str) -> str | None:
    return KERNEL.netns.get(host_if_of(cid))


def event(action: str, cid: str) -> dict:
    return {"Type": "container", "Action": action, "Actor": {"ID": cid, "Attributes": {}}}


def test_attach_allocates_and_is_idempotent():
    async def main():
        mgr, router, engine, _ = rig()
        engine.add(CID, "web")
        got = await mgr.attach("web", [])
        assert got["name"] == "web" and got["cidrs"] == ["10.32.0.1/12"]
        assert router.held == {"10.32.0.1": f"docker:{CID}"}
        ep = router.local[f"docker:{CID}"]
        assert ep["name"] == "web" and netns(CID) == "/proc/100/ns/net"
        assert ep["mac"] == mac_of(CID) and ep["host_if"] == host_if_of(CID)
        again = await mgr.attach(CID[:12], [])
        assert again["cidrs"] == got["cidrs"]
        assert router.calls().count("add") == 1
        with pytest.raises(MeshnetError) as exc:
            await mgr.attach("web", ["10.32.9.9/12"])
        assert status_for(exc.value)[0] == 409 and "already attached" in exc.value.message

    run(main())


def test_attach_with_given_address():
    async def main():
        mgr, router, engine, _ = rig()
        engine.add(CID, "db")
        got = await mgr.attach("db", ["10.32.5.5/12"])
        assert got["cidrs"] == ["10.32.5.5/12"] and router.held["10.32.5.5"] == f"docker:{CID}"

    run(main())


@pytest.mark.parametrize(
    "setup, ref, cidrs, status, words",
    [
        (None, "nope", [], 404, "no such container"),
        ("stopped", "web", [], 409, "not running"),
        (None, "web", ["10.32.0.0/12"], 400, "network or broadcast"),
        (None, "web", ["192.168.7.7/24"], 400, "outside the allocation range"),
        ("taken", "web", ["10.32.1.1/12"], 409, "already in use"),
        (None, "web", ["10.32.1.1"], 400, "ADDRESS/PREFIX"),
        (None, "web", ["fd00::1/64"], 400, "IPv4"),
        (None, "", [], 400, "container name"),
        (None, "web", "10.32.1.1/12", 400, "list"),
    ],
)
def test_bad_input_clear_errors_nothing_half_made(setup, ref, cidrs, status, words):
    async def main():
        mgr, router, engine, store = rig()
        engine.add(CID, "web", running=setup != "stopped")
        if setup == "taken":
            router.held["10.32.1.1"] = "docker:other"
        before = dict(router.held)
        with pytest.raises(MeshnetError) as exc:
            await mgr.attach(ref, cidrs)
        assert status_for(exc.value)[0] == status and words in exc.value.message
        assert router.held == before and router.local == {} and mgr.tracked == {} and KERNEL.links == {}
        assert store.get(KEY, {}) == {}

    run(main())


def test_failed_kernel_attach_releases_claim():
    async def main():
        mgr, router, engine, _ = rig()
        engine.add(CID, "web")
        KERNEL.fail = "veth went away"
        with pytest.raises(MeshnetError):
            await mgr.attach("web", ["10.32.3.3/12"])
        assert router.held == {} and mgr.tracked == {} and KERNEL.links == {}

    run(main())


def test_restart_keeps_addresses_and_rm_releases():
    async def main():
        mgr, router, engine, _ = rig()
        engine.add(CID, "web", pid=100)
        got = await mgr.attach("web", [])
        await mgr.on_event(event("die", CID))
        assert f"docker:{CID}" not in router.local, "a stopped container leaves the gossip (and DNS)"
        assert router.held == {"10.32.0.1": f"docker:{CID}"}, "but keeps its address"
        engine.add(CID, "web", pid=200)
        await mgr.on_event(event("start", CID))
        ep = router.local[f"docker:{CID}"]
        assert ep["ips"] == got["cidrs"] and netns(CID) == "/proc/200/ns/net"
        assert ep["mac"] == got["mac"], "same MAC after a restart: peers' ARP caches stay right"
        await mgr.on_event(event("die", CID))
        del engine.containers[CID]
        await mgr.on_event(event("destroy", CID))
        assert router.held == {} and router.local == {} and mgr.tracked == {} and KERNEL.links == {}

    run(main())


def test_events_of_other_containers_are_ignored():
    async def main():
        mgr, router, engine, _ = rig()
        engine.add(CID2, "other")
        for action in ("start", "die", "destroy", "exec_start"):
            await mgr.on_event(event(action, CID2))
        assert router.log == []

    run(main())


def test_reconcile_after_router_restart():
    """Tracked containers come back from the persisted state: one restarted while the router
    was down (new netns), one removed (released), one stopped (endpoint withdrawn)."""

    async def main():
        store, router = MemoryStore(), FakeEndpoints()
        mgr, _, engine, _ = rig(store, router)
        engine.add(CID, "a", pid=100)
        engine.add(CID2, "b", pid=101)
        engine.add("c" * 64, "c", pid=102)
        for ref in ("a", "b", "c"):
            await mgr.attach(ref, [])
        # the router stops; meanwhile a restarts, b is removed, c stops
        engine.add(CID, "a", pid=300)
        router.local.pop(f"docker:{CID}")  # its veth died with the old netns
        del engine.containers[CID2]
        engine.add("c" * 64, "c", running=False)
        mgr2 = ContainerManager(router, engine, direct, store, KERNEL)
        await mgr2.reconcile()
        assert netns(CID) == "/proc/300/ns/net" and f"docker:{CID}" in router.local
        assert CID2 not in mgr2.tracked and f"docker:{CID2}" not in router.held.values()
        assert f"docker:{'c' * 64}" not in router.local and f"docker:{'c' * 64}" in router.held.values()
        rows = {r["name"]: r for r in await mgr2.ps()}
        assert rows["a"]["state"] == "attached" and rows["c"]["state"].startswith("stopped")

    run(main())


def test_detach_releases_and_unknown_is_404():
    async def main():
        mgr, router, engine, _ = rig()
        engine.add(CID, "web")
        await mgr.attach("web", ["10.32.0.7/12"])
        got = await mgr.detach("web")
        assert got["released"] == ["10.32.0.7"] and router.held == {} and router.local == {}
        with pytest.raises(MeshnetError) as exc:
            await mgr.detach("web")
        assert status_for(exc.value)[0] == 404
        with pytest.raises(MeshnetError) as exc:
            await mgr.detach("ghost")
        assert status_for(exc.value)[0] == 404

    run(main())


def test_no_docker_is_a_clear_503():
    async def main():
        router = FakeEndpoints()
        mgr = ContainerManager(router, None, direct, MemoryStore(), FakePlumbing())
        with pytest.raises(MeshnetError) as exc:
            await mgr.attach("web", [])
        assert status_for(exc.value)[0] == 503 and "--docker-socket" in exc.value.message

    run(main())


def test_check_cidrs():
    assert check_cidrs(["10.32.1.5/12"]) == ["10.32.1.5/12"]
    with pytest.raises(MeshnetError):
        check_cidrs(["10.32.1.5/12", "10.32.1.5/16"])
