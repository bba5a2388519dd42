"""The local API of one allocator: allocate, claim, release, pending requests, bad input."""

from __future__ import annotations

import pytest

from meshnet.ipam import (
    AddressInUse,
    Allocator,
    Cancelled,
    IpamBadRequest,
    IpamConfigError,
    NotHeld,
    NotOwner,
    Pending,
    RangeExhausted,
    Result,
)
from meshnet.testing.ipam_store import MemoryStore

A, B = bytes([1]) * 16, bytes([2]) * 16


def solo(universe: str = "10.32.0.0/24", init: str | None = None, store: MemoryStore | None = None) -> Allocator:
    return Allocator(name=A, universe=universe, init=init or f"seed={A.hex()}", store=store or MemoryStore(), now=0)


def got(outcome: tuple) -> Result:  # type: ignore[type-arg]
    result, out = outcome
    assert isinstance(result, Result), result
    return result


@pytest.mark.parametrize(
    "init, why",
    [
        ("consensus", "expected consensus=N"),
        ("consensus=0", "whole number"),
        ("consensus=x", "whole number"),
        ("seed=", "not a 32-hex-digit"),
        ("seed=zz", "not a 32-hex-digit"),
        (f"seed={A.hex()},{A.hex()}", "listed twice"),
        ("observer=1", "expected"),
        ("paxos", "expected"),
    ],
)
def test_bad_init_is_a_config_error(init: str, why: str) -> None:
    with pytest.raises(IpamConfigError, match=why):
        solo(init=init)


def test_bad_name_and_range_are_config_errors() -> None:
    with pytest.raises(IpamConfigError, match="16 bytes"):
        Allocator(name=b"short", universe="10.32.0.0/24", init="observer", store=MemoryStore(), now=0)
    with pytest.raises(IpamConfigError, match="invalid CIDR"):
        solo(universe="10.32.0.0/40")


def test_allocate_is_idempotent_per_owner() -> None:
    alloc = solo()
    first = got(alloc.allocate("c1/eth0", now=0))
    assert first.cidr == f"{first.address}/24"
    assert got(alloc.allocate("c1/eth0", now=1)) == first
    assert got(alloc.allocate("c2/eth0", now=1)).address != first.address


def test_allocate_in_a_subnet_skips_its_network_and_broadcast() -> None:
    alloc = solo()
    addresses = {got(alloc.allocate(f"c{i}", subnet="10.32.0.128/30", now=0)).address for i in range(2)}
    assert addresses == {"10.32.0.129", "10.32.0.130"}
    assert got(alloc.allocate("c0", subnet="10.32.0.128/30", now=0)).prefixlen == 30
    with pytest.raises(RangeExhausted, match="10.32.0.128/30"):
        alloc.allocate("c9", subnet="10.32.0.128/30", now=0)


@pytest.mark.parametrize(
    "subnet, error, why",
    [
        ("10.33.0.0/24", IpamBadRequest, "outside the allocation range"),
        ("10.32.0.1/24", IpamBadRequest, "host bits"),
        ("nonsense", IpamBadRequest, "invalid CIDR"),
    ],
)
def test_bad_subnet_changes_nothing(subnet: str, error: type, why: str) -> None:
    alloc = solo()
    with pytest.raises(error, match=why):
        alloc.allocate("c1", subnet=subnet, now=0)
    assert len(alloc.space) == 0 and not alloc.requests


@pytest.mark.parametrize("owner", ["", "   ", None, "x" * 600])
def test_bad_owner_is_refused(owner: object) -> None:
    with pytest.raises(IpamBadRequest, match="owner"):
        solo().allocate(owner, now=0)  # type: ignore[arg-type]


def test_range_exhaustion_and_release() -> None:
    alloc = solo("10.32.0.0/28")
    given = [got(alloc.allocate(f"c{i}", now=0)).address for i in range(14)]
    assert len(set(given)) == 14 and "10.32.0.0" not in given and "10.32.0.15" not in given
    with pytest.raises(RangeExhausted):
        alloc.allocate("one-too-many", now=0)
    alloc.release("c5", now=0)
    assert got(alloc.allocate("one-too-many", now=0)).address == given[5]


def test_a_released_address_is_not_reused_at_once() -> None:
    alloc = solo()
    first = got(alloc.allocate("c1", now=0)).address
    alloc.release("c1", now=0)
    assert got(alloc.allocate("c2", now=0)).address != first


