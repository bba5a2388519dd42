"""The table API: peers, static MACs, validation and capacities."""

from __future__ import annotations

import os
import socket

import pytest

from meshnet.dataplane.counters import COUNTERS
from meshnet.dataplane.layout import MAC_TABLE_DEFAULT, PEER_TABLE_MAX
from pump_harness import BROADCAST, frame, header, mac

LOCAL = 100


def test_stats_have_the_same_keys_in_both_implementations(make_rig):
    s = make_rig(LOCAL).stats()
    assert tuple(s) == COUNTERS
    assert set(s.values()) == {0}


def test_set_and_forget_static_macs(make_rig):
    pump = make_rig(LOCAL).pump
    pump.set_mac(mac(1), 1)
    pump.set_mac(bytearray(mac(2)), 2)
    pump.set_mac(mac(1), 3)  # re-pointing a static entry
    assert pump.macs() == {mac(1): 3, mac(2): 2}
    pump.forget_mac(mac(1))
    pump.forget_mac(mac(9))  # unknown: nothing to do
    assert pump.macs() == {mac(2): 2}


def test_remove_peer_forgets_its_route_and_its_macs(make_rig):
    rig = make_rig(LOCAL)
    rig.connect(1)
    rig.connect(2)
    rig.pump.set_mac(mac(1), 1)
    rig.pump.set_mac(mac(9), 9)  # static entry for a peer never set
    rig.send_from(1, header(1, LOCAL) + frame(BROADCAST, mac(5)))
    rig.send_from(2, header(2, LOCAL) + frame(BROADCAST, mac(6)))
    rig.run_until_idle()
    assert rig.pump.macs() == {mac(1): 1, mac(9): 9, mac(5): 1, mac(6): 2}
    rig.pump.remove_peer(1)
    rig.pump.remove_peer(9)
    rig.pump.remove_peer(12345)  # unknown: nothing to do
    assert rig.pump.macs() == {mac(6): 2}
    rig.from_tap()
    rig.send_from(1, header(1, LOCAL) + frame(BROADCAST, mac(5)))
    rig.to_tap(frame(BROADCAST, mac(50)))
    rig.run_until_idle()
    assert rig.from_tap() == [] and rig.received(1) == []
    assert len(rig.received(2)) == 1
    assert rig.stats()["drop_unknown_sender"] == 1


def test_many_macs_survive_deletes(make_rig):
    """Enough entries to make long probe runs in the compiled hash table."""
    pump = make_rig(LOCAL).pump
    expect = {}
    for i in range(3000):
        pump.set_mac(mac(i), i % 7)
        expect[mac(i)] = i % 7
    for i in range(0, 3000, 3):
        pump.forget_mac(mac(i))
        del expect[mac(i)]
    pump.remove_peer(4)
    expect = {m: p for m, p in expect.items() if p != 4}
    assert pump.macs() == expect


@pytest.mark.parametrize(
    "call",
    [
        lambda p: p.set_peer(-1, None, 1),
        lambda p: p.set_peer(1 << 32, None, 1),
        lambda p: p.set_peer("1", None, 1),
        lambda p: p.set_peer(1, None, 1 << 32),
        lambda p: p.set_peer(LOCAL, None, LOCAL),
        lambda p: p.set_peer(1, None, LOCAL),
        lambda p: p.set_peer(1, ("::1", 6783), 1),
        lambda p: p.set_peer(1, ("localhost", 6783), 1),
        lambda p: p.set_peer(1, ("127.0.0.1", 0), 1),
        lambda p: p.set_peer(1, ("127.0.0.1", 70000), 1),
        lambda p: p.set_mac(b"\x02\x00", 1),
        lambda p: p.set_mac(mac(1), LOCAL),
        lambda p: p.set_mac(mac(1), -5),
        lambda p: p.forget_mac(b"1234567"),
        lambda p: p.remove_peer(-1),
    ],
)
def test_bad_arguments_are_refused(make_rig, call):
    pump = make_rig(LOCAL).pump
    with pytest.raises(ValueError):
        call(pump)
    assert pump.macs() == {}


def test_bad_constructor_arguments_are_refused(impl):
    tap, app = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    v4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    v6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        for udp in (v6, tcp, app):
            with pytest.raises(ValueError):
                impl(tap.fileno(), udp.fileno(), LOCAL)
        for batch in (0, 1025):
            with pytest.raises(ValueError):
                impl(tap.fileno(), v4.fileno(), LOCAL, batch=batch)
        with pytest.raises(ValueError):
            impl(tap.fileno(), v4.fileno(), 1 << 32)
        impl(tap.fileno(), v4.fileno(), LOCAL, batch=1024).close()
    finally:
        for s in (tap, app, v4, v6, tcp):
            s.close()


def test_the_pump_makes_its_fds_nonblocking(make_rig):
    rig = make_rig(LOCAL)
    assert not os.get_blocking(rig.tap.fileno())
    assert not os.get_blocking(rig.udp.fileno())


def test_the_mac_table_is_bounded(make_rig):
    """Full of gossiped entries: set_mac refuses, learning counts learn_table_full."""
    cap = 64
    rig = make_rig(LOCAL, mac_table_max=cap)
    rig.connect(1)
    for i in range(cap):
        rig.pump.set_mac(mac(i), 1)
    with pytest.raises(OverflowError):
        rig.pump.set_mac(mac(cap), 1)
    rig.pump.set_mac(mac(0), 2)  # an existing entry may still change
    rig.send_from(1, header(1, LOCAL) + frame(BROADCAST, mac(cap + 1)))
    rig.run_until_idle()
    assert rig.stats()["learn_table_full"] == 1
    assert len(rig.from_tap()) == 1  # the frame itself is still delivered
    assert len(rig.pump.macs()) == cap


def test_the_default_capacity_holds_100k_gossiped_endpoints(make_rig):
    pump = make_rig(LOCAL).pump
    assert MAC_TABLE_DEFAULT >= 100_000 and pump.features()["mac_table_max"] == MAC_TABLE_DEFAULT
    for i in range(100_000):
        pump.set_mac(mac(i), 1 + i % 50)
    assert pump.table_sizes() == {"macs": 100_000, "learned": 0, "peers": 0}


def test_the_peer_table_is_bounded(make_rig):
    pump = make_rig(LOCAL).pump
    ids = range(1000, 1000 + PEER_TABLE_MAX)
    for i in ids:
        pump.set_peer(i, None, i)
    with pytest.raises(OverflowError):
        pump.set_peer(1, None, 1)
    pump.set_peer(ids[0], ("127.0.0.1", 9), ids[0])  # an existing peer may still change
    pump.remove_peer(ids[1])
    pump.set_peer(1, None, 1)
