"""Real packets between pod namespaces, for the NetworkPolicy truth tables.

The test process opens its sockets inside each pod's namespace (a thread steps in with
setns, opens the socket, steps back: the socket stays in the pod's namespace), so one
process can listen in every pod and probe from every pod without nc or socat.

- TCP: a listener per port accepts and echoes until the peer closes; a probe is a connect().
- UDP: an echo per port; a probe is a datagram and its echo.
- SCTP: this kernel has no SCTP stack (CONFIG_IP_SCTP is off) but conntrack and nftables
  know the protocol, so both ends speak the first two chunks over raw sockets: the probe
  sends an INIT (verification tag 0, CRC32c as the RFC says), the responder answers an
  INIT-ACK carrying the probe's tag and a state cookie. Conntrack tracks the pair like a
  real association, so the INIT-ACK is a reply, as a real one would be.

A probe says "reached" if the answer came back (or the destination's kernel refused: the
packet got through the policy); "blocked" if nothing came within the timeout.
"""

from __future__ import annotations

import itertools
import random
import selectors
import socket
import struct
import threading
from typing import Iterable

from meshnet.kernel.netns import in_netns

IPPROTO_SCTP = 132


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def sctp_packet(sport: int, dport: int, vtag: int, chunk: bytes) -> bytes:
    head = struct.pack("!HHII", sport, dport, vtag, 0)
    return head[:8] + struct.pack("<I", crc32c(head + chunk)) + chunk


def sctp_init(sport: int, dport: int, tag: int) -> bytes:
    return sctp_packet(sport, dport, 0, struct.pack("!BBHIIHHI", 1, 0, 20, tag, 65536, 1, 1, tag))


def sctp_init_ack(sport: int, dport: int, peer_tag: int, tag: int) -> bytes:
    cookie = struct.pack("!HHI", 7, 8, tag)  # State Cookie parameter
    return sctp_packet(sport, dport, peer_tag, struct.pack("!BBHIIHHI", 2, 0, 20 + len(cookie), tag, 65536, 1, 1, tag) + cookie)


def parse_sctp(data: bytes) -> tuple[str, int, int, int, int, int] | None:
    """IPv4 packet -> (src, sport, dport, vtag, chunk type, init tag) or None."""
    if len(data) < 20:
        return None
    ihl = (data[0] & 0x0F) * 4
    if len(data) < ihl + 12 + 4 + 8:
        return None
    sport, dport, vtag = struct.unpack_from("!HHI", data, ihl)
    ctype = data[ihl + 12]
    init_tag = struct.unpack_from("!I", data, ihl + 16)[0] if ctype in (1, 2) else 0
    return socket.inet_ntoa(data[12:16]), sport, dport, vtag, ctype, init_tag


_PORTS = itertools.count()
_PORTS_LOCK = threading.Lock()


def _source_port() -> int:
    """A source port no recent probe used (20000-32767, below the kernel's ephemeral range):
    a datagram whose 5-tuple matched a conntrack entry left by an earlier case (UDP entries
    live 30 s) would pass as a reply of an allowed flow, whatever the new policy says."""
    with _PORTS_LOCK:
        return 20000 + next(_PORTS) % 12768


def _socket(netns: str, family: int, kind: int, proto: int = 0) -> socket.socket:
    with in_netns(netns):
        return socket.socket(family, kind, proto)


class Responder:
    """Listens in one pod namespace on TCP, UDP and SCTP ports until stopped."""

    def __init__(self, netns: str, *, tcp: Iterable[int] = (), udp: Iterable[int] = (), sctp: Iterable[int] = ()):
        self.netns = netns
        self.sctp_ports = set(sctp)
        self.sel = selectors.DefaultSelector()
        self.socks: list[socket.socket] = []
        for port in tcp:
            s = _socket(netns, socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("0.0.0.0", port))
            s.listen(1024)
            self._watch(s, "tcp")
        for port in udp:
            s = _socket(netns, socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("0.0.0.0", port))
            self._watch(s, "udp")
        if self.sctp_ports:
            self._watch(_socket(netns, socket.AF_INET, socket.SOCK_RAW, IPPROTO_SCTP), "sctp")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name=f"responder-{netns}")
        self._thread.start()

    def _watch(self, s: socket.socket, kind: str) -> None:
        s.setblocking(False)
        self.socks.append(s)
        self.sel.register(s, selectors.EVENT_READ, kind)

    def _loop(self) -> None:
        while not self._stop.is_set():
            for key, _ in self.sel.select(0.2):
                s, kind = key.fileobj, key.data
                try:
                    if kind == "tcp":
                        conn, _ = s.accept()  # type: ignore[union-attr]
                        conn.setblocking(False)
                        self.sel.register(conn, selectors.EVENT_READ, "conn")
                    elif kind == "conn":
                        data = s.recv(4096)  # type: ignore[union-attr]
                        if data:
                            s.sendall(data)  # type: ignore[union-attr]
                        else:
                            self.sel.unregister(s)
                            s.close()  # type: ignore[union-attr]
                    elif kind == "udp":
                        data, addr = s.recvfrom(2048)  # type: ignore[union-attr]
                        s.sendto(data, addr)  # type: ignore[union-attr]
                    else:
                        data, addr = s.recvfrom(2048)  # type: ignore[union-attr]
                        got = parse_sctp(data)
                        if got and got[4] == 1 and got[2] in self.sctp_ports:
                            src, sport, dport, _, _, tag = got
                            s.sendto(sctp_init_ack(dport, sport, tag, random.getrandbits(31) | 1), (src, 0))  # type: ignore[union-attr]
                except OSError:
                    if kind == "conn":
                        self.sel.unregister(s)
                        s.close()  # type: ignore[union-attr]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for s in self.socks:
            s.close()


def probe(netns: str, dst: str, protocol: str, port: int, timeout: float = 1.0, tries: int = 2) -> bool:
    """From inside `netns`: does `protocol` traffic to dst:port get an answer?"""
    for _ in range(tries):
        if _probe_once(netns, dst, protocol.upper(), port, timeout):
            return True
    return False


def _probe_once(netns: str, dst: str, protocol: str, port: int, timeout: float) -> bool:
    if protocol == "TCP":
        s = _socket(netns, socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect((dst, port))
            return True
        except ConnectionRefusedError:
            return True  # a RST: the SYN got through
        except OSError:
            return False
        finally:
            s.close()
    if protocol == "UDP":
        s = _socket(netns, socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(timeout)
        try:
            s.bind(("", _source_port()))
            s.connect((dst, port))
            token = random.randbytes(8)
            s.send(token)
            return s.recv(2048) == token
        except ConnectionRefusedError:
            return True  # ICMP port unreachable: the datagram got through
        except OSError:
            return False
        finally:
            s.close()
    if protocol == "SCTP":
        s = _socket(netns, socket.AF_INET, socket.SOCK_RAW, IPPROTO_SCTP)
        s.settimeout(timeout)
        sport, tag = _source_port(), random.getrandbits(31) | 1
        try:
            s.sendto(sctp_init(sport, port, tag), (dst, 0))
            while True:
                got = parse_sctp(s.recv(2048))
                if got and got[0] == dst and got[1] == port and got[2] == sport and got[3] == tag and got[4] == 2:
                    return True
        except OSError:
            return False
        finally:
            s.close()
    raise ValueError(protocol)
