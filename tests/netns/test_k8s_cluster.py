"""Kubernetes conformance for meshnet's pod network, on 3 simulated nodes (k8s_cluster.py):
the DaemonSet's containers started exactly as the manifest writes them, containerd's CRI
driven like a kubelet, kube-proxy's rules (iptables and nftables mode) written as
kube-proxy writes them, and every check made from where a cluster user stands: inside a
pod with its own busybox tools, or on a node.

The checks run in order on one cluster (module fixture); the last one takes a node away.
Three clusters: fastdp (no Secret), the encrypted sleeve (the Secret), and the DaemonSet's
pod from the built image under containerd (image/build.sh; skipped where it cannot build)."""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import time

import pytest

from k8s_cluster import OUT_IP, OUT_NS, PASSWORD, Cluster, conflist_of, sh
from test_cni_support import missing_tools

from meshnet.lab import wait_for

pytestmark = [
    pytest.mark.netns,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
    pytest.mark.skipif(bool(missing_tools("containerd", "ctr", "runc", "podman", "nft", "iptables-restore", "curl",
                                          "/usr/lib/cni/portmap", "/bin/busybox")),
                       reason="needs apt packages containerd, runc, podman, nftables, iptables, curl, containernetworking-plugins, busybox-static"),
]
pytest.importorskip("cri_api", reason="needs PyPI container-runtime-interface-api (extra [kubernetes])")
pytest.importorskip("yaml")

import kubeproxy  # noqa: E402  (tests/k8s, on the path through k8s_cluster)

CLUSTER_IP = "10.96.0.50"
NODE_PORT = 30080
HOST_PORT = 8080
WEB = "mkdir -p /www && echo hello-from-$(hostname) > /www/index.html && exec httpd -f -vv -p 80 -h /www"


def _image_or_skip() -> str:
    from meshnet.lab.image import router_image

    try:
        return router_image()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"the image cannot be built here (image/build.sh): {exc}")


@pytest.fixture(scope="module", params=["fastdp", "sleeve-encrypted", "image"])
def cluster(request):
    """Without the Secret (it is optional) the mesh is plain and uses fastdp (kernel VXLAN);
    with it, the encrypted sleeve. "image": the DaemonSet's pod runs from the image
    image/build.sh makes, under each node's containerd, privileged and on the host network
    as the kubelet would run it (no Secret: fastdp)."""
    image = _image_or_skip() if request.param == "image" else None
    c = Cluster(3, password=PASSWORD if request.param == "sleeve-encrypted" else None, image=image)
    c.mode = request.param
    try:
        c.up()
        for node in c.nodes:  # the node's runtime first, as on a real node (the kubelet's)
            node.start_containerd()
        c.init = {}
        for node in c.nodes:
            c.init[node.name] = node.run_init()
            assert c.init[node.name][0] == 0, c.init[node.name][1]
        for node in c.nodes:
            node.start_router()
        c.wait("every router's readiness probe", lambda: all(n.probe() for n in c.nodes), 120)
        c.wait("every node's pod network", lambda: all(n.api("GET", "/k8s/status")["ready"] for n in c.nodes), 120)
        h1, h2, h3 = c.nodes
        c.pods = {
            "web1": h1.run_pod("web1", ["sh", "-c", WEB], ports=[(HOST_PORT, 80)]),
            "client1": h1.run_pod("client1", ["sleep", "3600"]),
            "web2": h2.run_pod("web2", ["sh", "-c", WEB]),
            "client2": h2.run_pod("client2", ["sleep", "3600"]),
            "client3": h3.run_pod("client3", ["sleep", "3600"]),
        }
        c.wait("the web pods to serve", lambda: all(
            c.pods["client1"].http_get(f"http://{c.pods[w].ip}/") == f"hello-from-{w}" for w in ("web1", "web2")), 60)
        yield c
    finally:
        if os.environ.get("MNK_KEEP") != "1":  # MNK_KEEP=1: leave it for a look (python tests/netns/k8s_cluster.py down)
            c.down()


