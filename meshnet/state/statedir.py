"""The router's state dir: an exclusive lock, the peer name, and persisted settings.

The lock (`flock` on state-dir/lock) is what makes a second router on the same state
dir fail at once with a clear message instead of fighting the first one. Settings live
in sqlite (WAL) so a kill -9 never leaves a half-written file.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import sqlite3
from typing import Any

from meshnet.errors import Conflict


class StateDir:
    def __init__(self, path: str):
        self.path = path
        os.makedirs(path, exist_ok=True)
        self._lock_fd = os.open(os.path.join(path, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._lock_fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(self._lock_fd)
            raise Conflict(
                f"another meshnet router (pid {holder}) is already running with state dir {path}; "
                "stop it first (meshnet stop) or use --state-dir"
            ) from None
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, f"{os.getpid()}\n".encode(), 0)
        self.db = sqlite3.connect(os.path.join(path, "meshnet.db"), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)")

    def get(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def put(self, key: str, value: Any) -> None:
        self.db.execute(
            "INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, json.dumps(value)),
        )

    def peer_name(self) -> bytes:
        """Our 128-bit peer name: random on first launch, then kept (never from MACs or machine ids)."""
        name = self.get("peer_name")
        if name is None:
            name = secrets.token_hex(16)
            self.put("peer_name", name)
        return bytes.fromhex(name)

    def close(self) -> None:
        self.db.close()
        os.close(self._lock_fd)
