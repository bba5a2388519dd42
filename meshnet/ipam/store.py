"""The IPAM core's persistence interface: what must survive a restart, and how it is committed.

The core does no I/O; it is handed a `Store` and commits one `Changes` per operation,
atomically, *before* it returns the result or the messages that depend on it. So after
kill -9 everything a caller or a peer was told is in the store, and nothing is handed out
twice. `durable=False` marks the commits whose loss is harmless (free-space hints, gossiped
`gone` lists): a store may then skip the flush to stable storage, but must still keep them
across a crash of the process.

Implementations: `meshnet.state.ipam_store.SqliteStore` (the router's, in the state dir),
and `meshnet.testing.ipam_store.MemoryStore` (tests and simulations; `crash()` models
kill -9).
"""

from __future__ import annotations

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
    """All the allocator needs. Opening and closing belong to whoever made the store."""

    def load(self) -> Snapshot:
        """Everything committed so far (a copy the caller may keep)."""
        ...

    def commit(self, changes: Changes, *, durable: bool = True) -> None:
        """Apply all of `changes` or none of them; with `durable`, survive a power cut too."""
        ...
