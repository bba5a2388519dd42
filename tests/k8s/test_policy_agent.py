"""The policy agent (meshnet/k8s/policy/agent.py) against the fake API server, with a kernel
that records what it is told: nothing before the lists are in, one whole table then
diffs, events within the debounce in one update, a dropped watch resumed, a 410 relisted
(deletions in the gap seen), a refused diff replaced whole, a refused table retried,
hostile objects reported, local endpoints followed, counters as metrics, denied packets
logged with the pods' names. What the rules mean is checked by running packets through
the ruleset in force (interpret.py). No root."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct

import pytest
from fakeapi import FakeApi

from meshnet.k8s.client import KubeClient, KubeConfig
from meshnet.k8s.policy.agent import PolicyAgent
from meshnet.k8s.policy.interpret import Interpreter, Packet
from meshnet.k8s.policy.ruleset import Verdict
from meshnet.kernel.errors import KernelError

NODE = "node-a"


class FakeKernel:
    def __init__(self):
        self.scripts: list[str] = []
        self.fail: list[bool] = []  # pop(0) per nft call: True refuses it
        self.sysctls: dict[str, str] = {"net.bridge.bridge-nf-call-iptables": "0"}
        self.counter_values: dict[str, tuple[int, int]] = {}
        self.log = FakeLog()

    async def nft(self, script: str) -> None:
        if self.fail and self.fail.pop(0):
            raise KernelError(errno.EINVAL, "nft: refused")
        self.scripts.append(script)

    async def nft_counters(self, family, table):
        return dict(self.counter_values)

    async def sysctl(self, key, value=None):
        old = self.sysctls.get(key)
        if value is not None and old is not None:
            self.sysctls[key] = value
        return old

    def nflog(self, group):
        return self.log


class FakeLog:
    """An NflogSocket stand-in: a socketpair wakes the loop, `queue` holds the messages."""

    def __init__(self):
        self.a, self.b = socket.socketpair()
        self.a.setblocking(False)
        self.queue: list[tuple[str, bytes]] = []

    def push(self, prefix: str, packet: bytes) -> None:
        self.queue.append((prefix, packet))
        self.b.send(b"x")

    def fileno(self):
        return self.a.fileno()

    def read(self):
        try:
            self.a.recv(4096)
        except BlockingIOError:
            pass
        out, self.queue = self.queue, []
        return out

    def close(self):
        self.a.close()
        self.b.close()


def ns(name):
    return {"metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}}}


def pod(ns_, name, ip, node=NODE, labels=None):
    return {"metadata": {"name": name, "namespace": ns_, "labels": labels or {"app": name}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}


def deny_ingress(ns_="x", name="deny"):
    return {"metadata": {"name": name, "namespace": ns_}, "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}


@pytest.fixture
def fake():
    api = FakeApi(bookmark_interval=0.5)
    api.start()
    for n in ("x", "y"):
        api.create("namespaces", ns(n))
    api.create("pods", pod("x", "a", "10.32.0.1"))
    api.create("pods", pod("y", "b", "10.32.1.1", node="node-b"))
    yield api
    api.stop()


def agent(fake, kernel, local=()):
    return PolicyAgent(KubeClient(KubeConfig(fake.url), timeout=5), node_name=NODE, kernel=kernel, local_ips=lambda: local, tick=0.1)


async def until(predicate, timeout=10.0):
    end = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def verdict(ag, src, dst, port=80):
    return Interpreter(ag.applied).run(Packet(src, dst, "tcp", port)).verdict


def run(coro_fn, fake, kernel, **kw):
    async def go():
        ag = agent(fake, kernel, **kw)
        task = asyncio.ensure_future(ag.run())
        try:
            await until(lambda: ag.applied is not None)
            await coro_fn(ag)
        finally:
            task.cancel()
            done, _ = await asyncio.wait([task], timeout=10)
            assert done, "the agent did not stop when cancelled"

    asyncio.run(go())


def test_a_whole_table_after_the_lists_then_diffs_within_the_debounce(fake):
    kernel = FakeKernel()

    async def body(ag):
        assert len(kernel.scripts) == 1 and kernel.scripts[0].startswith("add table inet meshnet_policy\ndelete table")
        assert kernel.sysctls["net.bridge.bridge-nf-call-iptables"] == "1" and ag.bridge_nf
        assert verdict(ag, "10.32.1.1", "10.32.0.1") is Verdict.ACCEPT  # no policy: open
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        fake.create("networkpolicies", deny_ingress())
        fake.create("networkpolicies", deny_ingress(name="deny-2"))  # within the debounce: one update
        await until(lambda: "x/deny-2" in (ag.applied.pods[0].ingress if ag.applied.pods else ()))
        assert loop.time() - t0 < 1.0  # the bound, with room on a loaded machine
        assert verdict(ag, "10.32.1.1", "10.32.0.1") is Verdict.DROP
        assert len(kernel.scripts) == 2 and "delete table" not in kernel.scripts[1]
        assert ag.stats["last_latency_ms"] is not None and ag.stats["last_latency_ms"] < 1000
        fake.delete("networkpolicies", "deny", "x")
        fake.delete("networkpolicies", "deny-2", "x")
        await until(lambda: verdict(ag, "10.32.1.1", "10.32.0.1") is Verdict.ACCEPT)

    run(body, fake, kernel)


def test_nothing_is_applied_before_every_list_is_in(fake):
    kernel = FakeKernel()

    async def go():
        ag = agent(fake, kernel)
        ag.informers["networkpolicies"].client = KubeClient(KubeConfig("http://127.0.0.1:9"), timeout=1)  # nobody there
        task = asyncio.ensure_future(ag.run())
        try:
            await until(lambda: ag.informers["pods"].synced and ag.informers["namespaces"].synced)
            await asyncio.sleep(0.5)
            assert kernel.scripts == [] and not ag.status()["synced"]
        finally:
            task.cancel()
            done, _ = await asyncio.wait([task], timeout=10)
            assert done, "the agent did not stop when cancelled"

    asyncio.run(go())


def test_a_dropped_watch_resumes_and_a_410_relists_with_the_gap_seen(fake):
    kernel = FakeKernel()

    async def body(ag):
        fake.create("networkpolicies", deny_ingress())
        await until(lambda: verdict(ag, "10.32.1.1", "10.32.0.1") is Verdict.DROP)
        fake.drop_watches()  # cut mid-stream: resumed from the last resourceVersion
        fake.create("pods", pod("x", "c", "10.32.0.2"))
        await until(lambda: verdict(ag, "10.32.1.1", "10.32.0.2") is Verdict.DROP)
        lists = ag.informers["networkpolicies"].counters["lists"]
        fake.compact()  # history gone: the resume gets 410 and lists again
        fake.delete("networkpolicies", "deny", "x")
        fake.drop_watches()
        await until(lambda: verdict(ag, "10.32.1.1", "10.32.0.1") is Verdict.ACCEPT)
        assert ag.informers["networkpolicies"].counters["lists"] > lists

    run(body, fake, kernel)


def test_a_refused_diff_is_replaced_whole_and_a_refused_table_retried(fake, caplog):
    kernel = FakeKernel()

    async def body(ag):
        kernel.fail = [True]  # the diff fails (someone edited the table): a whole table instead
        fake.create("networkpolicies", deny_ingress())
        await until(lambda: verdict(ag, "10.32.1.1", "10.32.0.1") is Verdict.DROP)
        assert kernel.scripts[-1].startswith("add table inet meshnet_policy\ndelete table") and ag.stats["replaces"] == 2
        kernel.fail = [True, True]  # diff and table refused: not enforcing, said so, then retried
        fake.delete("networkpolicies", "deny", "x")
        await until(lambda: ag.stats["apply_errors"] == 1)
        assert ag.applied is None and ag.status()["enforcing"] is False and "refused" in ag.status()["stats"]["last_error"]
        await until(lambda: ag.applied is not None, timeout=5)
        assert verdict(ag, "10.32.1.1", "10.32.0.1") is Verdict.ACCEPT and ag.stats["last_error"] is None

    run(body, fake, kernel)


def test_hostile_objects_are_reported_and_a_bad_rule_fails_closed(fake):
    kernel = FakeKernel()

    async def body(ag):
        fake.create("networkpolicies", {"metadata": {"name": "half", "namespace": "x"}, "spec": {
            "podSelector": {}, "ingress": [{"ports": [{"port": 99999}]}, {"ports": [{"port": 80}]}]}})
        fake.create("networkpolicies", {"metadata": {"name": "junk", "namespace": "x"}, "spec": {"podSelector": {"matchLabels": "nope"}}})
        await until(lambda: len(ag.problems) == 2)
        problems = {p["object"]: p["error"] for p in ag.status()["problems"]}
        assert "rule dropped" in problems["NetworkPolicy x/half"] and problems["NetworkPolicy x/junk"].startswith("NOT ENFORCED")
        await until(lambda: ag.applied.pods and ag.applied.pods[0].ingress == ("x/half",))
        assert verdict(ag, "10.32.1.1", "10.32.0.1", 80) is Verdict.ACCEPT and verdict(ag, "10.32.1.1", "10.32.0.1", 81) is Verdict.DROP

    run(body, fake, kernel)


def test_pods_on_this_bridge_count_as_local_even_without_the_node_name(fake):
    kernel = FakeKernel()
    local: list[str] = []

    async def body(ag):
        fake.create("networkpolicies", deny_ingress("y"))
        await until(lambda: ag.stats["syncs"] >= 2)
        assert verdict(ag, "10.32.0.1", "10.32.1.1") is Verdict.ACCEPT  # y/b is node-b's: not ours
        local.append("10.32.1.1")  # ... until its address turns up on our bridge
        await until(lambda: verdict(ag, "10.32.0.1", "10.32.1.1") is Verdict.DROP)

    run(body, fake, kernel, local=local)


def test_counters_become_metrics_and_denied_packets_are_logged_with_names(fake, caplog):
    kernel = FakeKernel()

    async def body(ag):
        fake.create("networkpolicies", deny_ingress())
        await until(lambda: ag.applied.policy_ids)
        (pid,) = ag.applied.policy_ids
        kernel.counter_values = {f"a_in_{pid}": (0, 0), f"d_in_{pid}": (3, 180), "stray": (1, 1)}
        m = await ag.metrics()
        assert m["packets"] == [{"policy": "x/deny", "direction": "ingress", "verdict": "allowed", "packets": 0, "bytes": 0},
                                {"policy": "x/deny", "direction": "ingress", "verdict": "denied", "packets": 3, "bytes": 180}]
        syn = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 1, 0, 64, 6, 0, socket.inet_aton("10.32.1.1"), socket.inet_aton("10.32.0.1"))
        with caplog.at_level(logging.INFO, logger="meshnet.k8s.policy"):
            kernel.log.push("meshnet-deny-in", syn + struct.pack("!HH", 40000, 80) + b"\0" * 16)
            await until(lambda: ag.stats["denied_logged"] == 1)
        assert "policy denied ingress to x/a: tcp 10.32.1.1:40000 -> 10.32.0.1:80 (from pod y/b)" in caplog.text

    run(body, fake, kernel)


class Routes:
    def __init__(self):
        self.routes = {}

    def add_routes(self, routes):
        self.routes.update(routes)


def test_the_service_builds_the_agent_only_when_asked_and_clears_an_old_table_otherwise(fake):
    from meshnet.docker.testing import FakeEndpoints, MemoryStore
    from meshnet.errors import NotFound
    from meshnet.k8s.service import KubeService, KubeSettings

    async def go():
        kernel, sections = FakeKernel(), {}
        kw = dict(endpoints=FakeEndpoints(), plumbing=kernel, ipam=None, mesh=None, store=MemoryStore(), environ={})
        on = KubeService(KubeSettings(network_policy=True, kube_api=fake.url, nickname=NODE), api=Routes(),
                         metrics=lambda name, fn: sections.update({name: fn}), **kw)
        assert on.policy is not None and on.policy.node_name == NODE and set(sections) == {"policy"}
        off = KubeService(KubeSettings(), api=(routes := Routes()), **kw)
        assert off.policy is None
        await off.start()
        assert kernel.scripts == ["add table inet meshnet_policy\ndelete table inet meshnet_policy\n"]
        with pytest.raises(NotFound):
            await routes.routes[("GET", "/k8s/policy")]({})
        await off.stop()

    asyncio.run(go())
