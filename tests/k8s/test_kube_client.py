"""meshnet.k8s.client and informer against the fake API server (tests/k8s/fakeapi.py), and
the fake against what the real API server does (the shapes agents depend on). No root."""

from __future__ import annotations

import asyncio
import json
import socket
import threading

import pytest

from fakeapi import FakeApi, node_object

from meshnet.k8s.client import (
    NETWORK_POLICIES,
    NODES,
    PODS,
    KubeApiError,
    KubeClient,
    KubeConfig,
    KubeProtocolError,
    KubeUnreachable,
    parse_event,
)
from meshnet.k8s.informer import Backoff, Informer


@pytest.fixture
def fake():
    api = FakeApi(bookmark_interval=None)
    api.start()
    yield api
    api.stop()


def client_for(fake: FakeApi, **kw) -> KubeClient:
    return KubeClient(KubeConfig(fake.url), timeout=5, **kw)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


async def until(predicate, timeout=10.0):
    end = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def test_list_pages_and_shapes(fake):
    for i in range(7):
        fake.create("nodes", node_object(f"n{i}", f"192.168.90.{10 + i}"))
    items, rv = run(client_for(fake).list(NODES, limit=3))
    assert [i["metadata"]["name"] for i in items] == [f"n{i}" for i in range(7)]
    assert rv == str(fake.rv)
    assert "kind" not in items[0] and items[0]["metadata"]["uid"]  # list items carry no kind, as the API serves them
    one = run(client_for(fake).get(NODES, "n3"))
    assert one["kind"] == "Node" and one["apiVersion"] == "v1"


def test_expired_continue_token_is_410(fake):
    for i in range(4):
        fake.create("nodes", node_object(f"n{i}", "10.0.0.1"))

    async def go():
        c = client_for(fake)
        page = await c.request("GET", NODES.path(), query={"limit": 2})
        fake.compact()
        with pytest.raises(KubeApiError) as err:
            await c.request("GET", NODES.path(), query={"limit": 2, "continue": page["metadata"]["continue"]})
        assert err.value.gone

    run(go())


def test_watch_events_after_version_and_bookmarks(fake):
    fake.create("nodes", node_object("a", "10.0.0.1"))

    async def go():
        c = client_for(fake)
        _, rv = await c.list(NODES)
        fake.create("nodes", node_object("b", "10.0.0.2"))
        fake.update("nodes", {**fake.get("nodes", "b"), "spec": {"unschedulable": True}})
        fake.delete("nodes", "a")
        got = []
        async for ev in c.watch(NODES, resource_version=rv, timeout_seconds=2):
            got.append((ev.type, ev.object["metadata"]["name"] if ev.type != "BOOKMARK" else "", ev.resource_version))
            if len(got) == 3:
                fake.bookmark()
            if ev.type == "BOOKMARK":
                break
        assert [g[:2] for g in got] == [("ADDED", "b"), ("MODIFIED", "b"), ("DELETED", "a"), ("BOOKMARK", "")]
        assert got[-1][2] == str(fake.rv)

    run(go())


def test_watch_from_a_compacted_version_is_gone(fake):
    fake.create("nodes", node_object("a", "10.0.0.1"))
    old = str(fake.rv)
    fake.create("nodes", node_object("b", "10.0.0.2"))
    fake.compact()

    async def go():
        with pytest.raises(KubeApiError) as err:
            async for _ in client_for(fake).watch(NODES, resource_version=old, timeout_seconds=2):
                pass
        assert err.value.code == 410 and err.value.reason == "Expired"

    run(go())


def test_watch_under_a_label_selector_sees_objects_leave_and_enter(fake):
    pod = {"metadata": {"name": "p", "labels": {"app": "web"}}, "spec": {}}
    fake.create("pods", pod, namespace="ns1")

    async def go():
        c = client_for(fake)
        items, rv = await c.list(PODS, namespace="ns1", label_selector="app in (web,api),tier!=db")
        assert [i["metadata"]["name"] for i in items] == ["p"]
        obj = fake.get("pods", "p", "ns1")
        fake.update("pods", {**obj, "metadata": {**obj["metadata"], "labels": {"app": "db"}}})
        fake.update("pods", {**obj, "metadata": {**obj["metadata"], "labels": {"app": "api"}}})
        got = []
        async for ev in c.watch(PODS, namespace="ns1", resource_version=rv, label_selector="app in (web,api)", timeout_seconds=1):
            got.append(ev.type)
        assert got == ["DELETED", "ADDED"]

    run(go())


def test_status_patch_merges_conditions_by_type(fake):
    fake.create("nodes", node_object("n1", "10.0.0.1"))

    async def go():
        c = client_for(fake)
        cond = {"type": "NetworkUnavailable", "status": "False", "reason": "MeshnetIsUp", "message": "up"}
        out = await c.patch(NODES, "n1", {"status": {"conditions": [cond]}}, subresource="status")
        assert {x["type"] for x in out["status"]["conditions"]} == {"Ready", "NetworkUnavailable"}
        # the main resource never changes status
        await c.patch(NODES, "n1", {"status": {"conditions": []}, "metadata": {"labels": {"x": "y"}}})
        node = fake.get("nodes", "n1")
        assert len(node["status"]["conditions"]) == 2 and node["metadata"]["labels"]["x"] == "y"

    run(go())


