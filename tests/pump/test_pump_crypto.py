"""Sleeve encryption: sealing, opening, replay window, key epochs, and every drop reason."""

from __future__ import annotations

import os
import threading

import pytest

from meshnet.dataplane import sleeve_crypto
from meshnet.dataplane.layout import (
    FLAG_CSUM,
    FLAG_KEY_ID,
    FLAG_SEALED,
    REJECT_AFTER_MESSAGES,
    REKEY_AFTER_MESSAGES,
    REPLAY_WINDOW,
)
from pump_harness import BROADCAST, Rig, frame, header, mac

LOCAL = 100
K1, K2, K3, K4 = (bytes([i]) * 32 for i in (1, 2, 3, 4))  # K1/K2: link 100<->1, K3/K4: 100<->2


def sealed(src, dst, counter, f, key, *, epoch=0, ttl=8, flags=0):
    hdr = header(src, dst, ttl=ttl, flags=flags | sleeve_crypto.key_id_flags(epoch))
    return sleeve_crypto.seal(key, hdr, counter, f)


@pytest.fixture
def crig(impl):
    """An encrypted pump with peers 1 and 2 keyed, 3 reached through 1."""
    rig = Rig(impl, LOCAL, crypto=True)
    rig.connect(1)
    rig.connect(2)
    rig.pump.set_peer(3, None, 1)
    rig.pump.set_peer_keys(1, K1, K2, epoch=0)  # we send with K1, peer 1 sends with K2
    rig.pump.set_peer_keys(2, K3, K4, epoch=0)
    yield rig
    rig.close()


def only_drop(rig, counter):
    s = rig.stats()
    drops = {k: v for k, v in s.items() if k.startswith("drop_") and v}
    assert drops == {counter: 1}, drops


def test_unicast_is_sealed_with_the_link_key_and_counts_up(crig):
    crig.pump.set_mac(mac(1), 1)
    f = frame(mac(1), mac(50), b"secret" * 10)
    crig.to_tap(f)
    crig.to_tap(f)
    crig.run_until_idle()
    got = crig.received(1)
    assert got == [sealed(LOCAL, 1, 0, f, K1), sealed(LOCAL, 1, 1, f, K1)]
    assert sleeve_crypto.open_(K1, got[1]) == f
    assert crig.stats()["udp_tx_bytes"] == 2 * (len(f) + 36)


def test_floods_are_sealed_per_next_hop(crig):
    f = frame(BROADCAST, mac(50))
    crig.to_tap(f)
    crig.run_until_idle()
    # peer 1 and peer 3 (via 1) share the link key to 1: consecutive counters, array order
    assert crig.received(1) == [sealed(LOCAL, 1, 0, f, K1), sealed(LOCAL, 3, 1, f, K1)]
    assert crig.received(2) == [sealed(LOCAL, 2, 0, f, K3)]
    assert crig.stats()["flood_tx"] == 3


def test_a_sealed_datagram_for_us_is_opened_delivered_and_learned(crig):
    f = frame(mac(50), mac(5))
    crig.send_from(1, sealed(1, LOCAL, 0, f, K2))
    crig.send_from(1, sealed(3, LOCAL, 1, f, K2))  # relayed by 1: opened with 1's key
    crig.run_until_idle()
    assert crig.from_tap() == [f, f]
    assert crig.pump.macs() == {mac(5): 3}
    assert crig.pump.peer_stats()[3]["rx_frames"] == 1


def test_relays_reseal_for_the_next_hop_with_ttl_minus_one(crig):
    f = frame(mac(60), mac(5))
    crig.send_from(2, sealed(2, 3, 0, f, K4, ttl=5, flags=0x70))  # to 3, whose next hop is 1
    crig.run_until_idle()
    assert crig.received(1) == [sealed(2, 3, 0, f, K1, ttl=4, flags=0x70)]
    assert crig.stats()["relayed"] == 1


