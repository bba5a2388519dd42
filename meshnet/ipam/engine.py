"""The allocator's state, and every transition of it the mesh, the clock and the API cause.

`Allocator` (`allocator.py`) is the facade on top: it checks input, calls these, and hands
back `_flush()`. `Engine` is not used on its own; `Allocator.__init__` sets its state up
from the store. The parts with a job of their own live in their modules and are driven
from here: the first ring (`bootstrap.Bootstrap`), asking donors (`donation.Seeker`),
rmpeer confirmation (`reclaim.Reclaimer`, `reclaim.Removed`), waiting requests
(`outcome.Requests`), the handed-out addresses (`space.Space`).

Every transition follows one rule: commit to the store, then change memory, then queue
the messages that announce it (`_out`). So nothing is announced, and no caller told, that
a kill -9 could take back.

After every input `_progress` runs once: bootstrap (consensus), rmpeer confirmation,
waiting requests served, donation asked for, in that order.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable

from meshnet.ipam import donation
from meshnet.ipam.addr import Block, fmt, parse_address
from meshnet.ipam.bootstrap import Bootstrap
from meshnet.ipam.errors import AddressInUse, Cancelled, IpamBadRequest, IpamError, NotHeld, NotOwner, Tombstoned
from meshnet.ipam.outcome import Outgoing, Pending, Request, Requests, Result
from meshnet.ipam.reclaim import Reclaimer, Removed
from meshnet.ipam.ring import Ring
from meshnet.ipam.space import Space
from meshnet.ipam.store import Changes, Store
from meshnet.ipam.wire import (
    Deny,
    Message,
    RingData,
    State,
    Summary,
    Want,
    encode_deny,
    encode_state,
    encode_summary,
    encode_want,
)

HINT_DELAY = 2.0  # s between a change of our free space and the new hint in the ring
MAX_CONFLICTS = 32  # conflict messages kept for status
MAX_OWNER_LEN = 512  # characters in an owner id (container id + interface)


class Engine:
    name: bytes
    universe: Block
    boot: Bootstrap  # the way to the first ring
    ring: Ring | None  # None until bootstrap gives us one
    space: Space  # the addresses handed out here
    reclaim: Reclaimer  # rmpeer targets and their confirmation round
    gone: Removed  # peers removed with rmpeer, here or anywhere
    tombstoned: bool  # this peer is one of them: it must reset before it allocates
    reachable: set[bytes]
    topology_known: bool  # no rmpeer confirmation may finish before we know who is there
    requests: Requests  # waiting allocations and claims, and outcomes not yet collected
    seeker: donation.Seeker  # asking donors for space
    conflicts: dict[str, None]  # an ordered set, oldest first
    hint_due: float | None  # when our free-space hints are refreshed next
    _store: Store
    _rng: random.Random
    _next_id: int  # ids of wants, asks and requests; random start, so earlier lives do not match
    _cursor: int  # the last address handed out: the next search starts after it
    _out: list[Outgoing]  # messages queued for the caller

    # ---- messages from peers ------------------------------------------------------------

    def _receive(self, src: bytes, msg: Message, now: float) -> list[Outgoing]:
        if src == self.name:
            return self._flush()
        if msg.universe != self.universe.cidr:
            self._conflict(f"peer {src.hex()} uses range {msg.universe}, we use {self.universe.cidr}; ignored")
            return self._flush()
        if isinstance(msg, State):
            self._on_state(src, msg)
        elif isinstance(msg, Want):
            self._on_want(src, msg)
        elif isinstance(msg, Deny):
            if self.ring:
                self.seeker.denied_by(self.ring, src, msg.id)
        elif isinstance(msg, Summary):
            if msg.hash != self._digest():  # we differ: both send their state, both merge
                self._out.append(("unicast", src, encode_state(self._state(ask=self._new_id()))))
        self._progress(now)
        return self._flush()

    def _on_state(self, src: bytes, msg: State) -> None:
        self.boot.heard.add(src)
        if msg.ring is not None:
            self._merge_ring(src, msg.ring)
        if msg.paxos is not None and self.ring is None:
            self.boot.merge(src, msg.paxos)
        news = [p for p in msg.gone if p not in self.gone and p != self.name]
        if news:
            self._forget(news, durable=False)  # anyone who has it gossips it again
        if self.name in msg.gone and not self.tombstoned:
            self._tombstone(src)
        if msg.re is not None:
            self.reclaim.answered(src, msg.re)
            self.seeker.answered(src, msg.re)
        if msg.ask is not None:
            self._out.append(("unicast", src, encode_state(self._state(re=msg.ask))))

    def _merge_ring(self, src: bytes, data: RingData) -> None:
        if self.ring is None:
            self._adopt(Ring(self.universe, data.genesis, data.entries))
            self._check_allocations()
            return
        if data.genesis != self.ring.genesis:
            self._conflict(
                f"peer {src.hex()} has a ring made by a different bootstrap (other seeds, or a second "
                "consensus: check --ipalloc-init on every peer); its ring is ignored"
            )
            return
        merged = self.ring.diff(data.entries)
        for token, ours, theirs in merged.conflicts:
            self._conflict(
                f"range at {fmt(token)}: version {ours.version} claimed by both {ours.owner.hex()} and "
                f"{theirs.owner.hex()}"
            )
        if merged.changed:
            self._apply_ring(Changes(ring={t: data.entries[t] for t in merged.changed}))
            self._check_allocations()

    def _tombstone(self, src: bytes) -> None:
        """Peer `src` says we were removed with rmpeer: our space is others' now. Refuse to
        allocate until reset (the state dir goes, and with it this peer's name)."""
        self._store.commit(Changes(meta={"tombstone": b"1"}))
        self.tombstoned = True
        self._conflict(f"this peer was removed with rmpeer (peer {src.hex()} says so); run `meshnet reset` before it allocates")
        for req in self.requests:
            self.requests.finish(req, Tombstoned("this peer was removed with rmpeer; run `meshnet reset`"))

    def _on_want(self, src: bytes, want: Want) -> None:
        if src in self.gone:  # removed with rmpeer: it gets nothing until it resets
            self._out.append(("unicast", src, encode_deny(Deny(self.universe.cidr, want.id))))
            return
        block = None if self.ring is None else donation.carve(self.ring, self.space, self.name, want.lo, want.hi)
        if block is None:
            self._out.append(("unicast", src, encode_deny(Deny(self.universe.cidr, want.id))))
            return
        assert self.ring is not None
        self._apply_ring(Changes(ring=donation.give(self.ring, self.space, self.name, src, block)))
        self._broadcast_state()
        self._out.append(("unicast", src, encode_state(self._state(re=want.id))))

    # ---- progress: bootstrap, rmpeer confirmation, waiting requests, donation -----------

    def _progress(self, now: float) -> None:
        self.seeker.expire(now)
        if self.ring is None and self.boot.consensus is not None:
            step = self.boot.step(now=now, reachable=self.reachable)
            if step.note is not None:
                self._conflict(step.note)
            if step.held:  # until every reachable peer told us its state (on_peers_changed)
                self._advance_round(now)
                self._serve(now)
                return
            if step.paxos is not None:
                self._store.commit(Changes(meta={"paxos": step.paxos}))
                self._broadcast_state()
            if step.ring is not None:
                self._adopt(step.ring)
                self._broadcast_state()
        self._advance_round(now)
        self._serve(now)
        self._seek_space(now)

    def _serve(self, now: float) -> None:
        for req in self.requests:
            if req.address is not None:
                outcome = self._try_claim(req.owner, req.address, now)
            elif self.ring is None:
                outcome = None
            else:
                outcome = self._allocate_in(req.owner, req.block, now)
            if outcome is None:
                req.reason = self._bootstrap_reason() or req.reason
            else:
                self.requests.finish(req, outcome)

    def _seek_space(self, now: float) -> None:
        """Ask a donor for space for the oldest waiting allocation that has one (`donation.py`)."""
        if self.ring is None:
            return
        sought = self.seeker.seek(self.ring, self.name, list(self.requests), self.reachable, now, self._new_id)
        for req in sought.exhausted:
            self.requests.finish(req, donation.exhausted(req.block))
        if sought.ask is not None:
            lo, hi = sought.ask.block.usable
            want = Want(self.universe.cidr, sought.ask.id, lo, hi)
            self._out.append(("unicast", sought.ask.donor, encode_want(want)))

    # ---- rmpeer -------------------------------------------------------------------------

    def _advance_round(self, now: float) -> None:
        if self.ring is None or not self.topology_known:
            return  # no confirmation may finish before we know who is there
        step = self.reclaim.advance(self.ring, self.reachable, self.gone, now, self._new_id)
        for note in step.notes:
            self._conflict(note)
        if step.changes:
            self._apply_ring(step.changes)
        self._ask(step.ask)
        if step.confirmed:
            self._broadcast_state()

    def _forget(self, peers: list[bytes], *, durable: bool = True) -> None:
        """Remember peers removed with rmpeer, here or anywhere: no round waits for them."""
        self.gone.add(peers)
        for peer in peers:
            self.reclaim.gone(peer)
        self._store.commit(Changes(meta={"gone": self.gone.meta(), "rmpeer": self.reclaim.meta()}), durable=durable)

    def _ask(self, peers: list[bytes]) -> None:
        if peers:
            assert self.reclaim.round is not None
            payload = encode_state(self._state(ask=self.reclaim.round.id))
            self._out.extend(("unicast", p, payload) for p in peers)

    # ---- local addresses: commit, then hand out or take back ----------------------------

    def _release(self, owner: str, address: str | None, now: float) -> None:
        owner = check_owner(owner)
        if address is None:
            addresses = self.space.of(owner)
            for req in [r for r in self.requests if r.owner == owner]:
                self.requests.finish(req, Cancelled(f"{owner} was released while its request waited"))
        else:
            addr = parse_address(address, self.universe)
            if self.space.holder(addr) != owner:
                raise NotHeld(f"{fmt(addr)} is not held by {owner}")
            addresses = [addr]
        if addresses:
            self._store.commit(Changes(allocations={a: None for a in addresses}))
            for a in addresses:
                self.space.remove(a)
            self._hints_changed(now, addresses)

    def _allocate_in(self, owner: str, block: Block, now: float) -> Result | None:
        assert self.ring is not None
        lo, hi = block.usable
        for a in self.space.of(owner):
            if lo <= a < hi:
                return Result(owner, fmt(a), block.prefixlen)
        intervals = [
            (max(start, lo), min(end, hi))
            for start, end, e in self.ring.overlapping(lo, hi)
            if e.owner == self.name and not e.reclaim and max(start, lo) < min(end, hi)
        ]
        addr = self.space.first_free(intervals, after=self._cursor)
        if addr is None:
            return None
        self._store.commit(Changes(allocations={addr: owner}))
        self.space.add(addr, owner)
        self._cursor = addr
        self._hints_changed(now, [addr])
        return Result(owner, fmt(addr), block.prefixlen)

    def _try_claim(self, owner: str, addr: int, now: float) -> Result | IpamError | None:
        holder = self.space.holder(addr)
        if holder == owner:
            return Result(owner, fmt(addr), self.universe.prefixlen)
        if holder is not None:
            return AddressInUse(f"{fmt(addr)} is held by {holder}")
        if self.ring is None:
            return None
        e = self.ring.get(self.ring.token_at(addr))
        assert e is not None
        if e.owner != self.name:
            return NotOwner(f"{fmt(addr)} is in a range owned by peer {e.owner.hex()}; claim it on that peer")
        if e.reclaim:
            return None  # ours once the rmpeer is confirmed
        self._store.commit(Changes(allocations={addr: owner}))
        self.space.add(addr, owner)
        self._hints_changed(now, [addr])
        return Result(owner, fmt(addr), self.universe.prefixlen)

    def _enqueue(self, owner: str, block: Block, address: int | None, now: float) -> Pending:
        req = Request(self._new_id(), owner, block, address, self._bootstrap_reason() or "waiting for space")
        self.requests.add(req)
        self._progress(now)
        return req.pending()

    def _bootstrap_reason(self) -> str | None:
        return None if self.ring is not None else self.boot.reason()

    # ---- the ring, its hints, and what we announce --------------------------------------

    def _adopt(self, ring: Ring, changes: Changes | None = None) -> None:
        """Make `ring` our first ring: commit it (with `changes`), then use it."""
        changes = changes or Changes()
        changes.meta.update(genesis=ring.genesis, paxos=None)
        changes.ring.update(ring.entries())
        self._store.commit(changes)
        self.ring = ring
        self.boot.done()

    def _apply_ring(self, changes: Changes, *, durable: bool = True) -> None:
        """Commit ring (and other) changes first, then apply the ring part to memory."""
        assert self.ring is not None
        self._store.commit(changes, durable=durable)
        for token, entry in changes.ring.items():
            self.ring.put(token, entry)

    def _hints_changed(self, now: float, addresses: Iterable[int]) -> None:
        """Schedule a hint refresh; at once if a range went from full to not full or back.

        Donors are chosen by hint and full ones are not asked, so those two transitions are
        announced immediately; other changes are debounced and ride on anti-entropy.
        """
        if self.ring is None:
            return
        if donation.crossed_full(self.ring, self.space, self.name, addresses):
            self.hint_due = now
            self._refresh_hints(now)
            self._broadcast_state()
            return
        if self.hint_due is None:
            self.hint_due = now + HINT_DELAY

    def _refresh_hints(self, now: float) -> None:
        if self.hint_due is None or now < self.hint_due:
            return
        self.hint_due = None
        if self.ring is None:
            return
        changes = Changes(ring=donation.hint_changes(self.ring, self.space, self.name))
        if changes:
            self._apply_ring(changes, durable=False)  # a lost hint is harmless; see store.py

    def _check_allocations(self) -> None:
        """Report addresses we hold in ranges we no longer own (rmpeer of a live peer)."""
        if self.ring is None:
            return
        for addr, owner in self.space.items():
            e = self.ring.get(self.ring.token_at(addr))
            if e is not None and e.owner != self.name:
                self._conflict(f"{fmt(addr)} (held by {owner}) is in a range now owned by peer {e.owner.hex()}")

    def _conflict(self, text: str) -> None:
        self.conflicts[text] = None
        while len(self.conflicts) > MAX_CONFLICTS:
            del self.conflicts[next(iter(self.conflicts))]

    def _state(self, *, ask: int | None = None, re: int | None = None) -> State:
        ring = RingData(self.ring.genesis, self.ring.entries()) if self.ring is not None else None
        paxos = self.boot.paxos_data() if self.ring is None else None
        return State(self.universe.cidr, ring, paxos, ask, re, tuple(self.gone))

    def _digest(self) -> bytes:
        """A hash of what anti-entropy compares: the ring and the gone list (16 bytes).
        Cached while the ring (its `version`) and the gone list stay the same."""
        gone = tuple(sorted(self.gone))
        key = (id(self.ring), self.ring.version, gone) if self.ring is not None else None
        cached = getattr(self, "_digest_cache", None)
        if key is not None and cached is not None and cached[0] == key:
            return cached[1]
        state = self._state()
        digest = hashlib.blake2b(encode_state(State(state.universe, state.ring, state.paxos, gone=gone)), digest_size=16).digest()
        self._digest_cache = (key, digest)
        return digest

    def summary(self) -> bytes:
        """Our `sum` payload: a neighbour with another state answers with its own."""
        return encode_summary(Summary(self.universe.cidr, self._digest()))

    def _broadcast_state(self) -> None:
        self._out.append(("broadcast", encode_state(self._state())))

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _flush(self) -> list[Outgoing]:
        out, self._out = self._out, []
        return out


def check_owner(owner: object) -> str:
    if not isinstance(owner, str) or not owner.strip() or len(owner) > MAX_OWNER_LEN:
        raise IpamBadRequest(f"owner must be a non-empty string of at most {MAX_OWNER_LEN} characters")
    return owner
