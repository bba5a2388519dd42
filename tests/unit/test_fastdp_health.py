"""PathHealth: per-peer fastdp/sleeve decisions from probe replies, on a simulated clock."""

from hypothesis import given, settings, strategies as st

from meshnet.dataplane.fastdp import (
    FASTDP,
    REASON_ESP_UNUSED,
    REASON_HEALTHY,
    REASON_NO_ESP,
    REASON_NO_FASTDP,
    REASON_UNVERIFIED,
    SLEEVE,
    fastdp_disabled_reason,
)
from meshnet.dataplane.path_health import PathHealth


class Net:
    """A peer that answers every probe after `rtt` unless the path is blocked."""

    def __init__(self, health: PathHealth, rtt: float = 0.002):
        self.health, self.rtt = health, rtt
        self.blocked: set[int] = set()
        self.in_flight: list[tuple[float, int, int]] = []
        self.changes: list[tuple[float, int, str, str]] = []

    def run(self, start: float, end: float, step: float = 0.01) -> float:
        now = start
        while now < end:
            for pid, seq in self.health.probes_due(now):
                if pid not in self.blocked:
                    self.in_flight.append((now + self.rtt, pid, seq))
            for item in [i for i in self.in_flight if i[0] <= now]:
                self.in_flight.remove(item)
                self.health.on_probe_reply(item[1], item[2], now)
            for pid, mode, reason in self.health.tick(now):
                self.changes.append((now, pid, mode, reason))
            now = round(now + step, 6)
        return now


def test_peers_start_on_sleeve_and_move_to_fastdp_after_two_replies():
    h = PathHealth([2, 3], interval=1.0, fail_after=3)
    assert h.mode(2) == (SLEEVE, REASON_UNVERIFIED)
    net = Net(h)
    net.run(0.0, 1.5)
    assert h.mode(2) == (FASTDP, REASON_HEALTHY) and h.mode(3) == (FASTDP, REASON_HEALTHY)
    assert [c[0] for c in net.changes] == [1.01, 1.01]  # second reply at 1.002, next tick


def test_blocked_peer_falls_back_within_four_seconds_and_recovers():
    h = PathHealth([2, 3], interval=1.0, fail_after=3)
    net = Net(h)
    now = net.run(0.0, 10.0)
    net.blocked.add(2)
    blocked_at = now
    now = net.run(now, 20.0)
    (t, pid, mode, reason), = [c for c in net.changes if c[2] == SLEEVE]
    assert pid == 2 and t - blocked_at <= 4.0
    assert reason == "no vxlan probe reply for 3.0s"
    assert h.mode(2) == (SLEEVE, reason) and h.mode(3) == (FASTDP, REASON_HEALTHY)
    net.blocked.clear()
    unblocked_at = now
    net.run(now, 30.0)
    back = [c for c in net.changes if c[2] == FASTDP and c[0] > unblocked_at]
    assert back and back[0][1] == 2 and back[0][0] - unblocked_at <= 2.5


@settings(max_examples=40, deadline=None)
@given(st.floats(3.0, 9.0), st.floats(0.0005, 0.4))
def test_fallback_time_is_bounded_whatever_the_phase(block_at, rtt):
    h = PathHealth([2], interval=1.0, fail_after=3)
    net = Net(h, rtt=rtt)
    now = net.run(0.0, block_at)
    assert h.mode(2)[0] == FASTDP
    net.blocked.add(2)
    net.run(now, now + 6.0)
    fell = [c[0] for c in net.changes if c[2] == SLEEVE]
    assert fell and 2.0 <= fell[0] - now <= 4.0


def test_one_lost_probe_is_not_a_fallback_but_resets_recovery():
    h = PathHealth([2], interval=1.0, fail_after=3)
    net = Net(h)
    now = net.run(0.0, 5.0)
    net.blocked.add(2)
    now = net.run(now, 6.2)  # one probe lost
    net.blocked.clear()
    net.run(now, 12.0)
    assert h.mode(2)[0] == FASTDP and not [c for c in net.changes if c[2] == SLEEVE]


