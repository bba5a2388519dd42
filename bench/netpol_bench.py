"""NetworkPolicy at scale: 500 policies and 2,000 pods (bench/netpol_cluster.py), most of
them on 40 nodes that exist only in the API, two on real lab hosts.

    sudo .venv/bin/python bench/netpol_bench.py [--seconds 10] [--updates 20] [--idle 30]

Figures (a markdown table on stdout):

1. compile and render time of one node's ruleset, in this process (no kernel);
2. TCP throughput pod to pod across two lab hosts on fastdp (iperf3, one stream): routers
   without the policy agent, then with it and the whole cluster loaded, the receiving pod
   isolated (a default deny of its namespace) and the sender allowed by one policy; the
   ratio is what the issue bounds (>= 0.95);
3. rule update time: a policy selecting the receiving pod is added and removed `--updates`
   times; the agent's own figures (watch event -> table applied; nft apply);
4. the router's RSS and CPU while idle for `--idle` seconds, with and without the agent;
5. the enforcement point itself, on one bridge without routers (two pods, iperf3): bridge
   netfilter off, on, and on with the receiver isolated by the compiled table (what the
   `inet` forward hook costs bridged traffic).

Uses the lab's namespaces (prefix mnqb) and a fake API server on the underlay; removes
them afterwards. Figures from a machine others are using are not worth reporting.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench"), str(ROOT / "tests" / "k8s")]

from fakeapi import FakeApi, node_object  # noqa: E402
from netpol_cluster import local_ips, synthetic_cluster  # noqa: E402

from meshnet.api.client import ApiClient  # noqa: E402
from meshnet.k8s.policy.compile import compile_node  # noqa: E402
from meshnet.k8s.policy.model import Cluster  # noqa: E402
from meshnet.k8s.policy.parse import parse_namespace, parse_pod, parse_policy  # noqa: E402
from meshnet.k8s.policy.render import replace  # noqa: E402
from meshnet.kernel.netns import in_netns  # noqa: E402
from meshnet.lab import Lab  # noqa: E402

PREFIX = "mnqb"
API_IP = "192.168.90.250"


def offline(pods: int, policies: int) -> dict:
    nss, pod_objs, pol_objs = synthetic_cluster(pods=pods, policies=policies)
    t0 = time.perf_counter()
    model = Cluster.of(map(parse_namespace, nss), filter(None, map(parse_pod, pod_objs)), [parse_policy(p).policy for p in pol_objs])
    t1 = time.perf_counter()
    rs = compile_node(model, local_ips(pod_objs, 0))
    t2 = time.perf_counter()
    script = replace(rs)
    t3 = time.perf_counter()
    return {"parse_ms": (t1 - t0) * 1000, "compile_ms": (t2 - t1) * 1000, "render_ms": (t3 - t2) * 1000, "script_kb": len(script) / 1024,
            "chains": len(rs.chains), "set_elements": sum(len(s.elements) for s in rs.addr_sets) + sum(len(s.elements) for s in rs.dest_sets)}


def pod_obj(name: str, ip: str, node: str, labels: dict) -> dict:
    return {"metadata": {"name": name, "namespace": "ns-0", "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "iperf", "ports": [{"name": "iperf", "containerPort": 5201}]}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}


def iperf(client: str, server: str, ip: str, seconds: int) -> float:
    srv = subprocess.Popen(["ip", "netns", "exec", server, "iperf3", "-s", "-1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        out = subprocess.run(["ip", "netns", "exec", client, "iperf3", "-c", ip, "-J", "-t", str(seconds)], capture_output=True, text=True, timeout=seconds + 30)
        return json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9
    except (ValueError, KeyError, subprocess.TimeoutExpired):
        return float("nan")
    finally:
        srv.kill()
        srv.wait()


def router_pid(lab: Lab, i: int) -> int:
    with open(f"{lab.run_dir(i)}/meshnet.pid") as f:
        return int(f.read())


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_lab(args, with_policy: bool) -> dict:
    Lab(prefix=PREFIX, hosts=2).down()
    lab = Lab(prefix=PREFIX, hosts=2)
    api = FakeApi(host=API_IP, bookmark_interval=5.0)
    out: dict = {}
    try:
        lab.up(start_routers=False)
        subprocess.run(["ip", "-n", lab.underlay_ns, "addr", "add", f"{API_IP}/24", "dev", "ulbr"], check=True)
        with in_netns(lab.underlay_ns):
            url = api.start()
        lab.extra_flags = ["--pod-network", "--kube-api", url] + (["--network-policy"] if with_policy else [])
        for i in (1, 2):
            api.create("nodes", node_object(lab.host_ns(i), lab.host_ip(i)))
            lab.start_router(i)
        lab.wait_mesh(60)
        client_ns, client_ip = lab.add_container(1, 1)
        server_ns, server_ip = lab.add_container(2, 1)
        if with_policy:
            # the API-only pods get addresses outside the lab's range: the two real pods' are IPAM's
            nss, pods, pols = synthetic_cluster(pods=args.pods - 2, policies=args.policies - 1, prefix="172.20")
            for obj in nss:
                api.create("namespaces", obj)
            for obj in pods:
                api.create("pods", obj)
            for obj in pols:
                api.create("networkpolicies", obj)
            api.create("pods", pod_obj("bench-client", client_ip, lab.host_ns(1), {"app": "bench-client"}))
            api.create("pods", pod_obj("bench-server", server_ip, lab.host_ns(2), {"app": "bench-server"}))
            api.create("networkpolicies", {"metadata": {"name": "allow-bench", "namespace": "ns-0"}, "spec": {
                "podSelector": {"matchLabels": {"app": "bench-server"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "bench-client"}}}], "ports": [{"port": "iperf"}]}]}})
            h2 = ApiClient(f"{lab.run_dir(2)}/meshnet.sock")
            deadline = time.monotonic() + 120
            while not (st := h2.get("/k8s/policy"))["current"] or st["counts"]["pods"] < args.pods or st["counts"]["policies"] < args.policies:
                if time.monotonic() > deadline:
                    raise TimeoutError(json.dumps(st["counts"]))
                time.sleep(0.5)
            out["isolated"] = next(p for p in st["pods"] if p["pod"] == "ns-0/bench-server")["ingress"]
        out["gbps"] = iperf(client_ns, server_ns, server_ip, args.seconds)
        if with_policy:
            h2 = ApiClient(f"{lab.run_dir(2)}/meshnet.sock")
            latencies, applies = [], []
            for n in range(args.updates):
                name = f"bench-update-{n}"
                api.create("networkpolicies", {"metadata": {"name": name, "namespace": "ns-0"}, "spec": {
                    "podSelector": {"matchLabels": {"app": "bench-server"}}, "ingress": [{"ports": [{"port": 7000 + n}]}]}})
                for verb in ("added", "deleted"):
                    deadline = time.monotonic() + 10
                    while True:
                        st = h2.get("/k8s/policy")
                        view = next(p for p in st["pods"] if p["pod"] == "ns-0/bench-server")
                        if st["current"] and ((f"ns-0/{name}" in view["ingress"]) == (verb == "added")):
                            break
                        if time.monotonic() > deadline:
                            raise TimeoutError(name)
                        time.sleep(0.01)
                    latencies.append(st["stats"]["last_latency_ms"])
                    applies.append(st["stats"]["last_apply_ms"])
                    if verb == "added":
                        api.delete("networkpolicies", name, "ns-0")
            out["latency_ms"] = (statistics.median(latencies), max(latencies))
            out["apply_ms"] = (statistics.median(applies), max(applies))
        pid = router_pid(lab, 2)
        time.sleep(2)
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(args.idle)
        out["idle_cpu_pct"] = 100 * (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
        out["rss_mb"] = rss_mb(pid)
    finally:
        api.stop()
        lab.down()
    return out


def same_node(seconds: int) -> dict[str, float]:
    """Bridged pod-to-pod TCP on one bridge: br_netfilter off / on / on + the policy table."""
    from meshnet.kernel.nft import Nft, sysctl_set

    node, pods = f"{PREFIX}-n", {f"{PREFIX}-p1": "10.98.0.11", f"{PREFIX}-p2": "10.98.0.12"}

    def sh(*cmd: str) -> None:
        subprocess.run(cmd, check=True, capture_output=True)

    def down() -> None:
        for ns in [node, *pods]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    down()
    out = {}
    try:
        sh("ip", "netns", "add", node)
        sh("ip", "-n", node, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", node, "link", "set", "br0", "up")
        for k, (ns, ip) in enumerate(pods.items()):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", node, "link", "add", f"v{k}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "-n", node, "link", "set", f"v{k}", "master", "br0", "up")
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
        nss, pod_objs, pols = synthetic_cluster(pods=20, policies=30, nodes=1, prefix="10.97")
        pod_objs += [pod_obj("server", pods[f"{PREFIX}-p2"], "node-0", {"app": "server"}), pod_obj("client", pods[f"{PREFIX}-p1"], "node-0", {"app": "client"})]
        pols.append({"metadata": {"name": "allow", "namespace": "ns-0"}, "spec": {"podSelector": {"matchLabels": {"app": "server"}},
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}], "ports": [{"port": 5201}]}]}})
        model = Cluster.of(map(parse_namespace, nss), filter(None, map(parse_pod, pod_objs)), [parse_policy(p).policy for p in pols])
        for label, bridge_nf, table in (("bridge netfilter off", "0", False), ("bridge netfilter on", "1", False), ("on + policy table", "1", True)):
            with in_netns(node):
                sysctl_set("net.bridge.bridge-nf-call-iptables", bridge_nf)
            if table:
                Nft(netns=node).apply(replace(compile_node(model, pods.values())))
            out[label] = iperf(f"{PREFIX}-p1", f"{PREFIX}-p2", pods[f"{PREFIX}-p2"], seconds)
    finally:
        down()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=10, help="iperf3 seconds per run")
    ap.add_argument("--updates", type=int, default=20, help="policy add/remove rounds")
    ap.add_argument("--idle", type=float, default=30.0, help="seconds of idle CPU sampling")
    ap.add_argument("--pods", type=int, default=2000)
    ap.add_argument("--policies", type=int, default=500)
    args = ap.parse_args()
    off = offline(args.pods, args.policies)
    bridged = same_node(args.seconds)
    base = run_lab(args, with_policy=False)
    pol = run_lab(args, with_policy=True)
    print(f"| figure ({args.pods} pods, {args.policies} policies) | value |\n|---|---|")
    print(f"| parse + compile + render, one node (in process) | {off['parse_ms']:.0f} + {off['compile_ms']:.0f} + {off['render_ms']:.0f} ms "
          f"({off['chains']} chains, {off['set_elements']} set elements, {off['script_kb']:.0f} KiB script) |")
    print(f"| TCP pod to pod, fastdp, no policy agent | {base['gbps']:.2f} Gbit/s |")
    print(f"| TCP pod to pod, fastdp, policies loaded, receiver isolated by {len(pol['isolated'])} | {pol['gbps']:.2f} Gbit/s "
          f"({pol['gbps'] / base['gbps']:.2f}x) |")
    print(f"| rule update: watch event -> table applied (median, max of {2 * args.updates}) | {pol['latency_ms'][0]:.0f} ms, {pol['latency_ms'][1]:.0f} ms |")
    print(f"| rule update: nft apply (median, max) | {pol['apply_ms'][0]:.0f} ms, {pol['apply_ms'][1]:.0f} ms |")
    print(f"| router RSS without / with the agent | {base['rss_mb']:.0f} MiB / {pol['rss_mb']:.0f} MiB |")
    print(f"| router idle CPU without / with the agent ({args.idle:g} s) | {base['idle_cpu_pct']:.2f}% / {pol['idle_cpu_pct']:.2f}% |")
    print("| TCP on one bridge (no routers): " + ", ".join(bridged) + " | " + " / ".join(f"{v:.2f}" for v in bridged.values()) + " Gbit/s |")


if __name__ == "__main__":
    main()
