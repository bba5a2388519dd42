"""Whom to dial and when: direct targets, discovered peers, jittered exponential backoff.

Direct targets are what the user gave (`launch PEER...`, `connect`); they persist and are
retried forever. Discovered targets come from gossip: an address at which some peer
reached another peer we are not connected to; they are dropped once that peer is
connected or gone. A target whose peer we are already connected to is not dialled.

Backoff after the n-th consecutive failure: uniform in [d/2, 3d/2] with
d = min(BASE * 1.5**(n-1), CAP). The cap is low on purpose: dialling a LAN peer is cheap,
and a restarted router must be found again within seconds. A connection that ends before
it was up for `STABLE_AFTER` seconds counts as a failure too, so a connection that keeps
dropping (an overloaded peer, a flapping path) is redialled ever more slowly instead of
in a tight loop; one that lived longer is redialled at once.

`due(now, connected, satisfied)` leaves out targets whose peer is connected, and those
whose peer the connection policy does not need a connection to (`satisfied`: reachable
through others in a bounded control graph, see policy.py).

Who dials: of two peers that discover each other, the lower-named one dials at once and
the other only after `YIELD_DELAY` (if the connection is still missing: the first cannot
reach it, say). Both dialling at once made two connections, one of which the core then
closed as a duplicate: a storm of connections opened and closed while a mesh forms.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

BASE_DELAY = 0.5  # seconds before the first retry
CAP_DELAY = 8.0  # seconds; the jittered delay never exceeds 1.5 x this
STABLE_AFTER = 30.0  # seconds a connection must live for its end not to count as a failure
YIELD_DELAY = 5.0  # seconds the higher-named of two peers waits before it dials the other
DEFAULT_PORT = 6783


def normalize(address: str, default_port: int = DEFAULT_PORT) -> str:
    """Return "host:port" for "host" or "host:port".

    Raises:
        ValueError: the port is not a number in 1..65535, or the host is empty.
    """
    host, sep, port = address.rpartition(":")
    if not sep:
        host, port = address, str(default_port)
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"not a HOST[:PORT] address: {address!r}")
    return f"{host}:{int(port)}"


@dataclass
class _Target:
    direct: bool
    failures: int = 0
    next_try: float = 0.0
    dialling: bool = False
    last_error: str = ""
    peer: bytes | None = None  # learned once a handshake completes
    retry: bool = True
    connected_at: float | None = None
    flaps: int = 0  # consecutive connections that ended before STABLE_AFTER


class Targets:
    def __init__(self, rng: random.Random | None = None):
        self._targets: dict[str, _Target] = {}
        self._rng = rng or random.Random()

    def add_direct(self, address: str) -> None:
        target = self._targets.setdefault(address, _Target(direct=True))
        target.direct = True
        target.retry = True
        target.next_try = 0.0

    def forget(self, address: str) -> bool:
        return self._targets.pop(address, None) is not None

    def direct(self) -> list[str]:
        return sorted(a for a, t in self._targets.items() if t.direct)

    def set_discovered(self, addresses: dict[str, bytes], *, now: float = 0.0, later: frozenset[bytes] = frozenset()) -> None:
        """Replace the discovered targets with {address: peer name} from gossip. Peers in
        `later` (they want the connection too and are lower-named: they dial us) are
        dialled only after YIELD_DELAY."""
        for address, target in list(self._targets.items()):
            if not target.direct and address not in addresses and not target.dialling:
                del self._targets[address]
        for address, peer in addresses.items():
            if address not in self._targets:
                delay = YIELD_DELAY * self._rng.uniform(1.0, 2.0) if peer in later else 0.0
                self._targets[address] = _Target(direct=False, peer=peer, next_try=now + delay)

    def add_known(self, addresses: list[str]) -> None:
        """Addresses remembered from an earlier run; dialled once, like discovered ones."""
        for address in addresses:
            self._targets.setdefault(address, _Target(direct=False))

    def due(self, now: float, connected: set[bytes], satisfied: frozenset[bytes] = frozenset()) -> list[str]:
        """Addresses to dial now."""
        return [a for a, t in self._targets.items() if self._wanted(t, connected, satisfied) and t.next_try <= now]

    def next_deadline(self, connected: set[bytes], satisfied: frozenset[bytes] = frozenset()) -> float | None:
        times = [t.next_try for t in self._targets.values() if self._wanted(t, connected, satisfied)]
        return min(times) if times else None

    @staticmethod
    def _wanted(t: _Target, connected: set[bytes], satisfied: frozenset[bytes]) -> bool:
        if t.dialling or not t.retry:
            return False
        return t.peer is None or (t.peer not in connected and t.peer not in satisfied)

    def failing(self) -> frozenset[bytes]:
        """Peers whose last dial failed (the connection policy passes them over)."""
        return frozenset(t.peer for t in self._targets.values() if t.peer is not None and t.failures and not t.dialling)

    def dialling(self, address: str) -> None:
        if address in self._targets:
            self._targets[address].dialling = True

    def succeeded(self, address: str, peer: bytes, *, now: float | None = None) -> None:
        """The dial reached `peer`; `now` when a connection is up (None: nothing to keep)."""
        t = self._targets.get(address)
        if t is not None:
            t.dialling, t.failures, t.last_error, t.peer, t.connected_at = False, 0, "", peer, now

    def peer_connected(self, peer: bytes, address: str) -> None:
        """A connection with `peer` (listening at `address`) is up, whoever dialled: its
        targets are satisfied, so their failures are history, not a current reason."""
        for addr, t in self._targets.items():
            if t.peer == peer or addr == address:
                t.peer, t.failures, t.last_error = peer, 0, ""

    def failed(self, address: str, error: str, *, now: float, retry: bool = True) -> None:
        t = self._targets.get(address)
        if t is None:
            return
        t.dialling = False
        t.failures += 1
        t.last_error = error
        t.retry = retry
        delay = min(BASE_DELAY * 1.5 ** (t.failures - 1), CAP_DELAY)
        t.next_try = now + delay * self._rng.uniform(0.5, 1.5)

    def disconnected(self, address: str, *, now: float) -> None:
        """The connection made to this address ended: dial again soon, or back off if it
        did not last (`STABLE_AFTER`)."""
        t = self._targets.get(address)
        if t is None:
            return
        t.dialling = False
        lived = now - t.connected_at if t.connected_at is not None else 0.0
        t.connected_at = None
        t.flaps = 0 if lived >= STABLE_AFTER else t.flaps + 1
        delay = min(BASE_DELAY * 1.5 ** max(t.flaps - 1, 0), CAP_DELAY)
        t.next_try = now + delay * self._rng.uniform(0.5, 1.5)

    def status(self) -> list[dict]:
        return [
            {
                "address": address,
                "direct": t.direct,
                "failures": t.failures,
                "last_error": t.last_error,
                "retrying": t.retry,
            }
            for address, t in sorted(self._targets.items())
        ]
