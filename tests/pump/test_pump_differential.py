"""Differential tests: the compiled pump must do exactly what its Python twin does.

Random tables and random traffic go through both; after every step the bytes each
remote peer and the TAP received must be equal, and at the end the counters and MAC
tables. Copies of one flood may leave in a different order (the compiled peer table is
a dense array, the twin's a dict), so datagrams are compared per receiver and sorted.
"""

from __future__ import annotations

import random

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pump_harness import BROADCAST, Rig, header, mac

LOCAL = 100
PEERS = [1, 2, 3, 4, 5]
STRANGER = 0  # a socket that is never a peer's address
MACS = [mac(i) for i in range(6)] + [BROADCAST, b"\x01\x00\x5e\x00\x00\x01"]

def weighted(*choices: tuple[st.SearchStrategy, int]) -> st.SearchStrategy:
    """Draw from one of the strategies, picked with the given weights."""
    return st.sampled_from([s for s, w in choices for _ in range(w)]).flatmap(lambda s: s)


macs = st.sampled_from(MACS)
peer_ids = st.sampled_from(PEERS)
eth_frames = st.builds(
    lambda d, s, rest: d + s + rest, macs, macs, st.binary(min_size=2, max_size=80)
)
frames = weighted((st.binary(max_size=13), 1), (eth_frames, 4))
sleeve = st.builds(
    lambda ver, typ, flags, ttl, src, dst, inner: header(
        src, dst, ttl=ttl, ver=ver, typ=typ, flags=flags
    ) + inner,
    st.sampled_from([2, 2, 2, 1]),
    st.sampled_from([1, 1, 1, 0]),
    st.sampled_from([0, 0, 0, 0, 4, 0x70]) | st.integers(0, 255),
    st.sampled_from([0, 1, 2, 8]),
    st.sampled_from(PEERS + [1, 2, 3, LOCAL, 99]),
    st.sampled_from(PEERS + [LOCAL] * 5 + [99]),
    eth_frames,
)
datagrams = weighted((st.binary(max_size=40), 1), (sleeve, 4))
senders = st.sampled_from([1, 1, 1, 2, 2, 2, 3, STRANGER])  # 1 and 2 start with addresses
events = weighted(  # mostly traffic, and tables that change but rarely empty
    (st.tuples(st.just("tap"), frames), 8),
    (st.tuples(st.just("udp"), senders, datagrams), 10),
    (st.tuples(st.just("set_peer"), peer_ids, st.sampled_from([True, True, False]), peer_ids,
               st.sampled_from([True, True, False])), 3),
    (st.tuples(st.just("set_mac"), macs, peer_ids), 2),
    (st.tuples(st.just("forget_mac"), macs), 1),
    (st.tuples(st.just("remove_peer"), peer_ids), 1),
)
SETUP = [("set_peer", 1, True, 1, True), ("set_peer", 2, True, 2, True), ("set_peer", 3, False, 1, True)]


def _apply(rig: Rig, event: tuple) -> None:
    kind, *args = event
    if kind == "tick":  # the frozen clock moves on
        rig.clock += args[0]
        rig.pump._set_clock(rig.clock)
    elif kind == "set_mac":  # a full table of static entries refuses: both must
        try:
            rig.pump.set_mac(*args)
        except OverflowError:
            rig.refused += 1
    elif kind == "tap":
        rig.to_tap(args[0])
    elif kind == "udp":
        rig.send_from(*args)
    elif kind == "set_peer":
        peer, direct, via, flood = args
        rig.pump.set_peer(peer, rig.remote(peer).getsockname() if direct else None, via, flood=flood)
    else:
        getattr(rig.pump, kind)(*args)


def _outputs(rig: Rig) -> tuple:
    rig.run_until_idle(timeout_ms=1)
    return rig.from_tap(), {p: sorted(rig.received(p)) for p in PEERS + [STRANGER]}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(events, min_size=8, max_size=40), batch=st.sampled_from([1, 2, 32]))