@pytest.mark.parametrize("where", [0, 2, 3, 4, 11, 12, 19, 20, 40, -1])
def test_tampering_anywhere_is_caught(crig, where):
    d = bytearray(sealed(1, LOCAL, 0, frame(mac(50), mac(5)), K2))
    d[where] ^= 0x10 if where != 2 else 0x20  # in flags, leave SEALED/KEY_ID alone
    crig.send_from(1, bytes(d))
    crig.run_until_idle()
    assert crig.from_tap() == []
    s = crig.stats()
    if where == 0:
        only_drop(crig, "drop_version")
    elif where == 12:  # the counter's top byte: a counter no sender ever uses
        only_drop(crig, "drop_replay")
    else:  # flags, ttl, src, dst and the counter are authenticated like the frame and tag
        only_drop(crig, "drop_auth")
    assert s["learned"] == 0


def test_replays_are_dropped_and_reordering_within_the_window_is_fine(crig):
    f = frame(mac(50), mac(5))
    for c in (5, 3, 5, 4, 3, 5 + REPLAY_WINDOW, 5, 6):
        crig.send_from(1, sealed(1, LOCAL, c, f, K2))
        crig.run_until_idle()
    # accepted: 5, 3, 4, 1029, 6; replayed: 5, 3; 5 is now below the window
    assert len(crig.from_tap()) == 5
    s = crig.stats()
    assert s["drop_replay"] == 3 and s["tap_tx"] == 5


def test_counters_no_sender_uses_are_never_accepted(crig):
    f = frame(mac(50), mac(5))
    for c in (REJECT_AFTER_MESSAGES, 2**64 - 1):
        crig.send_from(1, sealed(1, LOCAL, c, f, K2))
    crig.send_from(1, sealed(1, LOCAL, 0, f, K2))  # the window did not move
    crig.run_until_idle()
    assert crig.from_tap() == [f]
    assert crig.stats()["drop_replay"] == 2


def test_a_forged_datagram_does_not_move_the_window(crig):
    f = frame(mac(50), mac(5))
    forged = bytearray(sealed(1, LOCAL, 10**6, f, K2))
    forged[-1] ^= 1
    crig.send_from(1, bytes(forged))
    crig.send_from(1, sealed(1, LOCAL, 0, f, K2))  # still inside the window
    crig.run_until_idle()
    assert crig.from_tap() == [f]
    assert crig.stats()["drop_auth"] == 1


@pytest.mark.parametrize(
    "make, counter",
    [
        (lambda f: sealed(1, LOCAL, 0, f, K1), "drop_auth"),  # wrongly keyed (our send key)
        (lambda f: sealed(1, LOCAL, 0, f, K2)[:-1], "drop_auth"),  # truncated tag
        (lambda f: sealed(1, LOCAL, 0, f, K2)[:49], "drop_short"),  # shorter than any sealed one
        (lambda f: sealed(1, LOCAL, 0, f, K2, epoch=1), "drop_no_key"),  # no key for KEY_ID 1
        (lambda f: header(1, LOCAL) + f, "drop_plaintext"),
        (lambda f: header(1, LOCAL, flags=FLAG_CSUM) + f, "drop_plaintext"),
        (lambda f: sealed(1, LOCAL, 0, f, K2, flags=FLAG_CSUM), "drop_bad_csum"),  # not IP
    ],
)
def test_bad_sealed_datagrams_are_dropped_by_reason(crig, make, counter):
    crig.send_from(1, make(frame(mac(50), mac(5))))
    crig.run_until_idle()
    assert crig.from_tap() == []
    only_drop(crig, counter)
    assert crig.pump.macs() == {}


def test_a_sender_address_without_keys_has_no_key(impl):
    rig = Rig(impl, LOCAL, crypto=True)
    try:
        rig.connect(1)
        rig.send_from(1, sealed(1, LOCAL, 0, frame(mac(50), mac(5)), K2))
        rig.pump.set_mac(mac(1), 1)
        rig.to_tap(frame(mac(1), mac(50)))  # and nothing leaves unsealed
        rig.to_tap(frame(BROADCAST, mac(50)))
        rig.run_until_idle()
        assert rig.received(1) == []
        s = rig.stats()
        assert s["drop_no_key"] == 1 and s["drop_tx_no_key"] == 2 and s["udp_tx"] == 0
        assert s["flood_tx"] == 0 and rig.pump.peer_stats()[1]["tx_frames"] == 0
    finally:
        rig.close()


