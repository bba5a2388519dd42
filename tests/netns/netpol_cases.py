"""The canonical NetworkPolicy cases of the truth-table tests, as the API would serve them.

Three namespaces x, y, z (labelled ns=<name> and kubernetes.io/metadata.name) with pods a,
b (and c when there are 3 per namespace), labelled pod=<name>, each serving TCP 80-82,
UDP 53 and 80, SCTP 80 and 81 under the names serve-<port>-<proto> like the upstream e2e
pods. The policies are the issue's list; each is applied alone on top of an empty cluster
and every ordered pair of pods is probed on every service.
"""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

NAMESPACES = ("x", "y", "z")
SERVICES = (("TCP", 80), ("TCP", 81), ("TCP", 82), ("UDP", 53), ("UDP", 80), ("SCTP", 80), ("SCTP", 81))
TCP_PORTS = sorted({p for proto, p in SERVICES if proto == "TCP"})
UDP_PORTS = sorted({p for proto, p in SERVICES if proto == "UDP"})
SCTP_PORTS = sorted({p for proto, p in SERVICES if proto == "SCTP"})


def namespace(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": {"ns": name, "kubernetes.io/metadata.name": name}}}


def pod(ns: str, name: str, ip: str, node: str) -> dict:
    ports = [{"name": f"serve-{port}-{proto.lower()}", "containerPort": port, "protocol": proto} for proto, port in SERVICES]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"pod": name}, "creationTimestamp": "2024-01-01T00:00:00Z"},
        "spec": {"nodeName": node, "containers": [{"name": "cont", "image": "agnhost", "ports": ports}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    }


def policy(name: str, spec: dict, ns: str = "x") -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": name, "namespace": ns}, "spec": spec}


XA = {"matchLabels": {"pod": "a"}}


def canonical(ip_of: Callable[[str], str], pod_range: str) -> dict[str, list[dict]]:
    """name -> the policies of that case. `ip_of("y/b")` is a pod's address and `pod_range`
    a CIDR holding every pod (for ipBlocks: the API refuses an except outside its cidr)."""
    return {
        "default-deny-ingress": [policy("deny-in", {"podSelector": {}, "policyTypes": ["Ingress"]})],
        "default-deny-egress": [policy("deny-eg", {"podSelector": {}, "policyTypes": ["Egress"]})],
        "allow-from-namespace-y": [policy("from-y", {"podSelector": XA, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]})],
        "allow-from-pod-b-in-namespace-y": [
            policy("from-y-b", {"podSelector": XA, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}, "podSelector": {"matchLabels": {"pod": "b"}}}]}]})
        ],
        "allow-named-port-81": [policy("port-81", {"podSelector": XA, "ingress": [{"ports": [{"port": "serve-81-tcp"}]}]})],
        "ipblock-with-except": [
            policy("ipblock", {"podSelector": XA, "ingress": [{"from": [{"ipBlock": {"cidr": pod_range, "except": [ip_of("y/a") + "/32", ip_of("z/b") + "/32"]}}]}]})
        ],
        "egress-to-one-cidr": [
            policy("to-cidr", {"podSelector": XA, "policyTypes": ["Egress"], "egress": [{"to": [{"ipBlock": {"cidr": ip_of("y/b") + "/32"}}, {"ipBlock": {"cidr": ip_of("z/a") + "/32"}}]}]})
        ],
        "sctp-port-80": [policy("sctp", {"podSelector": XA, "ingress": [{"ports": [{"protocol": "SCTP", "port": 80}]}]})],
        "endport-80-81": [policy("range", {"podSelector": XA, "ingress": [{"ports": [{"protocol": "TCP", "port": 80, "endPort": 81}]}]})],
        "deny-all-allow-dns": [
            policy("deny-all", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
            policy("allow-dns", {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}]}),
        ],
    }


def truth_table(pods: dict[str, str], expect: Callable[[str, str, str, int], bool], probe: Callable[[str, str, str, int], bool], workers: int = 24):
    """Probe every ordered pair of pods ("ns/name" -> address) on every service.
    Returns (cases, mismatches) where a mismatch is (src, dst, proto, port, expected, observed)."""
    cases = [(s, d, proto, port) for s, d in itertools.permutations(pods, 2) for proto, port in SERVICES]
    with ThreadPoolExecutor(workers) as pool:
        observed = list(pool.map(lambda c: probe(c[0], pods[c[1]], c[2], c[3]), cases))
    mismatches = []
    for (s, d, proto, port), got in zip(cases, observed):
        want = expect(pods[s], pods[d], proto, port)
        if want != got:
            mismatches.append((s, d, proto, port, want, got))
    return cases, mismatches


def matrix(pods: list[str], verdict: Callable[[str, str], str]) -> str:
    """A cyclonus-style table: rows are sources, columns destinations, cells a verdict string."""
    cells = {(s, d): ("-" if s == d else verdict(s, d)) for s in pods for d in pods}
    width = max(len(x) for x in [*pods, *cells.values()]) + 1
    lines = [" " * width + " ".join(p.ljust(width) for p in pods)]
    for s in pods:
        lines.append(s.ljust(width) + " ".join(cells[s, d].ljust(width) for d in pods))
    return "\n".join(lines)
