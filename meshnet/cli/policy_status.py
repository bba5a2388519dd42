"""`meshnet status policy` as prose, from the policy agent's `GET /k8s/policy` (data)."""

from __future__ import annotations

from typing import Any


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:g} ms"


def format_policy_status(s: dict[str, Any]) -> str:
    c, st = s["counts"], s["stats"]
    state = "enforcing" if s["enforcing"] else ("NOT ENFORCING: " + (st.get("last_error") or ("waiting for the first list" if not s["synced"] else "not applied yet")))
    lines = [
        f"Policy   {state} on node {s['node'] or '?'} (nftables table {s['table']})",
        f"Cluster  {c['policies']} policies, {c['pods']} pods with addresses, {c['namespaces']} namespaces"
        + ("" if s["synced"] else "  (still listing)"),
        f"Here     {c['local_pods']} pods, {c['isolated_ingress']} isolated for ingress, {c['isolated_egress']} for egress",
        f"Updates  {st['updates']} diffs, {st['replaces']} whole tables, {st['apply_errors']} refused; last applied in {_ms(st['last_apply_ms'])}, "
        f"{_ms(st['last_latency_ms'])} after the API event (worst {_ms(st['max_latency_ms'])})",
    ]
    if s.get("bridge_netfilter") is False:
        lines.append("WARNING  br_netfilter is off: traffic between pods of this node is NOT policed (modprobe br_netfilter)")
    if not s.get("denied_log"):
        lines.append("Denied   flows are not logged (no NFLOG socket); counters still count them")
    else:
        lines.append(f"Denied   {st['denied_logged']} packets logged (see the router's log: 'policy denied ...')")
    if s["pods"]:
        width = max(len(p["pod"]) for p in s["pods"])
        lines += ["", f"  {'POD':<{width}}  {'ADDRESS':<15}  INGRESS / EGRESS (policies in force; open = not isolated)"]
        for p in s["pods"]:
            ingress = ", ".join(p["ingress"]) or "open"
            egress = ", ".join(p["egress"]) or "open"
            lines.append(f"  {p['pod']:<{width}}  {(p['ips'] or ['-'])[0]:<15}  in: {ingress}  |  out: {egress}")
    if s["problems"]:
        lines += ["", "Objects not enforced as written:"] + [f"  {p['object']}: {p['error']}" for p in s["problems"][:50]]
    return "\n".join(lines)
