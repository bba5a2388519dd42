"""Status as prose: the router answers `GET /status` as data (runtime/status.py); these
turn it into what a person reads. Metrics read the same data, never this text."""

from __future__ import annotations

from typing import Any


def describe_pump(pump: dict[str, Any]) -> str:
    """One line: which pump, and which offloads it uses."""
    if not pump.get("compiled"):
        return "PURE-PYTHON TWIN (slow; the compiled pump is not built): no batching, no offloads"
    f = pump.get("features") or {}
    used = [f"batch {f.get('batch')}"] if f else []
    if f.get("tap_offload"):
        used.append("TAP " + "/".join(f["tap_offload"]))
    elif f:
        used.append("no TAP offloads" + ("" if f.get("vnet_hdr") else " (no IFF_VNET_HDR)"))
    used += [name for key, name in (("udp_gso", "UDP GSO"), ("udp_gro", "UDP GRO"), ("gro_merge", "TCP merging"), ("gro_merge_udp", "UDP merging")) if f.get(key)]
    if f.get("udp_gso_error"):
        used.append(f"UDP GSO off after error: {f['udp_gso_error']}")
    used.append(f"sleeve {f['crypto']}" if f.get("crypto") else "sleeve unencrypted")
    return "compiled: " + ", ".join(used)


def describe_macs(dataplane: dict[str, Any]) -> list[str]:
    """The sleeve's MAC table: its fill against its limits, and what the policy refused."""
    tables, f, stats = dataplane.get("tables"), (dataplane.get("pump") or {}).get("features") or {}, dataplane.get("stats") or {}
    if not tables or "mac_table_max" not in f:
        return []
    line = (f"MACs     {tables['macs']} of {f['mac_table_max']} ({tables['learned']} learned; "
            f"{f['learn_quota']} learned per peer, aged after {f['mac_age']}s)")
    refused = [f"{stats[k]} {what}" for k, what in (("learn_table_full", "not learned: table full"), ("learn_over_quota", "not learned: peer over quota"), ("learned_evicted", "evicted for gossiped ones")) if stats.get(k)]
    return [line + (": " + ", ".join(refused) if refused else "")]


def describe_fastdp(fastdp: dict[str, Any]) -> str:
    if fastdp.get("enabled"):
        return "enabled (kernel VXLAN, UDP 6784, per-peer health probes)"
    return f"off: {fastdp.get('reason')}"


def describe_encryption(encrypted: bool) -> str:
    if encrypted:
        return "enabled (X25519 + HKDF + AES-256-GCM on control connections)"
    return "DISABLED: the mesh is unencrypted (no --password)"


def describe_ipam(ipam: dict[str, Any] | None) -> str:
    if not ipam:
        return "?"
    local = ipam.get("local") or {}
    if ipam.get("ready"):
        text = f"ready: {ipam['range']}, {local.get('ranges', 0)} ranges here, {local.get('used', 0)} addresses used, {local.get('free', 0)} free"
    else:
        text = f"NOT READY ({ipam.get('init')}): {ipam.get('waiting') or ipam.get('state')}"
    if ipam.get("pending"):
        text += f"; {ipam['pending']} request(s) waiting"
    if ipam.get("unreachable_owners"):
        text += f"; {ipam['unreachable_owners']} unreachable owner(s) (status ipam)"
    if ipam.get("conflicts"):
        text += f"; {ipam['conflicts']} CONFLICT(S) (status ipam)"
    return text


def describe_dns(docker: dict[str, Any] | None) -> str:
    if not docker:
        return "no Docker integration"
    dns = docker.get("dns") or {}
    where = ", ".join(f"{a}:{dns.get('port', 53)}" for a in dns.get("addresses") or [])
    if not where:
        return f"domain {dns.get('domain')}; not serving: this host has no overlay address (meshnet expose)"
    counters = dns.get("counters") or {}
    asked = sum(v for k, v in counters.items() if isinstance(v, int) and k.startswith("queries")) if counters else 0
    return f"domain {dns.get('domain')} on {where}" + (f", {asked} queries" if asked else "")


