"""run()/stop(), threads, errors from the fds, and pumps talking to each other."""

from __future__ import annotations

import select
import socket
import threading
import time

import pytest

from pump_harness import BROADCAST, Rig, frame, header, mac

LOCAL = 100


def _start(pump) -> threading.Thread:
    t = threading.Thread(target=pump.run, daemon=True)
    t.start()
    return t


def _recv(sock: socket.socket, timeout: float = 5.0) -> bytes:
    ready, _, _ = select.select([sock], [], [], timeout)
    assert ready, "nothing arrived"
    return sock.recv(1 << 17)


def test_stop_wakes_run_promptly(make_rig):
    rig = make_rig(LOCAL)
    t = _start(rig.pump)
    time.sleep(0.05)
    t0 = time.monotonic()
    rig.pump.stop()
    t.join(2)
    assert not t.is_alive() and time.monotonic() - t0 < 1
    t = _start(rig.pump)  # a pump can be run again after it stopped
    rig.pump.stop()
    t.join(2)
    assert not t.is_alive()


def test_stop_before_run_makes_run_return_at_once(make_rig):
    rig = make_rig(LOCAL)
    rig.pump.stop()
    rig.pump.run()


def test_poll_times_out_when_idle(make_rig):
    rig = make_rig(LOCAL)
    t0 = time.monotonic()
    assert rig.pump.poll(50) == 0
    assert 0.04 < time.monotonic() - t0 < 1


def test_a_closed_pump_refuses_to_poll(make_rig):
    rig = make_rig(LOCAL)
    rig.pump.close()
    rig.pump.close()
    with pytest.raises(ValueError):
        rig.pump.poll(0)
    with pytest.raises(ValueError):
        rig.pump.run()


def test_a_vanished_tap_fd_is_an_error_not_a_spin(impl):
    app, tap = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    pump = impl(tap.fileno(), udp.fileno(), LOCAL)
    try:
        tap.close()
        with pytest.raises(OSError):
            pump.poll(100)
    finally:
        pump.close()
        app.close()
        udp.close()


def test_a_failed_send_is_counted_and_the_rest_still_go(make_rig):
    rig = make_rig(LOCAL)
    rig.connect(1)
    # No SO_BROADCAST on the pump's socket: the kernel refuses this (EACCES), sends nothing.
    rig.pump.set_peer(2, ("255.255.255.255", 9), 2)
    rig.connect(3)
    f = frame(BROADCAST, mac(50))
    rig.to_tap(f)
    rig.run_until_idle()
    assert rig.received(1) == [header(LOCAL, 1) + f]
    assert rig.received(3) == [header(LOCAL, 3) + f]
    s = rig.stats()
    assert s["drop_send_error"] == 1 and s["udp_tx"] == 2 and s["flood_tx"] == 3


def test_two_pumps_learn_each_other(impl):
    a, b = Rig(impl, 1), Rig(impl, 2)
    try:
        a.pump.set_peer(2, b.addr, 2)
        b.pump.set_peer(1, a.addr, 1)
        threads = [_start(a.pump), _start(b.pump)]
        arp = frame(BROADCAST, mac(10), b"who-has" + b"\x00" * 39, 0x0806)
        a.app.send(arp)
        assert _recv(b.app) == arp
        reply = frame(mac(10), mac(20), b"is-at" + b"\x00" * 41, 0x0806)
        b.app.send(reply)
        assert _recv(a.app) == reply
        data = frame(mac(20), mac(10), b"payload" * 100)
        a.app.send(data)
        assert _recv(b.app) == data
        for r in (a, b):
            r.pump.stop()
        for t in threads:
            t.join(2)
        assert a.pump.macs() == {mac(20): 2} and b.pump.macs() == {mac(10): 1}
        sa, sb = a.stats(), b.stats()
        assert sa["flood_tx"] == 1 and sb["flood_tx"] == 0  # the reply and data were unicast
        assert (sa["udp_tx"], sb["udp_rx"], sb["tap_tx"]) == (2, 2, 2)
    finally:
        a.close()
        b.close()


def test_three_pumps_relay_through_the_middle(impl):
    a, b, c = Rig(impl, 1), Rig(impl, 2), Rig(impl, 3)
    try:
        a.pump.set_peer(2, b.addr, 2)
        a.pump.set_peer(3, None, 2)
        b.pump.set_peer(1, a.addr, 1)
        b.pump.set_peer(3, c.addr, 3)
        c.pump.set_peer(2, b.addr, 2)
        c.pump.set_peer(1, None, 2)
        threads = [_start(r.pump) for r in (a, b, c)]
        hello = frame(BROADCAST, mac(10))
        a.app.send(hello)
        assert _recv(b.app) == hello
        assert _recv(c.app) == hello
        back = frame(mac(10), mac(30), b"back" * 20)
        c.app.send(back)
        assert _recv(a.app) == back
        for r in (a, b, c):
            r.pump.stop()
        for t in threads:
            t.join(2)
        assert c.pump.macs() == {mac(10): 1} and a.pump.macs() == {mac(30): 3}
        assert b.stats()["relayed"] == 2 and b.pump.macs() == {mac(10): 1}
    finally:
        for r in (a, b, c):
            r.close()


def test_tables_change_safely_while_run_forwards(make_rig):
    rig = make_rig(LOCAL)
    rig.connect(1)
    sink = rig.remote(1)
    t = _start(rig.pump)
    sent = 0
    deadline = time.monotonic() + 1.0
    i = 0
    while time.monotonic() < deadline:
        i += 1
        rig.pump.set_peer(2 + i % 50, None, 1)
        rig.pump.set_mac(mac(i % 300), 2 + i % 50)
        if i % 3 == 0:
            rig.pump.remove_peer(2 + (i * 7) % 50)
        if i % 5 == 0:
            rig.pump.forget_mac(mac((i * 11) % 300))
        rig.pump.macs()
        rig.pump.stats()
        try:
            rig.app.send(frame(mac(i % 300), mac(9999)))
            sent += 1
        except BlockingIOError:
            pass
        try:
            while True:
                sink.recv(1 << 17)
        except BlockingIOError:
            pass
    deadline = time.monotonic() + 5
    while rig.stats()["tap_rx"] < sent and time.monotonic() < deadline:
        time.sleep(0.01)
    rig.pump.stop()
    t.join(2)
    assert not t.is_alive()
    s = rig.stats()
    assert s["tap_rx"] == sent
    assert s["udp_tx"] > 0
