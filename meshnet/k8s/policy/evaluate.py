"""The reference: is one flow allowed, according to the networking.k8s.io/v1 spec?

Written from the API reference, on purpose apart from the parser and the compiler: it
reads the API's own JSON objects (dicts, as a list or watch returns them) and imports
nothing else of meshnet, so a misreading of the spec in one is not copied into the other.
Tests compare the two: the property test (the compiled ruleset run by `interpret.py`) and
the truth table (real packets between pod namespaces).

The rules it follows (each is a sentence of the spec):

- A pod is isolated for ingress (egress) when some NetworkPolicy of its namespace selects
  it with its podSelector and has "Ingress" ("Egress") in policyTypes. policyTypes left
  out means Ingress, plus Egress when the egress list is not empty.
- A flow from S to D must be allowed at both ends: by S's egress (if S is an isolated pod)
  and by D's ingress (if D is an isolated pod). An isolated side allows it if any rule of
  any policy isolating it matches.
- A rule matches if a peer matches (no peers: everyone) and a port matches (no ports: all).
- A peer: ipBlock matches addresses in cidr and in no except; podSelector alone matches
  pods of the policy's namespace; namespaceSelector alone, every pod of the namespaces it
  selects; both, pods it selects in the namespaces it selects. An empty selector selects all.
- A port: protocol (default TCP) equal, and port absent (all), equal, within [port, endPort],
  or a name that the pod receiving the flow (ingress: the isolated pod; egress: the
  destination, if it is a pod) declares among its containers' ports with that protocol.
- Traffic between a pod and the node it runs on is always allowed.

Addresses name pods that have them and are neither host-network nor finished; if two
claim one, the newest (creationTimestamp) holds it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Iterable


@dataclass(frozen=True)
class Decision:
    allowed: bool
    egress: str  # "open" (not isolated / not a pod), "allowed by ns/name", "denied"
    ingress: str


def _labels(obj: dict) -> dict:
    return (obj.get("metadata") or {}).get("labels") or {}


def _selects(selector: dict | None, labels: dict) -> bool:
    selector = selector or {}
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and not (key in labels and labels[key] in values):
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def _types(policy: dict) -> list[str]:
    spec = policy["spec"]
    if spec.get("policyTypes"):
        return spec["policyTypes"]
    return ["Ingress", "Egress"] if spec.get("egress") else ["Ingress"]


class World:
    def __init__(self, namespaces: Iterable[dict], pods: Iterable[dict], policies: Iterable[dict], node_addresses: dict[str, Iterable[str]] | None = None):
        self.ns_labels = {n["metadata"]["name"]: _labels(n) for n in namespaces}
        self.policies = list(policies)
        self.node_addresses = {k: set(v) for k, v in (node_addresses or {}).items()}
        holders: dict[str, dict] = {}
        for pod in pods:
            if (pod.get("spec") or {}).get("hostNetwork") or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                continue
            status = pod.get("status") or {}
            for ip in {e.get("ip") for e in status.get("podIPs") or []} | {status.get("podIP")}:
                if not ip:
                    continue
                ip = str(ipaddress.ip_address(ip))
                if ip not in holders or self._age(pod) > self._age(holders[ip]):
                    holders[ip] = pod
        self.pod_at = holders

    @staticmethod
    def _age(pod: dict) -> tuple[str, str]:
        meta = pod["metadata"]
        return (meta.get("creationTimestamp") or "", f"{meta['namespace']}/{meta['name']}")

    # -- the parts of a rule ------------------------------------------------------------
    def _peer(self, policy_ns: str, peer: dict, addr: str, pod: dict | None) -> bool:
        if "ipBlock" in peer and peer["ipBlock"] is not None:
            ip = ipaddress.ip_address(addr)
            block = peer["ipBlock"]
            cidr = ipaddress.ip_network(block["cidr"], strict=False)
            if ip.version != cidr.version or ip not in cidr:
                return False
            return not any(ip in ipaddress.ip_network(e, strict=False) for e in block.get("except") or [])
        if pod is None:
            return False
        pod_ns = pod["metadata"]["namespace"]
        if peer.get("namespaceSelector") is None:
            if pod_ns != policy_ns:
                return False
        elif not _selects(peer["namespaceSelector"], self.ns_labels.get(pod_ns, {})):
            return False
        return peer.get("podSelector") is None or _selects(peer["podSelector"], _labels(pod))

    @staticmethod
    def _named(pod: dict | None, name: str, protocol: str) -> int | None:
        for c in ((pod or {}).get("spec") or {}).get("containers") or []:
            for p in c.get("ports") or []:
                if p.get("name") == name and (p.get("protocol") or "TCP") == protocol:
                    return p["containerPort"]
        return None

    def _port(self, entry: dict, protocol: str, port: int | None, receiver: dict | None) -> bool:
        if (entry.get("protocol") or "TCP") != protocol:
            return False
        want = entry.get("port")
        if want is None:
            return True
        if port is None:
            return False
        if isinstance(want, str):
            return self._named(receiver, want, protocol) == port
        return want <= port <= (entry.get("endPort") or want)

    def isolating(self, me: dict, direction: str) -> list[dict]:
        """The policies that isolate pod `me` in `direction` ("Ingress" or "Egress")."""
        ns = me["metadata"]["namespace"]
        return [
            p for p in self.policies
            if p["metadata"]["namespace"] == ns and direction in _types(p) and _selects(p["spec"].get("podSelector"), _labels(me))
        ]

    def _side(self, me: dict | None, direction: str, other_addr: str, other: dict | None, protocol: str, port: int | None) -> str:
        if me is None:
            return "open"
        ns = me["metadata"]["namespace"]
        isolating = self.isolating(me, direction)
        if not isolating:
            return "open"
        receiver = me if direction == "Ingress" else other
        key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
        for policy in isolating:
            for rule in policy["spec"].get(key) or []:
                peers = rule.get(peers_key) or []
                ports = rule.get("ports") or []
                if peers and not any(self._peer(ns, peer, other_addr, other) for peer in peers):
                    continue
                if ports and not any(self._port(e, protocol, port, receiver) for e in ports):
                    continue
                return f"allowed by {ns}/{policy['metadata']['name']}"
        return "denied"

    def decide(self, src: str, dst: str, protocol: str, port: int | None = None) -> Decision:
        """`protocol` is "TCP", "UDP", "SCTP" or anything else (e.g. "ICMP", no port)."""
        src_pod, dst_pod = self.pod_at.get(src), self.pod_at.get(dst)
        if src_pod is not None and dst in self.node_addresses.get(src_pod["spec"].get("nodeName", ""), ()):
            egress = "open (own node)"
        else:
            egress = self._side(src_pod, "Egress", dst, dst_pod, protocol, port)
        if dst_pod is not None and src in self.node_addresses.get(dst_pod["spec"].get("nodeName", ""), ()):
            ingress = "open (own node)"
        else:
            ingress = self._side(dst_pod, "Ingress", src, src_pod, protocol, port)
        return Decision(egress != "denied" and ingress != "denied", egress, ingress)


def decide(namespaces: list[Any], pods: list[Any], policies: list[Any], src: str, dst: str, protocol: str, port: int | None = None) -> Decision:
    return World(namespaces, pods, policies).decide(src, dst, protocol, port)
