"""A cluster of simulated routers: the router's own control plane, minus the sockets.

Each `SimRouter` is built from the parts a real router runs (runtime/router.py): the
`MeshCore` with the router's timing, the `ConnectionPolicy` (full mesh up to its limit, a
bounded graph beyond), `Targets` (dialling, backoff), and an IPAM `Allocator` on the
mesh's `ipam` channel with the router's anti-entropy (a summary to one neighbour every
10 s, and at once to new neighbours). Topology changes re-plan each router at most
every `REPLAN_GAP` seconds, as the router's coalescer does. Messages cross GossipNet's
in-process wire through the real codec; a message costs its encoded bytes plus the 4-byte
frame length (TCP/IP headers are not counted).

Time is simulated and event-driven: a router runs when one of its deadlines comes (the
core's, IPAM's, a dial, a re-plan), and everything in flight at one instant is delivered
in rounds (one hop each) before the clock moves on. Dials complete after `DIAL_DELAY`.

    sim = MeshSim.primed(1000)          # converged: the policy's graph, every entry known
    sim.run(60)                          # steady state
    per_router = sim.traffic() ...
    joiner = sim.join(seed=0)            # a new router given one peer, as `launch h1`
    sim.run_until(sim.converged, 30)

Big meshes: `primed` shares the routers' identical topologies (meshnet/testing/cowtopology.py).
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field
from typing import Any, Callable

from meshnet.ipam import Allocator
from meshnet.mesh.core import Changed, Deliver
from meshnet.mesh.policy import ConnectionPolicy
from meshnet.mesh.targets import Targets
from meshnet.mesh.wire import Msg
from meshnet.runtime.ipam_service import ANTI_ENTROPY, CHANNEL
from meshnet.runtime.follow import REPLAN_GAP
from meshnet.testing.cowtopology import adopt, share, version_hash
from meshnet.testing.gossipnet import GossipNet
from meshnet.testing.ipam_store import MemoryStore

UNIVERSE = "10.32.0.0/12"
DIAL_DELAY = 0.005  # seconds from a dial to an established connection (a LAN handshake)
FRAME = 4  # bytes of framing per control message
RING_OWNERS = 1000  # peers the address ring is split among (all of them up to this)
STOP_EVERY = 0.05  # simulated seconds between two looks at a run's stop condition (they cost O(routers))


@dataclass
class SimRouter:
    index: int
    policy: ConnectionPolicy
    targets: Targets
    ipam: Allocator
    replan_at: float | None = None  # a re-plan is due then
    last_replan: float = float("-inf")
    neighbours: set[bytes] = field(default_factory=set)
    partners: list[bytes] = field(default_factory=list)
    next_summary: float = 0.0
    satisfied: frozenset[bytes] = frozenset()
    recheck: float | None = None  # the policy wants to look again then (a prune comes due)
    dials: dict[str, float] = field(default_factory=dict)  # address -> when the dial completes


class MeshSim(GossipNet):
    def __init__(self, size: int = 0, *, seed: int = 1, full_mesh_limit: int | None = None, degree: int | None = None, ring_owners: int = RING_OWNERS):
        self._policy_args = {k: v for k, v in (("full_mesh_limit", full_mesh_limit), ("degree", degree)) if v is not None}
        self.routers: list[SimRouter] = []
        self._ring_owners = ring_owners
        self._init = ""
        self._events: list[tuple[float, int]] = []  # (when, router): a deadline to look at
        self.sent: list[int] = []  # per router: bytes sent, bytes received, messages sent
        self.received: list[int] = []
        self.messages: list[int] = []
        self.by_kind: dict[str, int] = {}
        self.rounds = 0
        self._shared = share([])  # what the routers' topologies share (cowtopology.py)
        self.dead: set[int] = set()  # routers that went away
        super().__init__(size, seed=seed, conn_limit=10_000)

    # -- building ----------------------------------------------------------------------

    @classmethod
    def primed(cls, size: int, **kwargs: Any) -> MeshSim:
        """A converged mesh of `size` routers: the policy's connections, every entry known."""
        sim = cls(size, **kwargs)
        names = [c.name for c in sim.cores]
        policy = ConnectionPolicy(**sim._policy_args)
        if size <= policy.full_mesh_limit:
            edges = {(i, j) for i in range(size) for j in range(i + 1, size)}
        else:
            index = {n: i for i, n in enumerate(names)}
            edges = {(i, index[p]) for i, n in enumerate(names) for p in policy.choices(n, names)}
        for i, j in sorted(edges):
            sim.connect(i, j)  # the first DIGESTs are empty: nobody knows anyone yet
        sim._queue.clear()
        entries = [c.topology.local for c in sim.cores]
        first = sim.cores[0].topology
        first.merge(entries)
        sim._shared = share([c.topology for c in sim.cores])
        for core in sim.cores:
            core._publish_at = None  # already everywhere
            core._unreachable_since.clear()
        for router, core in zip(sim.routers, sim.cores):
            router.neighbours = set(core.by_peer())  # primed: the neighbours agree already
            sim._replan(router)
        sim._queue.clear()
        sim.reset_counters()
        return sim

    def add_core(self) -> int:
        i = super().add_core()
        adopt(self.cores[i].topology, self._shared)
        self.routers.append(self._router(i))
        self.sent.append(0)
        self.received.append(0)
        self.messages.append(0)
        self._schedule(i, self.now)
        return i

    def _router(self, i: int) -> SimRouter:
        if not self._init:
            # The ring's owners: the first routers (a seed ring every router derives). Their
            # names are the first GossipNet draws from its rng: name, uid, core rng seed each.
            rng = random.Random(self.seed)
            names = []
            for _ in range(self._ring_owners):
                names.append(rng.getrandbits(128).to_bytes(16, "big"))
                rng.getrandbits(63)
                rng.getrandbits(32)
            self._init = "seed=" + ",".join(sorted(n.hex() for n in names))
        core = self.cores[i]
        alloc = Allocator(name=core.name, universe=UNIVERSE, init=self._init, store=MemoryStore(), now=self.now, rng=random.Random(i))
        alloc.on_peers_changed(set(), now=self.now)
        rng = random.Random(self.seed * 7919 + i)
        return SimRouter(i, ConnectionPolicy(**self._policy_args), Targets(rng), alloc, next_summary=self.now + ANTI_ENTROPY * rng.random())

    def join(self, seed: int = 0) -> int:
        """A new router launched with one peer (`meshnet launch <seed>`)."""
        i = self.add_core()
        self.routers[i].targets.add_direct(self.address(seed))
        self._schedule(i, self.now)
        return i

    def kill(self, i: int) -> None:
        """Router i dies without a word: its connections drop, it runs no more."""
        self.dead.add(i)
        for j in self.neighbours(i):
            self.disconnect(i, j)

    def address(self, i: int) -> str:
        return f"10.0.{i >> 8}.{i & 255}:6783"

    def _index(self, address: str) -> int:
        _, _, c, d = address.split(":")[0].split(".")
        return int(c) << 8 | int(d)

    # -- counting ----------------------------------------------------------------------

    def reset_counters(self) -> None:
        n = len(self.cores)
        self.sent, self.received, self.messages = [0] * n, [0] * n, [0] * n
        self.by_kind = {}
        self.rounds = 0

    def on_sent(self, src: int, dst: int, kind: Msg, size: int) -> None:
        size += FRAME
        self.sent[src] += size
        self.received[dst] += size
        self.messages[src] += 1
        self.by_kind[kind.name] = self.by_kind.get(kind.name, 0) + size
        self._schedule(dst, self.now)  # its deadlines may move once it has read this

    # -- the routers' glue (runtime/router.py, control.py, ipam_service.py) -------------

    def on_event(self, i: int, event: object) -> None:
        router = self.routers[i]
        if isinstance(event, Changed):
            if router.replan_at is None:
                router.replan_at = max(self.now, router.last_replan + REPLAN_GAP)
                self._schedule(i, router.replan_at)
        elif isinstance(event, Deliver) and event.channel == CHANNEL:
            handler = router.ipam.on_unicast if event.unicast else router.ipam.on_broadcast
            try:
                self._ipam_send(i, handler(event.src, event.payload, now=self.now))
            except Exception:  # an IpamProtocolError: dropped, as the service does
                pass

    def _ipam_send(self, i: int, outgoing: list[Any]) -> None:
        core = self.cores[i]
        for message in outgoing:
            if message[0] == "broadcast":
                self._emit(i, core.broadcast(CHANNEL, message[1], now=self.now))
            else:
                self._emit(i, core.unicast(message[1], CHANNEL, message[2], now=self.now))

    def _replan(self, router: SimRouter) -> None:
        i, core = router.index, self.cores[router.index]
        router.replan_at, router.last_replan = None, self.now
        topo = core.topology
        reachable = topo.reachable()
        neighbours = set(core.by_peer())
        out = router.ipam.on_peers_changed(reachable, now=self.now)
        out += [("unicast", p, router.ipam.summary()) for p in sorted(neighbours - router.neighbours)]
        router.neighbours = neighbours
        self._ipam_send(i, out)
        connected = {c.peer: (c.outbound, c.since) for c in core.conns.values()}
        plan = router.policy.plan(topo, connected=connected, now=self.now, failing=router.targets.failing())
        router.targets.set_discovered(plan.dial, now=self.now, later=plan.later)
        router.satisfied = frozenset() if plan.full_mesh else frozenset(reachable - plan.wanted)
        router.recheck = plan.recheck
        by_peer = {c.name: j for j, c in enumerate(self.cores)}
        for peer in plan.prune:
            self.disconnect(i, by_peer[peer])
        self._schedule(i, self.now)

    def _dial_due(self, router: SimRouter) -> None:
        core = self.cores[router.index]
        for address in router.targets.due(self.now, set(core.by_peer()), router.satisfied):
            router.targets.dialling(address)
            router.dials[address] = self.now + DIAL_DELAY
            self._schedule(router.index, self.now + DIAL_DELAY)
        for address, at in list(router.dials.items()):
            if at <= self.now:
                del router.dials[address]
                j = self._index(address)
                if j >= len(self.cores) or j == router.index:
                    router.targets.failed(address, "no such router", now=self.now)
                    continue
                self.connect(router.index, j)
                if (router.index, j) in self._conn_of:  # ours, or theirs kept when both dialled
                    router.targets.succeeded(address, self.cores[j].name, now=self.now)
                else:
                    router.targets.failed(address, "refused", now=self.now)

    def _ipam_tick(self, router: SimRouter) -> None:
        out = router.ipam.tick(now=self.now)
        if self.now >= router.next_summary:
            router.next_summary = self.now + ANTI_ENTROPY
            while router.partners and router.partners[-1] not in router.neighbours:
                router.partners.pop()
            if not router.partners:
                router.partners = sorted(router.neighbours, reverse=True)
            if router.partners:
                out.append(("unicast", router.partners.pop(), router.ipam.summary()))
        self._ipam_send(router.index, out)

    # -- time --------------------------------------------------------------------------

    def _schedule(self, i: int, at: float) -> None:
        heapq.heappush(self._events, (at, i))

    def _deadline(self, i: int) -> float:
        router, core = self.routers[i], self.cores[i]
        times = [core.next_deadline(), router.next_summary]
        ipam = router.ipam.next_deadline()
        if ipam is not None:
            times.append(ipam)
        if router.replan_at is not None:
            times.append(router.replan_at)
        if router.recheck is not None:
            times.append(router.recheck)
        dial = router.targets.next_deadline(set(core.by_peer()), router.satisfied)
        if dial is not None:
            times.append(dial)
        times += router.dials.values()
        return min(times)

    def _run_router(self, i: int) -> None:
        router, core = self.routers[i], self.cores[i]
        self.kernel_acks(i)
        self._emit(i, core.tick(now=self.now))
        if router.recheck is not None and router.recheck <= self.now:
            router.recheck = None
            router.replan_at = max(self.now, router.last_replan + REPLAN_GAP)
        if router.replan_at is not None and router.replan_at <= self.now:
            self._replan(router)
        self._ipam_tick(router)
        self._dial_due(router)
        self._schedule(i, self._deadline(i))

    def run_until(self, stop: Callable[[], bool] | None, duration: float) -> float:
        """Run up to `duration` simulated seconds, or until `stop()`; return the time taken."""
        start = self.now
        end = start + duration
        checked = float("-inf")
        while True:
            while self._queue:
                self.step()
                self.rounds += 1
            if stop is not None and self.now - checked >= STOP_EVERY:
                checked = self.now
                if stop():
                    return self.now - start
            if not self._events:
                break
            at, i = heapq.heappop(self._events)
            if at > end:
                heapq.heappush(self._events, (at, i))
                break
            if at > self.now:
                self.now = at
            if i < len(self.routers) and i not in self.dead and self._deadline(i) <= self.now:
                self._run_router(i)
        self.now = max(self.now, end)
        return self.now - start

    def run(self, duration: float) -> None:
        self.run_until(None, duration)

    # -- views -------------------------------------------------------------------------

    def converged(self) -> bool:
        """Every live router holds every live router's current entry (a dead one's entry,
        held or forgotten, does not count), and the first and the last live routers reach
        every live one. O(routers): version fingerprints (cowtopology.py)."""
        live = [c for i, c in enumerate(self.cores) if i not in self.dead]
        dead = [self.cores[i].topology.local for i in self.dead]
        truth = 0
        for c in live:
            truth ^= version_hash(c.name, c.topology.local.version)
        for c in live:
            vfp = c.topology.vfp  # type: ignore[attr-defined]
            for entry in dead:
                held = c.topology.entries.get(entry.name)
                if held is not None:
                    vfp ^= version_hash(held.name, held.version)
            if vfp != truth:
                return False
        names = {c.name for c in live}
        return all(names - {c.name} <= c.topology.reachable() for c in (live[0], live[-1]))

    def degrees(self) -> list[int]:
        return [len(c.conns) for c in self.cores]

