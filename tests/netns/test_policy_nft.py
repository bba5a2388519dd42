"""The compiled NetworkPolicy ruleset in a real kernel: one node, six pods on its bridge.

    mnq-n  [bridge mnqbr 10.99.0.1/24, the policy table]      the node
      |-- mnq-x-a 10.99.0.11   mnq-x-b .12   mnq-y-a .13       pods (netns), each with
      `-- mnq-y-b .14          mnq-z-a .15   mnq-z-b .16       TCP/UDP/SCTP responders

Checked with real packets: each canonical policy's truth table against the evaluator;
the node (kubelet probes) reaching isolated pods; an update script leaving the kernel
exactly where a full replace would; no window during 100 updates (allowed connections
keep succeeding, denied ones keep failing, an established one lives on); denied flows
reaching the NFLOG group and the counters.
"""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from netpol_cases import SCTP_PORTS, TCP_PORTS, UDP_PORTS, canonical, matrix, namespace, pod, policy, truth_table
from netpol_probe import Responder, probe

from meshnet.k8s.policy.compile import compile_node
from meshnet.k8s.policy.denials import parse_denied
from meshnet.k8s.policy.evaluate import World
from meshnet.k8s.policy.model import Cluster
from meshnet.k8s.policy.parse import parse_namespace, parse_pod, parse_policy
from meshnet.k8s.policy.render import replace, update
from meshnet.kernel.netns import in_netns
from meshnet.kernel.nflog import NflogSocket
from meshnet.kernel.nft import Nft, sysctl_set

sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "unit" / "k8s"))
from netpol_gen import POD_IPS, cluster  # noqa: E402  (the unit tier's generator)

pytestmark = [pytest.mark.netns, pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")]

NODE = "mnq-n"
BRIDGE = "mnqbr"
NODE_IP = "10.99.0.1"
PODS = {f"{ns}/{p}": f"10.99.0.{11 + i}" for i, (ns, p) in enumerate((ns, p) for ns in "xyz" for p in "ab")}


def netns_of(pod_key: str) -> str:
    return "mnq-" + pod_key.replace("/", "-")


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=20)


def teardown() -> None:
    for ns in [NODE] + [netns_of(p) for p in PODS]:
        if os.path.exists(f"/run/netns/{ns}"):
            sh("ip", "netns", "del", ns, check=False)


@pytest.fixture(scope="module")
def node():
    teardown()
    responders = []
    try:
        sh("ip", "netns", "add", NODE)
        sh("ip", "-n", NODE, "link", "set", "lo", "up")
        sh("ip", "-n", NODE, "link", "add", BRIDGE, "type", "bridge")
        sh("ip", "-n", NODE, "addr", "add", f"{NODE_IP}/24", "dev", BRIDGE)
        sh("ip", "-n", NODE, "link", "set", BRIDGE, "up")
        for i, (key, ip) in enumerate(PODS.items()):
            ns = netns_of(key)
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", NODE, "link", "add", f"mnqv{i}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "-n", NODE, "link", "set", f"mnqv{i}", "master", BRIDGE, "up")
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            responders.append(Responder(ns, tcp=TCP_PORTS, udp=UDP_PORTS, sctp=SCTP_PORTS))
        with in_netns(NODE):  # bridged frames through the inet hooks (br_netfilter), per namespace
            sysctl_set("net.bridge.bridge-nf-call-iptables", "1")
        yield Nft(netns=NODE)
    finally:
        for r in responders:
            r.stop()
        teardown()


def objects(policies: list[dict]) -> tuple[list[dict], list[dict], list[dict]]:
    return [namespace(n) for n in "xyz"], [pod(*k.split("/"), ip, "n1") for k, ip in PODS.items()], policies


def ruleset_of(namespaces, pods, policies, local=tuple(PODS.values())):
    model = Cluster.of(map(parse_namespace, namespaces), filter(None, map(parse_pod, pods)), [parse_policy(p).policy for p in policies])
    return compile_node(model, local)


def pod_probe(src: str, dst_ip: str, proto: str, port: int) -> bool:
    return probe(netns_of(src), dst_ip, proto, port, timeout=0.6, tries=2)


CASES = canonical(lambda key: PODS[key], "10.99.0.0/24")


@pytest.mark.parametrize("case", sorted(CASES))
def test_truth_table(node, case):
    namespaces, pods, policies = objects(CASES[case])
    node.apply(replace(ruleset_of(namespaces, pods, policies)))
    world = World(namespaces, pods, policies, {"n1": [NODE_IP]})
    cases, wrong = truth_table(PODS, lambda s, d, proto, port: world.decide(s, d, proto, port).allowed, pod_probe)
    tcp80 = {(s, d) for s in PODS for d in PODS if s != d and pod_probe(s, PODS[d], "TCP", 80)} if wrong else set()
    assert not wrong, f"{case}: {len(wrong)} of {len(cases)} differ from the spec:\n" + "\n".join(
        f"  {proto} {s} -> {d}:{port}: expected {'allowed' if w else 'denied'}, observed {'reached' if g else 'blocked'}" for s, d, proto, port, w, g in wrong[:40]
    ) + "\nTCP 80 observed:\n" + matrix(list(PODS), lambda s, d: "." if (s, d) in tcp80 else "X")


