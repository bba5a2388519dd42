"""What a person and Prometheus see of the policy agent: the metrics families built from
the snapshot's `policy` section (through the router's /metrics text format), and the
prose of `meshnet status policy`."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from meshnet.cli.policy_status import format_policy_status
from meshnet.runtime import metrics

SECTION = {
    "synced": True, "enforcing": True, "problems": 1,
    "counts": {"namespaces": 3, "pods": 9, "policies": 2, "local_pods": 3, "isolated_ingress": 2, "isolated_egress": 1},
    "stats": {"syncs": 5, "updates": 3, "replaces": 1, "unchanged": 1, "apply_errors": 0, "last_error": None, "last_apply_ms": 4.5,
              "last_latency_ms": 27.0, "max_latency_ms": 40.0, "denied_logged": 12},
    "packets": [{"policy": "x/deny", "direction": "ingress", "verdict": "denied", "packets": 12, "bytes": 720},
                {"policy": "x/web", "direction": "ingress", "verdict": "allowed", "packets": 5, "bytes": 300}],
}


def scrape(snap: dict) -> dict:
    class One:
        def collect(self):
            return metrics.families(snap)

    reg = CollectorRegistry()
    reg.register(One())
    out = {}
    for fam in text_string_to_metric_families(generate_latest(reg).decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_policy_metrics_per_policy_direction_and_verdict():
    got = scrape({"policy": SECTION})
    assert got[("meshnet_policy_packets_total", (("direction", "ingress"), ("policy", "x/deny"), ("verdict", "denied")))] == 12
    assert got[("meshnet_policy_bytes_total", (("direction", "ingress"), ("policy", "x/web"), ("verdict", "allowed")))] == 300
    assert got[("meshnet_policy_isolated_pods", (("direction", "egress"),))] == 1
    assert got[("meshnet_policy_update_latency_seconds", ())] == 0.027
    assert got[("meshnet_policy_updates_total", ())] == 4 and got[("meshnet_policy_synced", ())] == 1


def test_no_policy_section_no_policy_metrics():
    assert not [k for k in scrape({}) if k[0].startswith("meshnet_policy")]


def status(**over):
    base = {"node": "n1", "table": "inet meshnet_policy", "synced": True, "enforcing": True, "bridge_netfilter": True, "denied_log": True,
            "counts": SECTION["counts"], "stats": SECTION["stats"],
            "pods": [{"pod": "x/a", "ips": ["10.32.0.1"], "ingress": ["x/deny", "x/web"], "egress": []},
                     {"pod": "y/b", "ips": ["10.32.0.2"], "ingress": [], "egress": ["y/dns"]}],
            "problems": [{"object": "NetworkPolicy x/half", "error": "spec.ingress[0].ports[0]: port out of 1-65535 (rule dropped)"}],
            "informers": []}
    return {**base, **over}


def test_status_policy_names_the_policies_in_force_per_pod():
    text = format_policy_status(status())
    assert "enforcing on node n1 (nftables table inet meshnet_policy)" in text
    assert "x/a" in text and "in: x/deny, x/web  |  out: open" in text and "in: open  |  out: y/dns" in text
    assert "27 ms after the API event" in text and "NetworkPolicy x/half: spec.ingress[0]" in text


def test_status_policy_says_plainly_when_nothing_is_enforced():
    text = format_policy_status(status(enforcing=False, bridge_netfilter=False, stats={**SECTION["stats"], "last_error": "nft: refused"}))
    assert "NOT ENFORCING: nft: refused" in text and "NOT policed" in text
