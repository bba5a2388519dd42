"""The run dir: one router per run dir, held by a lock, and the pid file that names it.

`RunDir.acquire` takes an exclusive `flock` on RUN_DIR/lock before anything else in the
run dir is touched: a second router aimed at the same run dir (even with another state
dir) fails right there and leaves the first one's socket, pid file and log alone. The pid
file is written after the lock is held and removed only by its holder.
"""

from __future__ import annotations

import fcntl
import os

from meshnet.errors import Conflict

LOCK_NAME = "lock"
PID_NAME = "meshnet.pid"


def lock_holder(path: str) -> int | None:
    """The pid holding the lock on this run (or state) dir, None if it is free."""
    try:
        fd = os.open(os.path.join(path, LOCK_NAME), os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        return int(text) if text.isdigit() else -1
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class RunDir:
    def __init__(self, path: str):
        self.path = path
        self.pid_file = os.path.join(path, PID_NAME)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Raises Conflict if another router holds this run dir."""
        os.makedirs(self.path, exist_ok=True)
        fd = os.open(os.path.join(self.path, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise Conflict(
                f"another meshnet router (pid {holder}) is already running with run dir {self.path}; "
                "stop it first (meshnet stop) or use --run-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        with open(self.pid_file, "w") as f:
            f.write(f"{os.getpid()}\n")

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            with open(self.pid_file) as f:
                ours = f.read().strip() == str(os.getpid())
        except OSError:
            ours = False
        if ours:
            os.unlink(self.pid_file)
        os.close(self._fd)
        self._fd = None
