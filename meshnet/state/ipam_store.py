"""`SqliteStore`: the router's IPAM `Store`, in `<state-dir>/ipam.db`.

The allocator commits one `Changes` per operation, atomically, before it tells anyone (see
`meshnet/ipam/store.py`). Here that is WAL, and `synchronous=FULL` for the commits that
matter (allocations, releases, transfers, Paxos promises); free-space hints commit with
`synchronous=NORMAL`, which kill -9 cannot lose either (only a power cut can, and a lost
hint is harmless). Its tables are prefixed `ipam_`, so it may share the state dir's
database file with other components. The schema and file name are what running clusters
have on disk: change them only with a migration.
"""

from __future__ import annotations

import sqlite3

from meshnet.ipam.ring import Entry
from meshnet.ipam.store import Changes, Snapshot

FILENAME = "ipam.db"  # in the state dir

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