def test_in_cluster_config_tls_token_and_rbac():
    fake = FakeApi(token="s3cret", tls=True, rules=[{"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]}])
    fake.start()
    try:
        fake.create("nodes", node_object("n1", "10.0.0.1"))
        sa = fake.service_account_dir()
        env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(fake.port)}
        config = KubeConfig.from_env(env, sa_dir=sa)
        assert config.server == f"https://127.0.0.1:{fake.port}" and config.ca_file

        async def go():
            c = KubeClient(config, timeout=5)
            items, _ = await c.list(NODES)
            assert len(items) == 1
            with pytest.raises(KubeApiError) as err:
                await c.get(NODES, "n1")  # RBAC grants list, not get
            assert err.value.code == 403
            with open(f"{sa}/token", "w") as f:
                f.write("wrong")
            c2 = KubeClient(config, timeout=5)
            with pytest.raises(KubeApiError) as err:
                await c2.list(NODES)
            assert err.value.code == 401
            # without the CA the server's certificate is refused
            with pytest.raises(KubeUnreachable):
                await KubeClient(KubeConfig(config.server), timeout=5).list(NODES)

        run(go())
        assert ("list", "", "nodes") in fake.audit and ("get", "", "nodes") in fake.audit
    finally:
        fake.stop()
    assert KubeConfig.from_env({}) is None
    assert KubeConfig.from_env({"MESHNET_KUBE_API": "none", "KUBERNETES_SERVICE_HOST": "h"}) is None


def test_resource_paths():
    assert NODES.path(name="n1", subresource="status") == "/api/v1/nodes/n1/status"
    assert NETWORK_POLICIES.path(namespace="a") == "/apis/networking.k8s.io/v1/namespaces/a/networkpolicies"
    assert PODS.path() == "/api/v1/pods"
    with pytest.raises(ValueError):
        NODES.path(name="../x")


def test_hostile_events_are_protocol_errors():
    for line in (b"nope", b"[]", b'{"type":"ADDED"}', b'{"type":"WAT","object":{}}', b'{"type":"ADDED","object":{"metadata":{}}}'):
        with pytest.raises(KubeProtocolError):
            parse_event(line)
    with pytest.raises(KubeApiError) as err:
        parse_event(json.dumps({"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired"}}).encode())
    assert err.value.gone


def _raw_server(reply: bytes):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)

    def serve():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            conn.recv(65536)
            try:
                conn.sendall(reply)
            except OSError:
                pass
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    return srv


@pytest.mark.parametrize("reply", [
    b"garbage\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]",
])
def test_hostile_server_replies_are_errors_not_crashes(reply):
    srv = _raw_server(reply)
    try:
        c = KubeClient(KubeConfig(f"http://127.0.0.1:{srv.getsockname()[1]}"), timeout=3)
        with pytest.raises((KubeProtocolError, KubeUnreachable)):
            run(c.list(NODES))
    finally:
        srv.close()


def test_informer_resumes_relists_after_410_and_tells_what_was_missed(fake):
    fake.create("nodes", node_object("a", "10.0.0.1"))
    fake.create("nodes", node_object("b", "10.0.0.2"))
    seen: list[tuple[str, str]] = []
    synced = []

    async def go():
        inf = Informer(client_for(fake), NODES, on_change=lambda k, o, old: seen.append((k, o["metadata"]["name"])),
                       on_synced=lambda: synced.append(len(seen)), watch_timeout=60, backoff=Backoff(0.05, 0.2))
        task = asyncio.ensure_future(inf.run())
        try:
            assert await inf.wait_synced(10)
            assert sorted(seen) == [("ADDED", "a"), ("ADDED", "b")]
            fake.create("nodes", node_object("c", "10.0.0.3"))
            await until(lambda: ("ADDED", "c") in seen)
            # a dropped connection: resume from the last version, no relist, nothing missed twice
            fake.drop_watches()
            await until(lambda: inf.counters["watches"] >= 2)
            fake.delete("nodes", "a")
            await until(lambda: ("DELETED", "a") in seen)
            assert inf.counters["lists"] == 1
            # history compacted while the connection is down: 410, list again, the gap told
            await until(lambda: len(fake._watchers) == 1)
            with fake.cond:
                fake.drop_watches()
                fake.delete("nodes", "b")
                fake.create("nodes", node_object("d", "10.0.0.4"))
                fake.compact()
            await until(lambda: inf.counters["lists"] == 2)
            await until(lambda: ("DELETED", "b") in seen and ("ADDED", "d") in seen)
            assert inf.counters["relists_gone"] == 1
            assert sorted(inf.cache) == ["c", "d"]
            assert seen.count(("ADDED", "c")) == 1 and seen.count(("DELETED", "a")) == 1
            assert len(synced) == 2
        finally:
            task.cancel()

    run(go())


def test_informer_survives_callback_bugs_and_bounds_its_cache(fake):
    for i in range(5):
        fake.create("nodes", node_object(f"n{i}", "10.0.0.1"))

    def broken(kind, obj, old):
        raise RuntimeError("bug")

    async def go():
        inf = Informer(client_for(fake), NODES, on_change=broken, max_objects=3, watch_timeout=60)
        task = asyncio.ensure_future(inf.run())
        try:
            assert await inf.wait_synced(10)
            fake.create("nodes", node_object("late", "10.0.0.9"))
            await until(lambda: inf.counters["dropped_full"] == 3)
            assert len(inf.cache) == 3 and inf.counters["callback_errors"] == 3
            assert not task.done()
        finally:
            task.cancel()

    run(go())


def test_informer_backs_off_while_the_server_is_down():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    srv.close()  # nothing listens: refused

    async def go():
        inf = Informer(KubeClient(KubeConfig(f"http://127.0.0.1:{port}"), timeout=1), NODES, backoff=Backoff(0.05, 0.4))
        task = asyncio.ensure_future(inf.run())
        await asyncio.sleep(1.5)
        task.cancel()
        # 0.05, 0.1, 0.2, 0.4, 0.4 ...: a handful of attempts, not a busy loop
        assert 3 <= inf.counters["errors"] <= 8, inf.counters
        assert not inf.synced and "cannot reach" in inf.last_error

    run(go())
