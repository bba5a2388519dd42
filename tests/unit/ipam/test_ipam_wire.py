"""The IPAM wire format: golden vectors, round trips, and hostile input.

Fuzz invariant: `decode` returns a message or raises `IpamProtocolError`; nothing else.
"""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshnet.ipam import Allocator, IpamProtocolError
from meshnet.ipam.paxos import Acceptor
from meshnet.ipam.ring import Entry
from meshnet.ipam.wire import (
    Deny,
    PaxosData,
    RingData,
    State,
    Want,
    decode,
    encode_deny,
    encode_state,
    encode_want,
)
from meshnet.testing.ipam_store import MemoryStore

A, B = bytes([1]) * 16, bytes([2]) * 16
U = (10 << 24) | (32 << 16)
CIDR = "10.32.0.0/24"
STATE = State(
    CIDR,
    RingData(bytes(range(16)), {U: Entry(A, 1, 126), U + 128: Entry(B, 2, 127, True)}),
    PaxosData(3, {A: Acceptor((1, A), (1, A), (A, B))}),
    ask=7,
    re=9,
)

# Frozen on purpose: a change here is a wire-format change (bump "v", update docs/protocol.md).
GOLDEN_STATE = bytes.fromhex(
    "87a17601a174a57374617465a175ac31302e33322e302e302f3234a472696e6783a167c410000102030405060708"
    "090a0b0c0d0e0fa16f92c41001010101010101010101010101010101c41002020202020202020202020202020202"
    "a1659295ce0a20000000017e0095ce0a20008001027f01a2707882a16e03a1619196c41001010101010101010101"
    "01010101010101c4100101010101010101010101010101010101c4100101010101010101010101010101010192c4"
    "1001010101010101010101010101010101c41002020202020202020202020202020202a361736b07a2726509"
)
GOLDEN_WANT = bytes.fromhex(
    "86a17601a174a477616e74a175ac31302e33322e302e302f3234a2696405a26c6fce0a200001a26869ce0a2000ff"
)
GOLDEN_DENY = bytes.fromhex("84a17601a174a464656e79a175ac31302e33322e302e302f3234a2696405")


def test_golden_vectors() -> None:
    assert encode_state(STATE) == GOLDEN_STATE
    assert encode_want(Want(CIDR, 5, U + 1, U + 255)) == GOLDEN_WANT
    assert encode_deny(Deny(CIDR, 5)) == GOLDEN_DENY


def test_round_trips() -> None:
    assert decode(GOLDEN_STATE) == STATE
    assert decode(GOLDEN_WANT) == Want(CIDR, 5, U + 1, U + 255)
    assert decode(GOLDEN_DENY) == Deny(CIDR, 5)
    bare = State(CIDR)
    assert decode(encode_state(bare)) == bare
    gone = State(CIDR, gone=(A, B))
    assert decode(encode_state(gone)) == gone


def test_unknown_keys_are_ignored() -> None:
    obj = msgpack.unpackb(GOLDEN_DENY)
    obj["future"] = [1, 2, 3]
    assert decode(msgpack.packb(obj)) == Deny(CIDR, 5)


def _patched(golden: bytes, **changes: object) -> bytes:
    obj = msgpack.unpackb(golden, raw=False)
    obj.update(changes)
    return msgpack.packb(obj, use_bin_type=True)


def _ring(**changes: object) -> bytes:
    ring = {"g": bytes(16), "o": [A], "e": [[U, 0, 1, 0, 0]]}
    ring.update(changes)
    return msgpack.packb({"v": 1, "t": "state", "u": CIDR, "ring": ring}, use_bin_type=True)


