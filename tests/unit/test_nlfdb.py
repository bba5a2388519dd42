"""The raw rtnetlink FDB codec: requests as the kernel expects them, dumps parsed back,
hostile or truncated messages skipped, never raised."""

import struct

from hypothesis import given, strategies as st

from meshnet.kernel.nlfdb import FdbReq, _parse_neigh, _request_body

NDMSG = struct.Struct("=BxHiHBB")


def attr(kind: int, value: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(value), kind) + value
    return raw + bytes(-len(raw) % 4)


def test_a_bridge_entry_is_a_sticky_static_replace_on_the_port():
    kind, flags, body = _request_body(FdbReq("add", 7, "02:00:00:00:00:01", master=True))
    family, _, ifindex, state, ntf, _ = NDMSG.unpack_from(body)
    assert (kind, flags, family, ifindex, state, ntf) == (28, 0x400 | 0x100, 7, 7, 0x40, 0x04 | 0x40)
    assert body[NDMSG.size :] == attr(2, bytes.fromhex("020000000001"))


def test_the_all_zero_mac_appends_a_remote_and_unicast_replaces_it():
    kind, flags, body = _request_body(FdbReq("add", 9, "00:00:00:00:00:00", dst="192.168.90.2"))
    assert kind == 28 and flags == 0x400 | 0x800  # CREATE | APPEND
    assert attr(1, bytes([192, 168, 90, 2])) in body
    _, flags, _ = _request_body(FdbReq("add", 9, "02:00:00:00:00:01", dst="192.168.90.2"))
    assert flags == 0x400 | 0x100  # CREATE | REPLACE
    kind, flags, body = _request_body(FdbReq("del", 9, "02:00:00:00:00:01", dst="192.168.90.2"))
    assert kind == 29 and flags == 0 and NDMSG.unpack_from(body)[4] == 0x02  # NTF_SELF


def test_a_dumped_row_is_parsed():
    payload = NDMSG.pack(7, 0, 5, 0x40, 0x40, 0) + attr(2, bytes.fromhex("02aabbccddee")) + attr(9, struct.pack("=I", 3))
    assert _parse_neigh(payload) == (5, "02:aa:bb:cc:dd:ee", None, 3, 0x40, 0x40)
    remote = NDMSG.pack(7, 0, 6, 0xC0, 0x02, 0) + attr(2, bytes(6)) + attr(1, bytes([10, 0, 0, 9]))
    assert _parse_neigh(remote) == (6, "00:00:00:00:00:00", "10.0.0.9", None, 0xC0, 0x02)
    assert _parse_neigh(NDMSG.pack(2, 0, 5, 0, 0, 0) + attr(2, bytes(6))) is None  # not AF_BRIDGE


@given(st.binary(min_size=NDMSG.size, max_size=200))
def test_garbage_is_skipped_never_raised(payload):
    payload = bytes([7]) + payload[1:]
    row = _parse_neigh(payload)
    assert row is None or len(row[1]) == 17