def test_the_daemonset_starts_as_written(cluster):
    for node in cluster.nodes:
        rc, out = cluster.init[node.name]
        assert rc == 0 and "meshnet-cni installed" in out, out
        launcher = open(node.host("/opt/cni/bin/meshnet-cni")).read()
        assert "PYTHONHOME='/opt/meshnet/runtime'" in launcher  # the plugin runs from the copied runtime
        entry = conflist_of(node)["plugins"][0]
        assert entry["type"] == "meshnet-cni" and entry["gateway"] == "auto"
        assert [p["type"] for p in conflist_of(node)["plugins"]] == ["meshnet-cni", "portmap", "bandwidth"]
        assert node.router_alive() and node.probe("livenessProbe")
        logs = node.logs()  # what `kubectl logs` shows
        assert re.search(r"meshnet-kube: 2 peer\(s\)", logs), logs[-3000:]
        assert "pod network ready: gateway" in logs
        status = node.api("GET", "/status")
        assert status["router"]["encrypted"] == bool(cluster.password) and status["router"]["nick"] == node.name
        want = "sleeve+encrypted" if cluster.password else "fastdp"

        def modes() -> dict:  # fastdp once two probes in a row were answered: a second or two after connecting
            return {p["nick"]: p.get("mode") for p in node.api("GET", "/status")["peers"] if p["nick"] != node.name}

        assert wait_for(lambda: set(modes().values()) == {want}, 20) is not None, modes()

        def condition():
            return [c for c in cluster.api.get("nodes", node.name)["status"]["conditions"] if c["type"] == "NetworkUnavailable"]

        cluster.wait(f"NetworkUnavailable on {node.name}", lambda: condition(), 30)  # a round of the agent after ready
        assert condition()[0]["status"] == "False" and condition()[0]["reason"] == "MeshnetIsUp"
    if cluster.password:
        assert PASSWORD not in " ".join(open(f"/proc/{n.router.pid}/cmdline").read() for n in cluster.nodes)
    # the routers used the API only as the manifest's ClusterRole allows (the fake answers 403 otherwise)
    assert cluster.api.denied == []
    assert {(v, r) for v, _, r in cluster.api.audit} == {("list", "nodes"), ("watch", "nodes"), ("patch", "nodes/status")} | {
        (verb, kind) for verb in ("list", "watch") for kind in ("pods", "namespaces", "networkpolicies")}  # the policy agent


def test_pods_reach_every_pod_without_nat(cluster):
    pods = cluster.pods
    failures = []
    for a, b in itertools.permutations(pods, 2):
        rc, out = pods[a].exec("ping", "-c", "1", "-W", "3", pods[b].ip)
        if rc != 0:
            failures.append(f"{a} -> {b} ({pods[b].ip}): {out.strip()[-200:]}")
    assert not failures, failures
    # the server sees the client pod's own address: no NAT between pods
    assert pods["client3"].http_get(f"http://{pods['web1'].ip}/") == "hello-from-web1"
    log = open(f"{pods['web1'].node.run}/podlogs/web1/main.log", errors="replace").read()
    assert pods["client3"].ip in log, log[-2000:]


def test_pod_interfaces_carry_the_data_paths_mtu(cluster):
    for name, pod in cluster.pods.items():
        mtu = pod.node.api("GET", "/status")["router"]["mtu"]
        rc, out = pod.exec("cat", "/sys/class/net/eth0/mtu")
        assert rc == 0 and int(out) == mtu, (name, out, mtu)
        rc, route = pod.exec("ip", "route")
        assert re.search(r"default via 10\.\d+\.\d+\.\d+ dev eth0", route), route
    mtu = cluster.nodes[0].api("GET", "/status")["router"]["mtu"]
    for src, dst in (("client1", "web2"), ("client3", "web1")):
        rc, out = cluster.pods[src].exec("ping", "-c", "2", "-W", "3", "-s", str(mtu - 28), cluster.pods[dst].ip)
        assert rc == 0, f"a full-size ({mtu}-byte) packet {src} -> {dst} did not pass: {out}"


def test_nodes_reach_every_pod(cluster):
    """The kubelet's HTTP probes: from each node to pods on it and on the others."""
    for node in cluster.nodes:
        for web in ("web1", "web2"):
            r = node.ns("curl", "-sS", "-m", "5", f"http://{cluster.pods[web].ip}/", check=False, timeout=20)
            assert r.stdout.decode().strip() == f"hello-from-{web}", (node.name, web, r.stderr.decode())


def _kube_proxy(cluster, mode: str, present: bool):
    svc = kubeproxy.Service("default", "web", "http", CLUSTER_IP, 80, NODE_PORT, ((cluster.pods["web2"].ip, 80),), "10.32.0.0/12")
    for node in cluster.nodes:
        if mode == "iptables":
            if present:
                node.ns("iptables-restore", "--noflush", input=kubeproxy.iptables_restore(svc).encode())
            else:
                for cmd in kubeproxy.iptables_cleanup(svc):
                    node.ns(*cmd, check=False)
        else:
            script = kubeproxy.nft_script(svc, [node.ip]) if present else kubeproxy.nft_cleanup()
            node.ns("nft", "-f", "-", input=script.encode())


