"""fastdp across a router restart: which peers to go on programming, planned without I/O.

A router that stops, crashes or is upgraded leaves its kernel data path in place, and a
kernel-side responder (`meshnet/kernel/responder.py`) answers fastdp probes while no
router runs. Two kinds of peers are therefore kept programmed beyond the live mesh:

- **departed** peers: the mesh core saw them leave (`mesh/departed.py`) and keeps their
  last entry and underlay address for the grace period;
- **adopted** peers: what a previous run of this router left on fastdp, read back from
  the kernel at start (`adopt`), kept until the mesh names them or the grace runs out.

Both are planned like a live fastdp peer for as long as `PathHealth` has them on fastdp,
which for them means: their data path answers probes. Once it does not, only their probe
entry stays (so a path that comes back is seen) and their endpoints are left out, since
nothing but the kernel could carry their traffic. The live mesh always wins: a peer it
names is planned from the mesh, and a MAC it places is placed where it says.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from meshnet.dataplane.fastdp import FASTDP, PROBE_MAC_PREFIX, SLEEVE, ZERO_MAC, KernelState, LocalConfig, Mode, PeerInfo

PROBE_PREFIX = ":".join(f"{b:02x}" for b in PROBE_MAC_PREFIX) + ":"


@dataclass(frozen=True)
class Adopted:
    """A peer an earlier run of this router had on fastdp, as the kernel still holds it."""

    ip: str
    macs: frozenset[str]  # its endpoints' MACs


def adopt(local: LocalConfig, have: KernelState) -> dict[int, Adopted]:
    """Peers the kernel still has on fastdp: a probe entry and a flood entry to the same
    address. Peers that were on sleeve are not adopted (the sleeve died with the router)."""
    if local.vxlan is None:
        return {}
    floods = {e.dst for e in have.vxlan_fdb if e.mac == ZERO_MAC}
    by_ip: dict[str, int] = {}
    for e in sorted(have.vxlan_fdb):
        if e.mac.startswith(PROBE_PREFIX) and e.dst in floods:
            pid = int(e.mac[len(PROBE_PREFIX) :].replace(":", ""), 16)
            if pid != local.peer_id:
                by_ip.setdefault(e.dst, pid)  # two ids at one address: keep one, stably
    macs: dict[int, set[str]] = {pid: set() for pid in by_ip.values()}
    for e in have.vxlan_fdb:
        if e.dst in by_ip and e.mac != ZERO_MAC and not e.mac.startswith(PROBE_PREFIX):
            macs[by_ip[e.dst]].add(e.mac)
    return {pid: Adopted(ip, frozenset(macs[pid])) for ip, pid in by_ip.items()}


def still_adopted(
    adopted: Mapping[int, Adopted], *, live: Mapping[int, object], departed: Mapping[int, str], removed: set[int]
) -> dict[int, Adopted]:
    """The adopted peers to keep: not named by the mesh yet (live or departed: it knows them
    better now) and not removed with rmpeer (a removed peer is never kept, whatever its
    kernel still answers)."""
    return {pid: a for pid, a in adopted.items() if pid not in live and pid not in departed and pid not in removed}


def probed(live: Mapping[int, str | None], departed: Mapping[int, str], adopted: Mapping[int, Adopted]) -> set[int]:
    """Every peer whose VXLAN path is probed: live ones we connect to directly, and the kept ones."""
    return {pid for pid, ip in live.items() if ip} | set(departed) | set(adopted)


def plan_inputs(
    *,
    live: Mapping[int, str | None],
    departed: Mapping[int, str],
    adopted: Mapping[int, Adopted],
    endpoints: Mapping[int, frozenset[str]],
    mode: Callable[[int], Mode],
) -> tuple[dict[int, PeerInfo], dict[int, frozenset[str]]]:
    """The FDB planner's peers and endpoints, with the kept peers folded in.

    Args:
        live: {peer id: underlay IP if directly connected, else None} of reachable peers.
        departed: {peer id: last underlay IP} of peers the mesh saw leave, within grace.
        adopted: what the kernel held at start, for peers the mesh has not named yet.
        endpoints: {peer id: the MACs it owns} from the mesh, departed peers' last ones included.
        mode: the path's mode per peer (`PathHealth.mode(pid)[0]`).
    """
    infos = {pid: PeerInfo(ip or "", mode(pid) if ip else SLEEVE) for pid, ip in live.items()}
    out = {pid: endpoints[pid] for pid in infos if pid in endpoints}
    for pid, ip in departed.items():
        if pid not in infos:
            infos[pid] = PeerInfo(ip, mode(pid))
            if infos[pid].mode == FASTDP:  # a kept peer whose path does not answer gets no endpoints
                out[pid] = endpoints.get(pid, frozenset())
    placed = frozenset().union(*endpoints.values()) if adopted else frozenset()
    for pid, kept in adopted.items():
        if pid in infos:
            continue  # the mesh knows it now
        infos[pid] = PeerInfo(kept.ip, mode(pid))
        if infos[pid].mode == FASTDP:
            out[pid] = kept.macs - placed  # the mesh places a MAC it knows
    return infos, out
