"""`status ipam`: a JSON-able picture of one allocator, for the API, the CLI and the metrics.

    {"name": hex, "range": CIDR, "init": "consensus=3", "state": "ready" | why not,
     "waiting": reason | null,             # why the oldest request waits, or why one would
     "pending": int,                       # requests waiting for space
     "local": {"ranges": int, "size": int, "used": int, "free": int},
     "peers": {hex: {"reachable": bool, "size": int, "free": int, "used": int,  # hints
                     "ranges": [{"start": ip, "end": ip (last address), "size": int,
                                 "free": int, "version": int, "reclaim": bool}]}},
     "unreachable_owners": [hex],          # own space but cannot be reached: rmpeer if gone
     "reclaiming": {"peers": [hex],        # rmpeer targets being confirmed here
                    "waiting_for": [hex],  # peers whose answer the confirmation needs
                    "removed": [hex]},     # peers removed with rmpeer, here or elsewhere
     "conflicts": [str]}                   # things that must not happen; empty when healthy
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from meshnet.ipam.addr import fmt
from meshnet.ipam.donation import free_count
from meshnet.ipam.ring import host_count

if TYPE_CHECKING:
    from meshnet.ipam.allocator import Allocator


def build(a: Allocator) -> dict[str, Any]:
    oldest = next(iter(a.requests.values()), None)
    report: dict[str, Any] = {
        "name": a.name.hex(),
        "range": a.universe.cidr,
        "init": str(a.mode),
        "state": _state(a),
        "waiting": oldest.reason if oldest else (_state(a) if a.ring is None else None),
        "pending": len(a.requests),
        "local": {"ranges": 0, "size": 0, "used": len(a.space), "free": 0},
        "peers": {},
        "unreachable_owners": [],
        "reclaiming": {
            "peers": sorted(p.hex() for p in a.reclaim.targets),
            "waiting_for": sorted(p.hex() for p in a.reclaim.round.waiting) if a.reclaim.round else [],
            "removed": sorted(p.hex() for p in a.gone),
        },
        "conflicts": list(a.conflicts),
    }
    if a.ring is None:
        return report
    peers: dict[str, Any] = report["peers"]
    for start, end, e in a.ring.ranges():
        free = free_count(a.ring, a.space, start, end) if e.owner == a.name and not e.reclaim else e.free
        reachable = e.owner == a.name or e.owner in a.reachable
        peer = peers.setdefault(
            e.owner.hex(), {"reachable": reachable, "size": 0, "free": 0, "used": 0, "ranges": []}
        )
        peer["size"] += end - start
        peer["free"] += free
        peer["used"] += max(0, host_count(start, end, a.universe) - free)
        peer["ranges"].append({
            "start": fmt(start), "end": fmt(end - 1), "size": end - start,
            "free": free, "version": e.version, "reclaim": e.reclaim,
        })
        if e.owner == a.name and not e.reclaim:
            local = report["local"]
            local["ranges"] += 1
            local["size"] += end - start
            local["free"] += free
    report["unreachable_owners"] = sorted(p for p, v in peers.items() if not v["reachable"])
    return report


def _state(a: Allocator) -> str:
    if a.ring is not None:
        if a.conflicts:
            return "conflict"
        return "ready"
    if a.mismatch is not None:
        return f"cannot bootstrap: {a.mismatch}; start every peer with the same --ipalloc-init"
    if a.consensus is not None:
        return a.consensus.reason()
    return "waiting for the allocation ring from the other peers"
