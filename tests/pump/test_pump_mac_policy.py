"""The MAC table's policy (docs/sleeve.md, "The MAC table"), the same for both pumps:
learned MACs age out, each peer has a quota of learned MACs, a full table drops new
learned MACs, a gossiped (static) entry evicts a learned one and never the reverse.

Each case is driven from outside: datagrams from fake peers teach MACs, frames written
into the fake TAP show where the pump now sends a MAC (unicast to one peer, or flooded
to all), and the counters say why. The pump's clock is frozen (`_set_clock`)."""

from __future__ import annotations

import threading
import time

import pytest

from pump_harness import BROADCAST, frame, header, mac

LOCAL = 100
T0 = 10_000  # the frozen clock's start, in seconds
AGE = 30


def _rig(make_rig, *, peers=(1, 2, 3), **limits):
    rig = make_rig(LOCAL, **limits)
    rig.pump._set_clock(T0)
    for p in peers:
        rig.connect(p)
    return rig


def _teach(rig, peer: int, *macs: bytes) -> None:
    """Datagrams from `peer` whose frames come from `macs` (broadcast, so all reach the TAP)."""
    for m in macs:
        rig.send_from(peer, header(peer, LOCAL) + frame(BROADCAST, m))
    rig.run_until_idle()
    assert len(rig.from_tap()) == len(macs)


def _where(rig, m: bytes) -> set[int]:
    """The peers a unicast frame to m goes to now (every peer when it is flooded)."""
    rig.to_tap(frame(m, mac(999)))
    rig.run_until_idle()
    return {p for p in rig.remotes if rig.received(p)}


def _delta(before: dict, after: dict) -> dict:
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


# -- ageing ---------------------------------------------------------------------------


def test_a_learned_mac_ages_out_after_mac_age_seconds_without_traffic(make_rig):
    rig = _rig(make_rig, mac_age=AGE)
    _teach(rig, 1, mac(5))
    rig.pump._set_clock(T0 + AGE - 1)
    assert _where(rig, mac(5)) == {1}
    before = rig.stats()
    rig.pump._set_clock(T0 + AGE)
    assert _where(rig, mac(5)) == {1, 2, 3}  # unknown again: flooded
    assert _delta(before, rig.stats()) | {"tap_rx_bytes": 0, "udp_tx_bytes": 0} == {
        "tap_rx": 1, "tap_rx_bytes": 0, "unknown_unicast": 1, "flood_tx": 3, "udp_tx": 3,
        "udp_tx_bytes": 0, "learned_aged": 1}
    assert rig.pump.macs() == {}


def test_traffic_from_a_mac_keeps_it(make_rig):
    rig = _rig(make_rig, mac_age=AGE)
    _teach(rig, 1, mac(5))
    for step in range(1, 4):
        rig.pump._set_clock(T0 + step * (AGE - 1))
        _teach(rig, 1, mac(5))
    rig.pump._set_clock(T0 + 4 * (AGE - 1))
    assert _where(rig, mac(5)) == {1}
    assert rig.stats()["learned"] == 1 and rig.stats()["learned_aged"] == 0


def test_expired_macs_are_counted_by_the_time_stats_are_read(make_rig):
    rig = _rig(make_rig, mac_age=AGE)
    _teach(rig, 1, mac(1), mac(2))
    rig.pump._set_clock(T0 + 10)
    _teach(rig, 2, mac(3))
    rig.pump._set_clock(T0 + AGE)
    assert rig.stats()["learned_aged"] == 2
    assert rig.pump.macs() == {mac(3): 2}


def test_static_entries_never_age(make_rig):
    rig = _rig(make_rig, mac_age=AGE)
    rig.pump.set_mac(mac(7), 2)
    rig.pump._set_clock(T0 + 100 * AGE)
    assert _where(rig, mac(7)) == {2}
    assert rig.pump.macs() == {mac(7): 2}


def test_an_expired_mac_seen_on_the_tap_counts_as_aged_not_unlearned(make_rig):
    rig = _rig(make_rig, mac_age=AGE)
    _teach(rig, 1, mac(5), mac(6))
    rig.to_tap(frame(BROADCAST, mac(6)))  # mac(6) is here now
    rig.run_until_idle()
    rig.pump._set_clock(T0 + AGE)
    rig.to_tap(frame(BROADCAST, mac(5)))
    rig.run_until_idle()
    s = rig.stats()
    assert (s["unlearned"], s["learned_aged"]) == (1, 1)


def test_removing_a_peer_counts_its_expired_macs_as_aged(make_rig):
    rig = _rig(make_rig, mac_age=AGE)
    _teach(rig, 1, mac(1))
    rig.pump._set_clock(T0 + AGE - 5)
    _teach(rig, 1, mac(2))
    rig.pump._set_clock(T0 + AGE)
    rig.pump.remove_peer(1)
    s = rig.stats()
    assert s["learned_aged"] == 1 and rig.pump.macs() == {}


