"""Whom to dial and when: direct targets, discovered peers, jittered exponential backoff.

Direct targets are what the user gave (`launch PEER...`, `connect`); they persist and are
retried forever. Discovered targets come from gossip: an address at which some peer
reached another peer we are not connected to; they are dropped once that peer is
connected or gone. A target whose peer we are already connected to is not dialled.

Backoff after the n-th consecutive failure: uniform in [d/2, 3d/2] with
d = min(BASE * 1.5**(n-1), CAP). The cap is low on purpose: dialling a LAN peer is cheap,
and a restarted router must be found again within seconds.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

BASE_DELAY = 0.5  # seconds before the first retry
CAP_DELAY = 8.0  # seconds; the jittered delay never exceeds 1.5 x this
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

    def set_discovered(self, addresses: dict[str, bytes]) -> None:
        """Replace the discovered targets with {address: peer name} from gossip."""
        for address, target in list(self._targets.items()):
            if not target.direct and address not in addresses and not target.dialling:
                del self._targets[address]
        for address, peer in addresses.items():
            self._targets.setdefault(address, _Target(direct=False, peer=peer))

    def add_known(self, addresses: list[str]) -> None:
        """Addresses remembered from an earlier run; dialled once, like discovered ones."""
        for address in addresses:
            self._targets.setdefault(address, _Target(direct=False))

    def due(self, now: float, connected: set[bytes]) -> list[str]:
        """Addresses to dial now."""
        out = []
        for address, t in self._targets.items():
            if t.dialling or not t.retry or t.next_try > now:
                continue
            if t.peer is not None and t.peer in connected:
                continue
            out.append(address)
        return out

    def next_deadline(self, connected: set[bytes]) -> float | None:
        times = [
            t.next_try
            for t in self._targets.values()
            if not t.dialling and t.retry and not (t.peer is not None and t.peer in connected)
        ]
        return min(times) if times else None

    def dialling(self, address: str) -> None:
        if address in self._targets:
            self._targets[address].dialling = True

    def succeeded(self, address: str, peer: bytes) -> None:
        t = self._targets.get(address)
        if t is not None:
            t.dialling, t.failures, t.last_error, t.peer = False, 0, "", peer

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
        """The connection made to this address ended: dial again soon."""
        t = self._targets.get(address)
        if t is not None:
            t.dialling = False
            t.next_try = now + BASE_DELAY * self._rng.uniform(0.5, 1.5)

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
