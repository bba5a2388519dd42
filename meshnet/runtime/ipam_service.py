"""IPAM in the router: the sans-IO Allocator wired to the mesh's `ipam` channel and the API.

Everything runs on the asyncio loop thread. Outgoing allocator messages become mesh
broadcasts or unicasts; waiting requests become futures resolved from
`Allocator.completed()`, which is drained after every call into the allocator.

The allocator does no I/O: this service opens its store (`meshnet/state/ipam_store.py`) and
drains the CNI release journal (`meshnet/state/journal.py`) into it, at start, on every tick
and before each allocation.

Anti-entropy costs the same whatever the mesh size: every ANTI_ENTROPY seconds one
neighbour (each in turn) gets a 16-byte hash of our ring; only a neighbour whose ring
differs answers, and then both exchange their whole state. (Every change is broadcast at
once by the allocator; new neighbours get a summary at once.) A full-state broadcast from
every peer every 30 s, as before, cost each router O(peers x ring) bytes: about 1 MB/s
at 1,000 peers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any, Callable

from meshnet.errors import RemoteProtocolError, Unavailable
from meshnet.ipam.allocator import Allocator
from meshnet.ipam.outcome import Result
from meshnet.runtime.ratelimit import RateLimitedLog
from meshnet.state import ipam_store
from meshnet.state.journal import Journal, Release

log = logging.getLogger("meshnet.ipam")

CHANNEL = "ipam"
ANTI_ENTROPY = 10.0  # s between two summaries (a hash of our ring) to one neighbour each
DEFAULT_WAIT = 30.0  # s an allocation may wait for space before the caller gets a 503


def default_init(peers: list[str]) -> str:
    """Weave's default: consensus among this router and the peers it was launched with."""
    return f"consensus={1 + len(peers)}"