def test_both_pumps_send_the_same_bytes_and_count_the_same(both, steps, batch):
    rigs = [Rig(cls, LOCAL, batch=batch) for cls in both]
    try:
        for rig in rigs:
            for p in PEERS + [STRANGER]:
                rig.remote(p)
        for step in SETUP + steps:
            for rig in rigs:
                _apply(rig, step)
            compiled, python = (_outputs(rig) for rig in rigs)
            assert compiled == python, step
        stats = rigs[0].stats()
        assert stats == rigs[1].stats()
        for name, value in stats.items():
            if value:
                event(name)  # coverage of the rules: pytest --hypothesis-show-statistics
        assert rigs[0].pump.macs() == rigs[1].pump.macs()
        assert rigs[0].pump.peer_stats() == rigs[1].pump.peer_stats()
    finally:
        for rig in rigs:
            rig.close()


# The MAC table's policy under pressure: a table of 4 entries, 2 learned per peer, MACs
# that age after 3 seconds, and a clock that moves (docs/sleeve.md, "The MAC table").
LIMITS = dict(mac_table_max=4, learn_quota=2, mac_age=3)
learns = st.builds(  # a well-formed datagram for us from a peer: its source MAC is learned
    lambda peer, dst, src: ("udp", peer, header(peer, LOCAL) + dst + src + b"\x08\x00" + bytes(46)),
    st.sampled_from([1, 2, 3]), macs, st.sampled_from(MACS[:6]),
)
policy_events = weighted(
    (learns, 10),
    (st.tuples(st.just("tap"), frames), 5),
    (st.tuples(st.just("udp"), senders, datagrams), 4),
    (st.tuples(st.just("tick"), st.sampled_from([1, 1, 2, 3, 5])), 2),
    (st.tuples(st.just("set_mac"), macs, peer_ids), 5),
    (st.tuples(st.just("forget_mac"), macs), 1),
    (st.tuples(st.just("remove_peer"), peer_ids), 1),
    (st.tuples(st.just("set_peer"), peer_ids, st.sampled_from([True, True, False]), peer_ids,
               st.sampled_from([True, True, False])), 2),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(policy_events, min_size=8, max_size=50), batch=st.sampled_from([1, 32]))
def test_both_pumps_keep_the_same_mac_policy(both, steps, batch):
    rigs = [Rig(cls, LOCAL, batch=batch, **LIMITS) for cls in both]
    try:
        for rig in rigs:
            rig.clock, rig.refused = 1000, 0
            rig.pump._set_clock(rig.clock)
            for p in PEERS + [STRANGER]:
                rig.remote(p)
        for step in SETUP + steps:
            for rig in rigs:
                _apply(rig, step)
            compiled, python = (_outputs(rig) for rig in rigs)
            assert compiled == python, step
            assert rigs[0].pump.macs() == rigs[1].pump.macs(), step
            assert rigs[0].refused == rigs[1].refused, step
        stats = rigs[0].stats()
        assert stats == rigs[1].stats()
        for name, value in stats.items():
            if value:
                event(name)
        if rigs[0].refused:
            event("set_mac refused")
    finally:
        for rig in rigs:
            rig.close()


def test_big_mac_tables_agree_under_churn(both):
    """A full MAC table under heavy deletion: the compiled hash table's worst case."""
    cap = 8192
    compiled, python = (Rig(cls, LOCAL, mac_table_max=cap) for cls in both)
    try:
        rnd = random.Random(5)
        overflowed = 0
        for _ in range(60000):
            m = mac(rnd.randrange(14000))  # more MACs than fit
            set_it = rnd.random() < 0.6
            for pump in (compiled.pump, python.pump):
                if not set_it:
                    pump.forget_mac(m)
                    continue
                try:
                    pump.set_mac(m, 1 + m[-1] % 9)
                except OverflowError:
                    overflowed += 1
        assert overflowed > 0
        assert compiled.pump.macs() == python.pump.macs()
        for pump in (compiled.pump, python.pump):
            pump.remove_peer(3)
        assert compiled.pump.macs() == python.pump.macs()
        assert len(python.pump.macs()) > cap // 2
    finally:
        compiled.close()
        python.close()


