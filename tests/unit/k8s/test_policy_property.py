"""The compiler agrees with the spec: for generated clusters and flows, running the packet
through the compiled rulesets of the nodes it crosses (interpret.py) gives the verdict the
reference evaluator (evaluate.py, written from the spec on the raw JSON) gives.

Which nodes' forward hooks a packet meets is the data path's geometry, modelled here:
it leaves a pod through its node's forward hook (unless it is for that node itself: input),
and reaches a pod through its node's forward hook (unless it comes from that node itself:
output), once if both ends are on one node.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from netpol_gen import ADDRESSES, NODE_IPS, POD_IPS, PORTS, PROTOCOLS, cluster, flow, node_of

from meshnet.k8s.policy.compile import compile_node
from meshnet.k8s.policy.evaluate import World
from meshnet.k8s.policy.interpret import Interpreter, Packet
from meshnet.k8s.policy.model import Cluster
from meshnet.k8s.policy.parse import parse_namespace, parse_pod, parse_policy
from meshnet.k8s.policy.ruleset import Verdict


SERVICES = [(proto, port) for proto in PROTOCOLS for port in PORTS] + [("TCP", 82), ("UDP", 65535), ("ICMP", None)]


def build(namespaces, pods, policies) -> Cluster:
    parsed = [parse_policy(p) for p in policies]
    assert all(not p.errors for p in parsed), [p.errors for p in parsed]
    return Cluster.of(map(parse_namespace, namespaces), filter(None, map(parse_pod, pods)), [p.policy for p in parsed])


def node_interpreters(model: Cluster) -> dict[str, Interpreter]:
    return {node: Interpreter(compile_node(model, [ip for ip in POD_IPS if node_of(ip) == node])) for node in NODE_IPS}


def hops(src: str, dst: str) -> list[str]:
    path = []
    if src in POD_IPS and dst != NODE_IPS[node_of(src)]:
        path.append(node_of(src))
    if dst in POD_IPS and node_of(dst) not in path and src != NODE_IPS[node_of(dst)]:
        path.append(node_of(dst))
    return path


def compiled_verdict(nodes: dict[str, Interpreter], src, dst, proto, port) -> bool:
    pkt = Packet(src, dst, proto.lower(), port)
    return all(nodes[n].run(pkt).verdict is Verdict.ACCEPT for n in hops(src, dst))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(cluster())
def test_compiled_rulesets_agree_with_the_spec(state):
    """Every ordered pair of addresses, on every (protocol, port) of SERVICES: a truth table."""
    namespaces, pods, policies = state
    world = World(namespaces, pods, policies, {n: [ip] for n, ip in NODE_IPS.items()})
    nodes = node_interpreters(build(namespaces, pods, policies))
    for src in ADDRESSES:
        for dst in ADDRESSES:
            if src == dst:
                continue
            for proto, port in SERVICES:
                expected = world.decide(src, dst, proto, port)
                got = compiled_verdict(nodes, src, dst, proto, port)
                assert got == expected.allowed, f"{proto} {src} -> {dst}:{port}: spec says {expected}, ruleset says {got}"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(cluster(), flow())
def test_replies_and_established_flows_always_pass(state, f):
    """Whatever the policies, a packet of a flow conntrack already knows is forwarded."""
    namespaces, pods, policies = state
    nodes = node_interpreters(build(namespaces, pods, policies))
    src, dst, proto, port = f
    for ct in ("established", "related"):
        assert all(nodes[n].run(Packet(src, dst, proto.lower(), port, ct=ct)).verdict is Verdict.ACCEPT for n in NODE_IPS)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(cluster())
def test_compilation_is_deterministic_and_order_free(state):
    namespaces, pods, policies = state
    one = compile_node(build(namespaces, pods, policies), POD_IPS)
    two = compile_node(build(namespaces[::-1], pods[::-1], policies[::-1]), POD_IPS[::-1])
    assert one == two