def test_the_node_reaches_isolated_pods(node):
    """Kubelet probes come from the node: they pass the output hook, never the forward chain."""
    namespaces, pods, policies = objects(CASES["deny-all-allow-dns"])
    node.apply(replace(ruleset_of(namespaces, pods, policies)))
    with in_netns(NODE):
        s = socket.create_connection((PODS["x/a"], 80), timeout=2)
    s.close()
    assert not pod_probe("y/a", PODS["x/a"], "TCP", 80)


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(one=cluster(), other=cluster(), keep=st.lists(st.booleans(), min_size=5, max_size=5))
def test_an_update_leaves_the_kernel_where_a_replace_would(node, one, other, keep):
    """From one cluster to a neighbour: other pods (set elements and map entries change),
    some of the policies kept, some of another's added (chains and sets come and go)."""
    two = (one[0], other[1], [p for p, k in zip(one[2], keep) if k] + [p for p, k in zip(other[2], keep) if not k])
    a, b = ruleset_of(*one, local=POD_IPS), ruleset_of(*two, local=POD_IPS)
    node.apply(replace(b))
    want = node.list_json("table", "inet", b.table)
    node.apply(replace(a))
    script = update(a, b)
    if script:
        node.apply(script)
    assert normalise(node.list_json("table", "inet", b.table)) == normalise(want)


def normalise(items: list[dict]) -> list:
    out = []
    for item in items:
        for kind, body in item.items():
            if kind == "metainfo":
                continue
            body = {k: v for k, v in body.items() if k not in ("handle", "packets", "bytes")}
            if "elem" in body:
                body["elem"] = sorted(map(repr, body["elem"]))
            out.append((kind, repr(sorted(body.items()))))
    return sorted(out)


def test_no_window_during_100_updates(node):
    """While 100 updates of unrelated policies go in, new connections that are allowed keep
    succeeding, denied ones keep failing, and an established connection keeps working."""
    base = CASES["allow-from-namespace-y"]
    namespaces, pods, _ = objects([])
    current = ruleset_of(namespaces, pods, base)
    node.apply(replace(current))
    with in_netns(netns_of("y/a")):
        long_lived = socket.create_connection((PODS["x/a"], 80), timeout=2)
    stop = threading.Event()
    seen = {"allowed_failed": 0, "allowed_ok": 0, "denied_passed": 0, "denied_ok": 0, "echo_failed": 0, "echo_ok": 0}

    def count(ok_key: str, bad_key: str, ok: bool) -> None:
        seen[ok_key if ok else bad_key] += 1  # one writer per key pair: no lock needed

    def allowed():
        while not stop.is_set():
            count("allowed_ok", "allowed_failed", probe(netns_of("y/b"), PODS["x/a"], "TCP", 81, timeout=1.0, tries=1))

    def denied():
        while not stop.is_set():
            count("denied_ok", "denied_passed", not probe(netns_of("z/a"), PODS["x/a"], "TCP", 81, timeout=0.2, tries=1))

    def echo():
        while not stop.is_set():
            try:
                long_lived.sendall(b"ping")
                count("echo_ok", "echo_failed", long_lived.recv(64) == b"ping")
            except OSError:
                count("echo_ok", "echo_failed", False)

    threads = [threading.Thread(target=f) for f in (allowed, denied, echo)]
    for t in threads:
        t.start()
    try:
        for i in range(100):  # an unrelated policy comes and goes, a different port each time;
            # every other time it selects x/a itself, so x/a's chain is swapped under the flows
            target = ("x", "a") if i % 4 < 2 else ("z", "b")
            extra = policy(f"unrelated-{i % 7}", {"podSelector": {"matchLabels": {"pod": target[1]}}, "ingress": [{"ports": [{"port": 1000 + i}]}]}, ns=target[0])
            nxt = ruleset_of(namespaces, pods, base + ([extra] if i % 2 == 0 else []))
            node.apply(update(current, nxt) or "")
            current = nxt
            time.sleep(0.03)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        long_lived.close()
    print(f"during 100 updates: {seen}; counters {node.counters('inet', current.table)}")
    assert seen["allowed_failed"] == 0 and seen["denied_passed"] == 0 and seen["echo_failed"] == 0, seen
    assert seen["allowed_ok"] >= 20 and seen["denied_ok"] >= 5 and seen["echo_ok"] >= 20, seen


def test_denied_flows_are_logged_and_counted(node):
    namespaces, pods, policies = objects(CASES["allow-from-namespace-y"])
    rs = ruleset_of(namespaces, pods, policies)
    node.apply(replace(rs))
    with in_netns(NODE):
        log = NflogSocket(7)
    try:
        assert pod_probe("y/a", PODS["x/a"], "TCP", 80)
        assert not probe(netns_of("z/b"), PODS["x/a"], "UDP", 53, timeout=0.5, tries=1)
        deadline, denied = time.monotonic() + 5, []
        while time.monotonic() < deadline and not denied:
            denied = [d for d in (parse_denied(*m) for m in log.read()) if d is not None]
            time.sleep(0.05)
    finally:
        log.close()
    assert denied and (denied[0].direction, denied[0].protocol, denied[0].src, denied[0].dst, denied[0].dport) == ("ingress", "udp", PODS["z/b"], PODS["x/a"], 53)
    counts = node.counters("inet", rs.table)
    pid = next(k for k, v in rs.policy_ids.items() if v == "x/from-y")
    assert counts[f"a_in_{pid}"][0] >= 1 and counts[f"d_in_{pid}"][0] >= 1, counts