def test_release_is_idempotent_and_checks_explicit_addresses() -> None:
    alloc = solo()
    r1 = got(alloc.allocate("c1", now=0))
    r2 = got(alloc.allocate("c2", now=0))
    assert alloc.release("nobody", now=0) == []
    with pytest.raises(NotHeld, match="not held by c1"):
        alloc.release("c1", address=r2.address, now=0)
    with pytest.raises(NotHeld):
        alloc.release("c1", address="10.32.0.200", now=0)
    with pytest.raises(IpamBadRequest, match="outside"):
        alloc.release("c1", address="192.168.0.1", now=0)
    with pytest.raises(IpamBadRequest, match="invalid"):
        alloc.release("c1", address="bogus", now=0)
    assert alloc.addresses("c1") == [r1.address] and alloc.addresses("c2") == [r2.address]
    alloc.release("c1", address=r1.address, now=0)
    alloc.release("c1", now=0)
    alloc.release("c1", now=0)
    assert alloc.addresses("c1") == [] and alloc.addresses("c2") == [r2.address]


def test_claim() -> None:
    alloc = solo(init=f"seed={A.hex()},{B.hex()}")  # A owns the lower half
    assert got(alloc.claim("c1", "10.32.0.7", now=0)).cidr == "10.32.0.7/24"
    assert got(alloc.claim("c1", "10.32.0.7", now=0)).address == "10.32.0.7"  # idempotent
    with pytest.raises(AddressInUse, match="held by c1"):
        alloc.claim("c2", "10.32.0.7", now=0)
    with pytest.raises(NotOwner, match=B.hex()):
        alloc.claim("c2", "10.32.0.200", now=0)
    with pytest.raises(IpamBadRequest, match="network or broadcast"):
        alloc.claim("c2", "10.32.0.0", now=0)
    with pytest.raises(IpamBadRequest, match="outside"):
        alloc.claim("c2", "10.33.0.1", now=0)
    assert alloc.addresses("c2") == []
    # allocation never hands out a claimed address
    assert "10.32.0.7" not in {got(alloc.allocate(f"x{i}", now=0)).address for i in range(20)}


def test_pending_requests_complete_once_space_arrives() -> None:
    seed = solo(init=f"seed={A.hex()}")
    observer = Allocator(name=B, universe="10.32.0.0/24", init="observer", store=MemoryStore(), now=0)
    pending, _ = observer.allocate("c1", now=0)
    assert isinstance(pending, Pending) and "observer" in pending.reason
    assert observer.allocate("c1", now=0)[0] == pending  # same request, not a second one
    claim, _ = observer.claim("c2", "10.32.0.9", now=0)
    cancelled, _ = observer.allocate("c3", now=0)
    assert isinstance(claim, Pending) and isinstance(cancelled, Pending)
    assert observer.cancel(cancelled.request_id)
    assert observer.status()["waiting"] == pending.reason and observer.status()["pending"] == 2

    # the observer learns the ring; the claim fails (A owns it), the allocation asks A for space
    out = observer.on_peers_changed({A}, now=1) + observer.on_broadcast(A, seed.full_state(), now=1)
    done = dict(observer.completed())
    assert isinstance(done.pop(claim.request_id), NotOwner) and not done
    seed.on_peers_changed({B}, now=1)
    wants = [o for o in out if o[0] == "unicast" and o[1] == A]
    assert wants, out
    for _, _, payload in wants:
        for reply in seed.on_unicast(B, payload, now=1):
            if reply[0] == "unicast":
                observer.on_unicast(A, reply[2], now=1)
    (request_id, result), = observer.completed()
    assert request_id == pending.request_id and isinstance(result, Result)
    assert observer.completed() == []


def test_release_ends_waiting_requests_of_that_owner() -> None:
    observer = Allocator(name=B, universe="10.32.0.0/24", init="observer", store=MemoryStore(), now=0)
    pending, _ = observer.allocate("c1", now=0)
    observer.release("c1", now=0)
    ((request_id, outcome),) = observer.completed()
    assert request_id == pending.request_id and isinstance(outcome, Cancelled)


def test_status_reports_ranges_and_counts() -> None:
    alloc = solo(init=f"seed={A.hex()},{B.hex()}")
    alloc.on_peers_changed(set(), now=0)
    got(alloc.allocate("c1", now=0))
    status = alloc.status()
    assert status["state"] == "ready" and status["range"] == "10.32.0.0/24"
    assert status["local"] == {"ranges": 1, "size": 128, "used": 1, "free": 126}
    assert status["peers"][B.hex()]["ranges"] == [
        {"start": "10.32.0.128", "end": "10.32.0.255", "size": 128, "free": 127, "version": 1, "reclaim": False}
    ]
    assert status["unreachable_owners"] == [B.hex()]
    assert status["conflicts"] == [] and status["waiting"] is None


def test_consensus_peer_waits_and_says_why() -> None:
    alloc = solo(init="consensus=3")
    alloc.on_peers_changed(set(), now=0)
    pending, _ = alloc.allocate("c1", now=0)
    assert isinstance(pending, Pending)
    assert pending.reason == "awaiting consensus (quorum: 2, known: 1)"
    assert alloc.status()["state"] == pending.reason
    assert alloc.tick(now=100) == [] and isinstance(alloc.allocate("c1", now=100)[0], Pending)
