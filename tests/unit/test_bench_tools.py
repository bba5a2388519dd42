"""The benchmark suite's parts that need no root: parsing the tools' output (recorded from
real iperf3 3.12 and ping runs, tests/data/bench/), /proc parsing, the run plan, progress
and ETA, path selection, and the ledger that keeps two runs apart."""

from __future__ import annotations

import io
import json
import pathlib
import subprocess
import time

import pytest

from bench import bed, procstat
from bench.catalog import NAMES, all_pairs, select
from bench.plan import Plan, Test
from bench.progress import Progress, eta_seconds, fmt_duration
from bench.tools import Pair, combine, iperf_args, parse_iperf, parse_ping

DATA = pathlib.Path(__file__).parents[1] / "data" / "bench"
ROOT = pathlib.Path(__file__).parents[2]


def data(name: str) -> str:
    return (DATA / name).read_text()


# -- iperf3 and ping output ---------------------------------------------------------------------


def test_tcp_report_gives_received_rate_bytes_and_the_sender_congestion_control():
    r = parse_iperf(data("tcp1.json"), udp=False)
    end = json.loads(data("tcp1.json"))["end"]
    assert r["gbps"] == pytest.approx(end["sum_received"]["bits_per_second"] / 1e9)
    assert r["bytes"] == end["sum_received"]["bytes"]
    assert r["cc"] == "cubic" and r["retransmits"] == end["sum_sent"]["retransmits"]


def test_tcp_report_with_slow_start_left_out_uses_the_receiver_sum():
    r = parse_iperf(data("tcp2-omit.json"), udp=False)
    assert r["gbps"] == pytest.approx(json.loads(data("tcp2-omit.json"))["end"]["sum_received"]["bits_per_second"] / 1e9)


def test_udp_report_counts_only_datagrams_that_arrived():
    r = parse_iperf(data("udp.json"), udp=True)
    received = json.loads(data("udp.json"))["end"]["sum_received"]
    arrived = received["packets"] - received["lost_packets"]
    assert r["rx_pps"] == pytest.approx(arrived / received["seconds"])
    assert r["bytes"] == arrived * 64 == received["bytes"]
    assert r["loss_pct"] == pytest.approx(received["lost_percent"])
    assert r["tx_pps"] > r["rx_pps"]


@pytest.mark.parametrize(
    "text, why",
    [
        (data("err.json"), "unable to connect"),
        ("iperf3: error - unable to start listener", "no JSON"),
        ("[1, 2]", "not an object"),
        ('{"end": {}}', "without"),
        ('{"end": {"sum_received": {"bits_per_second": 1}, "sum_sent": {}}}', "without"),
    ],
)
def test_broken_iperf_output_is_an_error_never_an_exception(text, why):
    assert why in parse_iperf(text, udp=False)["error"]


def test_ping_summary_and_failures():
    ok = parse_ping(data("ping-ok.txt"))
    assert (ok["rtt_min_ms"], ok["rtt_ms"], ok["rtt_max_ms"], ok["rtt_mdev_ms"], ok["loss_pct"]) == (0.032, 0.036, 0.046, 0.006, 0.0)
    assert "no reply" in parse_ping(data("ping-lost.txt"))["error"]
    assert "unreachable" in parse_ping(data("ping-unreachable.txt"))["error"]


def test_pairs_of_one_measurement_add_up_and_any_error_fails_it():
    tcp = combine("tcp", [{"gbps": 1.5, "bytes": 10, "retransmits": 2, "cc": "cubic"}, {"gbps": 2.5, "bytes": 20, "retransmits": None}])
    assert (tcp["gbps"], tcp["bytes"], tcp["retransmits"], tcp["per_pair_gbps"]) == (4.0, 30, 2, [1.5, 2.5])
    udp = combine("udp", [{"rx_pps": 10.0, "tx_pps": 20.0, "loss_pct": 50.0, "bytes": 640}, {"rx_pps": 30.0, "tx_pps": 30.0, "loss_pct": 0.0, "bytes": 1920}])
    assert (udp["rx_pps"], udp["tx_pps"], udp["loss_pct"]) == (40.0, 50.0, 25.0)
    rtt = combine("ping", [{"rtt_ms": 0.1, "rtt_mdev_ms": 0.01, "loss_pct": 0.0}, {"rtt_ms": 0.3, "rtt_mdev_ms": 0.02, "loss_pct": 5.0}])
    assert rtt["rtt_ms"] == pytest.approx(0.2) and rtt["loss_pct"] == 5.0
    assert combine("tcp", [{"gbps": 1.0, "bytes": 1}, {"error": "iperf3 client timed out"}]) == {"error": "iperf3 client timed out"}


def test_iperf_arguments_set_the_congestion_control_streams_and_slow_start():
    pair = Pair("a", "b", "10.0.0.2")
    tcp = iperf_args(Test("tcp4-bbr", "tcp", 4, streams=4, cc="bbr", omit=1), pair, 5302)
    assert tcp[:7] == ["iperf3", "-c", "10.0.0.2", "-p", "5302", "-J", "-t"]
    assert ["-C", "bbr"] == tcp[tcp.index("-C") : tcp.index("-C") + 2] and "-P" in tcp and "-O" in tcp
    udp = iperf_args(Test("udp64", "udp", 3), pair, 5301)
    assert udp[-5:] == ["-u", "-l", "64", "-b", "0"] and "-C" not in udp


# -- /proc ------------------------------------------------------------------------------------


