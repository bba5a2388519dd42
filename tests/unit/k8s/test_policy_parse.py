"""API objects -> the policy model: the API server's defaults, and hostile input bounded."""

from __future__ import annotations

import ipaddress

import pytest

from meshnet.k8s.policy.model import Direction, Operator, PortSpec, Protocol, Requirement, Selector
from meshnet.k8s.policy.parse import InvalidObject, parse_namespace, parse_pod, parse_policy


def np(spec: dict, name: str = "p", ns: str = "x") -> dict:
    return {"metadata": {"name": name, "namespace": ns}, "spec": spec}


def test_policy_types_default_like_the_api_server():
    assert parse_policy(np({"podSelector": {}})).policy.types == {Direction.INGRESS}
    assert parse_policy(np({"podSelector": {}, "egress": []})).policy.types == {Direction.INGRESS}
    assert parse_policy(np({"podSelector": {}, "egress": [{}]})).policy.types == {Direction.INGRESS, Direction.EGRESS}
    assert parse_policy(np({"podSelector": {}, "policyTypes": ["Egress"], "ingress": [{}]})).policy.types == {Direction.EGRESS}


def test_empty_rule_lists_and_empty_rules_keep_their_meaning():
    deny = parse_policy(np({"podSelector": {}, "ingress": []})).policy
    assert deny.ingress == ()  # isolated, nothing allowed
    allow = parse_policy(np({"podSelector": {}, "ingress": [{}]})).policy
    assert len(allow.ingress) == 1 and allow.ingress[0].peers == () and allow.ingress[0].ports == ()  # everyone, every port
    empty_from = parse_policy(np({"podSelector": {}, "ingress": [{"from": [], "ports": []}]})).policy
    assert empty_from.ingress[0].peers == () and empty_from.ingress[0].ports == ()


def test_selectors_and_ports_parse():
    p = parse_policy(np({
        "podSelector": {"matchLabels": {"app": "db"}, "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["a", "b"]}]},
        "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchExpressions": [{"key": "k", "operator": "Exists"}]}}],
                     "ports": [{"port": 80}, {"protocol": "UDP", "port": 1000, "endPort": 2000}, {"protocol": "SCTP"}, {"port": "http"}]}],
    })).policy
    assert p.pod_selector == Selector((("app", "db"),), (Requirement("tier", Operator.NOT_IN, frozenset({"a", "b"})),))
    peer = p.ingress[0].peers[0]
    assert peer.namespaces == Selector() and peer.pods == Selector((), (Requirement("k", Operator.EXISTS),))
    assert p.ingress[0].ports == (
        PortSpec(Protocol.TCP, 80), PortSpec(Protocol.UDP, 1000, 2000), PortSpec(Protocol.SCTP), PortSpec(Protocol.TCP, "http"),
    )


def test_ip_block_with_except():
    p = parse_policy(np({"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.7/8", "except": ["10.1.0.0/16"]}}]}]})).policy
    block = p.egress[0].peers[0].ip_block
    assert block.cidr == ipaddress.ip_network("10.0.0.0/8") and block.excepts == (ipaddress.ip_network("10.1.0.0/16"),)


@pytest.mark.parametrize("rule", [
    {"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]},  # ipBlock with a selector
    {"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/8"]}}]},  # except outside
    {"from": [{}]},  # a peer with nothing
    {"ports": [{"port": 0}]},
    {"ports": [{"port": 80, "endPort": 79}]},
    {"ports": [{"port": "http", "endPort": 90}]},
    {"ports": [{"port": "Not_A_Name"}]},
    {"ports": [{"protocol": "ICMP", "port": 1}]},
    {"ports": [{"port": True}]},
    {"from": [{"podSelector": {"matchExpressions": [{"key": "k", "operator": "In"}]}}]},  # In without values
    {"from": [{"podSelector": {"matchExpressions": [{"key": "k", "operator": "Exists", "values": ["v"]}]}}]},
    {"from": [{"podSelector": {"matchExpressions": [{"key": "k", "operator": "Near"}]}}]},
    {"from": "everyone"},
])
def test_a_bad_rule_is_dropped_and_the_rest_stands(rule):
    """Rules only allow: dropping one fails closed, rejecting the policy would fail open."""
    parsed = parse_policy(np({"podSelector": {}, "ingress": [rule, {"ports": [{"port": 443}]}]}))
    assert parsed.errors and len(parsed.policy.ingress) == 1 and parsed.policy.ingress[0].ports == (PortSpec(Protocol.TCP, 443),)
    assert parsed.policy.types == {Direction.INGRESS}


@pytest.mark.parametrize("obj", [
    None, [], {"metadata": {"name": "p"}, "spec": {}},  # no namespace
    np({"podSelector": {"matchLabels": {"a": 1}}}),  # a label value that is no string
    np({"podSelector": {"matchLabels": {"k" * 400: "v"}}}),
    np({"podSelector": {}, "policyTypes": ["Sideways"]}),
    np({"podSelector": {}, "ingress": [{}] * 2000}),
    {"metadata": {"name": "x" * 300, "namespace": "x"}, "spec": {}},
])
def test_policies_we_cannot_use_are_refused(obj):
    with pytest.raises(InvalidObject):
        parse_policy(obj)


def pod(status: dict | None = None, spec: dict | None = None, labels: dict | None = None) -> dict:
    return {"metadata": {"name": "a", "namespace": "x", "labels": labels or {"app": "web"}, "creationTimestamp": "2024-01-01T00:00:00Z"},
            "spec": {"nodeName": "n1", **(spec or {})}, "status": {"phase": "Running", "podIP": "10.32.0.5", **(status or {})}}


def test_pods_with_addresses_and_named_ports():
    p = parse_pod(pod(spec={"containers": [{"ports": [{"name": "http", "containerPort": 8080}, {"containerPort": 9}, {"name": "dns", "containerPort": 53, "protocol": "UDP"}]}]}))
    assert p.ips == ("10.32.0.5",) and p.node == "n1" and p.label_map == {"app": "web"}
    assert p.named_port("http", Protocol.TCP) == 8080 and p.named_port("http", Protocol.UDP) is None and p.named_port("dns", Protocol.UDP) == 53


@pytest.mark.parametrize("status,spec", [
    ({"podIP": None}, None),  # no address yet
    ({"podIP": ""}, None),
    (None, {"hostNetwork": True}),  # the node's address
    ({"phase": "Succeeded"}, None),  # done: its address may be someone else's
    ({"phase": "Failed"}, None),
])
def test_pods_policy_does_not_see(status, spec):
    assert parse_pod(pod(status, spec)) is None


@pytest.mark.parametrize("status,spec", [
    ({"podIP": "not-an-ip"}, None),
    ({"podIPs": "10.0.0.1"}, None),
    (None, {"containers": [{"ports": [{"name": "http", "containerPort": 70000}]}]}),
    (None, {"containers": [{"ports": [{"name": "http", "containerPort": 80, "protocol": "QUIC"}]}]}),
    (None, {"containers": "nope"}),
])
def test_hostile_pods_are_refused(status, spec):
    with pytest.raises(InvalidObject):
        parse_pod(pod(status, spec))


def test_namespaces():
    ns = parse_namespace({"metadata": {"name": "x", "labels": {"kubernetes.io/metadata.name": "x"}}})
    assert ns.label_map == {"kubernetes.io/metadata.name": "x"}
    with pytest.raises(InvalidObject):
        parse_namespace({"metadata": {"labels": {}}})
