"""The parts the allocator drives, on their own: Bootstrap, Seeker, Removed.

The cluster tests and the simulation exercise them through the allocator; these pin the
contracts the allocator relies on, and the persisted form of the removed-peers list.
"""

from __future__ import annotations

import msgpack

from meshnet.ipam.addr import parse_universe
from meshnet.ipam.bootstrap import Bootstrap, parse_init
from meshnet.ipam.donation import SILENT_BACKOFF, WANT_TIMEOUT, Seeker
from meshnet.ipam.outcome import Request
from meshnet.ipam.reclaim import Removed
from meshnet.ipam.ring import Ring
from meshnet.ipam.wire import MAX_GONE, PaxosData

U = parse_universe("10.32.0.0/24")
A, B, C = bytes([1]) * 16, bytes([2]) * 16, bytes([3]) * 16


def test_removed_keeps_the_persisted_form_most_recent_last_and_bounded() -> None:
    gone = Removed(msgpack.packb([A, B], use_bin_type=True))  # as earlier versions stored it
    assert list(gone) == [A, B] and A in gone and C not in gone
    gone.add([A, C])
    assert list(gone) == [B, A, C]
    assert msgpack.unpackb(gone.meta()) == [B, A, C]
    # removed peers that are reachable again stay removed (tombstones): they must reset
    assert gone.back({A, bytes(16)}) == {A} and list(gone) == [B, A, C] and gone.back(set()) == set()
    many = Removed(None)
    many.add([i.to_bytes(16, "big") for i in range(MAX_GONE + 5)])
    assert len(many) == MAX_GONE and next(iter(many)) == (5).to_bytes(16, "big")
    assert Removed(None).meta() is None


def test_bootstrap_modes_and_the_consensus_hold() -> None:
    assert Bootstrap(A, U, parse_init("observer")).start(None) is None
    seeded = Bootstrap(A, U, parse_init(f"seed={A.hex()},{B.hex()}")).start(None)
    assert isinstance(seeded, Ring) and {e.owner for _, _, e in seeded.ranges()} == {A, B}

    boot = Bootstrap(A, U, parse_init("consensus=2"))
    assert boot.start(None) is None and boot.consensus is not None
    assert boot.reason() == "awaiting consensus (quorum: 2, known: 1)"
    assert boot.held({B}) and boot.deadline({B}) is None  # B has not told us its state yet
    step = boot.step(now=0, reachable={B})
    assert step.held and step.paxos is None and step.ring is None
    boot.heard.add(B)
    assert not boot.held({B})
    boot.merge(B, PaxosData(3, {}))
    assert boot.held({B}) and boot.mismatch is not None and "consensus=3" in boot.mismatch
    boot.done()
    assert boot.consensus is None and boot.paxos_data() is None and boot.deadline(set()) is None


def test_seeker_asks_one_donor_at_a_time_and_backs_off_a_silent_one() -> None:
    ring = Ring.split(U, [A, B, C], b"g" * 16)
    seeker = Seeker()
    low = Request(1, "x", U, None, "waiting for space")
    ids = iter(range(100, 200))
    sought = seeker.seek(ring, A, [low], {B, C}, 0.0, lambda: next(ids))
    assert sought.ask is not None and sought.ask.id == 100 and not sought.exhausted
    donor = sought.ask.donor
    assert low.reason == f"asking peer {donor.hex()} for space in {U.cidr}"
    assert seeker.deadline(True) == WANT_TIMEOUT
    assert seeker.seek(ring, A, [low], {B, C}, 1.0, lambda: next(ids)).ask is None  # one at a time
    again = seeker.seek(ring, A, [low], {B, C}, WANT_TIMEOUT, lambda: next(ids))  # no answer: another
    assert again.ask is not None and again.ask.donor != donor
    assert seeker.silent == {donor: WANT_TIMEOUT + SILENT_BACKOFF}
    seeker.answered(again.ask.donor, again.ask.id)
    assert seeker.want is None
    seeker.expire(WANT_TIMEOUT + SILENT_BACKOFF)
    assert seeker.silent == {}


def test_seeker_reports_requests_no_peer_can_serve() -> None:
    ring = Ring.split(U, [A], b"g" * 16)  # all ours, and our free space was not enough
    req = Request(1, "x", U, None, "waiting for space")
    sought = Seeker().seek(ring, A, [req], set(), 0.0, lambda: 1)
    assert sought.exhausted == [req] and sought.ask is None
