"""The release journal: the file the CNI plugin appends to while the router is down, and the
router draining it into the allocator (at start, and on every tick).

Format and path are what running clusters have on disk; `meshnet/state/journal.py` has them.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from meshnet.ipam import Allocator, Result
from meshnet.runtime.ipam_service import IpamService
from meshnet.state import ipam_store
from meshnet.state.journal import FILENAME, Journal, Release, parse

A = bytes([1]) * 16
SEED = f"seed={A.hex()}"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


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
        f"import sys; sys.path.insert(0, {ROOT!r}); from meshnet.state.journal import Journal; "
        f"j = Journal({str(tmp_path)!r}); [j.append(f'p{{sys.argv[1]}}-c{{i}}') for i in range(40)]"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(n)]) for n in range(4)]
    assert all(p.wait(timeout=60) == 0 for p in procs)
    seen: list[Release] = []
    Journal(str(tmp_path)).drain(seen.extend)
    assert sorted(r.owner for r in seen) == sorted(f"p{n}-c{i}" for n in range(4) for i in range(40))


def test_router_applies_the_journal_at_start_and_on_every_tick(tmp_path) -> None:  # type: ignore[no-untyped-def]
    state = str(tmp_path)
    store = ipam_store.SqliteStore(os.path.join(state, ipam_store.FILENAME))
    alloc = Allocator(name=A, universe="10.32.0.0/24", init=SEED, store=store, now=0)
    kept, _ = alloc.allocate("kept", now=0)
    gone, _ = alloc.allocate("gone", now=0)
    assert isinstance(kept, Result) and isinstance(gone, Result)
    store.close()  # the router stops

    journal = Journal(state)  # CNI DEL, twice, while it is down
    journal.append("gone")
    journal.append("gone", gone.address)
    journal.append("never-existed")

    sent: list[list[object]] = []
    service = IpamService(name=A, universe="10.32.0.0/24", init=SEED, state_dir=state, send=sent.append)
    try:
        assert service.allocator.addresses("gone") == [] and service.allocator.addresses("kept") == [kept.address]
        assert os.path.getsize(tmp_path / FILENAME) == 0
        journal.append("kept")  # a DEL that found the router's socket dead while it restarted
        service.tick()
        assert service.owners() == {} and os.path.getsize(tmp_path / FILENAME) == 0
    finally:
        service.close()
    reopened = ipam_store.SqliteStore(os.path.join(state, ipam_store.FILENAME))
    assert reopened.load().allocations == {}  # committed, not only applied in memory
    reopened.close()
