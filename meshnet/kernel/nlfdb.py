"""Bridge and VXLAN FDB over a raw rtnetlink socket: dumps and batched changes, fast.

pyroute2 parses every netlink message into Python objects and waits for each ack: a dump
of 40,000 FDB rows took 3.5 s and one change 0.3 ms (measured in a namespace). Here a
dump is parsed with `struct` straight into `FdbRow`s, and changes go out in batches (many
requests per `send`, then their acks), so applying 20,000 entries costs about what
`bridge -batch` does. Only the few neighbour messages fastdp needs are spoken:

    RTM_GETNEIGH (dump, AF_BRIDGE)   -> FdbRow per entry
    RTM_NEWNEIGH / RTM_DELNEIGH      <- FdbReq, acked one by one (errno per request)

Messages (all host byte order): nlmsghdr (len u32, type u16, flags u16, seq u32, pid u32),
then ndmsg (family u8, pad u8, pad u16, ifindex s32, state u16, flags u8, type u8), then
attributes (len u16, type u16, value, padded to 4 bytes).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from dataclasses import dataclass

from meshnet.kernel.errors import KernelError
from meshnet.kernel.netns import in_netns

_NETLINK_ROUTE = 0
_RTM_NEWNEIGH, _RTM_DELNEIGH, _RTM_GETNEIGH = 28, 29, 30
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_F_REQUEST, _F_ACK, _F_DUMP = 0x1, 0x4, 0x300
_F_REPLACE, _F_CREATE, _F_APPEND = 0x100, 0x400, 0x800
_AF_BRIDGE = 7
_NDA_DST, _NDA_LLADDR, _NDA_MASTER = 1, 2, 9
_NTF_SELF, _NTF_MASTER, _NTF_STICKY = 0x02, 0x04, 0x40
_NUD_NOARP, _NUD_PERMANENT = 0x40, 0x80

_HDR = struct.Struct("=IHHII")
_NDMSG = struct.Struct("=BxHiHBB")
_ATTR = struct.Struct("=HH")
_U32 = struct.Struct("=I")
_ZERO_MAC = "00:00:00:00:00:00"
BATCH = 512  # requests per send; their acks fit the receive buffer with room to spare
RCVBUF = 4 << 20
TIMEOUT = 10.0  # seconds to wait for the kernel's next answer


@dataclass(frozen=True)
class FdbReq:
    """One change: add (`bridge fdb replace|append`) or delete one entry.

    `master=True`: a bridge entry on port `ifindex` (static, sticky); else an entry in the
    VXLAN device's own table towards `dst` (the all-zero MAC appends a remote).
    """

    action: str  # "add" | "del"
    ifindex: int
    mac: str
    dst: str | None = None
    master: bool = False


def _attr(kind: int, value: bytes) -> bytes:
    raw = _ATTR.pack(4 + len(value), kind) + value
    return raw + bytes(-len(raw) % 4)


def _request_body(req: FdbReq) -> tuple[int, int, bytes]:
    """(message type, extra flags, body after the header) for one change."""
    if req.master:
        state, flags = _NUD_NOARP, _NTF_MASTER | (_NTF_STICKY if req.action == "add" else 0)
    else:
        state, flags = _NUD_PERMANENT | _NUD_NOARP, _NTF_SELF
    body = _NDMSG.pack(_AF_BRIDGE, 0, req.ifindex, state, flags, 0)
    body += _attr(_NDA_LLADDR, bytes.fromhex(req.mac.replace(":", "")))
    if req.dst is not None and not req.master:
        body += _attr(_NDA_DST, ipaddress.ip_address(req.dst).packed)
    if req.action == "del":
        return _RTM_DELNEIGH, 0, body
    extra = _F_CREATE | (_F_APPEND if (req.mac == _ZERO_MAC and not req.master) else _F_REPLACE)
    return _RTM_NEWNEIGH, extra, body


class NetlinkFdb:
    """A raw NETLINK_ROUTE socket in the current or a named namespace (for one thread)."""

    def __init__(self, netns: str | None = None) -> None:
        try:
            with in_netns(netns):
                sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, _NETLINK_ROUTE)
        except OSError as exc:
            raise KernelError(exc.errno, f"cannot open rtnetlink: {exc.strerror}") from None
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        sock.settimeout(TIMEOUT)  # the kernel always answers; never hang the kernel thread if not
        sock.bind((0, 0))
        self._sock = sock
        self._seq = 1

    def close(self) -> None:
        self._sock.close()

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
        return self._seq

    def _messages(self):
        """Yield (type, flags, seq, payload) of every message in the next datagram."""
        try:
            data = self._sock.recv(1 << 20)
        except OSError as exc:  # ENOBUFS: answers were lost; the caller resyncs
            raise KernelError(exc.errno or errno.ETIMEDOUT, f"rtnetlink receive: {exc.strerror or exc}") from None
        off = 0
        while off + _HDR.size <= len(data):
            length, kind, flags, seq, _ = _HDR.unpack_from(data, off)
            if length < _HDR.size or off + length > len(data):
                return
            yield kind, flags, seq, data[off + _HDR.size : off + length]
            off += (length + 3) & ~3

    def dump(self) -> list[tuple[int, str, str | None, int | None, int, int]]:
        """Every AF_BRIDGE neighbour: (ifindex, mac, dst, master, state, flags).

        Raises:
            KernelError: the kernel refused the dump.
        """
        seq = self._next_seq()
        body = _NDMSG.pack(_AF_BRIDGE, 0, 0, 0, 0, 0)
        self._send(_HDR.pack(_HDR.size + len(body), _RTM_GETNEIGH, _F_REQUEST | _F_DUMP, seq, 0) + body)
        rows = []
        while True:
            for kind, _, got, payload in self._messages():
                if got != seq:
                    continue
                if kind == _NLMSG_DONE:
                    return rows
                if kind == _NLMSG_ERROR:
                    code = -struct.unpack_from("=i", payload)[0]
                    if code:
                        raise KernelError(code, f"dump fdb: {errno.errorcode.get(code, code)}")
                    continue
                if kind == _RTM_NEWNEIGH and len(payload) >= _NDMSG.size:
                    row = _parse_neigh(payload)
                    if row is not None:
                        rows.append(row)

    def apply(self, reqs: list[FdbReq]) -> list[KernelError | None]:
        """Send the changes in batches; return, per request, None or its KernelError."""
        results: list[KernelError | None] = []
        for start in range(0, len(reqs), BATCH):
            results += self._apply_batch(reqs[start : start + BATCH])
        return results

    def _apply_batch(self, reqs: list[FdbReq]) -> list[KernelError | None]:
        seqs: dict[int, int] = {}
        out = bytearray()
        for i, req in enumerate(reqs):
            kind, extra, body = _request_body(req)
            seq = self._next_seq()
            seqs[seq] = i
            out += _HDR.pack(_HDR.size + len(body), kind, _F_REQUEST | _F_ACK | extra, seq, 0) + body
        self._send(bytes(out))
        results: list[KernelError | None] = [None] * len(reqs)
        pending = set(seqs)
        while pending:
            for kind, _, seq, payload in self._messages():
                if kind != _NLMSG_ERROR or seq not in pending:
                    continue
                pending.discard(seq)
                code = -struct.unpack_from("=i", payload)[0]
                if code:
                    req = reqs[seqs[seq]]
                    results[seqs[seq]] = KernelError(code, f"fdb {req.action} {req.mac} dev {req.ifindex}: {errno.errorcode.get(code, code)}")
        return results

    def _send(self, data: bytes) -> None:
        try:
            self._sock.sendto(data, (0, 0))
        except OSError as exc:
            raise KernelError(exc.errno, f"rtnetlink send: {exc.strerror}") from None


def _parse_neigh(payload: bytes) -> tuple[int, str, str | None, int | None, int, int] | None:
    family, _, ifindex, state, flags, _ = _NDMSG.unpack_from(payload)
    if family != _AF_BRIDGE:
        return None
    mac = dst = master = None
    off = _NDMSG.size
    while off + _ATTR.size <= len(payload):
        length, kind = _ATTR.unpack_from(payload, off)
        if length < _ATTR.size:
            break
        value = payload[off + _ATTR.size : off + length]
        kind &= 0x3FFF  # drop NLA_F_NESTED / NLA_F_NET_BYTEORDER
        if kind == _NDA_LLADDR and len(value) == 6:
            mac = value.hex(":")
        elif kind == _NDA_DST and len(value) in (4, 16):
            dst = str(ipaddress.ip_address(value))
        elif kind == _NDA_MASTER and len(value) == 4:
            master = _U32.unpack(value)[0]
        off += (length + 3) & ~3
    if mac is None:
        return None
    return ifindex, mac, dst, master, state, flags