def test_intermittent_replies_keep_a_peer_on_sleeve():
    h = PathHealth([2], interval=1.0, fail_after=3)
    now = 0.0
    for i in range(20):  # every other probe answered: never two in a row
        (pid, seq), = h.probes_due(now)
        if i % 2 == 0:
            h.on_probe_reply(pid, seq, now + 0.01)
        now += 1.0
        h.tick(now)
    assert h.mode(2)[0] == SLEEVE


def test_replies_that_match_no_live_probe_change_nothing():
    h = PathHealth([2, 3], interval=1.0, fail_after=3, first_seq=100)
    assert h.probes_due(0.0) == [(2, 101), (3, 102)]
    assert not h.on_probe_reply(2, 102, 0.01)  # seq of another peer's probe
    assert not h.on_probe_reply(9, 101, 0.01)  # unknown peer
    assert not h.on_probe_reply(2, 999, 0.01)  # never sent
    assert h.on_probe_reply(2, 101, 0.01)
    assert not h.on_probe_reply(2, 101, 0.02)  # replayed
    assert not h.on_probe_reply(3, 102, 1.5)  # too late
    assert h.probes_due(0.5) == []
    assert h.probes_due(1.0) == [(2, 103), (3, 104)]


def test_disabled_fastdp_sends_no_probes_and_says_why():
    h = PathHealth([2], disabled=REASON_NO_FASTDP)
    assert h.probes_due(5.0) == [] and h.tick(5.0) == [] and h.next_deadline() is None
    assert h.mode(2) == (SLEEVE, "--no-fastdp")
    assert fastdp_disabled_reason(no_fastdp=True, encrypted=True, esp_available=False) == REASON_NO_FASTDP
    assert fastdp_disabled_reason(no_fastdp=False, encrypted=True, esp_available=False) == REASON_NO_ESP
    assert REASON_NO_ESP == "mesh is encrypted and this kernel has no IPsec ESP"
    assert fastdp_disabled_reason(no_fastdp=False, encrypted=True, esp_available=True) == REASON_ESP_UNUSED
    assert fastdp_disabled_reason(no_fastdp=False, encrypted=False, esp_available=False) is None


def test_peers_follow_the_mesh_and_deadlines_are_exposed():
    h = PathHealth([2], interval=1.0, fail_after=3, now=0.0)
    assert h.next_deadline() == 0.0
    h.probes_due(0.0)
    assert h.next_deadline() == 1.0
    h.set_peers([3], now=0.5)
    assert set(h.modes()) == {3} and h.mode(2) == (SLEEVE, "unknown peer")
    assert h.next_deadline() == 0.5


def test_a_stalled_timer_does_not_burst_probes():
    h = PathHealth([2], interval=1.0, fail_after=3)
    h.probes_due(0.0)
    assert len(h.probes_due(10.0)) == 1
    assert h.probes_due(10.2) == [] and h.probes_due(10.9) == []
    assert len(h.probes_due(11.0)) == 1


def test_probes_are_rate_bounded_and_spread_in_a_big_mesh():
    h = PathHealth(range(2, 202), interval=1.0, fail_after=3, max_rate=25.0, first_seq=0)
    assert h.period() == 200 / 25.0
    per_second = []
    now = 0.0
    probed: set[int] = set()
    for second in range(30):
        sent = 0
        for k in range(100):
            now = second + k / 100
            due = h.probes_due(now)
            sent += len(due)
            for pid, seq in due:
                probed.add(pid)
                h.on_probe_reply(pid, seq, now + 0.001)
            h.tick(now)
        per_second.append(sent)
    assert max(per_second) <= 25 + 5  # the bucket's small burst, then its rate
    assert min(per_second[10:]) >= 20 and abs(sum(per_second[10:]) / 20 - 25) <= 1  # spread evenly
    assert probed == set(range(2, 202))
    assert all(h.mode(pid)[0] == FASTDP for pid in range(2, 202))


def test_a_deadline_follows_the_bucket_not_a_busy_loop():
    h = PathHealth(range(2, 102), interval=1.0, max_rate=10.0, first_seq=0)
    assert len(h.probes_due(0.0)) == 2  # the burst
    assert 0.09 <= h.next_deadline() <= 0.11  # the next token, not "now" again
