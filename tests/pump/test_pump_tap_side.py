"""Frames read from the TAP: unicast, floods, drops, and unlearning hosts that moved here."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshnet.dataplane.layout import HINT_SHIFT, MAX_SLEEVE_FRAME, flow_hint
from pump_harness import BROADCAST, Rig, frame, header, ipv4_tcp, ipv6_tcp, mac

LOCAL = 100


def test_known_unicast_goes_to_its_peer_with_a_header(make_rig):
    rig = make_rig(LOCAL)
    rig.connect(1)
    rig.connect(2)
    rig.pump.set_mac(mac(1), 1)
    f = frame(mac(1), mac(50))
    rig.to_tap(f)
    assert rig.run_until_idle() == 1
    assert rig.received(1) == [header(LOCAL, 1) + f]
    assert rig.received(2) == []
    s = rig.stats()
    assert (s["tap_rx"], s["tap_rx_bytes"]) == (1, len(f))
    assert (s["udp_tx"], s["udp_tx_bytes"]) == (1, len(f) + 12)
    assert s["flood_tx"] == s["unknown_unicast"] == 0


def test_unicast_via_a_relay_is_addressed_to_the_final_peer(make_rig):
    rig = make_rig(LOCAL)
    rig.connect(1)
    rig.pump.set_peer(3, None, 1)  # 3 is reached through 1
    rig.pump.set_mac(mac(3), 3)
    f = frame(mac(3), mac(50))
    rig.to_tap(f)
    rig.run_until_idle()
    assert rig.received(1) == [header(LOCAL, 3) + f]


def test_broadcast_floods_one_copy_per_routable_peer(make_rig):
    rig = make_rig(LOCAL)
    rig.connect(1)
    rig.connect(2)
    rig.pump.set_peer(3, None, 1)  # via 1
    rig.pump.set_peer(4, None, 9)  # via a peer we do not know: no route
    rig.pump.set_peer(5, None, 3)  # via a peer without an address: no route
    f = frame(BROADCAST, mac(50))
    rig.to_tap(f)
    rig.run_until_idle()
    assert sorted(rig.received(1)) == sorted([header(LOCAL, 1) + f, header(LOCAL, 3) + f])
    assert rig.received(2) == [header(LOCAL, 2) + f]
    s = rig.stats()
    assert s["flood_tx"] == 3 and s["udp_tx"] == 3 and s["unknown_unicast"] == 0


def test_multicast_floods_too(make_rig):
    rig = make_rig(LOCAL)
    rig.connect(1)
    f = frame(b"\x01\x00\x5e\x00\x00\x01", mac(50))
    rig.to_tap(f)
    rig.run_until_idle()
    assert rig.received(1) == [header(LOCAL, 1) + f]


def test_unknown_unicast_floods_and_is_counted(make_rig):
    rig = make_rig(LOCAL)
    rig.connect(1)
    rig.connect(2)
    f = frame(mac(77), mac(50))
    rig.to_tap(f)
    rig.run_until_idle()
    assert rig.received(1) == [header(LOCAL, 1) + f]
    assert rig.received(2) == [header(LOCAL, 2) + f]
    s = rig.stats()
    assert s["unknown_unicast"] == 1 and s["flood_tx"] == 2


def test_flood_without_peers_sends_nothing(make_rig):
    rig = make_rig(LOCAL)
    rig.to_tap(frame(BROADCAST, mac(50)))
    assert rig.run_until_idle() == 1
    s = rig.stats()
    assert s["tap_rx"] == 1 and s["flood_tx"] == s["udp_tx"] == 0


def test_known_mac_without_route_is_dropped(make_rig):
    rig = make_rig(LOCAL)
    rig.pump.set_mac(mac(1), 1)  # endpoint gossiped before its peer is known
    rig.to_tap(frame(mac(1), mac(50)))
    rig.run_until_idle()
    assert rig.stats()["drop_no_route"] == 1


def test_short_frames_are_dropped(make_rig):
    rig = make_rig(LOCAL)
    rig.connect(1)
    for n in (0, 1, 13):
        rig.to_tap(b"\xff" * n)
    rig.run_until_idle()
    assert rig.received(1) == []
    s = rig.stats()
    assert s["tap_rx"] == 3 and s["drop_short_frame"] == 3 and s["tap_rx_bytes"] == 14


def test_a_14_byte_frame_is_long_enough(make_rig):
    rig = make_rig(LOCAL)
    rig.connect(1)
    f = frame(BROADCAST, mac(50), b"")
    rig.to_tap(f)
    rig.run_until_idle()
    assert rig.received(1) == [header(LOCAL, 1) + f]


def test_oversize_frames_are_dropped_and_the_largest_fits(make_rig):
    rig = make_rig(LOCAL)
    rig.connect(1)
    rig.pump.set_mac(mac(1), 1)
    biggest = frame(mac(1), mac(50), b"\xab" * (MAX_SLEEVE_FRAME - 14))
    rig.to_tap(biggest)
    rig.to_tap(biggest + b"\x00")
    rig.to_tap(biggest + b"\x00" * 5000)  # longer than the read buffer: seen, not cut
    rig.run_until_idle()
    assert rig.received(1) == [header(LOCAL, 1) + biggest]
    assert rig.stats()["drop_oversize"] == 2


def test_a_learned_host_seen_on_the_tap_is_unlearned(make_rig):
    rig = make_rig(LOCAL)
    rig.connect(1)
    rig.connect(2)
    rig.send_from(1, header(1, LOCAL) + frame(mac(60), mac(5)))
    rig.run_until_idle()
    assert rig.pump.macs() == {mac(5): 1}
    rig.to_tap(frame(BROADCAST, mac(5)))  # mac(5) now talks from our side
    rig.run_until_idle()
    assert rig.pump.macs() == {}
    assert rig.stats()["unlearned"] == 1
    rig.received(1), rig.received(2)
    rig.to_tap(frame(mac(5), mac(6)))  # so frames for it are unknown unicast again
    rig.run_until_idle()
    assert len(rig.received(1)) == len(rig.received(2)) == 1


def test_a_static_mac_seen_on_the_tap_stays(make_rig):
    rig = make_rig(LOCAL)
    rig.connect(1)
    rig.pump.set_mac(mac(5), 1)
    rig.to_tap(frame(BROADCAST, mac(5)))
    rig.run_until_idle()
    assert rig.pump.macs() == {mac(5): 1}
    assert rig.stats()["unlearned"] == 0


def test_batches_larger_than_the_send_queue(make_rig):
    rig = make_rig(LOCAL, batch=4)
    for p in range(1, 11):
        rig.connect(p)
    frames = [frame(BROADCAST, mac(50), bytes([i]) * 46) for i in range(9)]
    for f in frames:
        rig.to_tap(f)
    assert rig.run_until_idle() == 9
    for p in range(1, 11):
        assert rig.received(p) == [header(LOCAL, p) + f for f in frames]
    assert rig.stats()["udp_tx"] == 90


def test_floods_skip_peers_with_flood_off_but_unicast_still_reaches_them(make_rig):
    rig = make_rig(LOCAL)
    rig.connect(1)
    rig.pump.set_peer(2, rig.remote(2).getsockname(), 2, flood=False)  # reached by kernel VXLAN
    rig.pump.set_peer(3, None, 2)  # relayed through a fastdp peer: still flooded, via 2
    bcast = frame(BROADCAST, mac(50))
    rig.to_tap(bcast)
    rig.to_tap(frame(mac(77), mac(50)))  # unknown unicast floods the same way
    rig.run_until_idle()
    assert rig.received(1) == [header(LOCAL, 1) + bcast, header(LOCAL, 1) + frame(mac(77), mac(50))]
    assert sorted(rig.received(2)) == sorted([header(LOCAL, 3) + bcast, header(LOCAL, 3) + frame(mac(77), mac(50))])
    rig.pump.set_mac(mac(2), 2)
    uni = frame(mac(2), mac(50))
    rig.to_tap(uni)
    rig.run_until_idle()
    assert rig.received(2) == [header(LOCAL, 2) + uni]
    assert rig.stats()["flood_tx"] == 4
    rig.pump.set_peer(2, rig.remote(2).getsockname(), 2)  # back on the sleeve: flooded again
    rig.to_tap(bcast)
    rig.run_until_idle()
    assert header(LOCAL, 2) + bcast in rig.received(2)


def test_peer_stats_count_frames_each_way(make_rig):
    rig = make_rig(LOCAL)
    rig.connect(1)
    rig.connect(2)
    rig.pump.set_peer(3, None, 1)
    rig.pump.set_mac(mac(1), 1)
    rig.to_tap(frame(mac(1), mac(50), b"x" * 100))  # 114 bytes to 1
    rig.to_tap(frame(BROADCAST, mac(50)))  # 60 bytes to each of 1, 2, 3
    rig.send_from(1, header(1, LOCAL) + frame(mac(50), mac(5)))
    rig.send_from(1, header(3, LOCAL) + frame(mac(50), mac(6)))  # from 3, relayed by 1
    rig.send_from(1, header(2, 3) + frame(mac(50), mac(6)))  # a relay: no peer's traffic
    rig.run_until_idle()
    assert rig.pump.peer_stats() == {
        1: {"tx_frames": 2, "tx_bytes": 174, "rx_frames": 1, "rx_bytes": 60},
        2: {"tx_frames": 1, "tx_bytes": 60, "rx_frames": 0, "rx_bytes": 0},
        3: {"tx_frames": 1, "tx_bytes": 60, "rx_frames": 1, "rx_bytes": 60},
    }
    rig.pump.set_peer(1, rig.remote(1).getsockname(), 1, flood=False)  # changing a route keeps them
    assert rig.pump.peer_stats()[1]["tx_frames"] == 2
    rig.pump.remove_peer(1)
    assert set(rig.pump.peer_stats()) == {2, 3}


# -- the flow hint (flags bits 3-7): one per inner flow, for receivers that steer by it --


def _hint(datagram: bytes) -> int:
    return datagram[2] >> HINT_SHIFT


def _tcp(sport: int, dport: int, *, src: bytes = b"\x0a\x20\x01\x01", frag: int = 0x4000) -> bytes:
    f = bytearray(ipv4_tcp(b"x" * 40, src=src, dst_mac=mac(1)))
    f[34:36], f[36:38] = sport.to_bytes(2, "big"), dport.to_bytes(2, "big")
    f[20:22] = frag.to_bytes(2, "big")
    return bytes(f)


def test_every_datagram_of_a_flow_carries_its_flow_hint(make_rig):
    rig = make_rig(LOCAL)
    rig.connect(1)
    rig.pump.set_mac(mac(1), 1)
    flows = [(40000 + i, 5201) for i in range(64)]
    for sport, dport in flows * 2:
        rig.to_tap(_tcp(sport, dport))
    rig.to_tap(frame(mac(1), mac(2), ethertype=0x0806))  # ARP: no flow, hint 0
    rig.run_until_idle()
    got = rig.received(1)
    hints = [_hint(d) for d in got[:-1]]
    assert hints[:64] == hints[64:]  # the same flow, the same hint
    assert hints == [flow_hint(d[12:]) for d in got[:-1]]  # the rule of layout.flow_hint
    assert len(set(hints)) >= 16  # 64 flows spread over the 32 values
    assert _hint(got[-1]) == 0
    assert all(d[2] & 0x07 == 0 for d in got)  # no CSUM here, nor seal: only the hint is set


def _reply(f: bytes) -> bytes:
    """The same frame going back: addresses and ports swapped."""
    b = bytearray(f)
    if f[12:14] == b"\x08\x00":
        b[26:30], b[30:34] = f[30:34], f[26:30]
        l4 = 14 + (f[14] & 15) * 4
    else:
        b[22:38], b[38:54] = f[38:54], f[22:38]
        l4 = 54
    b[l4 : l4 + 2], b[l4 + 2 : l4 + 4] = f[l4 + 2 : l4 + 4], f[l4 : l4 + 2]
    return bytes(b)


def test_the_flow_hint_keys_on_addresses_protocol_and_ports():
    a = _tcp(40000, 5201)
    assert flow_hint(a) == flow_hint(_tcp(40000, 5201))
    assert flow_hint(_reply(a)) == flow_hint(a)  # a connection's replies: the same thread
    assert flow_hint(_reply(ipv6_tcp(b"x" * 20))) == flow_hint(ipv6_tcp(b"x" * 20))
    assert {flow_hint(_tcp(p, 5201)) for p in range(40000, 40064)} != {flow_hint(a)}
    # fragments of one datagram share a hint whatever their ports say (a later one has none)
    assert flow_hint(_tcp(1, 2, frag=0x2000)) == flow_hint(_tcp(3, 4, frag=0x0010))
    assert flow_hint(b"\x00" * 13) == 0 and flow_hint(frame(mac(1), mac(2), ethertype=0x0806)) == 0
    assert all(0 <= flow_hint(_tcp(p, 80)) < 32 for p in range(1000))


ip_headers = st.builds(
    lambda v6, proto, frag, a, b, ports, ihl: _raw_ip(v6, proto, frag, a, b, ports, ihl),
    st.booleans(), st.sampled_from([6, 17, 1, 6, 17]), st.sampled_from([0, 0, 0x4000, 0x2000, 0x0001]),
    st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=16) | st.just(bytes(16)),
    st.binary(min_size=4, max_size=4), st.sampled_from([5, 5, 6]),
)


def _raw_ip(v6: bool, proto: int, frag: int, a: bytes, b: bytes, ports: bytes, ihl: int) -> bytes:
    if v6:
        return mac(1) + mac(2) + b"\x86\xdd" + b"\x60\0\0\0\0\x20" + bytes((proto, 64)) + a + b + ports + bytes(28)
    ip = bytes((0x40 | ihl, 0)) + b"\0\x40\0\0" + frag.to_bytes(2, "big") + bytes((64, proto)) + b"\0\0" + a[:4] + b[:4]
    return mac(1) + mac(2) + b"\x08\x00" + ip + bytes(4 * (ihl - 5)) + ports + bytes(28)


@pytest.fixture(scope="module")
def hinting(impl):
    rig = Rig(impl, LOCAL)  # one for all examples
    rig.connect(1)
    rig.pump.set_mac(mac(1), 1)
    yield rig
    rig.close()


@settings(max_examples=300, deadline=None)
@given(frames=st.lists(ip_headers, min_size=1, max_size=20))
def test_both_pumps_hint_by_the_reference_rule(hinting, frames):
    rig = hinting
    for f in frames:
        rig.to_tap(f)
    rig.run_until_idle()
    got = rig.received(1)
    assert [_hint(d) for d in got] == [flow_hint(f) for f in frames]
    assert all(flow_hint(_reply(f)) == flow_hint(f) for f in frames if f[23 if f[13] == 0 else 20] in (6, 17))
