"""The ring CRDT and address parsing: tiling, merge algebra, tie rules, bad input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshnet.ipam.addr import parse_address, parse_subnet, parse_universe
from meshnet.ipam.errors import IpamBadRequest, IpamConfigError
from meshnet.ipam.ring import Entry, Ring, conflicting, genesis_id, host_count
from meshnet.ipam.space import Space

U = parse_universe("10.32.0.0/24")
G = genesis_id("seed", U, [])
A, B, C = (bytes([i]) * 16 for i in (1, 2, 3))


@pytest.mark.parametrize(
    "text, why",
    [
        ("bogus", "invalid CIDR"),
        ("10.32.0.1/12", "host bits"),
        ("fd00::/64", "only IPv4"),
        ("10.32.0.0/31", "too small"),
        (None, "expected a CIDR"),
    ],
)
def test_bad_universe_is_a_config_error(text: object, why: str) -> None:
    with pytest.raises(IpamConfigError, match=why):
        parse_universe(text)


def test_subnets_and_addresses_must_lie_inside_the_range() -> None:
    assert parse_subnet("10.32.0.128/25", U).usable == (U.start + 129, U.end - 1)
    with pytest.raises(IpamBadRequest, match="outside the allocation range"):
        parse_subnet("10.33.0.0/24", U)
    with pytest.raises(IpamBadRequest, match="invalid CIDR"):
        parse_subnet("10.32.0.0/33", U)
    assert parse_address("10.32.0.7", U) == U.start + 7
    with pytest.raises(IpamBadRequest, match="outside"):
        parse_address("10.33.0.7", U)
    with pytest.raises(IpamBadRequest, match="network or broadcast"):
        parse_address("10.32.0.255", U)
    with pytest.raises(IpamBadRequest, match="invalid IPv4"):
        parse_address("10.32.0.300", U)


@settings(deadline=None)
@given(st.sets(st.binary(min_size=16, max_size=16), min_size=1, max_size=40))
def test_split_tiles_the_universe_once(names: set[bytes]) -> None:
    ring = Ring.split(U, list(names), G)
    ranges = list(ring.ranges())
    assert ranges[0][0] == U.start and ranges[-1][1] == U.end
    assert all(end == nxt for (_, end, _), (nxt, _, _) in zip(ranges, ranges[1:]))
    assert sum(e.free for _, _, e in ranges) == U.end - U.start - 2  # network and broadcast


def test_ranking_rules() -> None:
    # a higher version wins; at equal versions a normal entry beats a reclaim
    assert Entry(A, 3, 0).rank() > Entry(B, 2, 9).rank()
    assert Entry(B, 2, 0).rank() > Entry(A, 2, 0, reclaim=True).rank()
    # of two reclaims the lowest name wins, so concurrent rmpeers agree
    assert Entry(A, 2, 0, reclaim=True).rank() > Entry(B, 2, 0, reclaim=True).rank()
    assert conflicting(Entry(A, 2, 0), Entry(B, 2, 0))
    assert not conflicting(Entry(A, 2, 0), Entry(B, 2, 0, reclaim=True))
    assert not conflicting(Entry(A, 2, 0), Entry(A, 2, 5))


tokens = st.integers(U.start + 1, U.end - 1)
entries = st.builds(
    Entry, st.sampled_from([A, B, C]), st.integers(1, 4), st.integers(0, 3), st.booleans()
)
replica = st.dictionaries(tokens, entries, max_size=8).map(lambda d: {U.start: Entry(A, 1, 0), **d})


def merged(*parts: dict[int, Entry]) -> dict[int, Entry]:
    ring = Ring(U, G, parts[0])
    for part in parts[1:]:
        ring.merge(part)
    return ring.entries()


@settings(max_examples=200, deadline=None)
@given(replica, replica, replica)
def test_merge_is_commutative_associative_idempotent(a: dict, b: dict, c: dict) -> None:
    assert merged(a, b) == merged(b, a)
    assert merged(merged(a, b), c) == merged(a, merged(b, c))
    assert merged(a, a) == a
    assert merged(a, b, b) == merged(a, b)


def test_merge_reports_changes_and_conflicts() -> None:
    ring = Ring(U, G, {U.start: Entry(A, 1, 10)})
    result = ring.merge({U.start: Entry(B, 1, 10), U.start + 100: Entry(C, 1, 5)})
    assert result.changed == [U.start + 100]  # A beats B at a tie (lower name), C is new
    assert [(t, o.owner, n.owner) for t, o, n in result.conflicts] == [(U.start, A, B)]
    assert ring.token_at(U.start + 150) == U.start + 100
    assert ring.end_of(U.start) == U.start + 100
    assert [s for s, _, _ in ring.overlapping(U.start + 50, U.start + 101)] == [U.start, U.start + 100]


def test_host_count_skips_network_and_broadcast() -> None:
    assert host_count(U.start, U.end, U) == 254
    assert host_count(U.start + 10, U.start + 20, U) == 10


def test_space_free_runs_and_round_robin() -> None:
    space = Space({5: "a", 6: "b", 9: "c"})
    assert list(space.free_runs(4, 12)) == [(4, 5), (7, 9), (10, 12)]
    assert space.first_free([(4, 12)], after=6) == 7
    assert space.first_free([(4, 12)], after=11) == 4  # wraps
    assert space.first_free([(5, 7)], after=0) is None
    space.remove(6)
    assert space.of("b") == [] and space.count(0, 100) == 2
