"""Stores, crashes and the release journal.

Both stores must behave the same; after a crash (MemoryStore.crash, or a real kill -9 of a
process on a SqliteStore) everything committed is there and nothing is handed out twice.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from meshnet.ipam import Allocator, Journal, MemoryStore, Release, Result, SqliteStore
from meshnet.ipam.journal import FILENAME, parse
from meshnet.ipam.ring import Entry
from meshnet.ipam.store import Changes

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
    from meshnet.ipam import Allocator, SqliteStore
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


# ---- the journal ------------------------------------------------------------------------


def test_journal_append_and_drain(tmp_path) -> None:  # type: ignore[no-untyped-def]
    journal = Journal(str(tmp_path))
    assert journal.drain(lambda rs: pytest.fail("empty journal")) == 0
    journal.append("c1/eth0")
    journal.append("c2/eth0", "10.32.0.9")
    seen: list[Release] = []
    assert journal.drain(seen.extend) == 2
    assert seen == [Release("c1/eth0"), Release("c2/eth0", "10.32.0.9")]
    assert journal.drain(lambda rs: pytest.fail("drained twice")) == 0


def test_journal_keeps_entries_when_apply_fails(tmp_path) -> None:  # type: ignore[no-untyped-def]
    journal = Journal(str(tmp_path))
    journal.append("c1")

    def boom(releases: list[Release]) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError):
        journal.drain(boom)
    assert journal.drain(lambda rs: None) == 1


def test_journal_skips_torn_lines_and_starts_fresh_after_them(tmp_path) -> None:  # type: ignore[no-untyped-def]
    journal = Journal(str(tmp_path))
    journal.append("c1")
    with open(tmp_path / FILENAME, "ab") as f:
        f.write(b'{"v":1,"owner":"torn')  # a writer died mid-line
    journal.append("c2")
    seen: list[Release] = []
    journal.drain(seen.extend)
    assert seen == [Release("c1"), Release("c2")]
    assert parse(b'[1]\n{"v":2,"owner":"x"}\n{"v":1,"owner":""}\n{"v":1,"owner":"a","address":5}\n') == []
    with pytest.raises(ValueError):
        journal.append("")


def test_concurrent_appenders_lose_nothing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    code = (
        f"import sys; sys.path.insert(0, {ROOT!r}); from meshnet.ipam.journal import Journal; "
        f"j = Journal({str(tmp_path)!r}); [j.append(f'p{{sys.argv[1]}}-c{{i}}') for i in range(40)]"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(n)]) for n in range(4)]
    assert all(p.wait(timeout=60) == 0 for p in procs)
    seen: list[Release] = []
    Journal(str(tmp_path)).drain(seen.extend)
    assert sorted(r.owner for r in seen) == sorted(f"p{n}-c{i}" for n in range(4) for i in range(40))


def test_release_while_router_is_down_is_applied_at_start(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "meshnet.db")
    alloc = Allocator(name=A, universe="10.32.0.0/24", init=SEED, store=SqliteStore(path), now=0)
    kept, _ = alloc.allocate("kept", now=0)
    gone, _ = alloc.allocate("gone", now=0)
    assert isinstance(kept, Result) and isinstance(gone, Result)
    alloc.store.close()  # the router stops

    journal = Journal(str(tmp_path))  # CNI DEL, twice, while it is down
    journal.append("gone")
    journal.append("gone", gone.address)
    journal.append("never-existed")

    alloc = Allocator(name=A, universe="10.32.0.0/24", init=SEED, store=SqliteStore(path), now=1, journal=journal)
    assert alloc.addresses("gone") == [] and alloc.addresses("kept") == [kept.address]
    assert os.path.getsize(tmp_path / FILENAME) == 0
    assert alloc.replay_releases([Release("kept", "10.32.0.200")], now=2) == []  # not held: skipped
    assert alloc.addresses("kept") == [kept.address]
