"""An in-process network of sans-IO MeshCores for tests and scale simulations.

Messages go through the real codec (encode → bytes → decode), so byte counts are real.
The wire plays TCP and the kernel too: a connection whose path is up is acknowledged
(`kernel_acks`), as the router's kernel reports through TCP_INFO.
The wire can lose, duplicate and reorder messages and be partitioned; `step()` delivers
everything in flight once (one hop per step: a "gossip round"), `advance(dt)` moves the
shared clock and runs every core's timers.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from meshnet.mesh import wire
from meshnet.mesh.core import Close, MeshCore, Send


@dataclass
class _Pipe:
    """One direction of a connection: core `src` (conn id `src_conn`) to core `dst`."""

    src: int
    dst: int
    dst_conn: int


@dataclass
class GossipNet:
    size: int
    seed: int = 0
    loss: float = 0.0
    dup: float = 0.0
    reorder: bool = False
    conn_limit: int = 100
    departed_grace: float = 0.0  # MeshCore's: how long a peer that left is kept
    now: float = 1000.0
    cores: list[MeshCore] = field(default_factory=list)
    bytes_sent: int = 0  # every control message
    messages_sent: int = 0
    gossip_bytes: int = 0  # topology gossip only (not heartbeats)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self._pipes: dict[tuple[int, int], _Pipe] = {}  # (core, conn id) -> where it leads
        self._conn_of: dict[tuple[int, int], int] = {}  # (core, other core) -> conn id
        self._next_conn = 1
        self._queue: list[tuple[_Pipe, bytes]] = []
        self.partitioned: set[frozenset[int]] = set()
        for i in range(self.size):
            self.add_core()

    def add_core(self) -> int:
        i = len(self.cores)
        name = self.rng.getrandbits(128).to_bytes(16, "big")
        self.cores.append(
            MeshCore(
                name=name,
                nick=f"p{i}",
                uid=self.rng.getrandbits(63),
                port=6783,
                udp_port=6783,
                now=self.now,
                conn_limit=self.conn_limit,
                departed_grace=self.departed_grace,
                rng=random.Random(self.rng.getrandbits(32)),
            )
        )
        return i

    def features(self, i: int) -> dict:
        core = self.cores[i]
        local = core.topology.local
        return {"name": core.name, "nick": local.nick, "uid": local.uid, "port": 6783, "udp_port": 6783}

    def connect(self, i: int, j: int) -> bool:
        if (i, j) in self._conn_of or i == j:
            return False
        ci, cj = self._next_conn, self._next_conn + 1
        self._next_conn += 2
        ri, ev_i = self.cores[i].add_connection(ci, remote=self.features(j), ip=f"10.0.{j >> 8}.{j & 255}", outbound=True, now=self.now)
        rj, ev_j = self.cores[j].add_connection(cj, remote=self.features(i), ip=f"10.0.{i >> 8}.{i & 255}", outbound=False, now=self.now)
        if ri or rj:
            if not ri:
                self.cores[i].remove_connection(ci, now=self.now)
            if not rj:
                self.cores[j].remove_connection(cj, now=self.now)
            return False
        self._pipes[(i, ci)] = _Pipe(i, j, cj)
        self._pipes[(j, cj)] = _Pipe(j, i, ci)
        self._conn_of[(i, j)], self._conn_of[(j, i)] = ci, cj
        self._emit(i, ev_i)
        self._emit(j, ev_j)
        return True

    def disconnect(self, i: int, j: int) -> None:
        ci, cj = self._conn_of.pop((i, j), None), self._conn_of.pop((j, i), None)
        if ci is not None:
            self._pipes.pop((i, ci), None)
            self._emit(i, self.cores[i].remove_connection(ci, now=self.now))
        if cj is not None:
            self._pipes.pop((j, cj), None)
            self._emit(j, self.cores[j].remove_connection(cj, now=self.now))

    def prime(self) -> None:
        """Jump to the converged state: give every core every entry, drop what is in flight.

        For simulations that measure one change on a big, already-converged mesh without
        simulating how it was built.
        """
        self._queue.clear()
        entries = [c.topology.local for c in self.cores]
        for core in self.cores:
            core.topology.merge(entries)
            core._track_reachability(self.now)

    def neighbours(self, i: int) -> list[int]:
        return sorted(j for (a, j) in self._conn_of if a == i)

    def _emit(self, i: int, events: list) -> None:
        for event in events:
            if isinstance(event, Send):
                pipe = self._pipes.get((i, event.conn))
                if pipe is None:
                    continue
                data = wire.encode_message(event.kind, *event.fields)
                self.bytes_sent += len(data)
                self.messages_sent += 1
                if event.kind is not wire.Msg.HEARTBEAT:
                    self.gossip_bytes += len(data)
                self.on_sent(i, pipe.dst, event.kind, len(data))
                self._queue.append((pipe, data))
            elif isinstance(event, Close):
                pipe = self._pipes.get((i, event.conn))
                if pipe is not None:
                    self.disconnect(i, pipe.dst)
            else:
                self.on_event(i, event)

    def on_sent(self, src: int, dst: int, kind: wire.Msg, size: int) -> None:
        """A message left core `src` for `dst` (a hook for simulations that count per router)."""

    def on_event(self, i: int, event: object) -> None:
        """Core `i` emitted a `Deliver` or `Changed` (a hook for simulations of the router)."""

    def step(self) -> int:
        """Deliver what is in flight (with loss, duplication, reordering); return how many."""
        batch, self._queue = self._queue, []
        if self.reorder:
            self.rng.shuffle(batch)
        delivered = 0
        for pipe, data in batch:
            if frozenset((pipe.src, pipe.dst)) in self.partitioned or self.rng.random() < self.loss:
                continue
            copies = 2 if self.rng.random() < self.dup else 1
            for _ in range(copies):
                if (pipe.dst, pipe.dst_conn) not in self._pipes:
                    break
                message = wire.decode_message(data)
                self._emit(pipe.dst, self.cores[pipe.dst].receive(pipe.dst_conn, message, now=self.now))
                delivered += 1
        return delivered

    def settle(self, max_steps: int = 1000) -> int:
        """Step until nothing is in flight and no core holds back a change of its entry
        (publish batching: the clock moves on to the batch); return the steps (rounds)."""
        steps = 0
        while steps < max_steps:
            if self._queue:
                self.step()
                steps += 1
                continue
            due = [c.publish_due for c in self.cores if c.publish_due is not None]
            if not due:
                break
            self.advance(max(0.0, min(due) - self.now))
        return steps

    def advance(self, dt: float) -> None:
        self.now += dt
        for i, core in enumerate(self.cores):
            self.kernel_acks(i)
            self._emit(i, core.tick(now=self.now))

    def kernel_acks(self, i: int) -> None:
        """What the router's kernel reports (keepalive): connections whose path is up are
        acknowledged; a partitioned one is not, and its core closes it after its timeout."""
        core = self.cores[i]
        for conn in list(core.conns):
            pipe = self._pipes.get((i, conn))
            if pipe is not None and frozenset((pipe.src, pipe.dst)) not in self.partitioned:
                core.acked(conn, self.now)

    def converged(self, exclude: frozenset[int] = frozenset()) -> bool:
        """Every core (but the excluded) holds the same version of every entry."""
        digests = {tuple(map(tuple, c.topology.digest())) for i, c in enumerate(self.cores) if i not in exclude}
        return len(digests) == 1

    def knows(self, i: int, name: bytes) -> int:
        """How many cores hold core i's current entry version."""
        version = self.cores[i].topology.local.version
        return sum(1 for c in self.cores if (e := c.topology.entries.get(name)) is not None and e.version >= version)