# -- the same with encryption: keys come and go, datagrams are sealed (or forged) -------

from meshnet.dataplane import sleeve_crypto  # noqa: E402

KEYS = [bytes([i]) * 32 for i in range(1, 5)]
keys = st.sampled_from(KEYS)


@st.composite
def sealed_udp(draw) -> tuple:
    """A datagram sealed by the reference code: mostly with the sender's right key."""
    sender = draw(senders)
    right = {1: KEYS[1], 2: KEYS[3]}.get(sender, KEYS[0])
    key = draw(st.sampled_from([right] * 6 + KEYS))
    epoch = draw(st.sampled_from([0, 0, 0, 0, 0, 1]))
    flags = draw(st.sampled_from([0, 0, 0, 4, 0x70])) | sleeve_crypto.key_id_flags(epoch)
    hdr = header(draw(st.sampled_from(PEERS + [LOCAL])), draw(st.sampled_from(PEERS + [LOCAL] * 5 + [99])),
                 ttl=draw(st.sampled_from([1, 2, 8])), flags=flags)
    counter = draw(st.integers(0, 6) | st.sampled_from([1030, 5000]))
    datagram = sleeve_crypto.seal(key, hdr, counter, draw(eth_frames))
    return "udp", sender, _forge(datagram, draw(st.sampled_from([0] * 12 + [1, 20])),
                                 draw(st.sampled_from([None] * 12 + [0, 5, 12, 30, -1])))


def _forge(datagram: bytes, cut: int, flip: int | None) -> bytes:
    d = bytearray(datagram[: len(datagram) - cut])
    if flip is not None and d:
        d[flip % len(d)] ^= 0x40
    return bytes(d)


crypto_events = weighted(
    (st.tuples(st.just("tap"), frames), 8),
    (sealed_udp(), 9),
    (st.tuples(st.just("udp"), senders, datagrams), 1),
    (st.tuples(st.just("set_peer"), peer_ids, st.sampled_from([True, True, False]), peer_ids,
               st.sampled_from([True, True, False])), 2),
    (st.tuples(st.just("set_peer_keys"), peer_ids, keys, keys, st.integers(0, 3)), 3),
    (st.tuples(st.just("set_mac"), macs, peer_ids), 2),
    (st.tuples(st.just("remove_peer"), peer_ids), 1),
)
CRYPTO_SETUP = SETUP + [("set_peer_keys", 1, KEYS[0], KEYS[1], 0), ("set_peer_keys", 2, KEYS[2], KEYS[3], 0)]


def _apply_crypto(rig: Rig, event: tuple) -> str | None:
    if event[0] != "set_peer_keys":
        _apply(rig, event)
        return None
    _, peer, tx, rx, epoch = event
    try:
        rig.pump.set_peer_keys(peer, tx, rx, epoch=epoch)
    except ValueError as e:
        return str(e)
    return None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(crypto_events, min_size=8, max_size=40), batch=st.sampled_from([1, 2, 32]))
def test_encrypted_pumps_send_the_same_bytes_and_count_the_same(both, steps, batch):
    rigs = [Rig(cls, LOCAL, batch=batch, crypto=True) for cls in both]
    try:
        for rig in rigs:
            for p in PEERS + [STRANGER]:
                rig.remote(p)
        for step in CRYPTO_SETUP + steps:
            errors = [_apply_crypto(rig, step) for rig in rigs]
            assert errors[0] == errors[1], step
            compiled, python = (_outputs(rig) for rig in rigs)
            assert compiled == python, step
        stats = rigs[0].stats()
        assert stats == rigs[1].stats()
        for name, value in stats.items():
            if value:
                event(name)
        assert rigs[0].pump.macs() == rigs[1].pump.macs()
        assert rigs[0].pump.peer_stats() == rigs[1].pump.peer_stats()
    finally:
        for rig in rigs:
            rig.close()