def describe_docker(docker: dict[str, Any] | None) -> str:
    if not docker or not docker.get("docker"):
        return "off (no Docker socket)"
    state = "connected" if docker.get("connected") else "NOT CONNECTED (retrying)"
    plugin = f"; plugin {docker['plugin']}" if docker.get("plugin") else ""
    return f"{state} to {docker['docker']}{plugin}"


_REASONS = {
    "timer_stalled": "the timer is {age:.1f}s late (heartbeats, failure detection and probes have stopped)",
    "pump_stopped": "the sleeve pump's thread has stopped (no sleeve traffic)",
}


def describe_health(health: dict[str, Any]) -> str:
    """`healthy`, or UNHEALTHY and why; then what supervision caught, if anything."""
    if health.get("healthy", True):
        text = "healthy"
    else:
        why = [
            _REASONS[r].format(age=health.get("timer_age_s", 0)) if r in _REASONS else f"{r.split(':', 1)[-1]} died"
            for r in health.get("reasons") or ["timer_stalled"]
        ]
        text = "UNHEALTHY: " + "; ".join(why)
    sup = health.get("supervision") or {}
    caught = {**health.get("timer_failures", {}), **sup.get("failures", {})}
    caught = {k: v for k, v in caught.items() if v}
    if caught:
        text += "  (failures caught: " + ", ".join(f"{k} {v}" for k, v in sorted(caught.items())) + ")"
    return text


def describe_limits(limits: dict[str, Any]) -> str:
    text = (
        f"peers {limits['peers']}/{limits['max_peers']}, gossiped endpoints {limits['endpoints']}/{limits['max_endpoints']}, "
        f"local {limits['local_endpoints']}/{limits['max_peer_endpoints']}"
    )
    dropped = [
        f"{n} {what}"
        for what, n in (("over a peer's share", limits.get("endpoints_over_quota", 0)), ("for a full table", limits.get("endpoints_table_full", 0)))
        if n
    ]
    if limits.get("peers_table_full"):
        dropped.append(f"{limits['peers_table_full']} peer entries for a full topology")
    return text + (f"; NOT STORED: {', '.join(dropped)}" if dropped else "")


def conflict_lines(s: dict[str, Any]) -> list[str]:
    """MAC and IP addresses two peers claim (status data `conflicts`)."""
    conflicts = s.get("conflicts") or {}
    if not conflicts.get("current"):
        return []
    nick = {p["name"]: p["nick"] for p in s["peers"]}
    lines = ["", f"ADDRESS CONFLICTS ({conflicts['current']}; the earlier claim keeps the address):"]
    for c in conflicts.get("list", [])[:10]:
        others = ", ".join(nick.get(o, o[:12]) for o in c["others"])
        lines.append(f"  {c['kind'].upper():<4} {c['address']:<20} kept by {nick.get(c['owner'], c['owner'][:12])}, also claimed by {others}")
    if conflicts["current"] > 10:
        lines.append(f"  ... {conflicts['current'] - 10} more (meshnet status --json)")
    return lines


def peer_lines(s: dict[str, Any]) -> list[str]:
    r = s["router"]
    lines = []
    for p in s["peers"]:
        state = "self" if p["name"] == r["name"] else ("reachable" if p["reachable"] else "UNREACHABLE")
        via = f" via {p['via'][:8]}" if p.get("via") else ""
        mode = f"  {p['mode']}" if p.get("mode") and state != "self" else ""
        dropped = f" (+{p['endpoints_dropped']} NOT STORED: over its share)" if p.get("endpoints_dropped") else ""
        lines.append(f"  {p['nick']:<16} {p['name'][:12]}  {state}{via}{mode}  connections {p['connections']}  endpoints {p['endpoints']}{dropped}")
    if s.get("departed"):
        lines += ["", f"Departed, kept while their data path answers ({len(s['departed'])}):"]
        for d in s["departed"]:
            lines.append(f"  {d['nick']:<16} {d['address']:<16} {d['mode']:<7} ({d['mode_reason']})  endpoints {d['endpoints']}  grace left {d['grace_left_s']}s")
    return lines


