"""One router per network namespace, held by an abstract unix socket.

The kernel data path (the bridge, the TAP, the VXLAN device, the probe responder) exists
once per network namespace, so a second router there, even with its own run and state
dirs, would adopt, replace or tear down the first one's. An abstract unix socket name is
per network namespace and disappears with the process that bound it (kill -9 included),
so binding it is the lock. Whoever finds it taken learns the holder's pid by connecting
to it (SO_PEERCRED); the holder never accepts, the pending connection just goes away.
"""

from __future__ import annotations

import socket
import struct

from meshnet.errors import Conflict

NAME = b"\0meshnet-router"
_UCRED = struct.Struct("3i")  # pid, uid, gid


def holder() -> int | None:
    """The pid of the router holding this namespace's lock, None if it is free."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(NAME)
        except (ConnectionRefusedError, FileNotFoundError):
            return None
        except OSError:
            return -1  # held, but its queue is full (many at once are asking)
        pid, _, _ = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
        return pid


class NetnsLock:
    def __init__(self) -> None:
        self._sock: socket.socket | None = None

    def acquire(self) -> None:
        """Raises Conflict if another router runs in this network namespace."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.bind(NAME)
            sock.listen(8)
        except OSError:
            sock.close()
            pid = holder()
            who = f"pid {pid}" if pid and pid > 0 else "another process"
            raise Conflict(
                f"another meshnet router ({who}) runs in this network namespace and owns its bridge and VXLAN "
                "device; stop it first (meshnet stop), or run this one in another namespace"
            ) from None
        self._sock = sock

    def release(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
