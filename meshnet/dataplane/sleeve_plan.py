"""The sleeve's tables as a plan: mesh view in, the pump's peer, key and MAC tables out.

Sans-IO, the twin of `fastdp.plan`: `plan(...)` computes the tables the pump should hold
from the topology's routes, the direct connections, the gossiped endpoints and the
sessions' keys; `diff(want, have)` lists the operations that turn what the pump holds
into that. `runtime/sleeve_driver.py` applies them and keeps `have`.

Rules the plan keeps:
- a peer is in the table when it is routed (reachable); its next hop is the first peer on
  its route; only directly connected peers have an underlay address;
- peers on kernel VXLAN (fastdp) get floods from the VXLAN device: the sleeve must not copy
  them (`flood=False`);
- encryption is per link, hop by hop: only directly connected peers have keys. Both ends
  derive the same epoch (its low bit is the datagrams' KEY_ID) from the pair of keys;
- two peers whose 32-bit ids collide are left out (they cannot be told apart on the wire).

Operations come in an order the pump accepts: direct peers before relayed ones (a relayed
peer's next hop must exist), keys after their peer, removals of MACs before their peer.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Mapping

from meshnet.dataplane import layout

Address = tuple[str, int]  # underlay (IP, UDP port)


@dataclass(frozen=True)
class PeerRow:
    addr: Address | None  # None: reached through `via`
    via: int  # next hop's peer id (the peer itself when direct)
    flood: bool  # copy broadcast and unknown-unicast frames to it


@dataclass(frozen=True)
class KeyRow:
    tx: bytes
    rx: bytes
    epoch: int


@dataclass(frozen=True)
class PumpTables:
    peers: Mapping[int, PeerRow] = field(default_factory=dict)
    keys: Mapping[int, KeyRow] = field(default_factory=dict)
    macs: Mapping[bytes, int] = field(default_factory=dict)  # 6-byte MAC -> peer id
    collisions: tuple[bytes, ...] = ()  # peers left out: their id collides


@dataclass(frozen=True)
class Direct:
    """A directly connected peer: where its sleeve listens, and its session's sleeve keys."""

    addr: Address
    keys: tuple[bytes, bytes] | None = None  # (tx, rx); None on an unencrypted mesh


@dataclass(frozen=True)
class SetPeer:
    pid: int
    row: PeerRow


@dataclass(frozen=True)
class RemovePeer:
    pid: int


@dataclass(frozen=True)
class SetKeys:
    pid: int
    row: KeyRow


@dataclass(frozen=True)
class SetMac:
    mac: bytes
    pid: int


@dataclass(frozen=True)
class ForgetMac:
    mac: bytes


Op = SetPeer | RemovePeer | SetKeys | SetMac | ForgetMac


def key_epoch(tx: bytes, rx: bytes) -> int:
    """The same number on both ends of a link: derived from the unordered pair of keys."""
    return hashlib.sha256(min(tx, rx) + max(tx, rx)).digest()[0]


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def plan(
    *,
    local: bytes,
    routes: Mapping[bytes, bytes],
    direct: Mapping[bytes, Direct],
    fastdp: set[int],
    endpoints: Mapping[str, int],
) -> PumpTables:
    """The pump's tables.

    Args:
        local: our peer name.
        routes: {peer name: next hop name} for every reachable peer (topology.routes()).
        direct: the peers we hold a control connection to.
        fastdp: ids of peers whose traffic rides kernel VXLAN.
        endpoints: {"aa:bb:..": peer id} of every reachable peer's gossiped endpoints.
    """
    ours = layout.peer_id(local)
    peers: dict[int, PeerRow] = {}
    keys: dict[int, KeyRow] = {}
    collisions: list[bytes] = []
    for peer, hop in routes.items():
        pid = layout.peer_id(peer)
        if pid == ours or pid in peers:
            collisions.append(peer)
            continue
        link = direct.get(peer)
        peers[pid] = PeerRow(link.addr if link else None, layout.peer_id(hop), pid not in fastdp)
        if link is not None and link.keys is not None:
            tx, rx = link.keys
            keys[pid] = KeyRow(tx, rx, key_epoch(tx, rx))
    macs = {mac_bytes(mac): pid for mac, pid in endpoints.items() if pid in peers}
    return PumpTables(peers, keys, macs, tuple(collisions))


def diff(want: PumpTables, have: PumpTables) -> list[Op]:
    """Operations that turn `have` into `want`; nothing for what already matches.

    Keys are set again only when they change, so re-planning never resets the pump's
    counters or replay windows.
    """
    ops: list[Op] = [ForgetMac(mac) for mac in have.macs if mac not in want.macs]
    ops += [RemovePeer(pid) for pid in have.peers if pid not in want.peers]
    changed = [(pid, row) for pid, row in want.peers.items() if have.peers.get(pid) != row]
    ops += [SetPeer(pid, row) for pid, row in sorted(changed, key=lambda item: item[1].addr is None)]
    ops += [SetKeys(pid, row) for pid, row in want.keys.items() if have.keys.get(pid) != row]
    ops += [SetMac(mac, pid) for mac, pid in want.macs.items() if have.macs.get(mac) != pid]
    return ops
