"""Entering a network namespace from one thread, without forking.

Linux keeps the network namespace per thread, so the kernel thread can step into a
container's namespace, open a netlink socket there (it stays bound to that namespace)
and step back. We never let pyroute2 fork a helper into a namespace: a forked child
inherits asyncio's signal wakeup fd, and its own SIGTERM would read as ours.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from typing import Iterator

from meshnet.kernel.errors import KernelError

_CLONE_NEWNET = 0x40000000


@contextlib.contextmanager
def in_netns(name: str | None) -> Iterator[None]:
    """Run the block with this thread in netns `name` (an ip-netns name or a path).

    Sockets opened inside stay in that namespace after the block. Nothing is created:
    a missing namespace is an error.
    """
    if name is None:
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    path = name if "/" in name else f"/run/netns/{name}"
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        try:
            target = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise KernelError(exc.errno, f"network namespace {name}: {exc.strerror}") from None
        try:
            if libc.setns(target, _CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise KernelError(err, f"cannot enter network namespace {name}: {os.strerror(err)}")
        finally:
            os.close(target)
        try:
            yield
        finally:
            if libc.setns(home, _CLONE_NEWNET) != 0:  # cannot go home: stop rather than run astray
                raise SystemExit(f"cannot return from network namespace {name}")
    finally:
        os.close(home)
