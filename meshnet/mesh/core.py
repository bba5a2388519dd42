"""The mesh router's sans-IO core: established connections, gossip, liveness, relaying.

Drivers: `add_connection` / `remove_connection` (the runtime finished or lost a
handshake), `receive` (a message arrived), `tick` (the clock passed `next_deadline()`),
and the app calls `broadcast`, `unicast`, `set_data`. Each returns a list of events for
the runtime: `Send`, `Close`, `Deliver`, `Changed`. No sockets, no clock of its own.

Gossip, in three parts:
1. Deltas. When our entry changes we send it down our own shortest-path spanning tree;
   a peer that learns something new from a TOPOLOGY message passes it down the owner's
   tree. One change therefore costs about N-1 messages of one entry each, not N².
2. Anti-entropy. Every `gossip_interval` we send one neighbour (each in turn, in a
   shuffled round) a 16-byte hash of our digest; if theirs differs they answer with their digest, and each side sends
   what the other lacks (REQUEST / TOPOLOGY). In sync, that is 16 bytes per interval.
3. New connections exchange summaries at once: a joining peer's first one differs, so the
   two exchange digests and the joiner learns everything; later ones usually match.
Trees are computed from each peer's own view; while views differ a delta may miss
someone, and anti-entropy repairs it.

Liveness (`liveness.py`): one round per `heartbeat` interval heartbeats idle connections
and closes dead ones, judged on what the runtime reports of the kernel (`heard`, `acked`):
a slow but alive peer is not a dead one. Peers that stay unreachable for `gc_after`
seconds are forgotten. Changes to our own entry act locally at once (`Changed`) but are
gossiped at most once per `publish_batch` seconds (99 new connections: one flood).

Hostile input: every message arrives checked against its bounds (`wire.decode_message`),
so `receive` never raises; a message that is wrong only here (a HELLO on an established
connection) is a `Close` with `Refusal.PROTOCOL_ERROR`. What is stored of an entry is
decided by `quota.Quota` (peer table, per-peer endpoint share), and who holds each MAC and
IP address by `claims.Claims` (conflicts: the earlier claim keeps it).

A directly connected peer that becomes unreachable is kept in `departed` (`departed.py`)
for `departed_grace` s with its underlay address: its kernel may forward while it restarts.
"""

from __future__ import annotations

import hashlib
import random
from collections import OrderedDict
from dataclasses import replace
from typing import Any

from meshnet.errors import Refusal
from meshnet.mesh import liveness
from meshnet.mesh.bounds import MAX_ENTRY_BYTES, MAX_FRAME, MAX_JUMP
from meshnet.mesh.claims import Claims
from meshnet.mesh.departed import DepartedPeers
from meshnet.mesh.events import Changed, Close, Conn, Deliver, Event, Refused, Send
from meshnet.mesh.quota import Limits, Quota
from meshnet.mesh.topology import Link, PeerEntry, Topology
from meshnet.mesh.wire import Message, Msg

ENTRY_BUDGET = MAX_FRAME // 2  # bytes of entries per TOPOLOGY message
SEEN_BROADCASTS = 8192  # (source, seq) pairs remembered to drop duplicate broadcasts


