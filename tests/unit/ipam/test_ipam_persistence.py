"""Stores and crashes; journalled releases reaching the core as plain values.

Both stores must behave the same; after a crash (MemoryStore.crash, or a real kill -9 of a
process on a SqliteStore) everything committed is there and nothing is handed out twice.
The journal file itself is tested in `tests/unit/state/test_state_journal.py`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from meshnet.ipam import Allocator, Cancelled, Result
from meshnet.ipam.ring import Entry
from meshnet.ipam.store import Changes, Snapshot, Store
from meshnet.state.ipam_store import SqliteStore
from meshnet.testing.ipam_store import MemoryStore

A = bytes([1]) * 16
SEED = f"seed={A.hex()}"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


@pytest.fixture(params=["memory", "sqlite"])
def store_factory(request: pytest.FixtureRequest, tmp_path):  # type: ignore[no-untyped-def]
    """A function returning (store, reopen) where reopen() models a restart of the process."""
    if request.param == "memory":
        def make():  # type: ignore[no-untyped-def]
            store = MemoryStore()
            holder = {"store": store}

            def reopen():  # type: ignore[no-untyped-def]
                holder["store"] = holder["store"].crash()
                return holder["store"]

            return store, reopen
    else:
        path = str(tmp_path / "meshnet.db")

        def make():  # type: ignore[no-untyped-def]
            store = SqliteStore(path)
            holder = {"store": store}

            def reopen():  # type: ignore[no-untyped-def]
                holder["store"].close()
                holder["store"] = SqliteStore(path)
                return holder["store"]

            return store, reopen
    return make


def test_commit_and_load_round_trip(store_factory) -> None:  # type: ignore[no-untyped-def]
    store, reopen = store_factory()
    store.commit(Changes(meta={"k": b"v"}, ring={5: Entry(A, 2, 3, True)}, allocations={7: "c1", 8: "c2"}))
    store.commit(Changes(meta={"k": None}, allocations={8: None}))
    snap = reopen().load()
    assert snap.meta == {} and snap.ring == {5: Entry(A, 2, 3, True)} and snap.allocations == {7: "c1"}


def test_allocations_survive_a_crash(store_factory) -> None:  # type: ignore[no-untyped-def]
    store, reopen = store_factory()
    alloc = Allocator(name=A, universe="10.32.0.0/24", init=SEED, store=store, now=0)
    given = {f"c{i}": alloc.allocate(f"c{i}", now=0)[0] for i in range(20)}
    alloc.release("c3", now=0)
    again = Allocator(name=A, universe="10.32.0.0/24", init=SEED, store=reopen(), now=1)
    for owner, result in given.items():
        assert isinstance(result, Result)
        assert again.addresses(owner) == ([] if owner == "c3" else [result.address])
    fresh, _ = again.allocate("new", now=1)
    assert isinstance(fresh, Result)
    assert fresh.address not in {r.address for o, r in given.items() if o != "c3"}  # type: ignore[union-attr]


def test_memory_store_refuses_commits_after_crash() -> None:
    store = MemoryStore()
    store.crash()
    with pytest.raises(RuntimeError):
        store.commit(Changes(meta={"k": b"v"}))


def test_sqlite_commit_is_atomic(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = SqliteStore(str(tmp_path / "db"))
    bad = Changes(allocations={1: "ok", 2: object()})  # type: ignore[dict-item]
    with pytest.raises(Exception):
        store.commit(bad)
    assert store.load().allocations == {}


def test_state_of_another_peer_or_range_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from meshnet.ipam import IpamConfigError

    store = MemoryStore()
    Allocator(name=A, universe="10.32.0.0/24", init=SEED, store=store, now=0)
    with pytest.raises(IpamConfigError, match="belongs to peer"):
        Allocator(name=bytes([2]) * 16, universe="10.32.0.0/24", init=SEED, store=store, now=0)
    with pytest.raises(IpamConfigError, match="same range"):
        Allocator(name=A, universe="10.32.1.0/24", init=SEED, store=store, now=0)


CHILD = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {root!r})
    from meshnet.ipam import Allocator
    from meshnet.state.ipam_store import SqliteStore
    alloc = Allocator(name=bytes([1]) * 16, universe="10.32.0.0/24", init={seed!r},
                      store=SqliteStore({path!r}), now=0)
    for i in range(30):
        result, _ = alloc.allocate(f"c{{i}}", now=0)
        print(f"c{{i}} {{result.address}}", flush=True)   # the caller has been told
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_kill_9_loses_nothing_and_hands_out_nothing_twice(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "meshnet.db")
    proc = subprocess.run(
        [sys.executable, "-c", CHILD.format(root=ROOT, seed=SEED, path=path)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    told = dict(line.split() for line in proc.stdout.splitlines())
    assert len(told) == 30
    alloc = Allocator(name=A, universe="10.32.0.0/24", init=SEED, store=SqliteStore(path), now=0)
    for owner, address in told.items():
        assert alloc.addresses(owner) == [address]
    fresh, _ = alloc.allocate("after", now=0)
    assert isinstance(fresh, Result) and fresh.address not in told.values()


# ---- journalled releases: plain values in, no file read by the core ----------------------


def test_journalled_releases_are_committed_and_replays_skipped(store_factory) -> None:  # type: ignore[no-untyped-def]
    store, reopen = store_factory()
    alloc = Allocator(name=A, universe="10.32.0.0/24", init=SEED, store=store, now=0)
    kept, _ = alloc.allocate("kept", now=0)
    gone, _ = alloc.allocate("gone", now=0)
    assert isinstance(kept, Result) and isinstance(gone, Result)
    entries = [
        ("gone", None), ("gone", gone.address),  # DEL, twice
        ("never-existed", None), ("kept", "10.32.0.200"),  # nothing to release / not held
        ("", None), ("x", "nonsense"),  # garbled
    ]
    assert alloc.release_journalled(entries, now=1) == []
    assert alloc.addresses("gone") == [] and alloc.addresses("kept") == [kept.address]
    again = Allocator(name=A, universe="10.32.0.0/24", init=SEED, store=reopen(), now=2)
    assert again.addresses("gone") == [] and again.addresses("kept") == [kept.address]
    assert again.release_journalled(entries, now=2) == []  # replayed after a crash: harmless
    assert again.addresses("kept") == [kept.address]


def test_journalled_release_ends_the_owners_waiting_requests() -> None:
    observer = Allocator(name=bytes([2]) * 16, universe="10.32.0.0/24", init="observer", store=MemoryStore(), now=0)
    pending, _ = observer.allocate("c1", now=0)
    assert observer.release_journalled([("c1", None)], now=1) == []
    ((request_id, outcome),) = observer.completed()
    assert request_id == pending.request_id and isinstance(outcome, Cancelled)


def test_journalled_release_of_a_full_range_is_announced_at_once() -> None:
    alloc = Allocator(name=A, universe="10.32.0.0/28", init=SEED, store=MemoryStore(), now=0)
    first, _ = alloc.allocate("c0", now=0)
    for i in range(1, 14):
        alloc.allocate(f"c{i}", now=0)
    alloc.tick(now=10)  # the range is full, and its hint says so
    out = alloc.release_journalled([("c0", None)], now=11)
    assert [o[0] for o in out] == ["broadcast"]  # donors are chosen by hint: not full any more
    assert isinstance(first, Result) and alloc.addresses("c0") == []


def test_a_failing_store_propagates_so_the_journal_is_kept() -> None:
    class Failing(MemoryStore):
        def commit(self, changes: Changes, *, durable: bool = True) -> None:
            if changes.allocations and None in changes.allocations.values():
                raise OSError("disk full")
            super().commit(changes, durable=durable)

    alloc = Allocator(name=A, universe="10.32.0.0/24", init=SEED, store=Failing(), now=0)
    alloc.allocate("c1", now=0)
    with pytest.raises(OSError):
        alloc.release_journalled([("c1", None)], now=1)
    assert alloc.addresses("c1") != []  # nothing applied that is not committed


# ---- the Store protocol: the allocator needs load and commit, nothing else ---------------


class Recording:
    """A Store with only the two methods of the protocol, recording every commit."""

    def __init__(self) -> None:
        self.inner = MemoryStore()
        self.commits: list[tuple[Changes, bool]] = []

    def load(self) -> Snapshot:
        return self.inner.load()

    def commit(self, changes: Changes, *, durable: bool = True) -> None:
        self.inner.commit(changes, durable=durable)
        self.commits.append((changes, durable))


def test_the_allocator_needs_only_load_and_commit() -> None:
    store: Store = Recording()
    alloc = Allocator(name=A, universe="10.32.0.0/24", init=SEED, store=store, now=0)
    result, _ = alloc.allocate("c1", now=0)
    assert isinstance(result, Result)
    alloc.tick(now=10)  # the debounced free-space hint
    commits = store.commits  # type: ignore[attr-defined]
    allocation = [(c, d) for c, d in commits if c.allocations]
    assert [(list(c.allocations.values()), d) for c, d in allocation] == [(["c1"], True)]  # flushed
    hints = [(c, d) for c, d in commits if c.ring and not c.meta and not c.allocations]
    assert hints and all(d is False for _, d in hints)  # a lost hint is harmless: not flushed
    assert Allocator(name=A, universe="10.32.0.0/24", init=SEED, store=store, now=1).addresses("c1") == [result.address]


def test_both_stores_implement_the_protocol(tmp_path) -> None:  # type: ignore[no-untyped-def]
    for store in (MemoryStore(), SqliteStore(str(tmp_path / "db")), Recording()):
        assert callable(getattr(store, "load")) and callable(getattr(store, "commit"))
        assert store.load() == Snapshot()
