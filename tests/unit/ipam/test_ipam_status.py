"""`status ipam` as data: the allocator's frozen view, and the report derived from it alone."""

from __future__ import annotations

import ast
import dataclasses

import pytest

from meshnet.ipam import Allocator, Result, status
from meshnet.ipam.addr import parse_universe
from meshnet.ipam.status import IpamView, RangeView
from meshnet.testing.ipam_store import MemoryStore

A, B, C = bytes([1]) * 16, bytes([2]) * 16, bytes([3]) * 16
U = parse_universe("10.32.0.0/24")

KEYS = {"name", "range", "init", "state", "waiting", "pending", "local", "peers", "unreachable_owners", "reclaiming", "tombstoned", "conflicts"}


def view(**changes: object) -> IpamView:
    base = IpamView(
        name=A, universe=U, init=f"seed={A.hex()},{B.hex()}",
        ranges=(RangeView(U.start, U.start + 128, A, 3, 100, False), RangeView(U.start + 128, U.end, B, 1, 127, False)),
        reachable=frozenset(), consensus=None, mismatch=None, waiting=None, pending=0, used=27,
        reclaiming=frozenset(), waiting_for=frozenset(), removed=(), conflicts=(),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_the_view_is_a_frozen_snapshot() -> None:
    alloc = Allocator(name=A, universe="10.32.0.0/24", init=f"seed={A.hex()}", store=MemoryStore(), now=0)
    before = alloc.view()
    assert isinstance(alloc.allocate("c1", now=0)[0], Result)
    after = alloc.view()
    assert before.used == 0 and after.used == 1
    assert before.ranges is not None and after.ranges is not None
    assert before.ranges[0].free == 254 and after.ranges[0].free == 253  # counted, not the hint
    with pytest.raises(dataclasses.FrozenInstanceError):
        after.used = 5  # type: ignore[misc]
    assert alloc.status() == status.build(after)


def test_the_report_is_derived_from_the_view_alone() -> None:
    report = status.build(view(reachable=frozenset()))
    assert set(report) == KEYS
    assert report["state"] == "ready" and report["waiting"] is None and report["range"] == "10.32.0.0/24"
    assert report["local"] == {"ranges": 1, "size": 128, "used": 27, "free": 100}
    assert report["peers"][A.hex()] == {
        "reachable": True, "size": 128, "free": 100, "used": 27,  # 127 hosts: .0 is reserved
        "ranges": [{"start": "10.32.0.0", "end": "10.32.0.127", "size": 128, "free": 100, "version": 3, "reclaim": False}],
    }
    assert report["peers"][B.hex()]["reachable"] is False and report["unreachable_owners"] == [B.hex()]
    assert status.build(view(reachable=frozenset({B})))["unreachable_owners"] == []
    assert status.build(view(conflicts=("two owners",)))["state"] == "conflict"


def test_the_state_while_there_is_no_ring() -> None:
    waiting = status.build(view(ranges=None))
    assert waiting["state"] == waiting["waiting"] == "waiting for the allocation ring from the other peers"
    assert waiting["peers"] == {} and waiting["local"] == {"ranges": 0, "size": 0, "used": 27, "free": 0}
    consensus = status.build(view(ranges=None, consensus="awaiting consensus (quorum: 2, known: 1)"))
    assert consensus["state"] == "awaiting consensus (quorum: 2, known: 1)"
    mismatch = status.build(view(ranges=None, consensus="x", mismatch="peer 02 runs consensus=2"))
    assert mismatch["state"].startswith("cannot bootstrap: peer 02 runs consensus=2")
    oldest = status.build(view(ranges=None, waiting="observer: waiting", pending=2))
    assert oldest["waiting"] == "observer: waiting" and oldest["pending"] == 2


def test_reclaiming_is_reported_sorted() -> None:
    report = status.build(view(reclaiming=frozenset({C}), waiting_for=frozenset({C, B}), removed=(C, B), returned=frozenset({B})))
    assert report["reclaiming"] == {
        "peers": [C.hex()], "waiting_for": [B.hex(), C.hex()], "removed": [B.hex(), C.hex()], "returned": [B.hex()]
    }
    assert report["tombstoned"] is False


def test_status_does_not_import_the_allocator() -> None:
    """No import circle: the report knows the view, not the allocator's fields."""
    tree = ast.parse(open(status.__file__).read())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "meshnet.ipam.allocator" not in imported and not any("TYPE_CHECKING" in ast.dump(n) for n in tree.body)
