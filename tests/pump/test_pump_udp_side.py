"""Datagrams from the underlay: delivery to the TAP, learning, relaying, drops."""

from __future__ import annotations

import socket

import pytest

from pump_harness import BROADCAST, frame, header, mac

LOCAL = 100


def test_a_frame_for_us_is_written_to_the_tap_and_its_source_learned(make_rig):
    rig = make_rig(LOCAL)
    rig.connect(1)
    f = frame(mac(50), mac(5))
    rig.send_from(1, header(1, LOCAL) + f)
    assert rig.run_until_idle() == 1
    assert rig.from_tap() == [f]
    assert rig.pump.macs() == {mac(5): 1}
    s = rig.stats()
    assert (s["udp_rx"], s["udp_rx_bytes"]) == (1, len(f) + 12)
    assert (s["tap_tx"], s["tap_tx_bytes"], s["learned"]) == (1, len(f), 1)
    # and the reply goes straight back, no flood
    rig.connect(2)
    reply = frame(mac(5), mac(50))
    rig.to_tap(reply)
    rig.run_until_idle()
    assert rig.received(1) == [header(LOCAL, 1) + reply]
    assert rig.received(2) == []


def test_the_header_src_not_the_sender_is_learned(make_rig):
    rig = make_rig(LOCAL)
    rig.connect(1)
    rig.pump.set_peer(3, None, 1)  # 3's frames arrive relayed by 1
    rig.send_from(1, header(3, LOCAL) + frame(mac(50), mac(5)))
    rig.run_until_idle()
    assert rig.pump.macs() == {mac(5): 3}


def test_a_host_moving_between_peers_is_relearned(make_rig):
    rig = make_rig(LOCAL)
    rig.connect(1)
    rig.connect(2)
    rig.send_from(1, header(1, LOCAL) + frame(BROADCAST, mac(5)))
    rig.run_until_idle()
    rig.send_from(2, header(2, LOCAL) + frame(BROADCAST, mac(5)))
    rig.run_until_idle()
    assert rig.pump.macs() == {mac(5): 2}
    assert rig.stats()["learned"] == 2


def test_learning_never_overrides_a_static_entry(make_rig):
    rig = make_rig(LOCAL)
    rig.connect(1)
    rig.connect(2)
    rig.pump.set_mac(mac(5), 2)
    f = frame(mac(50), mac(5))
    rig.send_from(1, header(1, LOCAL) + f)
    rig.run_until_idle()
    assert rig.from_tap() == [f]
    assert rig.pump.macs() == {mac(5): 2}
    assert rig.stats()["learned"] == 0


def test_multicast_source_macs_are_not_learned(make_rig):
    rig = make_rig(LOCAL)
    rig.connect(1)
    f = frame(mac(50), b"\x01\x00\x5e\x00\x00\x07")
    rig.send_from(1, header(1, LOCAL) + f)
    rig.run_until_idle()
    assert rig.from_tap() == [f]
    assert rig.pump.macs() == {}


def test_relay_decrements_ttl_and_sends_to_the_next_hop(make_rig):
    rig = make_rig(LOCAL)
    rig.connect(1)
    rig.connect(2)
    rig.pump.set_peer(3, None, 2)
    f = frame(mac(60), mac(5))
    rig.send_from(1, header(1, 3, ttl=5) + f)
    rig.send_from(1, header(1, 2, ttl=2, flags=0x70) + f)  # reserved flag bits are kept
    rig.run_until_idle()
    assert rig.received(2) == [header(1, 3, ttl=4) + f, header(1, 2, ttl=1, flags=0x70) + f]
    assert rig.from_tap() == []
    assert rig.pump.macs() == {}  # relays teach nothing
    s = rig.stats()
    assert s["relayed"] == 2 and s["udp_tx"] == 2


@pytest.mark.parametrize(
    "datagram, counter",
    [
        (b"", "drop_short"),
        (header(1, LOCAL) + b"\x00" * 13, "drop_short"),
        (header(1, LOCAL, ver=1) + frame(mac(1), mac(2)), "drop_version"),
        (header(1, LOCAL, ver=3) + frame(mac(1), mac(2)), "drop_version"),
        (header(1, LOCAL, flags=1) + frame(mac(1), mac(2)) + bytes(24), "drop_sealed"),
        (header(1, LOCAL, flags=4) + frame(mac(1), mac(2), b"\x00" * 4), "drop_bad_csum"),
        (header(1, LOCAL, typ=2) + frame(mac(1), mac(2)), "drop_type"),
        (header(1, LOCAL, typ=0) + frame(mac(1), mac(2)), "drop_type"),
        (header(42, LOCAL) + frame(mac(1), mac(2)), "drop_unknown_peer"),
        (header(1, 2, ttl=1) + frame(mac(1), mac(2)), "drop_ttl"),
        (header(1, 2, ttl=0) + frame(mac(1), mac(2)), "drop_ttl"),
        (header(1, 42) + frame(mac(1), mac(2)), "drop_no_route"),
        (header(1, 3) + frame(mac(1), mac(2)), "drop_no_route"),  # 3 via unknown 9
    ],
)
def test_bad_datagrams_are_counted_and_dropped(make_rig, datagram, counter):
    rig = make_rig(LOCAL)
    rig.connect(1)
    rig.connect(2)
    rig.pump.set_peer(3, None, 9)
    rig.send_from(1, datagram)
    rig.run_until_idle()
    assert rig.from_tap() == [] and rig.received(1) == rig.received(2) == []
    s = rig.stats()
    assert s[counter] == 1 and s["udp_rx"] == 1
    assert sum(v for k, v in s.items() if k.startswith("drop_")) == 1
    assert rig.pump.macs() == {}


def test_datagrams_from_unknown_addresses_are_dropped(make_rig):
    rig = make_rig(LOCAL)
    rig.connect(1)
    rig.pump.set_peer(2, None, 1)  # known id, but no address of its own
    f = frame(mac(50), mac(5))
    rig.send_from(2, header(1, LOCAL) + f)  # right header, wrong sender
    rig.send_from(7, header(1, LOCAL) + f)
    rig.run_until_idle()
    assert rig.from_tap() == []
    assert rig.stats()["drop_unknown_sender"] == 2


def test_an_address_shared_by_two_peers_stays_known_until_both_go(make_rig):
    rig = make_rig(LOCAL)
    rig.connect(1)
    rig.pump.set_peer(2, rig.remote(1).getsockname(), 2)
    rig.pump.remove_peer(1)
    f = frame(mac(50), mac(5))
    rig.send_from(1, header(2, LOCAL) + f)
    rig.run_until_idle()
    assert rig.from_tap() == [f]
    rig.pump.set_peer(2, None, 2)  # re-pointing releases the old address too
    rig.send_from(1, header(2, LOCAL) + f)
    rig.run_until_idle()
    assert rig.from_tap() == []
    assert rig.stats()["drop_unknown_sender"] == 1


def test_a_full_tap_drops_and_counts_instead_of_blocking(make_rig):
    rig = make_rig(LOCAL)
    rig.tap.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    rig.connect(1)
    for i in range(40):
        rig.send_from(1, header(1, LOCAL) + frame(mac(50), mac(5), bytes([i]) * 1000))
    assert rig.run_until_idle() == 40
    s = rig.stats()
    assert s["drop_tap_write"] > 0
    assert s["tap_tx"] + s["drop_tap_write"] == 40
    assert len(rig.from_tap()) == s["tap_tx"]