def test_an_idle_running_pump_ages_its_learned_macs(make_rig):
    """No traffic, nobody reading stats: run() still wakes up and empties the table."""
    rig = _rig(make_rig, mac_age=AGE, mac_table_max=256)
    _teach(rig, 1, *(mac(i) for i in range(100)))
    assert rig.pump.table_sizes()["learned"] == 100
    thread = threading.Thread(target=rig.pump.run, daemon=True)
    thread.start()
    try:
        rig.pump._set_clock(T0 + AGE)
        deadline = time.monotonic() + 10
        while rig.pump.table_sizes()["learned"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert rig.pump.table_sizes() == {"macs": 0, "learned": 0, "peers": 3}
    finally:
        rig.pump.stop()
        thread.join(5)
    assert rig.stats()["learned_aged"] == 100


# -- per-peer quota -------------------------------------------------------------------


def test_one_peer_cannot_learn_more_than_its_quota(make_rig):
    rig = _rig(make_rig, learn_quota=3, mac_age=AGE)
    _teach(rig, 1, *(mac(i) for i in range(10)))  # a container behind peer 1 floods MACs
    _teach(rig, 2, mac(50), mac(51))  # another peer still learns
    s = rig.stats()
    assert (s["learned"], s["learn_over_quota"], s["learn_table_full"]) == (5, 7, 0)
    assert _where(rig, mac(2)) == {1}
    assert _where(rig, mac(3)) == {1, 2, 3}  # not learned: flooded, still reaches it
    assert _where(rig, mac(51)) == {2}
    rig.pump._set_clock(T0 + AGE)  # once the first ones age out, peer 1 learns again
    _teach(rig, 1, mac(3))
    assert _where(rig, mac(3)) == {1}


def test_a_mac_moving_to_a_peer_over_quota_is_forgotten(make_rig):
    rig = _rig(make_rig, learn_quota=2)
    _teach(rig, 1, mac(1), mac(2))
    _teach(rig, 2, mac(9))
    _teach(rig, 1, mac(9))  # mac(9) moved behind peer 1, which has its quota
    assert _where(rig, mac(9)) == {1, 2, 3}
    assert rig.stats()["learn_over_quota"] == 1
    assert rig.pump.macs() == {mac(1): 1, mac(2): 1}


def test_a_learned_mac_made_static_frees_its_quota(make_rig):
    rig = _rig(make_rig, learn_quota=2)
    _teach(rig, 1, mac(1), mac(2))
    rig.pump.set_mac(mac(1), 1)  # gossip now announces it
    _teach(rig, 1, mac(3))
    assert rig.pump.macs() == {mac(1): 1, mac(2): 1, mac(3): 1}
    assert rig.stats()["learn_over_quota"] == 0
    assert rig.pump.table_sizes()["learned"] == 2


def test_a_zero_quota_learns_nothing(make_rig):
    rig = _rig(make_rig, learn_quota=0)
    _teach(rig, 1, mac(1))
    assert rig.pump.macs() == {} and rig.stats()["learn_over_quota"] == 1


# -- capacity: learned never evicts static, static evicts learned ----------------------


def test_a_full_table_drops_new_learned_macs(make_rig):
    rig = _rig(make_rig, mac_table_max=16, learn_quota=100)
    for i in range(10):
        rig.pump.set_mac(mac(100 + i), 3)
    _teach(rig, 1, *(mac(i) for i in range(8)))
    s = rig.stats()
    assert (s["learned"], s["learn_table_full"]) == (6, 2)
    assert len(rig.pump.macs()) == 16
    assert all(rig.pump.macs()[mac(100 + i)] == 3 for i in range(10))


def test_a_gossiped_mac_evicts_the_learned_one_seen_longest_ago(make_rig):
    rig = _rig(make_rig, mac_table_max=4, learn_quota=100, mac_age=AGE)
    _teach(rig, 1, mac(7), mac(3))
    rig.pump._set_clock(T0 + 1)
    _teach(rig, 2, mac(1), mac(2))
    rig.pump.set_mac(mac(50), 3)  # evicts mac(3): the oldest (T0), lowest of the two
    assert set(rig.pump.macs()) == {mac(7), mac(1), mac(2), mac(50)}
    rig.pump._set_clock(T0 + 2)
    _teach(rig, 1, mac(7))  # confirmed again: now the newest
    rig.pump.set_mac(mac(51), 3)  # evicts mac(1) (T0 + 1, lower than mac(2))
    rig.pump.set_mac(mac(52), 3)  # then mac(2)
    assert rig.pump.macs() == {mac(7): 1, mac(50): 3, mac(51): 3, mac(52): 3}
    s = rig.stats()
    assert (s["learned_evicted"], s["learn_table_full"]) == (3, 0)
    rig.pump.set_mac(mac(53), 3)  # the last learned one
    with pytest.raises(OverflowError):
        rig.pump.set_mac(mac(54), 3)  # static entries only: refused
    assert len(rig.pump.macs()) == 4 and rig.stats()["learned_evicted"] == 4
    _teach(rig, 1, mac(8))  # and learning never evicts a static entry
    assert rig.stats()["learn_table_full"] == 1


def test_a_full_table_reclaims_expired_macs_before_refusing(make_rig):
    rig = _rig(make_rig, mac_table_max=4, learn_quota=100, mac_age=AGE)
    _teach(rig, 1, mac(1), mac(2), mac(3), mac(4))
    rig.pump._set_clock(T0 + AGE)
    _teach(rig, 2, mac(5))  # room made by ageing, nothing refused nor evicted
    rig.pump.set_mac(mac(6), 3)
    s = rig.stats()
    assert (s["learned_aged"], s["learn_table_full"], s["learned_evicted"]) == (4, 0, 0)
    assert rig.pump.macs() == {mac(5): 2, mac(6): 3}


# -- limits ---------------------------------------------------------------------------


@pytest.mark.parametrize("limits", [
    dict(mac_table_max=0), dict(mac_table_max=(1 << 22) + 1), dict(mac_table_max="64"),
    dict(learn_quota=-1), dict(learn_quota=(1 << 22) + 1), dict(mac_age=0), dict(mac_age=(1 << 20) + 1),
])
def test_bad_limits_are_refused(make_rig, limits):
    with pytest.raises(ValueError):
        make_rig(LOCAL, **limits)


def test_the_limits_are_reported(make_rig):
    f = make_rig(LOCAL, mac_table_max=1000, learn_quota=10, mac_age=60).pump.features()
    assert (f["mac_table_max"], f["learn_quota"], f["mac_age"]) == (1000, 10, 60)
