"""`status ipam`: a frozen view of one allocator, and the JSON-able report derived from it.

`Allocator.view()` builds an `IpamView`: plain values copied out of the allocator, nothing
that changes after it was taken. `build(view)` derives the report for the API, the CLI and
the metrics (the keys below are what they read):

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
                    "removed": [hex],      # peers removed with rmpeer, here or elsewhere
                    "returned": [hex]},    # ... that are reachable again: each must reset
     "tombstoned": bool,                   # this peer was removed with rmpeer: reset it
     "conflicts": [str]}                   # things that must not happen; empty when healthy
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from meshnet.ipam.addr import Block, fmt
from meshnet.ipam.ring import host_count


@dataclass(frozen=True, slots=True)
class RangeView:
    """One range of the ring: `[start, end)`."""

    start: int
    end: int
    owner: bytes
    version: int
    free: int  # counted for our own usable ranges; the owner's gossiped hint for the rest
    reclaim: bool


@dataclass(frozen=True, slots=True)
class IpamView:
    """What `status ipam` shows, as one allocator saw it when `Allocator.view()` was called."""

    name: bytes
    universe: Block
    init: str  # the --ipalloc-init mode
    ranges: tuple[RangeView, ...] | None  # the ring in token order; None: no ring yet
    reachable: frozenset[bytes]
    consensus: str | None  # while a consensus bootstrap runs: how far it got
    mismatch: str | None  # another peer bootstraps with another consensus N
    waiting: str | None  # why the oldest waiting request waits (None: nothing waits)
    pending: int  # requests waiting
    used: int  # addresses held here
    reclaiming: frozenset[bytes]  # rmpeer targets being confirmed here
    waiting_for: frozenset[bytes]  # peers whose answer that confirmation needs
    removed: tuple[bytes, ...]  # peers removed with rmpeer, here or elsewhere, most recent last
    conflicts: tuple[str, ...]  # oldest first
    returned: frozenset[bytes] = frozenset()  # removed peers that are reachable again
    tombstoned: bool = False  # this peer was removed with rmpeer


def build(v: IpamView) -> dict[str, Any]:
    state = _state(v)
    report: dict[str, Any] = {
        "name": v.name.hex(),
        "range": v.universe.cidr,
        "init": v.init,
        "state": state,
        "waiting": v.waiting if v.waiting is not None else (state if v.ranges is None else None),
        "pending": v.pending,
        "local": {"ranges": 0, "size": 0, "used": v.used, "free": 0},
        "peers": {},
        "unreachable_owners": [],
        "reclaiming": {
            "peers": sorted(p.hex() for p in v.reclaiming),
            "waiting_for": sorted(p.hex() for p in v.waiting_for),
            "removed": sorted(p.hex() for p in v.removed),
            "returned": sorted(p.hex() for p in v.returned),
        },
        "tombstoned": v.tombstoned,
        "conflicts": list(v.conflicts),
    }
    if v.ranges is None:
        return report
    peers: dict[str, Any] = report["peers"]
    for r in v.ranges:
        reachable = r.owner == v.name or r.owner in v.reachable
        peer = peers.setdefault(
            r.owner.hex(), {"reachable": reachable, "size": 0, "free": 0, "used": 0, "ranges": []}
        )
        peer["size"] += r.end - r.start
        peer["free"] += r.free
        peer["used"] += max(0, host_count(r.start, r.end, v.universe) - r.free)
        peer["ranges"].append({
            "start": fmt(r.start), "end": fmt(r.end - 1), "size": r.end - r.start,
            "free": r.free, "version": r.version, "reclaim": r.reclaim,
        })
        if r.owner == v.name and not r.reclaim:
            local = report["local"]
            local["ranges"] += 1
            local["size"] += r.end - r.start
            local["free"] += r.free
    report["unreachable_owners"] = sorted(p for p, x in peers.items() if not x["reachable"])
    return report


def _state(v: IpamView) -> str:
    if v.tombstoned:
        return "removed with rmpeer: run `meshnet reset` before this peer allocates"
    if v.ranges is not None:
        if v.conflicts:
            return "conflict"
        return "ready"
    if v.mismatch is not None:
        return f"cannot bootstrap: {v.mismatch}; start every peer with the same --ipalloc-init"
    if v.consensus is not None:
        return v.consensus
    return "waiting for the allocation ring from the other peers"
