"""Which peer addresses this router dials, kept across restarts.

Three lists in the state dir: `direct_peers` (given at launch or by `meshnet connect`,
dialled forever), `known_peers` (every peer address we have seen, dialled once at the next
start so a restarted router rejoins at once instead of waiting to be found: the peers we
are connected to and those the connection policy wants) and `forgotten_peers` (named by `meshnet forget`: never dialled again until `connect` names
them). `Targets` (sans-IO, in mesh/) decides when to dial; this keeps the lists.
"""

from __future__ import annotations

from typing import Any, Callable

from meshnet.errors import NotFound, UsageError
from meshnet.mesh import targets as targets_mod
from meshnet.mesh.core import MeshCore
from meshnet.mesh.policy import Plan
from meshnet.mesh.targets import Targets
from meshnet.state.statedir import StateDir


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

    def load(self, launch_peers: list[str]) -> None:
        """Dial the direct peers and the launch peers; the known peers once."""
        for address in [*self._state.get("direct_peers", []), *launch_peers]:
            self.targets.add_direct(normalize(address))
        forgotten = set(self._state.get("forgotten_peers", []))
        self.targets.add_known([a for a in self._state.get("known_peers", []) if a not in forgotten])
        self.persist()

    def persist(self) -> None:
        """Keep direct peers, and the peer addresses we connect to, for the next start."""
        forgotten = set(self._state.get("forgotten_peers", []))
        known = set(self._wanted)
        if self.core is not None:
            known |= {targets_mod.normalize(f"{c.ip}:{c.port}") for c in self.core.conns.values()}
        self._put("direct_peers", self.targets.direct())
        if known - forgotten:
            self._put("known_peers", sorted(known - forgotten))

    def _put(self, key: str, value: Any) -> None:
        """Write only what changed: the topology changes often, the state dir is a disk."""
        if self._written.get(key) != value:
            self._state.put(key, value)
            self._written[key] = value

    def remember(self, plan: Plan) -> None:
        """The connection policy's latest plan: remember whom it dials, for the next start."""
        self._wanted = set(plan.dial)
        self.persist()

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
