"""What the kernel knows of a control connection's progress, and how it should give up.

`progress(sock)` reads TCP_INFO: how long ago the last bytes from the peer reached our
socket (read by us or not), how long ago the peer's TCP acknowledged our data, and how
many of our segments wait for an acknowledgement. The mesh core judges liveness on these
(mesh/liveness.py), so a router starved of CPU, which has not read its sockets for
seconds, still sees that its peers are alive.

`tune(sock, user_timeout)` makes the kernel find dead peers itself, whatever our process
is doing and at no cost to it: keepalive probes on an idle connection (after 3 s, every
2 s) and TCP_USER_TIMEOUT, so that data or probes unacknowledged for `user_timeout`
abort the connection (a dead host, a cut path); and TCP_NODELAY: heartbeats and small
gossip are not held back.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

_TCP_INFO = getattr(socket, "TCP_INFO", 11)
_TCP_USER_TIMEOUT = getattr(socket, "TCP_USER_TIMEOUT", 18)
KEEPIDLE = 3  # seconds of silence before the kernel probes a connection
KEEPINTVL = 2  # seconds between its probes
# struct tcp_info (linux/tcp.h): 8 bytes of u8 fields, then u32s: rto, ato, snd_mss,
# rcv_mss, unacked, sacked, lost, retrans, fackets, last_data_sent, last_ack_sent,
# last_data_recv, last_ack_recv (times in ms).
_INFO = struct.Struct("=8x13I")


@dataclass(frozen=True)
class Progress:
    data_recv_age: float  # seconds since the peer's last bytes reached our socket
    ack_recv_age: float  # seconds since the peer last acknowledged our data
    unacked: int  # our segments in flight, not yet acknowledged


def progress(sock: socket.socket) -> Progress | None:
    """The kernel's view of this TCP socket, or None if it cannot tell (closed, not TCP)."""
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _INFO.size)
    except OSError:
        return None
    if len(raw) < _INFO.size:
        return None
    fields = _INFO.unpack_from(raw)
    unacked, last_data_recv, last_ack_recv = fields[4], fields[11], fields[12]
    return Progress(last_data_recv / 1000.0, last_ack_recv / 1000.0, unacked)


def tune(sock: socket.socket, *, user_timeout: float) -> None:
    """Keepalive, TCP_USER_TIMEOUT and TCP_NODELAY on a control connection (best effort)."""
    for level, option, value in (
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPIDLE),
        (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPINTVL),
        (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, max(1, int(user_timeout - KEEPIDLE) // KEEPINTVL)),
        (socket.IPPROTO_TCP, _TCP_USER_TIMEOUT, int(user_timeout * 1000)),
        (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),
    ):
        try:
            sock.setsockopt(level, option, value)
        except OSError:
            pass
