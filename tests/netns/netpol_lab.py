"""A simulated cluster for the NetworkPolicy e2e tests: a `meshnet.lab.Lab` of 3 hosts
whose routers run the policy agent against a fake API server, 3 namespaces x 3 pods.

    mnq-ul  [ulbr 192.168.90.0/24; FakeApi on 192.168.90.250]         the underlay and the API
    mnq-h1 .11   mnq-h2 .12   mnq-h3 .13                              nodes mnq-h1..3 (routers,
      |-- x/a y/a z/a   |-- x/b y/b z/b   |-- x/c y/c z/c              --network-policy)
                                                                       pods: `meshnet attach`ed
Each pod is a namespace on its node's bridge with an IPAM address, published to the API
as a Pod (nodeName, podIP, named container ports) with TCP/UDP/SCTP responders inside.
Pod "a" of every namespace is on h1, "b" on h2, "c" on h3: pairs on one node and pairs
across nodes. Everything is named mnq*; `close()` removes it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

from netpol_cases import NAMESPACES, SCTP_PORTS, TCP_PORTS, UDP_PORTS, namespace, pod
from netpol_probe import Responder

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "k8s"))

from fakeapi import FakeApi, node_object  # noqa: E402

from meshnet.api.client import ApiClient  # noqa: E402
from meshnet.k8s.policy.evaluate import World  # noqa: E402
from meshnet.kernel.netns import in_netns  # noqa: E402
from meshnet.lab import Lab  # noqa: E402

PREFIX = "mnq"
API_IP = "192.168.90.250"
POD_NAMES = ("a", "b", "c")
MODES = {
    "fastdp": dict(password=None, extra_flags=[]),
    "sleeve-encrypted": dict(password="mnq-not-secret", extra_flags=["--no-fastdp"]),
    "sleeve": dict(password=None, extra_flags=["--no-fastdp"]),
}


class PolicyLab:
    def __init__(self, mode: str):
        self.mode = mode
        self.lab = Lab(prefix=PREFIX, hosts=3, password=MODES[mode]["password"])
        self.api = FakeApi(host=API_IP, bookmark_interval=5.0)
        self.pods: dict[str, str] = {}  # "ns/name" -> address
        self.netns: dict[str, str] = {}  # "ns/name" -> the pod's network namespace
        self.node_of: dict[str, int] = {}
        self.responders: list[Responder] = []
        self.policies: list[dict] = []

    def up(self) -> None:
        Lab(prefix=PREFIX, hosts=3).down()  # what a crashed run left
        self.lab.up(start_routers=False)
        ul = self.lab.underlay_ns
        subprocess.run(["ip", "-n", ul, "addr", "add", f"{API_IP}/24", "dev", "ulbr"], check=True)
        with in_netns(ul):  # the API server's socket lives on the underlay
            url = self.api.start()
        self.lab.extra_flags = [*MODES[self.mode]["extra_flags"], "--pod-network", "--network-policy", "--kube-api", url]
        for i in (1, 2, 3):
            self.api.create("nodes", node_object(self.lab.host_ns(i), self.lab.host_ip(i)))
        for n in NAMESPACES:
            self.api.create("namespaces", namespace(n))
        for i in (1, 2, 3):
            self.lab.start_router(i)
        self.lab.wait_mesh(60)
        self.wait_modes()
        for i, name in enumerate(POD_NAMES, start=1):
            for j, n in enumerate(NAMESPACES, start=1):
                ns, ip = self.lab.add_container(i, j)
                key = f"{n}/{name}"
                self.pods[key], self.netns[key], self.node_of[key] = ip, ns, i
                self.api.create("pods", pod(n, name, ip, self.lab.host_ns(i)))
                self.responders.append(Responder(ns, tcp=TCP_PORTS, udp=UDP_PORTS, sctp=SCTP_PORTS))

    def wait_modes(self, timeout: float = 60.0) -> None:
        """Until every router reaches every other on the data path of this mode."""
        want = "fastdp" if self.mode == "fastdp" else ("sleeve+encrypted" if MODES[self.mode]["password"] else "sleeve")
        deadline = time.monotonic() + timeout
        while True:
            modes = {(i, p["nick"]): p.get("mode") for i in (1, 2, 3) for p in self.lab.status(i)["peers"] if p["nick"] != self.lab.host_ns(i)}
            if set(modes.values()) == {want}:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"data paths not all {want}: {modes}")
            time.sleep(0.5)

    def close(self) -> None:
        for r in self.responders:
            r.stop()
        try:
            self.api.stop()
        finally:
            if os.environ.get("MNQ_KEEP") != "1":
                self.lab.down()

    # -- the API side ---------------------------------------------------------------------
    def set_policies(self, policies: list[dict]) -> None:
        """Make these the cluster's only NetworkPolicies."""
        for p in self.policies:
            self.api.delete("networkpolicies", p["metadata"]["name"], p["metadata"]["namespace"])
        for p in policies:
            self.api.create("networkpolicies", p)
        self.policies = list(policies)

    def world(self) -> World:
        pods = [pod(*k.split("/"), ip, self.lab.host_ns(self.node_of[k])) for k, ip in self.pods.items()]
        return World([namespace(n) for n in NAMESPACES], pods, self.policies)

    # -- the routers ----------------------------------------------------------------------
    def lab_api(self, i: int) -> ApiClient:
        return ApiClient(f"{self.lab.run_dir(i)}/meshnet.sock")

    def policy_status(self, i: int) -> dict[str, Any]:
        return self.lab_api(i).get("/k8s/policy")

    def wait_enforced(self, timeout: float = 30.0) -> float:
        """Until every router has applied the current policies with the isolation the
        spec gives its pods; the seconds it took."""
        world, start = self.world(), time.monotonic()
        want = {}
        for key, ip in self.pods.items():
            me = world.pod_at[ip]
            want[key] = {d: sorted(f"{p['metadata']['namespace']}/{p['metadata']['name']}" for p in world.isolating(me, d)) for d in ("Ingress", "Egress")}
        while True:
            try:
                done = True
                for i in (1, 2, 3):
                    st = self.policy_status(i)
                    views = {v["pod"]: v for v in st["pods"]}
                    mine = [k for k in self.pods if self.node_of[k] == i]
                    if not st["current"] or st["counts"]["policies"] != len(self.policies) or any(
                        k not in views or sorted(views[k]["ingress"]) != want[k]["Ingress"] or sorted(views[k]["egress"]) != want[k]["Egress"] for k in mine
                    ):
                        done = False
                if done:
                    return time.monotonic() - start
            except (OSError, KeyError, ValueError):
                pass
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"policies not enforced within {timeout}s: {json.dumps(self.policy_status(1)['stats'])}")
            time.sleep(0.1)

    def router_log(self, i: int) -> str:
        with open(f"{self.lab.run_dir(i)}/meshnet.log", errors="replace") as f:
            return f.read()

