"""Property: for any IPAM payload the decoder accepts, the Allocator never raises, and what
it says afterwards still decodes (it never gossips something a peer would refuse).

Payloads are built from the wire's own types with values at and across their bounds
(tokens at the range's ends, versions up to 2^63 - 1, ballots, removed peers, our own
name), and fed to allocators in each state: a seeded ring, waiting for consensus, an
observer."""

from __future__ import annotations

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshnet.ipam import Allocator, IpamProtocolError
from meshnet.ipam.paxos import NO_BALLOT, Acceptor
from meshnet.ipam.ring import Entry
from meshnet.ipam.wire import MAX_INT, Deny, PaxosData, RingData, State, Want, decode, encode_deny, encode_state, encode_want
from meshnet.testing.ipam_store import MemoryStore

A, B, C, D = (bytes([i]) * 16 for i in (1, 2, 3, 4))
CIDR = "10.32.0.0/24"
U = (10 << 24) | (32 << 16)
names = st.sampled_from([A, B, C, D])
big = st.one_of(st.sampled_from([1, 2, MAX_INT - 1, MAX_INT]), st.integers(1, MAX_INT))


@st.composite
def rings(draw):
    tokens = sorted(set(draw(st.lists(st.integers(U + 1, U + 255), max_size=6))) | {U})
    entries = {t: Entry(draw(names), draw(big), draw(st.integers(0, 256)), draw(st.booleans())) for t in tokens}
    return RingData(draw(st.sampled_from([bytes(16), b"g" * 16])), entries)


@st.composite
def acceptors(draw):
    promised = draw(st.one_of(st.just(NO_BALLOT), st.tuples(big, names)))
    accepted = NO_BALLOT if promised == NO_BALLOT else draw(st.one_of(st.just(NO_BALLOT), st.just(promised)))
    value = () if accepted == NO_BALLOT else tuple(draw(st.lists(names, min_size=1, max_size=3)))
    return Acceptor(promised, accepted, value)


states = st.builds(
    State,
    universe=st.sampled_from([CIDR, CIDR, "10.33.0.0/24"]),
    ring=st.one_of(st.none(), rings()),
    paxos=st.one_of(st.none(), st.builds(PaxosData, st.integers(1, 5), st.dictionaries(names, acceptors(), max_size=3))),
    ask=st.one_of(st.none(), big),
    re=st.one_of(st.none(), big),
    gone=st.lists(names, max_size=3).map(tuple),
)
wants = st.integers(U, U + 255).flatmap(lambda lo: st.builds(Want, st.just(CIDR), big, st.just(lo), st.integers(lo + 1, U + 256)))
payloads = st.one_of(
    states.map(encode_state),
    wants.map(encode_want),
    st.builds(Deny, st.just(CIDR), big).map(encode_deny),
    states.map(encode_state).map(lambda p: msgpack.packb({**msgpack.unpackb(p), "extra": [[1] * 3] * 3}, use_bin_type=True)),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    init=st.sampled_from([f"seed={A.hex()}", "consensus=3", "observer"]),
    inputs=st.lists(st.tuples(st.sampled_from([B, C, A]), st.booleans(), payloads), min_size=1, max_size=6),
)
def test_accepted_payloads_never_raise_in_the_allocator(init, inputs):
    alloc = Allocator(name=A, universe=CIDR, init=init, store=MemoryStore(), now=0)
    alloc.on_peers_changed({B, C}, now=0)
    now = 0.0
    for src, unicast, payload in inputs:
        now += 0.5
        try:
            decode(payload)
        except IpamProtocolError:
            continue
        handler = alloc.on_unicast if unicast else alloc.on_broadcast
        out = handler(src, payload, now=now)  # never raises
        for message in out:
            decode(message[-1])  # what it answers decodes
        now += 3
        for message in alloc.tick(now=now):
            decode(message[-1])
    decode(alloc.full_state())
    alloc.status()
    alloc.on_peers_changed(set(), now=now + 1)
    alloc.rmpeer(D, now=now + 2)
