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


def health(router: Router) -> dict[str, Any]:
    age = router.timer.age()
    return {
        "healthy": age < WATCHDOG_S,
        "timer_age_s": round(age, 3),
        "watchdog_s": WATCHDOG_S,
        "timer_failures": dict(router.timer.failures),
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


def status(router: Router) -> dict[str, Any]:
    core = router.core
    topo = core.topology
    reachable = topo.reachable()
    routes = topo.routes()
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
    peers = [
        {
            "name": e.name.hex(),
            "nick": e.nick,
            "id": layout.peer_id(e.name),
            "reachable": e.name == core.name or e.name in reachable,
            "via": None if e.name == core.name or routes.get(e.name) in (None, e.name) else routes[e.name].hex(),
            "connections": len(e.links),
            "endpoints": len(e.data.get("eps", [])),
            **(path_mode(router, e.name) if e.name in reachable else {}),
        }
        for e in sorted(topo.entries.values(), key=lambda e: e.nick)
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
            "fastdp": {"enabled": router.fastdp.disabled is None, "reason": router.fastdp.disabled},
            "pump": {"compiled": sleeve.compiled, "features": sleeve.features()},
            "rekey_due": [f"{pid:08x}" for pid in sorted(sleeve.rekey_due())],
            "refused": dict(sleeve.refused),
            "stats": sleeve.stats(),
        },
        "peers": peers,
        "connections": conns + pending,
        "targets": targets,
        "refusals": list(router.control.refusals),
        "ipam": ipam_summary(router),
        "control_graph": router.control.graph_status(),
        "counters": {**core.counters, **router.control.counters},
    }