class IpamService:
    def __init__(
        self,
        *,
        name: bytes,
        universe: str,
        init: str,
        state_dir: str,
        send: Callable[[list[Any]], None],
    ):
        """`send(outgoing)` hands allocator messages to the mesh.

        Raises:
            IpamConfigError: bad range or init mode, or a state dir made for another range.
        """
        now = time.monotonic()
        self.store = ipam_store.SqliteStore(os.path.join(state_dir, ipam_store.FILENAME))
        self.journal = Journal(state_dir)
        self.allocator = Allocator(name=name, universe=universe, init=init, store=self.store, now=now)
        self._send = send
        self.on_changed: Callable[[], None] = lambda: None  # after anything moved the allocator
        self._waiting: dict[int, asyncio.Future[Result]] = {}
        self._next_summary = now + ANTI_ENTROPY
        self._neighbours: set[bytes] = set()
        self.counters = {"ipam_dropped": 0}  # payloads from peers that did not decode
        self._warn = RateLimitedLog(log)
        self._partners: list[bytes] = []  # neighbours left in this round of summaries
        # Before anything is served. What the releases make the allocator say waits for
        # the first flush (the router's first peers_changed), as it always has.
        self._unsent: list[Any] = self._drain_journal(now)

    def close(self) -> None:
        for future in self._waiting.values():
            future.cancel()
        self.store.close()

    # -- mesh --------------------------------------------------------------------------

    def _flush(self, outgoing: list[Any]) -> None:
        if self._unsent:
            outgoing, self._unsent = self._unsent + outgoing, []
        if outgoing:
            self._send(outgoing)
        for request_id, outcome in self.allocator.completed():
            future = self._waiting.pop(request_id, None)
            if future is None or future.done():
                continue
            if isinstance(outcome, Result):
                future.set_result(outcome)
            else:
                future.set_exception(outcome)
        self.on_changed()

    def on_message(self, src: bytes, payload: bytes, *, unicast: bool) -> None:
        handler = self.allocator.on_unicast if unicast else self.allocator.on_broadcast
        try:
            self._flush(handler(src, payload, now=time.monotonic()))
        except RemoteProtocolError as exc:
            self.counters["ipam_dropped"] += 1
            self._warn.warning("ipam-dropped", "dropped an IPAM message from %s: %s", src.hex(), exc)

    def peers_changed(self, reachable: set[bytes], neighbours: set[bytes]) -> None:
        """Reachability changed; new direct neighbours get our summary (one whose state
        differs answers, and both exchange their whole state)."""
        now = time.monotonic()
        out = self.allocator.on_peers_changed(reachable, now=now)
        for peer in sorted(neighbours - self._neighbours):
            out.append(("unicast", peer, self.allocator.summary()))
        self._neighbours = set(neighbours)
        self._flush(out)

    def tick(self) -> None:
        now = time.monotonic()
        self._replay_journal(now)
        out = self.allocator.tick(now=now)
        if now >= self._next_summary:
            self._next_summary = now + ANTI_ENTROPY
            partner = self._next_partner()
            if partner is not None:
                out.append(("unicast", partner, self.allocator.summary()))
        self._flush(out)

    def _next_partner(self) -> bytes | None:
        while self._partners:
            peer = self._partners.pop()
            if peer in self._neighbours:
                return peer
        self._partners = sorted(self._neighbours, reverse=True)
        return self._partners.pop() if self._partners else None

    def _replay_journal(self, now: float) -> None:
        """Apply releases journalled by a CNI DEL that could not reach us."""
        if self.journal.pending():
            self._flush(self._drain_journal(now))

    def _drain_journal(self, now: float) -> list[Any]:
        """Hand the journalled releases to the allocator; the journal is emptied only after
        it has committed them (`Journal.drain`). Returns what the allocator has to send."""
        out: list[Any] = []

        def apply(releases: list[Release]) -> None:
            out.extend(self.allocator.release_journalled([(r.owner, r.address) for r in releases], now=now))

        self.journal.drain(apply)
        return out

    def next_deadline(self) -> float:
        deadline = self.allocator.next_deadline()
        return min(self._next_summary, deadline) if deadline is not None else self._next_summary

    # -- API ---------------------------------------------------------------------------

    async def allocate(self, owner: str, *, subnet: str | None = None, address: str | None = None, wait: float = DEFAULT_WAIT) -> Result:
        """An address for owner (the given one if `address`); waits for space up to `wait` s.

        Raises:
            IpamError: a UsageError for bad input, a Conflict for an address in use or owned
                elsewhere, Unavailable when no space came in time.
        """
        now = time.monotonic()
        self._replay_journal(now)  # a journalled DEL of this very owner must not free what we hand out now
        if address:
            outcome, out = self.allocator.claim(owner, address, now=now)
        else:
            outcome, out = self.allocator.allocate(owner, subnet=subnet, now=now)
        if isinstance(outcome, Result):
            self._flush(out)
            return outcome
        future = self._waiting.get(outcome.request_id)
        if future is None:
            future = self._waiting[outcome.request_id] = asyncio.get_running_loop().create_future()
        self._flush(out)
        try:
            async with asyncio.timeout(wait):  # shielded: a caller that gives up must not cancel a request others may wait on
                return await asyncio.shield(future)
        except TimeoutError:
            if self.allocator.cancel(outcome.request_id):
                self._waiting.pop(outcome.request_id, None)
            raise Unavailable(f"no address available yet: {outcome.reason}") from None

    def release(self, owner: str, address: str | None = None) -> list[str]:
        held = self.allocator.addresses(owner)
        self._flush(self.allocator.release(owner, address=address, now=time.monotonic()))
        return [address] if address else held

    def owners(self) -> dict[str, list[str]]:
        return self.allocator.owners()

    def addresses(self, owner: str) -> list[str]:
        return self.allocator.addresses(owner)

    def standing(self, address: str) -> str | None:
        """Why an endpoint here may not use `address` (None: it may); `Allocator.standing`."""
        return self.allocator.standing(address)

    def removed(self) -> frozenset[bytes]:
        """Peers removed with rmpeer, here or anywhere: the data path leaves them out."""
        return frozenset(self.allocator.gone)

    def status(self) -> dict[str, Any]:
        return self.allocator.status()

    def knows(self, peer: bytes) -> str | None:
        return self.allocator.knows(peer)

    def rmpeer(self, peer: bytes) -> int:
        count, out = self.allocator.rmpeer(peer, now=time.monotonic())
        self._flush(out)
        return count

    def check_reset(self) -> None:
        """Raise what `reset` would, changing nothing."""
        self.allocator.check_reset()

    def reset(self) -> None:
        self._flush(self.allocator.reset(now=time.monotonic()))

