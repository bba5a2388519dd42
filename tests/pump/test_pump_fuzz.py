"""Random bytes from the underlay and on the TAP never crash a pump; every datagram and
frame is accounted for exactly once, as forwarded or as a counted drop."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshnet.dataplane import sleeve_crypto
from pump_harness import Rig, header

LOCAL = 100
UDP_FATES = (
    "tap_tx", "drop_tap_write", "relayed", "drop_unknown_sender", "drop_short",
    "drop_version", "drop_type", "drop_unknown_peer", "drop_ttl", "drop_no_route",
    "drop_plaintext", "drop_sealed", "drop_no_key", "drop_replay", "drop_auth", "drop_bad_csum",
    "drop_tx_no_key", "drop_key_exhausted",
)
KEY_IN, KEY_OUT = b"\x05" * 32, b"\x06" * 32

# Mostly noise, some of it behind a plausible header so the deeper rules are reached.
noise = st.binary(max_size=200)
headed = st.builds(
    lambda src, dst, ttl, flags, rest: header(src, dst, ttl=ttl, flags=flags) + rest,
    st.sampled_from([1, 2, 3, 7, LOCAL]),
    st.sampled_from([1, 2, 3, 7, LOCAL]),
    st.integers(0, 255),
    st.sampled_from([0, 0, 1, 3, 4, 5]),
    noise,
)


def _mangle(datagram: bytes, cut: int, at: int, bit: int) -> bytes:
    d = bytearray(datagram[: max(0, len(datagram) - cut)])
    if d and bit:
        d[at % len(d)] ^= bit
    return bytes(d)


# Sealed with the right key, then cut short or with one bit flipped (or left alone).
sealed = st.builds(
    lambda src, dst, ttl, epoch, counter, rest, cut, at, bit: _mangle(
        sleeve_crypto.seal(KEY_IN, header(src, dst, ttl=ttl, flags=sleeve_crypto.key_id_flags(epoch)), counter, rest),
        cut, at, bit),
    st.sampled_from([1, 2, 3, LOCAL]),
    st.sampled_from([1, 2, 3, 7, LOCAL]),
    st.integers(0, 255),
    st.sampled_from([0, 0, 1]),
    st.integers(0, 2**64 - 1) | st.integers(0, 50),
    noise,
    st.sampled_from([0, 0, 0, 1, 17, 100]),
    st.integers(0, 300),
    st.sampled_from([0, 0, 1, 0x80]),
)
datagrams = st.lists(st.one_of(noise, headed, sealed), max_size=30)
# One rig serves all examples of a test: it must stay usable whatever came before.
FUZZ = settings(max_examples=150, deadline=None)
# The largest IPv4 datagram too (a frame for us), without making every example huge.
biggest = st.sampled_from([0, 65507]).map(lambda n: (header(1, LOCAL) + b"\x02" * n)[:n])


@pytest.fixture(scope="module", params=["plain", "encrypted"])
def rig(impl, request):
    crypto = request.param == "encrypted"
    rig = Rig(impl, LOCAL, crypto=crypto, vnet_hdr=crypto)
    rig.connect(1)
    rig.connect(2)
    rig.pump.set_peer(3, None, 2)
    if crypto:
        rig.pump.set_peer_keys(1, KEY_OUT, KEY_IN, epoch=0)  # 2 has no keys: relays to 3 fail
    yield rig
    rig.close()


@FUZZ
@given(datagrams=datagrams, big=biggest)
def test_random_datagrams_only_count(rig, datagrams, big):
    before = rig.stats()
    sent = [d for d in datagrams + [big] if d]
    for i, d in enumerate(sent):
        rig.send_from(1 + i % 2, d)
    rig.run_until_idle(timeout_ms=1)
    rig.from_tap()
    rig.received(1)
    rig.received(2)
    after = rig.stats()
    delta = {k: after[k] - before[k] for k in after}
    assert delta["udp_rx"] == len(sent)
    assert delta["udp_rx_bytes"] == sum(map(len, sent))
    assert sum(delta[k] for k in UDP_FATES) == len(sent)


@FUZZ
@given(frames=st.lists(st.binary(max_size=300), max_size=30))
def test_random_tap_frames_only_count(rig, frames):
    before = rig.stats()
    for f in frames:
        rig.to_tap(f)
    rig.run_until_idle(timeout_ms=1)
    rig.received(1)
    rig.received(2)
    after = rig.stats()
    delta = {k: after[k] - before[k] for k in after}
    assert delta["tap_rx"] == len(frames)
    if rig.pump.features()["vnet_hdr"]:  # random virtio_net_hdrs: any fate, counted once
        assert delta["drop_short_frame"] == sum(len(f) < 24 for f in frames)
        return
    short = sum(len(f) < 14 for f in frames)
    assert delta["drop_short_frame"] == short
    assert delta["udp_tx"] + delta["drop_send_error"] >= len(frames) - short


# A peer's containers flooding source MACs: whatever they send and however the clock
# moves, the MAC table never holds more than its capacity, nor a peer more than its
# quota, and every new MAC is learned or counted as refused.
CAP, QUOTA = 32, 20  # two peers at their quota would overfill it
flood = st.lists(
    st.tuples(st.sampled_from([1, 1, 1, 2]), st.integers(0, 300), st.sampled_from([0] * 20 + [1, 5, 40])),
    max_size=120,
)


@pytest.fixture(scope="module")
def bounded(impl):
    rig = Rig(impl, LOCAL, mac_table_max=CAP, learn_quota=QUOTA, mac_age=30)
    rig.connect(1)
    rig.connect(2)
    rig.clock = 5000
    rig.pump._set_clock(rig.clock)
    yield rig
    rig.close()


@FUZZ
@given(sends=flood)
def test_mac_floods_stay_within_capacity_and_quota(bounded, sends):
    rig = bounded
    before = rig.stats()
    for peer, n, tick in sends:
        if tick:
            rig.clock += tick
            rig.pump._set_clock(rig.clock)
        src = b"\x02" + n.to_bytes(5, "big")
        rig.send_from(peer, header(peer, LOCAL) + b"\xff" * 6 + src + b"\x08\x00" + bytes(46))
    rig.run_until_idle(timeout_ms=1)
    rig.from_tap()
    table = rig.pump.macs()
    assert len(table) <= CAP
    assert all(list(table.values()).count(p) <= QUOTA for p in (1, 2))
    after = rig.stats()
    delta = {k: after[k] - before[k] for k in after}
    assert delta["tap_tx"] == len(sends)  # learning or not, every frame is delivered
    new = delta["learned"] + delta["learn_over_quota"] + delta["learn_table_full"]
    assert new <= len(sends)
