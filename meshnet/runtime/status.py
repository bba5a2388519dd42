"""What `GET /status` answers: the router's state as data (numbers, booleans, enum values).

Prose is the CLI's job (`meshnet/cli/status.py`), labels are the metrics' job
(`runtime/metrics.py`); both read this shape, documented in docs/cli.md. Built on the loop
thread from the live objects, never cached.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from meshnet import __version__
from meshnet.dataplane import layout
from meshnet.dataplane.modes import PathMode

if TYPE_CHECKING:
    from meshnet.runtime.router import Router

WATCHDOG_S = 10.0  # the timer has not completed a round for this long: the router is unhealthy


def path_mode(router: Router, peer: bytes) -> dict[str, str]:
    """The data path towards a peer and why."""
    path, reason = router.fastdp.mode(layout.peer_id(peer))
    return {"mode": PathMode.of(path, encrypted=router.encrypted).value, "mode_reason": reason}


def pump_alive(router: Router) -> bool:
    """Every pump thread runs. (Read from the threads the sleeve driver started: a pump
    that died takes no exception anywhere else; the excepthook has logged it.)"""
    sleeve = getattr(router, "sleeve", None)
    return sleeve is not None and sleeve.alive()


def health(router: Router) -> dict[str, Any]:
    """Healthy: the timer runs on time, the pump's thread runs, no supervised thread died.
    `reasons` names what is wrong: `timer_stalled`, `pump_stopped`, `dead:<task>`."""
    age = router.timer.age()
    supervision = router.supervisor.status()
    reasons = ["timer_stalled"] if age >= WATCHDOG_S else []
    pump = pump_alive(router)
    if not pump:
        reasons.append("pump_stopped")
    reasons += [f"dead:{name}" for name in supervision["dead"] if not name.startswith("meshnet-pump")]
    return {
        "healthy": not reasons,
        "reasons": reasons,
        "timer_age_s": round(age, 3),
        "watchdog_s": WATCHDOG_S,
        "timer_failures": dict(router.timer.failures),
        "pump_alive": pump,
        "supervision": supervision,
    }


def ipam_summary(router: Router) -> dict[str, Any]:
    """IPAM in one line's worth: ready or not, and what it waits for (`status ipam` has it all)."""
    report = router.ipam.status()
    return {
        "state": report["state"],
        "ready": report["state"] == "ready",
        "waiting": report["waiting"],
        "pending": report["pending"],
        "range": report["range"],
        "init": report["init"],
        "local": report["local"],
        "unreachable_owners": len(report["unreachable_owners"]),
        "conflicts": len(report["conflicts"]),
    }


def limits(router: Router) -> dict[str, Any]:
    """The tables' limits and fill, and what was not stored (docs/concepts.md, "Limits")."""
    core = router.core
    return {
        "max_peers": core.quota.limits.max_peers,
        "max_endpoints": core.quota.limits.max_endpoints,
        "max_peer_endpoints": core.quota.limits.max_peer_endpoints,
        "peers": len(core.topology.entries),
        "endpoints": core.quota.stored_endpoints,
        "local_endpoints": len(router.endpoints.local_endpoints()) if getattr(router, "endpoints", None) else 0,
        **core.quota.counters,
    }


def conflicts(router: Router) -> dict[str, Any]:
    """MAC and IP addresses two peers claim: who keeps each (the earlier claim)."""
    claims = router.core.claims
    return {"current": claims.contested, "detected": claims.detected, "list": claims.conflicts()}


def departed(router: Router, now: float) -> list[dict[str, Any]]:
    """Peers that left within the grace period: the data path forwards to their kernel
    while it answers probes (`mode` says whether it does)."""
    grace = router.core.departed.grace
    return [
        {
            "name": d.entry.name.hex(),
            "nick": d.entry.nick,
            "address": d.ip,
            "endpoints": len(d.entry.data.get("eps", [])),
            "grace_left_s": round(max(0.0, d.since + grace - now), 1),
            **dict(zip(("mode", "mode_reason"), router.fastdp.health.mode(layout.peer_id(d.entry.name)))),
        }
        for d in router.core.departed
    ]


def peers(router: Router) -> list[dict[str, Any]]:
    """Every peer we know. `via`: the next hop when it is not the peer itself, as the data
    path takes it (`MeshFollower.routes`): never a peer removed with rmpeer."""
    core = router.core
    topo = core.topology
    reachable = topo.reachable()
    routes = router.follower.routes()
    return [
        {
            "name": e.name.hex(),
            "nick": e.nick,
            "id": layout.peer_id(e.name),
            "reachable": e.name == core.name or e.name in reachable,
            "via": None if e.name == core.name or routes.get(e.name) in (None, e.name) else routes[e.name].hex(),
            "connections": len(e.links),
            "endpoints": len(e.data.get("eps", [])),
            "endpoints_dropped": core.quota.dropped.get(e.name, 0),
            **(path_mode(router, e.name) if e.name in reachable else {}),
        }
        for e in sorted(topo.entries.values(), key=lambda e: e.nick)
    ]


def status(router: Router) -> dict[str, Any]:
    core = router.core
    topo = core.topology
    now = time.monotonic()
    conns = [
        {
            "peer": c.peer.hex(),
            "nick": c.nick,
            "address": c.ip,
            "direction": "outbound" if c.outbound else "inbound",
            "state": "established",
            **path_mode(router, c.peer),
            "since": round(now - c.since, 1),
            "heartbeat_age_s": round(max(0.0, now - c.last_rx), 1),  # seconds since anything arrived from it
        }
        for c in core.conns.values()
    ]
    targets = router.control.targets.status()
    pending = [
        {"address": t["address"], "state": "retrying" if t["failures"] else "connecting", "last_error": t["last_error"]}
        for t in targets
        if t["failures"] or t["last_error"]
    ]
    local = topo.local
    sleeve = router.sleeve
    cfg = router.config
    return {
        "router": {
            "name": local.name.hex(),
            "nick": local.nick,
            "id": layout.peer_id(local.name),
            "version": __version__,
            "pid": os.getpid(),
            "uptime": round(time.time() - router.started, 1),
            "port": cfg.port,
            "udp_port": cfg.udp_port,
            "bridge": cfg.bridge,
            "mtu": router.mtu,
            "encrypted": router.encrypted,
        },
        "health": health(router),
        "dataplane": {
            # sync: the kernel FDB following the mesh (runs, netlink ops applied, last run's seconds)
            "fastdp": {"enabled": router.fastdp.disabled is None, "reason": router.fastdp.disabled, "sync": router.fastdp.sync_stats()},
            "pump": {"compiled": sleeve.compiled, "features": sleeve.features()},
            "rekey_due": [f"{pid:08x}" for pid in sorted(sleeve.rekey_due())],
            "refused": dict(sleeve.refused),
            "tables": sleeve.table_sizes(),
            "stats": sleeve.stats(),
        },
        "peers": peers(router),
        "departed": departed(router, now),
        "connections": conns + pending,
        "targets": targets,
        "refusals": list(router.control.refusals),
        "ipam": ipam_summary(router),
        "control_graph": router.control.graph_status(),
        "counters": {**core.counters, **router.control.counters, **router.ipam.counters},
        "limits": limits(router),
        "conflicts": conflicts(router),
        "log_suppressed": {**router.control.warn.suppressed, **router.supervisor.log.suppressed, **router.conflict_log.suppressed},
    }
