"""When a control connection is alive, dead or due a heartbeat; the router's mesh timing.

One liveness round every `heartbeat` seconds covers all connections at once (one
deadline for the timer, not one per connection): a HEARTBEAT goes out on every
connection that sent nothing for `idle` seconds, and a connection is closed when

- nothing arrived from the peer for `timeout` seconds *and* none of our bytes waited
  that long for the peer's acknowledgement (a dead host, a cut path), or
- nothing arrived for `stall_timeout` seconds, acknowledged or not (a stuck peer).

"Arrived" and "acknowledged" are the kernel's view when the runtime has it: it feeds the
core the time the last bytes reached our socket, read or not (`MeshCore.heard`), and the
time the peer's TCP last acknowledged our data, or now when nothing of ours is in flight
(`MeshCore.acked`). A router starved of CPU, or a slow but alive peer whose heartbeat
comes late, therefore keeps its connections: the peer's kernel acknowledges our data even
when its process is starved.

Dead hosts and cut paths are the kernel's to find (kernel/tcpinfo.py): TCP keepalive
probes an idle connection every few seconds and TCP_USER_TIMEOUT aborts one whose data or
probes go unanswered for `timeout`, at no cost to our process, starved or not. So
heartbeats are needed only to tell a stuck peer process from a live one: one per `idle`
seconds on a connection that carries nothing else (an idle router with 64 connections
receives about 4 a second, not 21). The simulation (testing/gossipnet.py) plays the
kernel: a connection whose path is up is acknowledged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

# The router's timing (seconds); the simulation (meshnet/testing/gossipnet.py) uses it too.
HEARTBEAT = 3.0  # liveness round: heartbeats on idle connections, dead ones closed
IDLE = 15.0  # a connection that carried nothing of ours this long gets a heartbeat
TIMEOUT = 9.0  # no bytes from the peer and ours unacknowledged that long: dead
STALL_TIMEOUT = 60.0  # no bytes from the peer though its kernel acknowledges ours: stuck
GOSSIP_INTERVAL = 5.0  # one anti-entropy SUMMARY to one neighbour
GC_AFTER = 60.0  # an unreachable peer is forgotten
PUBLISH_BATCH = 0.25  # our own entry is gossiped at most this often


class _Conn(Protocol):
    nick: str
    last_rx: float
    last_tx: float
    last_ack: float


@dataclass
class Liveness:
    heartbeat: float = HEARTBEAT
    timeout: float = TIMEOUT
    stall_timeout: float = STALL_TIMEOUT
    next_round: float = 0.0
    idle: float = IDLE

    def quiet(self, conns: dict[int, _Conn], now: float) -> list[int]:
        """Connections the next round may close: refresh these from the kernel first."""
        limit = self.timeout - self.heartbeat
        return [conn for conn, c in conns.items() if now - c.last_rx >= limit]

    def round(self, conns: dict[int, _Conn], now: float, jitter: float) -> tuple[list[tuple[int, str]], list[int]]:
        """([(dead connection, why)], [connections due a heartbeat]); schedules the next."""
        self.next_round = now + self.heartbeat * jitter
        dead: list[tuple[int, str]] = []
        idle: list[int] = []
        for conn, c in conns.items():
            silent = now - c.last_rx
            if silent >= max(self.stall_timeout, self.timeout) or (silent >= self.timeout and now - c.last_ack >= self.timeout):
                dead.append((conn, f"no message from {c.nick!r} for {silent:.1f}s"))
            elif now - c.last_tx >= self.idle - self.heartbeat / 2:
                idle.append(conn)
        return dead, idle

