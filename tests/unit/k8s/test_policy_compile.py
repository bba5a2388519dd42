"""The compiler's shape: what goes in the ruleset, stable names, small updates, safe scripts."""

from __future__ import annotations

import re

from meshnet.k8s.policy.compile import EGRESS_MAP, INGRESS_MAP, compile_node, merge_ports
from meshnet.k8s.policy.interpret import Interpreter, Packet
from meshnet.k8s.policy.model import Cluster
from meshnet.k8s.policy.parse import parse_namespace, parse_pod, parse_policy
from meshnet.k8s.policy.render import replace, update
from meshnet.k8s.policy.ruleset import Verdict


def ns(name):
    return parse_namespace({"metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}}})


def pod(namespace, name, ip, labels, node="n1"):
    return parse_pod({"metadata": {"name": name, "namespace": namespace, "labels": labels}, "spec": {"nodeName": node}, "status": {"podIP": ip}})


def pol(namespace, name, spec):
    return parse_policy({"metadata": {"name": name, "namespace": namespace}, "spec": spec}).policy


NSS = [ns("x"), ns("y")]
PODS = [pod("x", "a", "10.32.0.1", {"app": "web"}), pod("x", "b", "10.32.0.2", {"app": "web"}), pod("y", "c", "10.32.0.3", {"app": "db"}),
        pod("y", "d", "10.32.1.4", {"app": "db"}, node="n2")]
WEB_FROM_DB = pol("x", "web-from-db", {"podSelector": {"matchLabels": {"app": "web"}},
                                        "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "db"}}}], "ports": [{"port": 80}]}]})
LOCAL = ["10.32.0.1", "10.32.0.2", "10.32.0.3"]


def test_only_isolated_local_pods_are_in_the_maps_and_equal_rules_share_a_chain():
    rs = compile_node(Cluster.of(NSS, PODS, [WEB_FROM_DB]), LOCAL)
    maps = {m.name: dict(m.elements) for m in rs.maps}
    assert set(maps[INGRESS_MAP]) == {"10.32.0.1", "10.32.0.2"} and maps[EGRESS_MAP] == {}
    assert maps[INGRESS_MAP]["10.32.0.1"] == maps[INGRESS_MAP]["10.32.0.2"]
    (peers,) = rs.addr_sets
    assert peers.elements == ("10.32.0.3/32", "10.32.1.4/32")  # the remote pod too: it is a peer
    views = {v.pod: v for v in rs.pods}
    assert views["x/a"].ingress == ("x/web-from-db",) and views["y/c"].ingress == () and "y/d" not in views


def test_pods_of_other_nodes_are_not_compiled():
    rs = compile_node(Cluster.of(NSS, PODS, [WEB_FROM_DB]), ["10.32.1.4"])
    assert all(not m.elements for m in rs.maps) and len(rs.chains) == 1


def test_a_new_peer_changes_set_elements_only():
    before = compile_node(Cluster.of(NSS, PODS, [WEB_FROM_DB]), LOCAL)
    after = compile_node(Cluster.of(NSS, PODS + [pod("y", "e", "10.32.0.9", {"app": "db"})], [WEB_FROM_DB]), LOCAL)
    script = update(before, after)
    assert script is not None
    assert [line.split(" {")[0] for line in script.splitlines()] == [f"add element inet meshnet_policy {before.addr_sets[0].name}"]
    assert "10.32.0.9/32" in script
    assert update(after, after) is None


def test_update_order_adds_before_use_and_deletes_after():
    one = compile_node(Cluster.of(NSS, PODS, [WEB_FROM_DB]), LOCAL)
    two = compile_node(Cluster.of(NSS, PODS, [pol("x", "other", {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "192.168.0.0/16"}}]}]})]), LOCAL)
    lines = update(one, two).splitlines()
    first = {kind: min(i for i, line in enumerate(lines) if line.startswith(kind)) for kind in ("add set", "add chain", "add rule", "add element", "delete chain", "delete set")}
    assert first["add set"] < first["add element"] and first["add chain"] < first["add rule"]
    assert max(first["add rule"], first["add element"]) < first["delete chain"] < first["delete set"]
    old_chain = next(c.name for c in one.chains if c.name.startswith("in_"))
    assert lines.index(f"flush chain inet meshnet_policy {old_chain}") < lines.index(f"delete chain inet meshnet_policy {old_chain}")


def test_nothing_from_the_api_reaches_the_script():
    evil = "x-dropall"
    cluster = Cluster.of([ns(evil)], [pod(evil, "p-accept", "10.32.0.1", {"app": "a-b"})],
                         [pol(evil, "q-return", {"podSelector": {}, "ingress": [{"ports": [{"port": "http"}]}]})])
    script = replace(compile_node(cluster, ["10.32.0.1"]))
    assert not re.search("dropall|p-accept|q-return|a-b|http", script)


def test_counters_per_policy_and_direction():
    rs = compile_node(Cluster.of(NSS, PODS, [WEB_FROM_DB]), LOCAL)
    (pid,) = rs.policy_ids
    assert rs.policy_ids[pid] == "x/web-from-db" and set(rs.counters) == {f"a_in_{pid}", f"d_in_{pid}"}
    vm = Interpreter(rs)
    ok, denied = vm.run(Packet("10.32.0.3", "10.32.0.1", "tcp", 80)), vm.run(Packet("10.32.0.3", "10.32.0.1", "tcp", 81))
    assert (ok.verdict, ok.counters) == (Verdict.ACCEPT, [f"a_in_{pid}"])
    assert (denied.verdict, denied.counters, denied.logged) == (Verdict.DROP, [f"d_in_{pid}"], ["meshnet-deny-in"])


def test_conntrack_known_flows_pass_untouched():
    rs = compile_node(Cluster.of(NSS, PODS, [pol("x", "deny", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})]), LOCAL)
    vm = Interpreter(rs)
    assert vm.run(Packet("10.32.0.3", "10.32.0.1", "tcp", 80)).verdict is Verdict.DROP
    out = vm.run(Packet("10.32.0.3", "10.32.0.1", "tcp", 80, ct="established"))
    assert out.verdict is Verdict.ACCEPT and out.counters == []


def test_port_ranges_are_merged_for_nft():
    assert merge_ports([("tcp", 80, 80), ("tcp", 81, 90), ("tcp", 85, 100), ("udp", 53, 53), ("tcp", 200, 200)]) == (
        ("tcp", 80, 100), ("tcp", 200, 200), ("udp", 53, 53),
    )
