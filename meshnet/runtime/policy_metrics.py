"""Prometheus families of the NetworkPolicy section of the metrics snapshot.

The section (`snap["policy"]`, from the policy agent through `Router.add_metrics_section`)
is plain data: the nft counters per policy, direction and verdict, and the agent's own
numbers. Only the first packet of a connection meets a policy (later ones are accepted by
conntrack), so the packet counters count connection attempts allowed and denied; a
packet denied for a pod isolated by several policies counts for each of them.
"""

from __future__ import annotations

from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric


def policy_families(section: dict[str, Any] | None) -> list[Metric]:
    if not section:
        return []
    labels = ["policy", "direction", "verdict"]
    packets = CounterMetricFamily("meshnet_policy_packets", "Packets a NetworkPolicy decided on here (first packets of connections)", labels=labels)
    octets = CounterMetricFamily("meshnet_policy_bytes", "Bytes of those packets", labels=labels)
    for row in section.get("packets", []):
        key = [str(row.get("policy", "")), str(row.get("direction", "")), str(row.get("verdict", ""))]
        packets.add_metric(key, float(row.get("packets", 0)))
        octets.add_metric(key, float(row.get("bytes", 0)))
    counts, stats = section.get("counts", {}), section.get("stats", {})
    out: list[Metric] = [packets, octets]
    out.append(GaugeMetricFamily("meshnet_policy_synced", "1 when Pods, Namespaces and NetworkPolicies have been listed", value=float(bool(section.get("synced")))))
    out.append(GaugeMetricFamily("meshnet_policy_enforcing", "1 when the policy table in the kernel is the one compiled last", value=float(bool(section.get("enforcing")))))
    objects = GaugeMetricFamily("meshnet_policy_objects", "Objects the policy agent follows", labels=["kind"])
    for kind in ("policies", "pods", "namespaces"):
        objects.add_metric([kind], float(counts.get(kind, 0)))
    out.append(objects)
    isolated = GaugeMetricFamily("meshnet_policy_isolated_pods", "Pods of this node a policy isolates", labels=["direction"])
    isolated.add_metric(["ingress"], float(counts.get("isolated_ingress", 0)))
    isolated.add_metric(["egress"], float(counts.get("isolated_egress", 0)))
    out.append(isolated)
    out.append(GaugeMetricFamily("meshnet_policy_problems", "Objects not (fully) enforced as written; see meshnet status policy", value=float(section.get("problems", 0))))
    out.append(CounterMetricFamily("meshnet_policy_apply_errors", "Policy tables the kernel refused", value=float(stats.get("apply_errors", 0))))
    out.append(CounterMetricFamily("meshnet_policy_updates", "Policy tables applied (diff or whole)", value=float(stats.get("updates", 0) + stats.get("replaces", 0))))
    out.append(CounterMetricFamily("meshnet_policy_denied_logged", "Denied packets read from NFLOG (the kernel rate-limits them)", value=float(stats.get("denied_logged", 0))))
    for name, key, help_ in (("meshnet_policy_update_seconds", "last_apply_ms", "How long the last policy table took to apply"),
                             ("meshnet_policy_update_latency_seconds", "last_latency_ms", "From the first API event to the table applied, last time")):
        if stats.get(key) is not None:
            out.append(GaugeMetricFamily(name, help_, value=float(stats[key]) / 1000))
    return out
