"""Which peer addresses this router dials, kept across restarts.

Three lists in the state dir: `direct_peers` (given at launch or by `meshnet connect`,
dialled forever), `known_peers` (every peer address we have seen, dialled once at the next
start so a restarted router rejoins at once instead of waiting to be found: the peers we
are connected to and those the connection policy wants) and `forgotten_peers` (named by `meshnet forget`: never dialled again until `connect` names
them). `Targets` (sans-IO, in mesh/) decides when to dial; this keeps the lists.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from meshnet.errors import NotFound, UsageError
from meshnet.mesh import targets as targets_mod
from meshnet.mesh.core import MeshCore
from meshnet.mesh.policy import Plan
from meshnet.mesh.targets import Targets
from meshnet.state.statedir import StateDir

KNOWN_PEERS_EVERY = 10.0  # seconds between writes of known_peers while the mesh changes


def normalize(address: str) -> str:
    try:
        return targets_mod.normalize(address)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


class DialBook:
    def __init__(self, state: StateDir, targets: Targets, *, wake: Callable[[], None]):
        self._state = state
        self.targets = targets
        self._wake = wake
        self.core: MeshCore | None = None  # set once the core exists
        self._wanted: set[str] = set()  # addresses the connection policy last wanted
        self._written: dict[str, Any] = {}  # what the state dir holds: write only changes
        self._known_pending: list[str] | None = None  # known_peers not yet written
        self._known_next = 0.0  # when known_peers may be written again

    def load(self, launch_peers: list[str]) -> None:
        """Dial the direct peers and the launch peers; the known peers once."""
        for address in [*self._state.get("direct_peers", []), *launch_peers]:
            self.targets.add_direct(normalize(address))
        forgotten = set(self._state.get("forgotten_peers", []))
        self.targets.add_known([a for a in self._state.get("known_peers", []) if a not in forgotten])
        self.persist()

    def persist(self) -> None:
        """Keep direct peers, and the peer addresses we connect to, for the next start:
        both written now (at start, and when a user connects or forgets an address)."""
        if self._stage():
            self.flush(time.monotonic(), force=True)

    def persist_soon(self, *, now: float) -> None:
        """The mesh changed: direct peers are written now, known_peers at most every
        KNOWN_PEERS_EVERY s: a forming mesh changes it at every join, and each write is a
        synchronous disk write on the event loop (15 ms each, measured). It is a rejoin
        hint; the last version is written by the timer (`flush`) and at stop."""
        if self._stage():
            self.flush(now)

    def _stage(self) -> bool:
        """Write direct_peers (if it changed); known_peers becomes pending. False: no known
        peer to keep (what was pending stays pending)."""
        forgotten = set(self._state.get("forgotten_peers", []))
        known = set(self._wanted)
        if self.core is not None:
            known |= {targets_mod.normalize(f"{c.ip}:{c.port}") for c in self.core.conns.values()}
        self._put("direct_peers", self.targets.direct())
        if not known - forgotten:
            if self._known_pending is not None:  # never write back an address just forgotten
                self._known_pending = [a for a in self._known_pending if a not in forgotten] or None
            return False
        self._known_pending = sorted(known - forgotten)
        return True

    def flush(self, now: float, *, force: bool = False) -> None:
        """Write known_peers if it changed and is due (or forced)."""
        if self._known_pending is None or (now < self._known_next and not force):
            return
        self._put("known_peers", self._known_pending)
        self._known_pending = None
        self._known_next = now + KNOWN_PEERS_EVERY

    def next_deadline(self) -> float | None:
        return self._known_next if self._known_pending is not None else None

    def _put(self, key: str, value: Any) -> None:
        """Write only what changed: the topology changes often, the state dir is a disk."""
        if self._written.get(key) != value:
            self._state.put(key, value)
            self._written[key] = value

    def remember(self, plan: Plan) -> None:
        """The connection policy's latest plan: remember whom it dials, for the next start."""
        self._wanted = set(plan.dial)
        self.persist_soon(now=time.monotonic())

    def connect(self, address: str) -> list[str]:
        address = normalize(address)
        self.targets.add_direct(address)
        self._state.put("forgotten_peers", [a for a in self._state.get("forgotten_peers", []) if a != address])
        self.persist()
        self._wake()
        return self.targets.direct()

    def forget(self, address: str) -> list[str]:
        """Raises NotFound if the address is not one we dial."""
        address = normalize(address)
        if not self.targets.forget(address):
            raise NotFound(f"{address} is not a known peer address")
        self._state.put("forgotten_peers", sorted({*self._state.get("forgotten_peers", []), address}))
        self._state.put("known_peers", [a for a in self._state.get("known_peers", []) if a != address])
        self._written.pop("known_peers", None)
        self.persist()
        return self.targets.direct()
