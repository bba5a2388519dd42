"""The sleeve's UDP sockets when the pump runs several threads: one socket per thread on
the same address (SO_REUSEPORT), and a classic BPF program that picks the socket of each
arriving datagram by its flow hint.

The hint is flags bits 3-7 of the sleeve header (docs/sleeve.md, "The flow hint"): the
same for every datagram of one inner flow, readable without opening a sealed datagram.
The kernel runs a reuseport group's program on the UDP payload and takes its result as
the index of the socket (in bind order); so datagrams of one flow always reach one
socket, one pump thread, in the order they came. A datagram too short to have flags
goes to socket 0. One thread: one plain socket, no program.
"""

from __future__ import annotations

import ctypes
import socket
import struct

SO_ATTACH_REUSEPORT_CBPF = 51  # include/uapi/asm-generic/socket.h
SO_SNDBUFFORCE = 32  # beyond net.core.wmem_max/rmem_max (CAP_NET_ADMIN)
SO_RCVBUFFORCE = 33
# classic BPF opcodes (include/uapi/linux/filter.h)
_LD_B_ABS = 0x00 | 0x10 | 0x20  # BPF_LD | BPF_B | BPF_ABS
_ALU_RSH_K = 0x04 | 0x70 | 0x00  # BPF_ALU | BPF_RSH | BPF_K
_ALU_MOD_K = 0x04 | 0x90 | 0x00  # BPF_ALU | BPF_MOD | BPF_K
_RET_A = 0x06 | 0x10  # BPF_RET | BPF_A
FLAGS_OFFSET = 2  # the sleeve header's flags byte (meshnet.dataplane.layout)
HINT_SHIFT = 3


def hint_program(sockets: int) -> bytes:
    """The cBPF program: socket = (flags >> 3) % sockets."""
    insns = [
        (_LD_B_ABS, 0, 0, FLAGS_OFFSET),
        (_ALU_RSH_K, 0, 0, HINT_SHIFT),
        (_ALU_MOD_K, 0, 0, sockets),
        (_RET_A, 0, 0, 0),
    ]
    return b"".join(struct.pack("HBBI", *insn) for insn in insns)


def attach_hint_program(sock: socket.socket, sockets: int) -> None:
    """Steer the reuseport group `sock` belongs to by flow hint.

    Raises:
        OSError: the kernel refused the program.
    """
    code = hint_program(sockets)
    buf = ctypes.create_string_buffer(code, len(code))
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; }
    fprog = struct.pack("HxxxxxxQ", len(code) // 8, ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)


def udp_sockets(host: str, port: int, count: int, *, buffer_bytes: int) -> list[socket.socket]:
    """`count` UDP sockets bound to host:port (port 0: any, the same for all), steered by
    flow hint when more than one.

    Raises:
        OSError: a socket cannot be bound (the port is taken), or the kernel refused
            SO_REUSEPORT or the program; nothing is left open then.
    """
    made: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            made.append(sock)
            _set_buffers(sock, buffer_bytes)
            if count > 1:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            port = sock.getsockname()[1]  # port 0: the others join the port the first got
            if count > 1 and len(made) == 1:  # before the others join: none is unsteered
                attach_hint_program(sock, count)
        return made
    except OSError:
        for sock in made:
            sock.close()
        raise


def _set_buffers(sock: socket.socket, size: int) -> None:
    """Ask for `size` bytes each way whatever net.core.rmem_max says (the router runs with
    CAP_NET_ADMIN); without the capability, as much as the sysctl allows."""
    for force, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, plain, size)