def test_an_unencrypted_pump_drops_sealed_datagrams(make_rig):
    rig = make_rig(LOCAL)
    rig.connect(1)
    rig.send_from(1, sealed(1, LOCAL, 0, frame(mac(50), mac(5)), K2))
    rig.run_until_idle()
    only_drop(rig, "drop_sealed")


def test_a_new_epoch_switches_the_send_key_and_old_datagrams_still_open(crig):
    f = frame(mac(50), mac(5))
    crig.pump.set_mac(mac(1), 1)
    n1, n2 = os.urandom(32), os.urandom(32)
    crig.pump.set_peer_keys(1, n1, n2, epoch=1)
    crig.send_from(1, sealed(1, LOCAL, 7, f, K2, epoch=0))  # in flight from epoch 0
    crig.send_from(1, sealed(1, LOCAL, 0, f, n2, epoch=1))
    out = frame(mac(1), mac(50))
    crig.to_tap(out)
    crig.run_until_idle()
    assert crig.from_tap() == [f, f]
    assert crig.received(1) == [sealed(LOCAL, 1, 0, out, n1, epoch=1)]
    assert crig.received(1) == []
    crig.pump.set_peer_keys(1, os.urandom(32), os.urandom(32), epoch=2)  # replaces epoch 0's
    crig.send_from(1, sealed(1, LOCAL, 8, f, K2, epoch=0))
    crig.send_from(1, sealed(1, LOCAL, 1, f, n2, epoch=1))  # epoch 1 still opens
    crig.run_until_idle()
    assert crig.from_tap() == [f]
    assert crig.stats()["drop_auth"] == 1


def test_installing_the_same_keys_again_keeps_counter_and_window(crig):
    crig.pump.set_mac(mac(1), 1)
    f = frame(mac(1), mac(50))
    crig.to_tap(f)
    crig.send_from(1, sealed(1, LOCAL, 0, frame(mac(50), mac(5)), K2))
    crig.run_until_idle()
    crig.pump.set_peer_keys(1, K1, K2, epoch=0)  # the router re-programs the same session
    crig.to_tap(f)
    crig.send_from(1, sealed(1, LOCAL, 0, frame(mac(50), mac(5)), K2))  # a replay still
    crig.run_until_idle()
    assert crig.received(1) == [sealed(LOCAL, 1, 0, f, K1), sealed(LOCAL, 1, 1, f, K1)]
    assert crig.stats()["drop_replay"] == 1


def test_keys_go_with_the_peer(crig):
    crig.pump.remove_peer(1)
    crig.connect(1)
    crig.pump.set_mac(mac(1), 1)
    crig.to_tap(frame(mac(1), mac(50)))
    crig.send_from(1, sealed(1, LOCAL, 0, frame(mac(50), mac(5)), K2))
    crig.run_until_idle()
    s = crig.stats()
    assert s["drop_tx_no_key"] == 1 and s["drop_no_key"] == 1


def test_the_lowest_keyed_peer_id_owns_a_shared_address(crig):
    addr = crig.remote(1).getsockname()
    f = frame(mac(50), mac(5))

    def delivered(datagram):
        crig.send_from(1, datagram)
        crig.run_until_idle()
        return len(crig.from_tap())

    crig.pump.set_peer(7, addr, 7)  # a second peer id behind the same address, no keys
    assert delivered(sealed(1, LOCAL, 0, f, K2)) == 1
    crig.pump.set_peer(0, addr, 0)
    crig.pump.set_peer_keys(0, K3, K3, epoch=0)  # now peer 0 owns the address
    assert delivered(sealed(1, LOCAL, 1, f, K2)) == 0
    assert delivered(sealed(1, LOCAL, 0, f, K3)) == 1
    crig.pump.remove_peer(0)  # back to peer 1
    assert delivered(sealed(1, LOCAL, 2, f, K2)) == 1
    crig.pump.set_peer(1, None, 7)  # peer 1 moves away: 7 has no keys
    assert delivered(sealed(1, LOCAL, 3, f, K2)) == 0
    s = crig.stats()
    assert s["drop_auth"] == 1 and s["drop_no_key"] == 1