@pytest.mark.parametrize(
    "payload, why",
    [
        (b"", "undecodable"),
        (b"\xc1", "undecodable"),
        (msgpack.packb([1, 2]), "not a map"),
        (_patched(GOLDEN_DENY, v=2), "unsupported version"),
        (_patched(GOLDEN_DENY, t="gimme"), "unknown type"),
        (_patched(GOLDEN_DENY, u="10.32.0.1/24"), "host bits"),
        (_patched(GOLDEN_DENY, id=True), "id must be an integer"),
        (_patched(GOLDEN_DENY, id=-1), "id must be an integer"),
        (_patched(GOLDEN_WANT, lo=U + 9, hi=U + 9), "hi must be"),
        (_patched(GOLDEN_WANT, hi=U + 1000), "hi must be"),
        (_ring(e=[[U + 1, 0, 1, 0, 0]]), "does not start"),
        (_ring(e=[[U, 0, 1, 0, 0], [U, 0, 1, 0, 0]]), "token must be"),
        (_ring(e=[[U, 0, 1, 0, 0], [U + 256, 0, 1, 0, 0]]), "token must be"),
        (_ring(e=[[U, 1, 1, 0, 0]]), "owner index"),
        (_ring(e=[[U, 0, 0, 0, 0]]), "version"),
        (_ring(e=[[U, 0, 1, 0, 2]]), "reclaim"),
        (_ring(e=[[U, 0, 1, 0]]), "5 fields"),
        (_ring(o=[b"short"]), "16-byte"),
        (_ring(g=b"x"), "genesis"),
        (_patched(GOLDEN_STATE, gone=[b"x"]), "16-byte"),
        (_patched(GOLDEN_STATE, gone=A), "must be an array"),
    ],
)
def test_malformed_payloads_raise_protocol_error(payload: bytes, why: str) -> None:
    with pytest.raises(IpamProtocolError, match=why):
        decode(payload)


def test_inconsistent_acceptor_is_rejected() -> None:
    obj = msgpack.unpackb(GOLDEN_STATE, raw=False)
    obj["px"]["a"][0][5] = []  # accepted a ballot but no value
    with pytest.raises(IpamProtocolError, match="inconsistent"):
        decode(msgpack.packb(obj, use_bin_type=True))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_random_bytes_only_raise_protocol_error(data: bytes) -> None:
    try:
        decode(data)
    except IpamProtocolError:
        pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_flipped_bytes_only_raise_protocol_error(data: st.DataObject) -> None:
    golden = data.draw(st.sampled_from([GOLDEN_STATE, GOLDEN_WANT, GOLDEN_DENY]))
    buf = bytearray(golden)
    for _ in range(data.draw(st.integers(1, 4))):
        buf[data.draw(st.integers(0, len(buf) - 1))] = data.draw(st.integers(0, 255))
    try:
        decode(bytes(buf))
    except IpamProtocolError:
        pass


scalar = (
    st.none() | st.booleans() | st.integers(-1, 3) | st.sampled_from([U, U + 1, U + 255, U + 256, 2**64 - 1])
    | st.binary(max_size=17) | st.sampled_from([A, B, b""]) | st.text(max_size=3)
)
row = st.lists(scalar, max_size=7)
garbage = scalar | row | st.lists(row, max_size=3)
ring_like = st.fixed_dictionaries({}, optional={"g": garbage, "o": garbage, "e": garbage})
px_like = st.fixed_dictionaries({}, optional={"n": garbage, "a": st.lists(row, max_size=3)})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.fixed_dictionaries(
        {"v": st.sampled_from([1, 1, 2]), "t": st.sampled_from(["state", "want", "deny"]), "u": st.just(CIDR)},
        optional={"ring": ring_like | garbage, "px": px_like | garbage, "id": scalar, "lo": scalar,
                  "hi": scalar, "ask": scalar, "re": scalar},
    )
)
def test_structured_garbage_only_raises_protocol_error(obj: dict) -> None:
    try:
        decode(msgpack.packb(obj, use_bin_type=True))
    except IpamProtocolError:
        pass


def test_allocator_rejects_garbage_and_changes_nothing() -> None:
    alloc = Allocator(name=A, universe=CIDR, init=f"seed={A.hex()}", store=MemoryStore(), now=0)
    before = alloc.full_state()
    for handler in (alloc.on_broadcast, alloc.on_unicast):
        with pytest.raises(IpamProtocolError):
            handler(B, b"\x92\x01", now=1)
    assert alloc.full_state() == before
