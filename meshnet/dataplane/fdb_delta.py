"""fastdp's FDB plan kept up to date by delta: each update costs O(what changed).

`fastdp.plan` computes the whole wanted FDB from the whole mesh; with 100,000 gossiped
endpoints that is seconds of CPU, and `diff` against a dump of the kernel is a full FDB
dump per update. `FdbPlanner` keeps the wanted state itself, as reference counts per
entry, and is told only what changed:

    planner = FdbPlanner(local)
    planner.set_peer(pid, PeerInfo(ip, mode))     # a peer appeared, moved or changed mode
    planner.set_endpoints(pid, macs)               # a peer's gossiped endpoint MACs
    planner.remove_peer(pid)                       # a peer is gone (its claims with it)
    ops = planner.take_ops()                       # the FDB ops since the last take_ops
                                                   # (take_changes: the same as plain tuples)

`take_ops` lists the entries whose count went from 0 to more (add) or back to 0 (del), in
`fastdp.diff`'s order (adds before deletes, VXLAN before bridge on add, the reverse on
delete). `want()` is the whole state, for a reconcile against a dump. For the same
inputs `want()` equals `fastdp.plan` (tests/unit/test_fdb_delta.py checks that on random
sequences of changes), which stays the reference.

A MAC two peers announce: the earlier claim keeps it; when its owner lets go, the next
claimant in claim order takes it over. Sans-IO: no clock, no kernel.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from typing import Iterable

from meshnet.dataplane.fastdp import (
    FASTDP,
    SLEEVE,
    ZERO_MAC,
    BridgeFdb,
    KernelState,
    LocalConfig,
    Mode,
    Op,
    PeerInfo,
    VxlanFdb,
    _unicast_endpoint,
    probe_mac,
)

Entry = VxlanFdb | BridgeFdb
# Internally an entry is a plain tuple: ("v", mac, dst) or ("b", mac, port). Python's cycle
# collector stops walking a tuple of strings after its first look; it walked the two
# dataclass entries per MAC on every full collection (a fifth of a million objects at
# 100,000 endpoints). They become VxlanFdb/BridgeFdb only on the way out.
Key = tuple[str, str, str]
Change = tuple[str, Key]  # ("add" | "del", key)


def _entry(key: Key) -> Entry:
    return VxlanFdb(key[1], key[2]) if key[0] == "v" else BridgeFdb(key[1], key[2])


def as_ops(changes: Iterable[Change]) -> list[Op]:
    return [Op(action, _entry(key)) for action, key in changes]  # type: ignore[arg-type]


class FdbPlanner:
    def __init__(self, local: LocalConfig):
        self.local = local
        self._family = ipaddress.ip_address(local.local_ip).version
        self._via: dict[int, tuple[str, Mode]] = {}  # peer -> (underlay IP or "", mode)
        self._eps: dict[int, frozenset[str]] = {}  # peer -> the normalised MACs it claims
        self._claims: dict[str, tuple[int, ...]] = {}  # MAC -> claimants, earliest first (owner)
        self._count: Counter[Key] = Counter()
        self._before: dict[Key, int] = {}  # counts at the last take_ops, of entries touched since
        if local.vxlan is not None:
            self._bump(("b", probe_mac(local.peer_id), local.vxlan), +1)

    # -- inputs ------------------------------------------------------------------------

    def set_peer(self, pid: int, info: PeerInfo) -> None:
        """A peer is known (reachable) at this underlay address and in this mode.

        Raises:
            ValueError: the peer is fastdp while fastdp is off.
        """
        if pid == self.local.peer_id:
            return
        if info.mode == FASTDP and self.local.vxlan is None:
            raise ValueError(f"peer {pid:08x} is fastdp but fastdp is off")
        via = self._via_of(info)
        old = self._via.get(pid)
        if old == via:
            return
        owned = self._owned(pid) if old is not None else []
        if old is not None:
            self._peer_entries(pid, old, -1)
            for mac in owned:
                self._mac_entries(mac, old, -1)
        self._via[pid] = via
        self._peer_entries(pid, via, +1)
        if old is None:
            for mac in self._eps.get(pid, ()):  # claims made before the peer was known
                self._claim(mac, pid)
        else:
            for mac in owned:
                self._mac_entries(mac, via, +1)

    def remove_peer(self, pid: int) -> None:
        """The peer is gone: its entries go, MACs it owned pass to the next claimant."""
        via = self._via.pop(pid, None)
        if via is None:
            self._eps.pop(pid, None)
            return
        self._peer_entries(pid, via, -1)
        for mac in self._eps.pop(pid, ()):
            self._release(mac, pid, via)

    def set_endpoints(self, pid: int, macs: Iterable[str]) -> None:
        """The MACs a peer announces (unusable ones are left out, as `fastdp.plan` does)."""
        if pid == self.local.peer_id:
            return
        new = frozenset(m for m in map(_unicast_endpoint, macs) if m is not None)
        old = self._eps.get(pid, frozenset())
        if new == old:
            return
        self._eps[pid] = new
        via = self._via.get(pid)
        if via is None:
            return  # claimed when the peer becomes known
        for mac in old - new:
            self._release(mac, pid, via)
        for mac in sorted(new - old):
            self._claim(mac, pid)

    # -- outputs -----------------------------------------------------------------------

    def take_changes(self) -> list[Change]:
        """The changes since the last call, in the order the kernel must see them, as plain
        tuples: a big list of them (400,000 while 100,000 endpoints load) is nothing for
        the cycle collector to walk. `as_ops` makes kernel ops of a slice."""
        adds: list[Key] = []
        dels: list[Key] = []
        for key, before in self._before.items():
            now = self._count.get(key, 0)
            if before == 0 and now > 0:
                adds.append(key)
            elif before > 0 and now == 0:
                dels.append(key)
        self._before.clear()
        adds.sort(key=lambda k: (k[0] == "b", k[1], k[2]))  # VXLAN first, then by (mac, dst|port)
        dels.sort(key=lambda k: (k[0] == "v", k[1], k[2]))  # bridge first
        return [("add", k) for k in adds] + [("del", k) for k in dels]

    def take_ops(self) -> list[Op]:
        """`take_changes` as kernel ops."""
        return as_ops(self.take_changes())

    def want(self) -> KernelState:
        """The whole wanted state (what `fastdp.plan` would compute)."""
        live = [_entry(k) for k, c in self._count.items() if c > 0]
        return KernelState(
            frozenset(e for e in live if isinstance(e, VxlanFdb)),
            frozenset(e for e in live if isinstance(e, BridgeFdb)),
        )

    def owners(self) -> dict[str, int]:
        """{MAC: the peer whose claim holds it}."""
        return {mac: pids[0] for mac, pids in self._claims.items() if pids}

    def peers(self) -> dict[int, tuple[str, Mode]]:
        return dict(self._via)

    # -- internals ---------------------------------------------------------------------

    def _via_of(self, info: PeerInfo) -> tuple[str, Mode]:
        try:
            ip = ipaddress.ip_address(info.underlay_ip)
        except ValueError:
            return "", SLEEVE
        if ip.version != self._family:
            return "", SLEEVE
        return str(ip), info.mode

    def _owned(self, pid: int) -> list[str]:
        return [mac for mac in self._eps.get(pid, ()) if self._claims.get(mac, (None,))[0] == pid]

    def _claim(self, mac: str, pid: int) -> None:
        claimants = self._claims.get(mac, ())
        if pid in claimants:
            return
        claimants = self._claims[mac] = claimants + (pid,)  # a tuple: see Key
        if claimants[0] == pid:
            self._mac_entries(mac, self._via[pid], +1)

    def _release(self, mac: str, pid: int, via: tuple[str, Mode]) -> None:
        claimants = self._claims.get(mac)
        if not claimants or pid not in claimants:
            return
        was_owner = claimants[0] == pid
        claimants = tuple(c for c in claimants if c != pid)
        if was_owner:
            self._mac_entries(mac, via, -1)
            if claimants:
                self._mac_entries(mac, self._via[claimants[0]], +1)
        if claimants:
            self._claims[mac] = claimants
        else:
            del self._claims[mac]

    def _peer_entries(self, pid: int, via: tuple[str, Mode], sign: int) -> None:
        ip, mode = via
        if self.local.vxlan is None or not ip:
            return
        self._bump(("v", probe_mac(pid), ip), sign)
        if mode == FASTDP:
            self._bump(("v", ZERO_MAC, ip), sign)

    def _mac_entries(self, mac: str, via: tuple[str, Mode], sign: int) -> None:
        ip, mode = via
        if mode == FASTDP:
            self._bump(("v", mac, ip), sign)
            self._bump(("b", mac, self.local.vxlan), sign)  # type: ignore[arg-type]  # fastdp implies vxlan
        else:
            self._bump(("b", mac, self.local.tap), sign)

    def _bump(self, key: Key, sign: int) -> None:
        if key not in self._before:
            self._before[key] = self._count.get(key, 0)
        count = self._count[key] + sign
        if count:
            self._count[key] = count
        else:
            del self._count[key]