def test_rekey_due_and_the_hard_limit(crig):
    crig.pump.set_mac(mac(1), 1)
    assert crig.pump.rekey_due() == []
    crig.pump._set_tx_counter(1, REKEY_AFTER_MESSAGES)
    assert crig.pump.rekey_due() == [1]
    crig.pump._set_tx_counter(1, REJECT_AFTER_MESSAGES - 1)
    f = frame(mac(1), mac(50))
    crig.to_tap(f)
    crig.to_tap(f)
    crig.run_until_idle()
    assert crig.received(1) == [sealed(LOCAL, 1, REJECT_AFTER_MESSAGES - 1, f, K1)]
    assert crig.stats()["drop_key_exhausted"] == 1


@pytest.mark.parametrize(
    "call",
    [
        lambda p: p.set_peer_keys(1, b"short", K2, epoch=0),
        lambda p: p.set_peer_keys(1, K1, K2 + b"x", epoch=0),
        lambda p: p.set_peer_keys(1, K1, K2, epoch=-1),
        lambda p: p.set_peer_keys(1, K1, K2, epoch="1"),
        lambda p: p.set_peer_keys(42, K1, K2, epoch=0),
        lambda p: p.set_peer_keys(-1, K1, K2, epoch=0),
    ],
)
def test_bad_key_arguments_are_refused(crig, call):
    with pytest.raises(ValueError):
        call(crig.pump)


def test_three_encrypted_pumps_relay_through_the_middle(impl):
    a, b, c = Rig(impl, 1, crypto=True), Rig(impl, 2, crypto=True), Rig(impl, 3, crypto=True)
    ab, ba, bc, cb = (os.urandom(32) for _ in range(4))
    try:
        a.pump.set_peer(2, b.addr, 2)
        a.pump.set_peer(3, None, 2)
        b.pump.set_peer(1, a.addr, 1)
        b.pump.set_peer(3, c.addr, 3)
        c.pump.set_peer(2, b.addr, 2)
        c.pump.set_peer(1, None, 2)
        a.pump.set_peer_keys(2, ab, ba, epoch=3)
        b.pump.set_peer_keys(1, ba, ab, epoch=3)
        b.pump.set_peer_keys(3, bc, cb, epoch=0)
        c.pump.set_peer_keys(2, cb, bc, epoch=0)
        threads = [threading.Thread(target=r.pump.run, daemon=True) for r in (a, b, c)]
        for t in threads:
            t.start()
        hello = frame(BROADCAST, mac(10))
        a.app.send(hello)
        for r in (b, c):
            r.app.settimeout(5)
            assert r.app.recv(1 << 16) == hello
        back = frame(mac(10), mac(30), b"back" * 20)
        c.app.send(back)
        a.app.settimeout(5)
        assert a.app.recv(1 << 16) == back
        for r in (a, b, c):
            r.pump.stop()
        for t in threads:
            t.join(2)
        assert b.stats()["relayed"] == 2
        assert all(sum(v for k, v in r.stats().items() if k.startswith("drop_")) == 0 for r in (a, b, c))
    finally:
        for r in (a, b, c):
            r.close()


def test_sealed_and_csum_flags_are_distinct_bits():
    assert len({FLAG_SEALED, FLAG_KEY_ID, FLAG_CSUM}) == 3
    assert sleeve_crypto.key_id_flags(5) == FLAG_SEALED | FLAG_KEY_ID
