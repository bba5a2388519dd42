"""The IPAM allocator: the sans-IO facade the runtime drives; it hands out addresses from
ranges this peer owns.

This file is the API: construction from a `Store`, the entry points below, the view for
`status ipam`. The state and its transitions are in `engine.py` (`Allocator` extends
`Engine`), and the parts with a job of their own in their modules: the ring (`ring.py`),
the handed-out addresses (`space.py`), the first ring (`bootstrap.py`, `paxos.py`), asking
for and giving space (`donation.py`), rmpeer (`reclaim.py`), the waiting requests
(`outcome.py`). It never does I/O and never reads a clock: every entry point takes `now`
(monotonic seconds) and returns the messages to send,

    Outgoing = ("broadcast", payload) | ("unicast", destination_peer_name, payload)

for the mesh's IPAM gossip channel (format: `wire.py`). The runtime calls `tick(now=...)` at
`next_deadline()`, hands every payload from the channel to `on_broadcast` / `on_unicast`
(an `IpamProtocolError` from them means: drop that payload, log the peer), reports the
reachable peers with `on_peers_changed` (once at start even if there are none: until then
`rmpeer` is refused), and periodically sends a neighbour `summary()` (anti-entropy: a
neighbour whose state differs answers with its own) and `full_state()` to every new
neighbour. Releases the CNI plugin journalled while the router was down reach the core as
plain values: the runtime drains the journal (`meshnet/state/journal.py`) into
`release_journalled` before it serves the local API.

Requests that must wait. `allocate` and `claim` return a `Result` at once when they can.
When there is no space yet (bootstrap not finished, donation in flight, an rmpeer being
confirmed) they return a `Pending(request_id, reason)`; its outcome shows up later, exactly
once, in `completed()`, which returns and forgets `[(request_id, Result | IpamError)]`. The
runtime drains it after every call into the allocator and resolves one future per request
id. Asking again for the same owner (and subnet, or address) while a request waits returns
the same `Pending`. `cancel(request_id)` drops a request whose caller gave up. A waiting
request's reason is also the `waiting` field of `status()`.

Durability. Each operation commits its changes to the `Store` (`store.py`; the core does
no I/O itself) before it returns the result or the messages that announce it, so kill -9
loses nothing anyone was told, and an address is never handed out twice.

rmpeer takes a dead peer's ranges, but uses them only after every peer that was reachable
has seen the claim and answered (`reclaim.py`), so running it twice, or on two peers at
once, ends with one owner. A confirmation waits for a peer that dies meanwhile until that
peer is removed with rmpeer too (anywhere; `status()["reclaiming"]` says whom it waits for).
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from meshnet.ipam import donation
from meshnet.ipam.addr import fmt, parse_address, parse_subnet, parse_universe
from meshnet.ipam.bootstrap import Bootstrap, parse_init
from meshnet.ipam.engine import Engine, check_owner
from meshnet.ipam.errors import (
    Cancelled,
    IpamBadRequest,
    IpamConfigError,
    IpamError,
    NoHeir,
    NotHeld,
    PeerReachable,
    Tombstoned,
)
from meshnet.ipam.outcome import Outgoing, Pending, Requests, Result
from meshnet.ipam.reclaim import Reclaimer, Removed
from meshnet.ipam.ring import NAME_LEN, Entry, Ring, host_count, next_version
from meshnet.ipam.space import Space
from meshnet.ipam.status import IpamView, RangeView
from meshnet.ipam.status import build as build_status
from meshnet.ipam.store import Changes, Store
from meshnet.ipam.wire import decode, encode_state


class Allocator(Engine):
    def __init__(
        self,
        *,
        name: bytes,
        universe: str,
        init: str,
        store: Store,
        now: float,
        rng: random.Random | None = None,
    ):
        """Load (or start) this peer's IPAM state.

        Raises:
            IpamConfigError: bad name, range or init mode, or a store that belongs to another
                peer or another range.
        """
        if type(name) is not bytes or len(name) != NAME_LEN:
            raise IpamConfigError(f"peer name must be {NAME_LEN} bytes")
        self.name = name
        self.universe = parse_universe(universe)
        self.boot = Bootstrap(name, self.universe, parse_init(init))
        self._store = store
        self._rng = rng or random.Random()
        self._next_id = self._rng.getrandbits(48)  # ids of earlier lives must not match ours

        snap = store.load()
        changes = Changes()
        stored_name, stored_range = snap.meta.get("name"), snap.meta.get("universe")
        if stored_name is not None and stored_name != name:
            raise IpamConfigError(f"the IPAM state belongs to peer {stored_name.hex()}, not {name.hex()}")
        if stored_range is not None and stored_range.decode() != self.universe.cidr:
            raise IpamConfigError(
                f"the IPAM state is for range {stored_range.decode()} but --ipalloc-range is "
                f"{self.universe.cidr}; use the same range, or start with an empty state dir"
            )
        if stored_name is None:
            changes.meta.update(name=name, universe=self.universe.cidr.encode())

        self.ring = None
        if snap.ring:
            self.ring = Ring(self.universe, snap.meta["genesis"], snap.ring)
        else:
            seeded = self.boot.start(snap.meta.get("paxos"))
            if seeded is not None:
                self._adopt(seeded, changes)
                changes = Changes()  # committed with the ring
        store.commit(changes)
        self.space = Space(snap.allocations)
        self.reclaim = Reclaimer(name, snap.meta.get("rmpeer"))
        self.gone = Removed(snap.meta.get("gone"))
        self.tombstoned = bool(snap.meta.get("tombstone"))  # we were removed with rmpeer: reset first

        self.reachable = set()
        self.topology_known = False
        self.requests = Requests()
        self.seeker = donation.Seeker()
        self.conflicts = {}
        self.hint_due = now  # refresh hints once after start
        self._cursor = self.universe.start
        self._out = []
        self._check_allocations()

    # ---- from the mesh ------------------------------------------------------------------

    def on_broadcast(self, src: bytes, payload: bytes, *, now: float) -> list[Outgoing]:
        """Raises IpamProtocolError (and changes nothing) if the payload is malformed."""
        return self._receive(src, decode(payload), now)

    def on_unicast(self, src: bytes, payload: bytes, *, now: float) -> list[Outgoing]:
        """Raises IpamProtocolError (and changes nothing) if the payload is malformed."""
        return self._receive(src, decode(payload), now)

    def on_peers_changed(self, reachable: set[bytes], *, now: float) -> list[Outgoing]:
        before = self.reachable
        self.reachable = set(reachable) - {self.name}
        self.topology_known = True
        for peer in sorted(self.gone.back(self.reachable)):  # removed, yet alive: it must reset
            self._conflict(f"peer {peer.hex()} was removed with rmpeer but is reachable again; it must run `meshnet reset`")
        self.seeker.lost(self.reachable)
        if self.ring is None and self.boot.consensus is not None:
            # Newcomers learn our vote, and we ask for theirs: one of them may already hold
            # a ring, which must win over the one a consensus among the rest would make.
            for peer in sorted(self.reachable - before):
                self._out.append(("unicast", peer, encode_state(self._state(ask=self._new_id()))))
        self._progress(now)
        return self._flush()

    def full_state(self) -> bytes:
        return encode_state(self._state())

    def tick(self, *, now: float) -> list[Outgoing]:
        self._refresh_hints(now)
        self._progress(now)
        return self._flush()

    def next_deadline(self) -> float | None:
        deadlines = [self.hint_due, self.seeker.deadline(bool(self.requests))]
        if self.reclaim.round is not None:
            deadlines.append(self.reclaim.round.resend_at)
        if self.ring is None:
            deadlines.append(self.boot.deadline(self.reachable))
        present = [d for d in deadlines if d is not None]
        return min(present) if present else None

    # ---- local API ----------------------------------------------------------------------

    def allocate(self, owner: str, *, subnet: str | None = None, now: float) -> tuple[Result | Pending, list[Outgoing]]:
        """Give `owner` an address in `subnet` (default: the whole range); idempotent per owner.

        Raises:
            IpamBadRequest: bad owner or subnet.
            RangeExhausted: no free address in the subnet on any reachable peer.
        """
        owner = check_owner(owner)
        self._refuse_if_tombstoned()
        block = parse_subnet(subnet, self.universe) if subnet is not None else self.universe
        waiting = self.requests.allocation(owner, block)
        if waiting is not None:
            return waiting.pending(), self._flush()
        if self.ring is not None:
            result = self._allocate_in(owner, block, now)
            if result is not None:
                return result, self._flush()
            if self.seeker.choice(self.ring, self.name, block, self.reachable, now).exhausted:
                raise donation.exhausted(block)
        pending = self._enqueue(owner, block, None, now)
        return pending, self._flush()

    def claim(self, owner: str, address: str, *, now: float) -> tuple[Result | Pending, list[Outgoing]]:
        """Give `owner` this specific address; idempotent per owner and address.

        Raises:
            IpamBadRequest: bad owner or address (outside the range, or reserved).
            AddressInUse: another owner holds it.
            NotOwner: it lies in a range owned by another peer.
        """
        owner = check_owner(owner)
        self._refuse_if_tombstoned()
        addr = parse_address(address, self.universe)
        waiting = self.requests.claim(owner, addr)
        if waiting is not None:
            return waiting.pending(), self._flush()
        outcome = self._try_claim(owner, addr, now)
        if isinstance(outcome, IpamError):
            raise outcome
        if outcome is not None:
            return outcome, self._flush()
        return self._enqueue(owner, self.universe, addr, now), self._flush()

    def release(self, owner: str, *, address: str | None = None, now: float) -> list[Outgoing]:
        """Free what `owner` holds (everything, or just `address`).

        Releasing an owner that holds nothing is a no-op, so CNI DEL may run twice. Without an
        address it also ends the owner's waiting requests (their outcome: `Cancelled`).

        Raises:
            IpamBadRequest: bad owner or address.
            NotHeld: `address` is not held by `owner` (nothing is changed).
        """
        self._release(owner, address, now)
        self._progress(now)
        return self._flush()

    def _refuse_if_tombstoned(self) -> None:
        if self.tombstoned:
            raise Tombstoned("this peer was removed with rmpeer and its space belongs to others: run `meshnet reset` before it allocates")

    def standing(self, address: str) -> str | None:
        """Why an endpoint on this host may not use `address`, or None when it may: the address
        is outside the range, or held here in a range this peer owns and was not removed from."""
        try:
            addr = parse_address(address, self.universe)
        except IpamBadRequest:
            return None  # not IPAM's (outside the range, or its reserved ends)
        if self.tombstoned:
            return "this peer was removed with rmpeer"
        if self.space.holder(addr) is None:
            return f"{fmt(addr)} is not allocated on this peer"
        e = self.ring.get(self.ring.token_at(addr)) if self.ring is not None else None
        if e is not None and e.owner != self.name:
            return f"{fmt(addr)} is in a range owned by peer {e.owner.hex()}"
        return None

    def addresses(self, owner: str) -> list[str]:
        """What `owner` holds here (for CNI CHECK and for the router's reconciliation)."""
        return [fmt(a) for a in self.space.of(owner)]

    def completed(self) -> list[tuple[int, Result | IpamError]]:
        """Outcomes of requests that waited (`Pending`), each exactly once; forgets them."""
        return self.requests.completed()

    def cancel(self, request_id: int) -> bool:
        """Forget a waiting request whose caller gave up; it will not complete."""
        return self.requests.cancel(request_id)

    def release_journalled(self, entries: Iterable[tuple[str, str | None]], *, now: float) -> list[Outgoing]:
        """Apply releases the CNI plugin journalled while the router was down.

        `entries` are `(owner, address or None)`, as `meshnet/state/journal.py` records them.
        The runtime calls this while it holds the journal, and empties the journal only after
        it returned: by then every release is committed, so a crash in between replays them,
        harmlessly. Entries that no longer apply (released already: a replay after a crash)
        or are garbled are skipped; anything else raised (the store failing) leaves the
        journal as it is, for the next attempt. Waiting requests are not moved along here;
        the next `tick` (or any other entry point) does that.
        """
        for owner, address in entries:
            try:
                self._release(owner, address, now)
            except (NotHeld, IpamBadRequest):
                pass  # already released (a replay after a crash), or a garbled entry
        return self._flush()

    def reset(self, *, now: float) -> list[Outgoing]:
        """Hand all our ranges to a reachable peer before this peer leaves for good.

        Our allocations are forgotten (their containers must be gone) and waiting requests end.

        Raises:
            NoHeir: no reachable peer to take the ranges.
            IpamError: an rmpeer confirmation is still running.
        """
        heir = self.check_reset()
        if self.ring is None:
            return self._flush()
        mine = self.ring.owned(self.name)
        if mine:
            assert heir is not None
            changes = Changes(allocations={a: None for a, _ in self.space.items()})
            for start, end, e in mine:
                changes.ring[start] = Entry(heir, next_version(e.version), host_count(start, end, self.universe))
            self._apply_ring(changes)
            self.space.clear()
            for req in self.requests:
                self.requests.finish(req, Cancelled(f"this peer handed its ranges to {heir.hex()} (reset)"))
            self.seeker.want = None
            self._broadcast_state()
            self._out.append(("unicast", heir, self.full_state()))
        return self._flush()

    def check_reset(self) -> bytes | None:
        """Raise what `reset` would raise, changing nothing; return the heir (None: nothing to hand)."""
        if self.ring is None:
            return None
        if self.reclaim.round is not None:
            raise IpamError("an rmpeer is still being confirmed with the other peers; try reset again shortly")
        if not self.ring.owned(self.name):
            return None
        heir = donation.heir(self.ring, self.reachable)
        if heir is None:
            raise NoHeir("no reachable peer can take this peer's ranges; connect to the mesh first")
        return heir

    def rmpeer(self, peer: bytes, *, now: float) -> tuple[int, list[Outgoing]]:
        """Take over the ranges of a peer that is gone; returns how many addresses we took at
        once (what it owns in our ring).

        The confirmation round runs even when that is 0: a donation to the peer that has not
        reached us yet (it asked for space, then died or reset) comes back in the other
        peers' answers and is taken then (`reclaim.py`), so no range stays with a removed
        peer. Without a ring yet, the round begins once one arrives. Idempotent: a peer
        that owns nothing (any more) yields 0. Safe on two peers at once.

        Raises:
            IpamBadRequest: not a peer name, or our own.
            PeerReachable: the peer is reachable, so it is not gone.
            IpamError: we do not know the topology yet (just started).
        """
        if type(peer) is not bytes or len(peer) != NAME_LEN:
            raise IpamBadRequest(f"a peer name is {NAME_LEN} bytes")
        if peer == self.name:
            raise IpamBadRequest("rmpeer of this peer itself; use reset to hand its ranges over")
        if not self.topology_known:
            raise IpamError("the router does not know which peers are reachable yet; try again shortly")
        if peer in self.reachable:
            raise PeerReachable(
                f"peer {peer.hex()} is reachable; rmpeer only reclaims the space of peers that are gone"
            )
        if self.ring is None:
            self.reclaim.defer(peer, self.reachable)  # persisted by _forget
        self._forget([peer])
        taken = 0
        if self.ring is not None:
            # Always a round, even if we see nothing of the peer: a change that has not
            # reached us may have given it space, and the answers bring that change here.
            taken = sum(end - start for start, end, _ in self.ring.owned(peer))
            step = self.reclaim.begin(self.ring, [peer], self.reachable, now, self._new_id())
            self._apply_ring(step.changes)
            self._ask(step.ask)
        self._progress(now)
        return taken, self._flush()

    def knows(self, peer: bytes) -> str | None:
        """What the address ring says of a peer: "owner" (it owns ranges, or we are taking
        them from it), "removed" (removed with rmpeer, here or anywhere), or None: rmpeer
        of it would change nothing, and a name nobody knows is likely a typo."""
        if (self.ring is not None and self.ring.owned(peer)) or peer in self.reclaim.targets:
            return "owner"
        return "removed" if peer in self.gone else None

    def view(self) -> IpamView:
        """A frozen picture of this allocator for `status ipam` (`status.py`)."""
        ranges = None
        if self.ring is not None:
            ranges = tuple(
                RangeView(start, end, e.owner, e.version, self._free(start, end, e), e.reclaim)
                for start, end, e in self.ring.ranges()
            )
        oldest = self.requests.oldest()
        return IpamView(
            name=self.name,
            universe=self.universe,
            init=str(self.boot.mode),
            ranges=ranges,
            reachable=frozenset(self.reachable),
            consensus=self.boot.consensus.reason() if self.boot.consensus is not None else None,
            mismatch=self.boot.mismatch,
            waiting=oldest.reason if oldest is not None else None,
            pending=len(self.requests),
            used=len(self.space),
            reclaiming=frozenset(self.reclaim.targets),
            waiting_for=frozenset(self.reclaim.round.waiting) if self.reclaim.round else frozenset(),
            removed=tuple(self.gone),
            conflicts=tuple(self.conflicts),
            returned=frozenset(self.gone.back(self.reachable)),
            tombstoned=self.tombstoned,
        )

    def status(self) -> dict[str, object]:
        """The `status ipam` report: `status.build(self.view())`."""
        return build_status(self.view())

    def owners(self) -> dict[str, list[str]]:
        """Every allocation held here: owner -> addresses (`GET /ipam/owners`)."""
        out: dict[str, list[str]] = {}
        for address, owner in self.space.items():
            out.setdefault(owner, []).append(fmt(address))
        return out

    def _free(self, start: int, end: int, e: Entry) -> int:
        """Free addresses in a range: counted in ours, the owner's hint in the others'."""
        assert self.ring is not None
        if e.owner != self.name or e.reclaim:
            return e.free
        return donation.free_count(self.ring, self.space, start, end)
