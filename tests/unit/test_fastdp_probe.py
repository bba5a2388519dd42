"""The probe frame codec: round trips, and only ProbeError for garbage."""

import pytest
from hypothesis import given, strategies as st

from meshnet.dataplane.fastdp import (
    PROBE_ETHERTYPE,
    PROBE_HEADER_LEN,
    PROBE_REPLY,
    PROBE_REQUEST,
    Probe,
    ProbeError,
    decode_probe,
    encode_probe,
    probe_frame_size,
    probe_mac,
)

u32 = st.integers(0, 2**32 - 1)
kinds = st.sampled_from([PROBE_REQUEST, PROBE_REPLY])
sizes = st.integers(PROBE_HEADER_LEN, 9014)


@given(kinds, u32, u32, sizes, u32)
def test_round_trip(kind, sender, seq, size, dst_id):
    frame = encode_probe(kind, sender, seq, size, probe_mac(dst_id))
    assert len(frame) == size
    assert frame[12:14] == PROBE_ETHERTYPE.to_bytes(2, "big")
    assert decode_probe(frame) == Probe(kind, sender, seq, size, probe_mac(dst_id), probe_mac(sender))


def test_full_size_probe_for_the_overlay_mtu():
    frame = encode_probe(PROBE_REQUEST, 1, 7, probe_frame_size(1422), probe_mac(2))
    assert len(frame) == 1436  # what a container may put on the wire: MTU + Ethernet header


@given(st.binary(max_size=200))
def test_garbage_raises_only_probe_error(data):
    try:
        decode_probe(data)
    except ProbeError:
        pass


@given(kinds, u32, u32, st.integers(PROBE_HEADER_LEN, 200), st.data())
def test_mutated_frames_raise_only_probe_error(kind, sender, seq, size, data):
    frame = bytearray(encode_probe(kind, sender, seq, size, probe_mac(3)))
    for _ in range(data.draw(st.integers(1, 4))):
        frame[data.draw(st.integers(0, len(frame) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(frame)))
    try:
        probe = decode_probe(bytes(frame[:cut]))
    except ProbeError:
        return
    assert probe.size <= cut and probe.src_mac == probe_mac(probe.sender)


@pytest.mark.parametrize(
    "mutate, why",
    [
        (lambda f: f[: PROBE_HEADER_LEN - 1], "shorter"),
        (lambda f: f[:-1], "claims"),
        (lambda f: f[:12] + b"\x08\x00" + f[14:], "not a meshnet probe"),
        (lambda f: f[:14] + b"XXXX" + f[18:], "not a meshnet probe"),
        (lambda f: f[:18] + b"\x02" + f[19:], "version"),
        (lambda f: f[:19] + b"\x07" + f[20:], "kind"),
        (lambda f: f[:6] + bytes.fromhex("4e5000000009") + f[12:], "source MAC"),
    ],
)
def test_specific_rejections(mutate, why):
    frame = encode_probe(PROBE_REQUEST, 1, 7, 100, probe_mac(2))
    with pytest.raises(ProbeError, match=why):
        decode_probe(mutate(frame))


def test_encode_refuses_impossible_frames():
    for args in [(3, 1, 1, 100), (PROBE_REQUEST, 1, 1, PROBE_HEADER_LEN - 1), (PROBE_REQUEST, 1, 1, 70000)]:
        with pytest.raises(ValueError):
            encode_probe(*args, probe_mac(2))