def _redirects(node) -> int:
    with open(f"/proc/{node.containerd.pid}/net/snmp") as f:  # the node's own counters (containerd runs in its netns)
        head, values = [line.split() for line in f if line.startswith("Icmp:")][:2]
    return int(values[head.index("OutRedirects")])


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_services_through_kube_proxys_rules(cluster, mode):
    pods = cluster.pods
    redirects = [_redirects(n) for n in cluster.nodes]
    assert pods["client1"].http_get(f"http://{CLUSTER_IP}/", timeout=2) is None  # no Service yet: nothing answers
    _kube_proxy(cluster, mode, True)
    try:
        # ClusterIP from pods on every node, the endpoint's own node included (bridged replies)
        for client in ("client1", "client2", "client3"):
            for _ in range(3):
                assert pods[client].http_get(f"http://{CLUSTER_IP}/") == "hello-from-web2", (mode, client)
        # NodePort on a node without the endpoint, from a pod on another node, and from outside
        h3 = cluster.nodes[2]
        assert pods["client1"].http_get(f"http://{h3.ip}:{NODE_PORT}/") == "hello-from-web2"
        r = sh("nsenter", f"--net=/run/netns/{OUT_NS}", "--", "curl", "-sS", "-m", "5", f"http://{h3.ip}:{NODE_PORT}/", check=False)
        assert r.stdout.decode().strip() == "hello-from-web2", r.stderr.decode()
        r = cluster.nodes[0].ns("curl", "-sS", "-m", "5", f"http://{h3.ip}:{NODE_PORT}/", check=False)
        assert r.stdout.decode().strip() == "hello-from-web2", r.stderr.decode()
        # the nodes told no pod to bypass them
        assert [_redirects(n) for n in cluster.nodes] == redirects
    finally:
        _kube_proxy(cluster, mode, False)


def test_pod_egress_leaves_with_the_nodes_address(cluster):
    pods, (h1, h2, h3) = cluster.pods, cluster.nodes
    assert pods["client1"].http_get(f"http://{OUT_IP}:9000/") == h1.ip
    assert pods["client3"].http_get(f"http://{OUT_IP}:9000/") == h3.ip
    whoami = cluster.serve_whoami(h2.name)  # a host-network server on node h2
    cluster.whoami.append(whoami)
    cluster.wait("whoami on h2", lambda: h2.ns("curl", "-sS", "-m", "2", f"http://{h2.ip}:9000/", check=False).returncode == 0, 20, 0.2)
    assert pods["client1"].http_get(f"http://{h2.ip}:9000/") == h1.ip


def test_host_port_from_another_node_the_node_and_localhost(cluster):
    h1, h2, _ = cluster.nodes
    url = f"http://{h1.ip}:{HOST_PORT}/"
    for where, args in (("another node", (h2, url)), ("the node", (h1, url)), ("127.0.0.1 on the node", (h1, f"http://127.0.0.1:{HOST_PORT}/"))):
        node, target = args
        r = node.ns("curl", "-sS", "-m", "5", target, check=False, timeout=20)
        assert r.stdout.decode().strip() == "hello-from-web1", (where, r.stderr.decode())
    assert cluster.pods["client3"].http_get(url) == "hello-from-web1"  # and from a pod on another node


def _ranges(node, peer: str) -> list[tuple[str, str]]:
    info = node.api("GET", "/ipam/status")["peers"].get(peer)
    return sorted((r["start"], r["end"]) for r in info["ranges"]) if info else []


def test_nodes_come_and_go(cluster):
    h1, h2, h3 = cluster.nodes
    h3_peer = h3.api("GET", "/status")["router"]["name"]
    before = _ranges(h1, h3_peer)
    assert before
    # a reboot: the router dies, stays away, comes back with its state dir; its Node stays
    h3.stop_router(signal.SIGKILL)
    cluster.wait("h3 unreachable", lambda: not any(p["reachable"] for p in h1.api("GET", "/status")["peers"] if p["name"] == h3_peer), 60)
    time.sleep(12)  # more than two rounds of the node agents
    for node in (h1, h2):
        assert node.api("GET", "/k8s/status")["nodes"]["reclaimed"] == {}
    h3.start_router()
    cluster.wait("h3 back", lambda: h3.probe() and h3.api("GET", "/k8s/status")["ready"], 120)
    assert _ranges(h1, h3_peer) == before and _ranges(h3, h3_peer) == before
    assert h3.api("GET", "/status")["router"]["name"] == h3_peer
    cluster.wait("client3 reachable again", lambda: cluster.pods["client1"].exec("ping", "-c", "1", "-W", "2", cluster.pods["client3"].ip)[0] == 0, 60)
    # the Node is deleted while its router still runs: nothing is reclaimed ...
    cluster.api.delete("nodes", h3.name)
    time.sleep(8)
    assert _ranges(h1, h3_peer) == before
    # ... until the router is gone too: then exactly one router reclaims, once
    cluster.nodes[2].stop_containerd()
    h3.stop_router(signal.SIGKILL)
    cluster.wait("the space reclaimed", lambda: not _ranges(h1, h3_peer) and not _ranges(h2, h3_peer), 120)
    time.sleep(8)
    reclaimed = {n.name: n.api("GET", "/k8s/status")["nodes"]["reclaimed"] for n in (h1, h2)}
    assert sum(len(r) for r in reclaimed.values()) == 1 and all(set(r) <= {h3_peer} for r in reclaimed.values()), reclaimed
    logs = h1.logs() + h2.logs()
    assert len(re.findall(rf"node {h3.name} was deleted and its router {h3_peer} is unreachable: reclaimed", logs)) == 1
    for node in (h1, h2):
        assert node.api("GET", "/ipam/status")["conflicts"] == []
