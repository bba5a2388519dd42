"""Where the IPAM core keeps what must survive a restart: ring, allocations, a little meta.

The allocator commits one `Changes` per operation, atomically, *before* it returns the
result or the messages that depend on it. So after kill -9 everything a caller or a peer
was told is on disk, and nothing is handed out twice.

`SqliteStore` is the real one: WAL, and `synchronous=FULL` for the commits that matter
(allocations, releases, transfers, Paxos promises); free-space hints commit with
`synchronous=NORMAL`, which kill -9 cannot lose either (only a power cut can, and a lost
hint is harmless). Its tables are prefixed `ipam_`, so it may share the state dir's
database file with other components.

`MemoryStore` is the simulation's: `crash()` models kill -9, returning a store that holds
exactly what was committed and making the old one refuse further commits.
"""

from __future__ import annotations

import copy
import sqlite3
from dataclasses import dataclass, field
from typing import Protocol

from meshnet.ipam.ring import Entry


@dataclass
class Snapshot:
    meta: dict[str, bytes] = field(default_factory=dict)
    ring: dict[int, Entry] = field(default_factory=dict)
    allocations: dict[int, str] = field(default_factory=dict)  # address -> owner


@dataclass
class Changes:
    meta: dict[str, bytes | None] = field(default_factory=dict)  # None deletes the key
    ring: dict[int, Entry] = field(default_factory=dict)  # upserts; ring tokens are never deleted
    allocations: dict[int, str | None] = field(default_factory=dict)  # None releases

    def __bool__(self) -> bool:
        return bool(self.meta or self.ring or self.allocations)


class Store(Protocol):
    def load(self) -> Snapshot: ...

    def commit(self, changes: Changes, *, durable: bool = True) -> None:
        """Apply all of `changes` or none of them; with `durable`, survive a power cut too."""

    def close(self) -> None: ...


class MemoryStore:
    def __init__(self, snapshot: Snapshot | None = None):
        self._data = snapshot or Snapshot()
        self._dead = False
        self.commits = 0

    def load(self) -> Snapshot:
        return copy.deepcopy(self._data)

    def commit(self, changes: Changes, *, durable: bool = True) -> None:
        if self._dead:
            raise RuntimeError("commit to the store of a crashed allocator")
        _apply(self._data.meta, changes.meta)
        self._data.ring.update(changes.ring)
        _apply(self._data.allocations, changes.allocations)
        self.commits += 1

    def crash(self) -> MemoryStore:
        """Model kill -9: the process is gone, what it committed is what the next one sees."""
        self._dead = True
        return MemoryStore(copy.deepcopy(self._data))

    def close(self) -> None:
        self._dead = True


def _apply(target: dict, changes: dict) -> None:  # type: ignore[type-arg]
    for key, value in changes.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = value


_SCHEMA = """
CREATE TABLE IF NOT EXISTS ipam_meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS ipam_ring (
    token INTEGER PRIMARY KEY, owner BLOB NOT NULL, version INTEGER NOT NULL,
    free INTEGER NOT NULL, reclaim INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS ipam_alloc (address INTEGER PRIMARY KEY, owner TEXT NOT NULL);
"""


class SqliteStore:
    def __init__(self, path: str):
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._sync = ""
        self._set_sync(True)
        self._db.executescript(_SCHEMA)

    def _set_sync(self, durable: bool) -> None:
        mode = "FULL" if durable else "NORMAL"
        if mode != self._sync:  # a PRAGMA, so outside any transaction
            self._db.execute(f"PRAGMA synchronous={mode}")
            self._sync = mode

    def load(self) -> Snapshot:
        snap = Snapshot()
        for key, value in self._db.execute("SELECT key, value FROM ipam_meta"):
            snap.meta[key] = bytes(value)
        for token, owner, version, free, reclaim in self._db.execute(
            "SELECT token, owner, version, free, reclaim FROM ipam_ring"
        ):
            snap.ring[token] = Entry(bytes(owner), version, free, bool(reclaim))
        for address, owner in self._db.execute("SELECT address, owner FROM ipam_alloc"):
            snap.allocations[address] = owner
        return snap

    def commit(self, changes: Changes, *, durable: bool = True) -> None:
        if not changes:
            return
        self._set_sync(durable)
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            for key, value in changes.meta.items():
                if value is None:
                    db.execute("DELETE FROM ipam_meta WHERE key = ?", (key,))
                else:
                    db.execute("INSERT OR REPLACE INTO ipam_meta (key, value) VALUES (?, ?)", (key, value))
            db.executemany(
                "INSERT OR REPLACE INTO ipam_ring (token, owner, version, free, reclaim) VALUES (?, ?, ?, ?, ?)",
                [(t, e.owner, e.version, e.free, int(e.reclaim)) for t, e in changes.ring.items()],
            )
            for address, owner in changes.allocations.items():
                if owner is None:
                    db.execute("DELETE FROM ipam_alloc WHERE address = ?", (address,))
                else:
                    db.execute("INSERT OR REPLACE INTO ipam_alloc (address, owner) VALUES (?, ?)", (address, owner))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self._db.close()
