"""NetworkPolicy conformance on 3 simulated nodes (netpol_lab.PolicyLab): real routers
with the policy agent, a fake API server, 3 namespaces x 3 pods, on fastdp and on the
encrypted sleeve.

- the truth table of every canonical policy (netpol_cases): every ordered pair of pods,
  TCP, UDP and SCTP, real packets, against the evaluator (evaluate.py, from the spec);
- an update takes effect within 1 s of the API write, both ways (measured);
- an allowed long-lived TCP connection survives 100 policy updates;
- traffic kube-proxy translated (a ClusterIP DNAT on the node) is judged by the real pod;
- the node reaches isolated pods (kubelet probes); `meshnet status policy`, the metrics
  and the log of denied flows say what happened.

Figures are printed (pytest -s).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request

import pytest
from netpol_cases import SERVICES, canonical, matrix, policy, truth_table
from netpol_lab import PolicyLab
from netpol_probe import probe

from meshnet.kernel.netns import in_netns

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")]

CLUSTER_IP = "10.96.0.10"


@pytest.fixture(scope="module", params=["fastdp", "sleeve-encrypted"])
def cluster(request):
    c = PolicyLab(request.param)
    try:
        c.up()
        yield c
    finally:
        c.close()


def pod_probe(c: PolicyLab, timeout: float = 0.6, tries: int = 2):
    return lambda src, dst_ip, proto, port: probe(c.netns[src], dst_ip, proto, port, timeout=timeout, tries=tries)


def test_truth_tables_of_the_canonical_policies(cluster):
    cluster.wait_modes()
    cases = canonical(lambda key: cluster.pods[key], "10.32.0.0/12")
    failures, summary = [], []
    for name in sorted(cases):
        cluster.set_policies(cases[name])
        took = cluster.wait_enforced()
        world = cluster.world()
        probes, wrong = truth_table(cluster.pods, lambda s, d, proto, port: world.decide(s, d, proto, port).allowed, pod_probe(cluster))
        allowed = sum(world.decide(cluster.pods[s], cluster.pods[d], proto, port).allowed for s, d, proto, port in probes)
        summary.append(f"  {name:<32} {len(probes)} probes, {allowed} allowed, {len(probes) - allowed} denied, {len(wrong)} differ; in force {took:.2f}s after the API")
        summary.append(matrix(list(cluster.pods), lambda s, d: "".join(
            "." if world.decide(cluster.pods[s], cluster.pods[d], proto, port).allowed else "x" for proto, port in SERVICES)))
        if wrong:
            failures.append(f"{name}:\n" + "\n".join(f"  {p} {s} -> {d}:{port}: spec {'allows' if w else 'denies'}, packets {'passed' if g else 'blocked'}"
                                                       for s, d, p, port, w, g in wrong[:30]))
    legend = " ".join(f"{proto}/{port}" for proto, port in SERVICES)
    print(f"\n[{cluster.mode}] truth tables (72 ordered pairs x {len(SERVICES)} services; cells: {legend}, '.' allowed 'x' denied, all observed = expected):\n" + "\n".join(summary))
    assert not failures, "\n".join(failures)


def _reachable(c: PolicyLab, src: str, dst: str, timeout: float = 0.3) -> bool:
    return probe(c.netns[src], c.pods[dst], "TCP", 80, timeout=timeout, tries=1)


def _until(c: PolicyLab, want: bool, t0: float) -> float:
    """Probe y/b (h2) -> x/a (h1) every 10 ms with a 100 ms timeout (a connect between
    pods takes well under a millisecond) until it gives `want` three times in a row; the
    start of the first of those, in seconds after t0."""
    run: list[float] = []
    while len(run) < 3:
        assert time.monotonic() - t0 < 10, "the change never took effect"
        began = time.monotonic()
        run = run + [began] if _reachable(c, "y/b", "x/a", timeout=0.1) == want else []
        time.sleep(0.01)
    return run[0] - t0


def test_updates_take_effect_within_a_second(cluster):
    cluster.set_policies([])
    cluster.wait_enforced()
    deny = canonical(lambda k: cluster.pods[k], "10.32.0.0/12")["default-deny-ingress"]
    figures = []
    for _ in range(5):
        assert _reachable(cluster, "y/b", "x/a", timeout=1.0)
        t0 = time.monotonic()
        cluster.set_policies(deny)  # the API write; the agents hear it over their watches
        blocked = _until(cluster, False, t0)
        t0 = time.monotonic()
        cluster.set_policies([])
        opened = _until(cluster, True, t0)
        figures.append((blocked, opened))
    print(f"\n[{cluster.mode}] API write -> packets see it, seconds (deny, allow again): " + ", ".join(f"({b:.3f}, {o:.3f})" for b, o in figures))
    assert max(max(f) for f in figures) < 1.0, figures
    stats = cluster.policy_status(1)["stats"]
    print(f"[{cluster.mode}] h1 agent: watch event -> table applied, last {stats['last_latency_ms']} ms, worst {stats['max_latency_ms']} ms; "
          f"nft apply {stats['last_apply_ms']} ms")
    assert stats["max_latency_ms"] < 1000


def test_a_long_lived_connection_survives_100_policy_updates(cluster):
    base = canonical(lambda k: cluster.pods[k], "10.32.0.0/12")["allow-from-namespace-y"]
    cluster.set_policies(base)
    cluster.wait_enforced()
    with in_netns(cluster.netns["y/c"]):  # h3 -> h1
        conn = socket.create_connection((cluster.pods["x/a"], 80), timeout=3)
    failures, rounds = 0, 0
    try:
        for i in range(100):
            target = "a" if i % 4 < 2 else "b"  # half of them select x/a itself: its chain is swapped
            extra = policy(f"churn-{i}", {"podSelector": {"matchLabels": {"pod": target}}, "ingress": [{"ports": [{"port": 2000 + i}]}]})
            cluster.api.create("networkpolicies", extra)
            if i:
                cluster.api.delete("networkpolicies", f"churn-{i - 1}", "x")
            try:
                conn.sendall(b"still here")
                failures += conn.recv(64) != b"still here"
            except OSError:
                failures += 1
            rounds += 1
            time.sleep(0.02)
        cluster.api.delete("networkpolicies", "churn-99", "x")
        cluster.wait_enforced()
        conn.sendall(b"after all")
        assert conn.recv(64) == b"after all"
    finally:
        conn.close()
    updates = sum(cluster.policy_status(i)["stats"]["updates"] for i in (1, 2, 3))
    print(f"\n[{cluster.mode}] long-lived TCP y/c -> x/a: {rounds} echoes during 100 policy changes, {failures} failed; {updates} table updates on the 3 nodes so far")
    assert failures == 0
    assert not _reachable(cluster, "z/a", "x/a") and _reachable(cluster, "y/a", "x/a")


def test_traffic_kube_proxy_translated_is_judged_by_the_real_pod(cluster):
    """y/a and z/a (on h1) connect to a ClusterIP that h1 translates, like kube-proxy, to
    x/a (h1, the same node) and to x/b (h2, across the overlay)."""
    cluster.set_policies(canonical(lambda k: cluster.pods[k], "10.32.0.0/12")["allow-from-namespace-y"]
                         + [policy("from-y-b", {"podSelector": {"matchLabels": {"pod": "b"}}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]})])
    cluster.wait_enforced()
    gateway = cluster.lab_api(1).get("/podnet")["gateway"]
    for src in ("y/a", "z/a"):
        subprocess.run(["ip", "-n", cluster.netns[src], "route", "replace", "default", "via", gateway], check=True)
    rules = "\n".join(f"ip daddr {CLUSTER_IP} tcp dport {port} dnat to {cluster.pods[dst]}:80" for port, dst in ((80, "x/a"), (81, "x/b")))
    script = f"table ip mnq-kubeproxy {{\n chain pre {{ type nat hook prerouting priority dstnat; policy accept;\n{rules}\n }}\n}}\n"
    subprocess.run(["ip", "netns", "exec", cluster.lab.host_ns(1), "nft", "-f", "-"], input=script, text=True, check=True)
    try:
        got = {(src, port): probe(cluster.netns[src], CLUSTER_IP, "TCP", port, timeout=0.6, tries=2) for src in ("y/a", "z/a") for port in (80, 81)}
    finally:
        subprocess.run(["ip", "netns", "exec", cluster.lab.host_ns(1), "nft", "delete", "table", "ip", "mnq-kubeproxy"], check=False)
    assert got == {("y/a", 80): True, ("y/a", 81): True, ("z/a", 80): False, ("z/a", 81): False}, got


def test_the_node_reaches_its_pods_and_status_metrics_and_log_tell(cluster):
    cluster.set_policies(canonical(lambda k: cluster.pods[k], "10.32.0.0/12")["deny-all-allow-dns"])
    cluster.wait_enforced()
    with in_netns(cluster.lab.host_ns(1)):  # a kubelet probe: from the node to its pod
        socket.create_connection((cluster.pods["x/a"], 80), timeout=3).close()
    assert not probe(cluster.netns["z/b"], cluster.pods["x/a"], "TCP", 81, timeout=0.5, tries=1)
    text = subprocess.run(cluster.lab.meshnet(1, "status", "policy"), capture_output=True, text=True, check=True).stdout
    assert "enforcing on node mnq-h1" in text and "x/a" in text and "in: x/deny-all" in text, text

    def scrape() -> str:
        with in_netns(cluster.lab.host_ns(1)):
            return urllib.request.urlopen("http://127.0.0.1:6782/metrics", timeout=5).read().decode()

    deadline = time.monotonic() + 10
    while 'meshnet_policy_packets_total{direction="ingress",policy="x/deny-all",verdict="denied"}' not in scrape():
        assert time.monotonic() < deadline, scrape()
        time.sleep(0.2)
    while "policy denied ingress to x/a: tcp " + cluster.pods["z/b"] not in cluster.router_log(1):
        assert time.monotonic() < deadline + 10, cluster.router_log(1)[-2000:]
        time.sleep(0.2)