class MeshCore:
    def __init__(
        self,
        *,
        name: bytes,
        nick: str,
        uid: int,
        port: int,
        udp_port: int,
        now: float,
        conn_limit: int = 100,
        heartbeat: float = liveness.HEARTBEAT,
        timeout: float = liveness.TIMEOUT,
        gossip_interval: float = liveness.GOSSIP_INTERVAL,
        gc_after: float = liveness.GC_AFTER,
        publish_batch: float = liveness.PUBLISH_BATCH,
        departed_grace: float = 0.0,
        rng: random.Random | None = None,
        limits: Limits = Limits(),
    ):
        local = PeerEntry(name, nick, uid, int(now * 1000), port, udp_port)
        self.name = name
        self.topology = Topology(local)
        self.conns: dict[int, Conn] = {}
        self.conn_limit = conn_limit
        self.gossip_interval = gossip_interval
        self.gc_after = gc_after
        self._rng = rng or random.Random()
        self._next_gossip = now + gossip_interval * self._rng.uniform(0.5, 1.0)
        self.liveness = liveness.Liveness(heartbeat, timeout, next_round=now + heartbeat * self._rng.uniform(0.5, 1.0))
        self.publish_batch = publish_batch
        self._publish_at: float | None = None  # our changed entry is gossiped then
        self._published_at = float("-inf")
        self._summary_cache: tuple[int, bytes] = (-1, b"")
        self._seen: OrderedDict[tuple[bytes, int], None] = OrderedDict()
        self._gossip_round: list[int] = []  # anti-entropy partners left in this round
        self._seq = int(now * 1000) << 16  # restarts must not reuse broadcast sequence numbers
        self._unreachable_since: dict[bytes, float] = {}
        self.quota = Quota(limits)
        self.claims = Claims(name)
        self.departed = DepartedPeers(departed_grace)
        self._direct_ip: dict[bytes, str] = {}  # last underlay address of a direct connection, per peer
        self.counters = {"messages_in": 0, "messages_out": 0, "relayed": 0, "no_route": 0, "refused": 0, "oversize_entries": 0}

    # -- connections -------------------------------------------------------------------

    def by_peer(self) -> dict[bytes, int]:
        return {c.peer: conn for conn, c in self.conns.items()}

    def add_connection(
        self, conn: int, *, remote: dict[str, Any], ip: str, outbound: bool, now: float
    ) -> tuple[Refused | None, list[Event]]:
        """Admit an established connection; return (why not, or None; events)."""
        peer, uid = remote["name"], remote["uid"]
        if peer == self.name:
            if uid == self.topology.local.uid:
                return self._refused(Refusal.SELF, "connection to ourselves")
            return self._refused(Refusal.DUPLICATE_NAME, f"duplicate peer name {peer.hex()}: another router uses our name")
        events: list[Event] = []
        existing = self.by_peer().get(peer)
        if existing is not None:
            old = self.conns[existing]
            if old.uid != uid:
                return self._refused(
                    Refusal.DUPLICATE_NAME,
                    f"duplicate peer name {peer.hex()}: already connected to {old.nick!r} at {old.ip} "
                    f"(another incarnation); refusing {remote.get('nick')!r} at {ip}"
                )
            # Both sides dialled at once: keep the connection the lower-named side started.
            new_initiator = self.name if outbound else peer
            old_initiator = self.name if old.outbound else peer
            if new_initiator >= old_initiator:
                return Refused(Refusal.DUPLICATE_CONNECTION, "duplicate connection"), []
            events.append(Close(existing, "duplicate connection", Refusal.DUPLICATE_CONNECTION))
            del self.conns[existing]
        if len(self.conns) >= self.conn_limit:
            return self._refused(Refusal.CONN_LIMIT, f"connection limit ({self.conn_limit}) reached")
        self.conns[conn] = Conn(
            peer,
            remote.get("nick", ""),
            uid,
            ip,
            remote["port"],
            remote["udp_port"],
            outbound,
            now,
            now,
            now,
            remote.get("features", {}) or {},
        )
        self._direct_ip[peer] = ip
        events += self._publish_links(now)
        # A summary, not the digest: a router that joined through another peer already
        # holds what this one would send, and a digest costs O(peers) (a mismatch asks).
        events.append(self._send(conn, Msg.SUMMARY, self._summary(), now=now))
        return None, events

    def heard(self, conn: int, at: float) -> None:
        """The peer's bytes reached our socket at `at` (the kernel's time, read or not)."""
        if (c := self.conns.get(conn)) is not None:
            c.last_rx = max(c.last_rx, at)

    def acked(self, conn: int, at: float) -> None:
        """The peer's kernel acknowledged our data at `at` (now: nothing is in flight)."""
        if (c := self.conns.get(conn)) is not None:
            c.last_ack = max(c.last_ack, at)

    def _refused(self, refusal: Refusal, reason: str) -> tuple[Refused, list[Event]]:
        self.counters["refused"] += 1
        return Refused(refusal, reason), []

    def remove_connection(self, conn: int, *, now: float) -> list[Event]:
        if self.conns.pop(conn, None) is None:
            return []
        return self._publish_links(now)

    def _publish_links(self, now: float) -> list[Event]:
        links = tuple(sorted((Link(c.peer, c.ip, c.outbound) for c in self.conns.values()), key=lambda l: l.peer))
        self.topology.update_local(now_ms=int(now * 1000), links=links)
        return self._publish_local(now)

    def set_data(self, key: str, value: Any, *, now: float) -> list[Event]:
        """Set a piece of our entry's data (e.g. our endpoints) and gossip it. Data that would
        make our entry too big for every peer (bounds.MAX_ENTRY_BYTES) is not taken: counted
        (`oversize_entries`), the entry stays as it was and keeps flowing."""
        data = dict(self.topology.local.data)
        if data.get(key) == value:
            return []
        data[key] = value
        if replace(self.topology.local, data=data).wire_size > MAX_ENTRY_BYTES:
            self.counters["oversize_entries"] += 1
            return []
        self.claims.update([self.topology.update_local(now_ms=int(now * 1000), data=data)])
        return self._publish_local(now)

    def _publish_local(self, now: float) -> list[Event]:
        """Our entry changed: act on it here at once; gossip it now or with the next batch."""
        self._track_reachability(now)
        if self._publish_at is None:
            self._publish_at = max(now, self._published_at + self.publish_batch)
        return [*self._flush_publish(now), Changed()]

    @property
    def publish_due(self) -> float | None:
        """When our changed entry is gossiped next (None: nothing waits)."""
        return self._publish_at

    def _flush_publish(self, now: float) -> list[Event]:
        if self._publish_at is None or now < self._publish_at:
            return []
        self._publish_at, self._published_at = None, now
        return self._down_tree(self.name, [self.topology.local], exclude=None, now=now)

    # -- messages ----------------------------------------------------------------------

    def receive(self, conn: int, message: Message, *, now: float) -> list[Event]:
        """Handle one message (decoded, so within its bounds) from an established connection.
        Never raises: a message that has no place here closes its connection (`Close`)."""
        c = self.conns.get(conn)
        if c is None:
            return []
        c.last_rx = now
        self.counters["messages_in"] += 1
        kind, fields = message.kind, message.fields
        if kind is Msg.HEARTBEAT:
            return []
        if kind is Msg.TOPOLOGY:
            return self._on_topology(c, fields[0], now)
        if kind is Msg.SUMMARY:
            if fields[0] != self._summary():
                return [self._send(conn, Msg.DIGEST, self.quota.digest(self.topology), now=now)]
            return []
        if kind is Msg.DIGEST:
            return self._on_digest(conn, fields[0], now)
        if kind is Msg.REQUEST:
            wanted = [self.topology.entries[n] for n in fields[0] if n in self.topology.entries]
            return self._send_entries(conn, wanted, now)
        if kind is Msg.BROADCAST:
            return self._on_broadcast(c, *fields, now=now)
        if kind is Msg.UNICAST:
            return self._on_unicast(*fields, now=now)
        return [Close(conn, f"unexpected {kind.name} on an established connection", Refusal.PROTOCOL_ERROR)]

    def _on_topology(self, c: Conn, entries: list[PeerEntry], now: float) -> list[Event]:
        events: list[Event] = []
        ours = [e.version for e in entries if e.name == self.name]
        before = self.topology.local.version
        if ours and before <= max(ours) <= before + MAX_JUMP:
            # Someone holds an entry under our name that outranks ours: a previous
            # incarnation of us. Outrank it so our current entry wins everywhere. (Versions
            # stop at their bound, and a jump beyond any earlier life's clock is forged.)
            if self.topology.update_local(now_ms=max(ours) + 1).version > before:
                events += self._publish_local(now)
        newest = self.quota.select(entries, self.topology, sender=c.peer, neighbours=self.by_peer().keys())
        news = self.topology.merge(self.quota.admit(newest, self.topology.entries))
        self.claims.update(news)
        if not news:
            return events
        by_owner: dict[bytes, list[PeerEntry]] = {}
        for entry in news:
            by_owner.setdefault(entry.name, []).append(entry)
        for owner, owned in by_owner.items():
            events += self._down_tree(owner, owned, exclude=c.peer, now=now)
        self._track_reachability(now)
        events.append(Changed())
        return events

    def _on_digest(self, conn: int, pairs: list[Any], now: float) -> list[Event]:
        theirs: dict[bytes, int] = {name: version for name, version in pairs}
        mine = self.topology.entries
        give = [e for n, e in mine.items() if theirs.get(n, -1) < e.version]
        want = self.quota.wanted(theirs, self.topology, sender=self.conns[conn].peer, neighbours=self.by_peer().keys())
        events = self._send_entries(conn, give, now)
        if want:
            events.append(self._send(conn, Msg.REQUEST, want, now=now))
        return events

    def _on_broadcast(self, c: Conn, channel: str, src: bytes, seq: int, payload: bytes, *, now: float) -> list[Event]:
        key = (src, seq)
        if src == self.name or key in self._seen:
            return []
        self._seen[key] = None
        if len(self._seen) > SEEN_BROADCASTS:
            self._seen.popitem(last=False)
        events: list[Event] = [Deliver(channel, src, payload, unicast=False)]
        events += self._forward_broadcast(channel, src, seq, payload, exclude=c.peer, now=now)
        return events

    def _on_unicast(self, channel: str, src: bytes, dst: bytes, payload: bytes, *, now: float) -> list[Event]:
        if dst == self.name:
            return [Deliver(channel, src, payload, unicast=True)]
        return self._route(Msg.UNICAST, (channel, src, dst, payload), dst, now)

    # -- sending -----------------------------------------------------------------------

    def broadcast(self, channel: str, payload: bytes, *, now: float) -> list[Event]:
        self._seq += 1
        return self._forward_broadcast(channel, self.name, self._seq, payload, exclude=None, now=now)

    def unicast(self, dst: bytes, channel: str, payload: bytes, *, now: float) -> list[Event]:
        return self._route(Msg.UNICAST, (channel, self.name, dst, payload), dst, now)

    def _route(self, kind: Msg, fields: tuple[Any, ...], dst: bytes, now: float) -> list[Event]:
        hop = self.topology.routes().get(dst)
        conn = self.by_peer().get(hop) if hop is not None else None
        if conn is None:
            self.counters["no_route"] += 1
            return []
        if fields[1] != self.name:
            self.counters["relayed"] += 1
        return [self._send(conn, kind, fields, now=now)]

    def _forward_broadcast(
        self, channel: str, src: bytes, seq: int, payload: bytes, *, exclude: bytes | None, now: float
    ) -> list[Event]:
        return [
            self._send(conn, Msg.BROADCAST, (channel, src, seq, payload), now=now)
            for conn in self._tree_conns(src, exclude)
        ]

    def _down_tree(self, owner: bytes, entries: list[PeerEntry], *, exclude: bytes | None, now: float) -> list[Event]:
        events: list[Event] = []
        for conn in self._tree_conns(owner, exclude):
            events += self._send_entries(conn, entries, now)
        return events

    def _tree_conns(self, source: bytes, exclude: bytes | None) -> list[int]:
        """Connections to our children in source's spanning tree (all neighbours if we can't tell)."""
        by_peer = self.by_peer()
        children = self.topology.tree_children(source)
        peers = by_peer.keys() if children is None else children
        return [by_peer[p] for p in peers if p != exclude and p in by_peer]

    def _send_entries(self, conn: int, entries: list[PeerEntry], now: float) -> list[Event]:
        """TOPOLOGY messages carrying entries, split to stay under the frame limit."""
        events: list[Event] = []
        batch: list[dict[str, Any]] = []
        size = 0
        for entry in entries:
            cost = entry.wire_size
            if cost > MAX_ENTRY_BYTES:  # only ours can be (received ones are bounded): never sent
                self.counters["oversize_entries"] += 1
                continue
            if batch and size + cost > ENTRY_BUDGET:
                events.append(self._send(conn, Msg.TOPOLOGY, batch, now=now))
                batch, size = [], 0
            batch.append(entry.encode())
            size += cost
        if batch:
            events.append(self._send(conn, Msg.TOPOLOGY, batch, now=now))
        return events

    def _send(self, conn: int, kind: Msg, fields: Any, *, now: float) -> Send:
        if kind in (Msg.TOPOLOGY, Msg.DIGEST, Msg.REQUEST, Msg.SUMMARY):
            fields = (fields,)
        self.counters["messages_out"] += 1
        c = self.conns.get(conn)
        if c is not None:
            c.last_tx = now
        return Send(conn, kind, tuple(fields))

    def _summary(self) -> bytes:
        """A hash of our digest (refused entries listed as held), cached while the
        topology does not change and no entry is refused."""
        key = self.topology.generation if not self.quota.refusing else -1
        if key < 0 or self._summary_cache[0] != key:
            h = hashlib.blake2b(digest_size=16)
            for name, version in self.quota.digest(self.topology):
                h.update(name + version.to_bytes(8, "big", signed=True))
            self._summary_cache = (key, h.digest())
        return self._summary_cache[1]

    # -- time --------------------------------------------------------------------------

    def tick(self, *, now: float) -> list[Event]:
        events = self._flush_publish(now)
        if now >= self.liveness.next_round:
            dead, idle = self.liveness.round(self.conns, now, self._rng.uniform(0.9, 1.1))
            events += [Close(conn, why) for conn, why in dead]
            events += [self._send(conn, Msg.HEARTBEAT, (), now=now) for conn in idle]
        if now >= self._next_gossip:
            self._next_gossip = now + self.gossip_interval * self._rng.uniform(0.75, 1.25)
            if self.conns:
                events.append(self._send(self._next_gossip_partner(), Msg.SUMMARY, self._summary(), now=now))
        forgotten = [n for n, since in self._unreachable_since.items() if now - since >= self.gc_after]
        for name in forgotten:
            self.topology.remove(name)
            self.quota.forget(name)
            self.claims.remove(name)
            del self._unreachable_since[name]
        connected = self.by_peer()
        for name in [n for n in self._direct_ip if n not in self.topology.entries and n not in connected]:
            del self._direct_ip[name]  # bounded by the topology and the connections
        expired = self.departed.expire(now)  # the data path stops keeping them
        if forgotten or expired:
            events.append(Changed())
        return events

    def _next_gossip_partner(self) -> int:
        """Neighbours in a shuffled round: each hears our summary once per round, so a
        peer missing an entry is repaired within (neighbours x interval), not by luck."""
        while self._gossip_round:
            conn = self._gossip_round.pop()
            if conn in self.conns:
                return conn
        self._gossip_round = sorted(self.conns)
        self._rng.shuffle(self._gossip_round)
        return self._gossip_round.pop()

    def next_deadline(self) -> float:
        times = [self._next_gossip, self.liveness.next_round]
        if self._publish_at is not None:
            times.append(self._publish_at)
        if self._unreachable_since:
            times.append(min(self._unreachable_since.values()) + self.gc_after)
        departed = self.departed.next_deadline()
        if departed is not None:
            times.append(departed)
        return min(times)

    def _track_reachability(self, now: float) -> None:
        reachable = self.topology.reachable()
        entries = self.topology.entries
        for name, entry in entries.items():
            if name == self.name or name in reachable:
                self._unreachable_since.pop(name, None)
                self.departed.back(name)
            elif name not in self._unreachable_since:
                self._unreachable_since[name] = now
                ip = self._direct_ip.get(name)
                if ip is not None:
                    self.departed.left(entry, ip, now)

    def forget_departed(self, names: set[bytes]) -> list[Event]:
        """These peers are gone for good (rmpeer): stop keeping their data path."""
        return [Changed()] if self.departed.forget(names) else []
