"""The packets an nftables `log group N` statement hands to userspace (nfnetlink_log).

Why NFLOG and not the kernel log: a `log prefix` without a group writes to the kernel
ring buffer only from the initial network namespace (unless nf_log_all_netns, a machine-
wide switch, is on); a group delivers to whoever listens in the rule's own namespace, the
router, which then logs with the pod's name. The kernel also rate-limits per rule.

`NflogSocket(group)` binds the group (one listener per group and namespace: EBUSY if
another process holds it), asks for the first `copy_range` bytes of each packet, and
`read()` returns what has arrived without blocking: (prefix, packet bytes from the IP
header on). Malformed messages are skipped, never raised.
"""

from __future__ import annotations

import errno
import os
import socket
import struct

from meshnet.kernel.errors import KernelError

NETLINK_NETFILTER = 12
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET = 0
NFULNL_MSG_CONFIG = 1
NFULA_PAYLOAD = 9
NFULA_PREFIX = 10
NFULA_CFG_CMD = 1
NFULA_CFG_MODE = 2
NFULA_CFG_QTHRESH = 5
NFULNL_CFG_CMD_BIND = 1
NFULNL_CFG_CMD_UNBIND = 2
NFULNL_COPY_PACKET = 2
NLM_F_REQUEST = 1
NLM_F_ACK = 4
NLMSG_ERROR = 2
NLA_TYPE_MASK = 0x3FFF  # without the nested / byte-order flags


def _align(n: int) -> int:
    return (n + 3) & ~3


def _attr(kind: int, payload: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(payload), kind) + payload + b"\0" * (_align(len(payload)) - len(payload))


def _config(group: int, seq: int, *attrs: bytes) -> bytes:
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(group)) + b"".join(attrs)
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


def parse_messages(data: bytes) -> tuple[list[tuple[str, bytes]], list[int]]:
    """Netlink datagram -> ([(prefix, payload)], [errno of each error/ack message])."""
    packets, acks = [], []
    off = 0
    while off + 16 <= len(data):
        length, kind, _flags, _seq, _pid = struct.unpack_from("=IHHII", data, off)
        if length < 16 or off + length > len(data):
            break
        body = data[off + 16 : off + length]
        off += _align(length)
        if kind == NLMSG_ERROR and len(body) >= 4:
            acks.append(-struct.unpack_from("=i", body)[0])
        elif kind == (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET and len(body) >= 4:
            prefix, payload = "", b""
            a = 4  # after nfgenmsg
            while a + 4 <= len(body):
                alen, atype = struct.unpack_from("=HH", body, a)
                if alen < 4 or a + alen > len(body):
                    break
                value = body[a + 4 : a + alen]
                if atype & NLA_TYPE_MASK == NFULA_PREFIX:
                    prefix = value.split(b"\0", 1)[0].decode("ascii", "replace")[:64]
                elif atype & NLA_TYPE_MASK == NFULA_PAYLOAD:
                    payload = value
                a += _align(alen)
            packets.append((prefix, payload))
    return packets, acks


class NflogSocket:
    def __init__(self, group: int, *, copy_range: int = 128):
        if not 0 <= group <= 65535:
            raise KernelError(errno.EINVAL, f"NFLOG group {group} out of 0-65535")
        self.group = group
        try:
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        except OSError as exc:
            raise KernelError(exc.errno or errno.EPERM, f"cannot open nfnetlink: {exc.strerror}") from None
        try:
            self.sock.bind((0, 0))
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            self._request(_config(group, 1, _attr(NFULA_CFG_CMD, bytes([NFULNL_CFG_CMD_BIND]))))
            self._request(_config(group, 2, _attr(NFULA_CFG_MODE, struct.pack(">IBB", copy_range, NFULNL_COPY_PACKET, 0))))
            # deliver each packet at once (the kernel's default batches 100 or waits a second)
            self._request(_config(group, 3, _attr(NFULA_CFG_QTHRESH, struct.pack(">I", 1))))
            self.sock.setblocking(False)
        except BaseException:
            self.sock.close()
            raise

    def _request(self, message: bytes) -> None:
        self.sock.settimeout(2.0)
        self.sock.send(message)
        while True:
            _, acks = parse_messages(self.sock.recv(65536))
            if acks:
                if acks[0]:
                    raise KernelError(acks[0], f"NFLOG group {self.group}: {os.strerror(acks[0])}")
                return

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self, limit: int = 256) -> list[tuple[str, bytes]]:
        """What is waiting, at most `limit` datagrams' worth; never blocks."""
        out: list[tuple[str, bytes]] = []
        for _ in range(limit):
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # the kernel dropped some: carry on with the rest
                    continue
                raise KernelError(exc.errno or errno.EIO, f"NFLOG read: {exc.strerror}") from None
            out.extend(parse_messages(data)[0])
        return out

    def close(self) -> None:
        try:
            self.sock.setblocking(True)
            self.sock.settimeout(1.0)
            self.sock.send(_config(self.group, 4, _attr(NFULA_CFG_CMD, bytes([NFULNL_CFG_CMD_UNBIND]))))
        except OSError:
            pass
        self.sock.close()