def connection_lines(s: dict[str, Any]) -> list[str]:
    lines = []
    for c in s["connections"]:
        if c.get("state") == "established":
            beat = f"  heard {c['heartbeat_age_s']:.0f}s ago" if "heartbeat_age_s" in c else ""
            lines.append(f"  {c['nick']:<16} {c['address']:<16} {c['direction']:<9} established  {c['mode']:<16} ({c['mode_reason']}){beat}")
        else:
            lines.append(f"  {'?':<16} {c['address']:<22} {c['state']}: {c['last_error'] or 'dialling'}")
    return lines


def format_status(s: dict[str, Any], *, docker: dict[str, Any] | None = None, runs_as: str | None = None) -> str:
    r = s["router"]
    health = s.get("health") or {}
    lines = [
        f"Router   {r['nick']} ({r['name']})  id {r['id']:#010x}  up {r['uptime']}s  version {r.get('version', '?')}",
        f"         TCP {r['port']}  UDP {r['udp_port']}  bridge {r['bridge']}  MTU {r['mtu']}",
        f"Runs as  {runs_as or 'process ' + str(r.get('pid', '?'))}",
        f"Health   {describe_health(health)}",
        f"Crypto   {describe_encryption(r['encrypted'])}",
        f"Pump     {describe_pump(s['dataplane']['pump'])}",
        *describe_macs(s["dataplane"]),
        f"fastdp   {describe_fastdp(s['dataplane']['fastdp'])}",
        f"IPAM     {describe_ipam(s.get('ipam'))}",
        f"Docker   {describe_docker(docker)}",
        f"DNS      {describe_dns(docker)}",
        *([f"Tables   {describe_limits(s['limits'])}"] if s.get("limits") else []),
        *([f"Errors   {n} connections closed for protocol errors"] if (n := (s.get("counters") or {}).get("protocol_errors")) else []),
        "",
        f"Peers ({len(s['peers'])}):",
        *peer_lines(s),
        "",
        f"Connections ({len(s['connections'])}):",
        *connection_lines(s),
        *conflict_lines(s),
    ]
    if s.get("refusals"):
        lines += ["", "Refused handshakes (newest last):"]
        lines += [f"  {x['address']} {x['nick'] or '?'}: {x['reason']}" for x in s["refusals"][-5:]]
    return "\n".join(lines)


def format_dns(docker: dict[str, Any], records: dict[str, Any]) -> str:
    lines = [f"DNS      {describe_dns(docker)}", ""]
    added = records.get("added_here") or {}
    by_name = records.get("records") or {}
    lines.append(f"Names ({len(by_name)}), * added here with dns-add:")
    for name, ips in sorted(by_name.items()):
        mark = "*" if name in added else " "
        lines.append(f" {mark}{name}.{records.get('domain', '')}  {' '.join(ips)}")
    return "\n".join(lines)


def format_ipam_status(s: dict[str, Any]) -> str:
    nick = s.get("nicknames", {})
    local = s["local"]
    lines = [
        f"Range    {s['range']}  ({s['init']})  state: {s['state']}",
        f"Local    {local['ranges']} ranges, {local['size']} addresses, {local['used']} used, {local['free']} free",
    ]
    if s.get("waiting"):
        lines.append(f"Waiting  {s['pending']} request(s): {s['waiting']}")
    lines += ["", "Peer                           size      used      free  ranges"]
    for name, p in sorted(s["peers"].items(), key=lambda kv: nick.get(kv[0], kv[0])):
        label = f"{nick.get(name, '?')} ({name[:8]})" + ("" if p["reachable"] else " UNREACHABLE")
        lines.append(f"  {label:<28} {p['size']:>8} {p['used']:>9} {p['free']:>9}  {len(p['ranges'])}")
    if s["unreachable_owners"]:
        lines += ["", "Unreachable owners (meshnet rmpeer PEER once they are gone for good):"]
        lines += [f"  {nick.get(n, '?')} {n}" for n in s["unreachable_owners"]]
    if s["conflicts"]:
        lines += ["", "CONFLICTS:"] + [f"  {c}" for c in s["conflicts"]]
    return "\n".join(lines)
