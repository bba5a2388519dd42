"""The send queue: datagrams wait here until the batch is full or read batch ends.

It holds up to `batch` datagrams and is flushed when full and at the end of each read
batch, one sendto() per datagram. A full socket (EAGAIN/ENOBUFS) drops the rest of that
flush; any other send error drops just that datagram. The compiled pump's counterpart,
`_fastpath/sendq.pxi`, sends the same datagrams with sendmmsg() and UDP GSO.
"""

from __future__ import annotations

import errno
import socket

from meshnet.dataplane._pump_py.peers import Addr

_SOCKET_FULL = (errno.EAGAIN, errno.ENOBUFS)


class SendQueue:
    def __init__(self, udp: socket.socket, batch: int, counters: dict[str, int]) -> None:
        self._udp = udp
        self._batch = batch
        self._count = counters
        self._out: list[tuple[Addr, bytes]] = []

    def queue(self, to: Addr, datagram: bytes) -> None:
        if len(self._out) == self._batch:
            self.flush()
        self._out.append((to, datagram))

    def flush(self) -> None:
        c = self._count
        out, self._out = self._out, []
        for i, (to, datagram) in enumerate(out):
            try:
                self._udp.sendto(datagram, to)
            except OSError as e:
                if e.errno in _SOCKET_FULL:  # the rest would fail too: drop them all
                    c["drop_send_error"] += len(out) - i
                    return
                c["drop_send_error"] += 1
                continue
            c["udp_tx"] += 1
            c["udp_tx_bytes"] += len(datagram)