def test_process_cpu_counts_user_and_system_time_past_a_name_with_parentheses():
    line = "4242 (tinc (d) x) S 1 4242 4242 0 -1 4194560 1 0 0 0 250 50 7 8 20 0 3 0 100 0 0"
    assert procstat.parse_pid_stat(line, hz=100) == 3.0  # (250 + 50) ticks
    with pytest.raises(ValueError):
        procstat.parse_pid_stat("4242 tincd S 1", hz=100)


def test_box_busy_time_leaves_out_idle_iowait_and_steal():
    ticks = procstat.parse_box_stat("cpu  100 5 50 1000 20 3 7 11 0 0\ncpu0 1 1 1 1 1 1 1 1 0 0\n")
    assert (ticks.busy, ticks.steal, ticks.total) == (165, 11, 1196)
    assert procstat.parse_box_stat(pathlib.Path("/proc/stat").read_text()).total > 0


def test_a_gone_process_has_no_cpu_time():
    assert procstat.pid_cpu_seconds(2**22 + 1) is None  # above pid_max's largest value


# -- plan, progress, paths ----------------------------------------------------------------------


def test_the_run_goes_round_by_round_path_by_path():
    plan = Plan(rounds=2, cc=["cubic", "bbr"])
    names = [t.name for t in plan.tests()]
    assert names == ["tcp1-cubic", "tcp4-cubic", "tcp1-bbr", "udp64", "ping"]
    order = plan.measurements(["a", "b"])
    assert len(order) == 2 * 2 * 5
    assert [(r, p) for r, p, _ in order[::5]] == [(0, "a"), (0, "b"), (1, "a"), (1, "b")]
    assert plan.estimate_s(2) == pytest.approx(sum(t.estimate_s() for _, _, t in order))


def test_quick_plan_is_one_round_of_one_second_tests():
    quick = Plan.quick_plan()
    assert quick.rounds == 1 and quick.quick and all(t.seconds <= 1 and t.omit == 0 for t in quick.tests())
    assert quick.estimate_s(2) < 20


def test_eta_follows_the_observed_pace():
    assert eta_seconds(100, 150, 40) == pytest.approx(60)
    assert eta_seconds(0, 0, 40) == 40
    assert [fmt_duration(s) for s in (5, 65, 3725)] == ["5s", "1m05s", "1h02m"]


def test_progress_prints_one_line_per_measurement_with_position_and_eta():
    now = [0.0]
    out = io.StringIO()
    progress = Progress([10, 10, 20], rounds=1, out=out, clock=lambda: now[0])
    progress.start(0, "sleeve-ctr", "tcp1-cubic", 7)
    now[0] = 20.0  # twice as slow as planned
    progress.done("5.8 Gbit/s")
    line = out.getvalue()
    assert line.count("\n") == 1 and line.startswith("[1/3   0%] round 1/1  sleeve-ctr")
    assert "5.8 Gbit/s" in line and "20s done" in line and "ETA 1m00s" in line


def test_paths_are_chosen_in_catalogue_order_and_unknown_names_refused():
    assert select(["raw", "sleeve-ctr"]) == ["sleeve-ctr", "raw"]
    assert select(None, ["wggo-bin"]) == [n for n in NAMES if n != "wggo-bin"]
    with pytest.raises(ValueError, match="unknown path"):
        select(["sleeve"])


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_all_pairs_covers_every_pair_of_hosts_once(n):
    pairs = all_pairs(n)
    assert sorted(tuple(sorted(p)) for p in pairs) == [(i, j) for i in range(1, n + 1) for j in range(i + 1, n + 1)]
    if n % 2:  # odd: every host sends as many flows as it receives
        assert all(sum(a == h for a, _ in pairs) == sum(b == h for _, b in pairs) for h in range(1, n + 1))


def test_three_hosts_make_a_ring():
    assert sorted(all_pairs(3)) == [(1, 2), (2, 3), (3, 1)]


# -- the ledger ---------------------------------------------------------------------------------


def test_one_run_per_prefix_and_a_left_over_run_must_be_cleaned_first(tmp_path, monkeypatch):
    monkeypatch.setattr(bed, "LEDGER_DIR", tmp_path)
    first = bed.Ledger("mnbunit")
    first.lock()
    with pytest.raises(RuntimeError, match="another bench run"):
        bed.Ledger("mnbunit").lock()
    first.add("netns", "mnbunit-b-h1")
    first.unlock()  # a killed run: its ledger stays
    with pytest.raises(RuntimeError, match="python -m bench clean --prefix mnbunit"):
        bed.Ledger("mnbunit").lock()
    again = bed.Ledger("mnbunit")
    assert again.load() and again.data["netns"] == ["mnbunit-b-h1"]
    again.forget()
    fresh = bed.Ledger("mnbunit")
    fresh.lock()
    fresh.unlock()


def test_stop_pid_stops_only_a_process_that_still_runs_the_recorded_program():
    proc = subprocess.Popen(["sleep", "30"])
    deadline = time.monotonic() + 5
    while bed.comm_of(proc.pid) != "sleep" and time.monotonic() < deadline:  # its cmdline is empty until exec ends
        time.sleep(0.01)
    try:
        bed.stop_pid(proc.pid, "tincd")  # a reused PID: someone else's process now
        assert proc.poll() is None
        bed.stop_pid(proc.pid, "sleep")
        assert proc.poll() is not None
    finally:
        proc.kill()
        proc.wait()


# -- the suite stands on its own ----------------------------------------------------------------


def test_bench_files_are_small_and_need_nothing_outside_the_repository():
    for path in (ROOT / "bench").glob("*.py"):
        text = path.read_text()
        assert len(text.splitlines()) <= 450, path
        assert "peerbench" not in text and "../shared" not in text and "/work/" not in text, path
