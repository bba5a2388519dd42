"""The benchmark suite's figures without root: medians and spreads over rounds, CPU-seconds
per GB, ratios and targets within one run, the markdown table, the charts, the docs page.
Samples are made here with known numbers, shaped as `bench.runner.measure` writes them."""

from __future__ import annotations

import json

import pytest

from bench import aggregate, report, targets
from bench.catalog import Path
from bench.plan import Plan
from bench.runner import results_data
from bench.tools import Pair

PLAN = Plan(rounds=3)


def tcp(path: str, test: str, rnd: int, gbps: float, daemons: dict | None = None, box: float = 1.0) -> dict:
    return {"round": rnd, "path": path, "test": test, "kind": "tcp", "gbps": gbps, "bytes": int(gbps / 8 * 6e9), "active_s": 7,
            "daemon_cpu_s": daemons or {}, "box_busy_s": box}  # fmt: skip


def udp(path: str, rnd: int, kpps: float) -> dict:
    return {"round": rnd, "path": path, "test": "udp64", "kind": "udp", "rx_pps": kpps * 1e3, "tx_pps": kpps * 2e3, "loss_pct": 50.0}


def ping(path: str, rnd: int, ms: float) -> dict:
    return {"round": rnd, "path": path, "test": "ping", "kind": "ping", "rtt_ms": ms, "rtt_mdev_ms": 0.01, "loss_pct": 0.0}


def path_samples(path: str, tcp1: list[float], tcp4: list[float], kpps: float, ms: float, daemons: bool = True) -> list[dict]:
    out = []
    for rnd, (a, b) in enumerate(zip(tcp1, tcp4)):
        cpu = {"h1": 0.7, "h2": 0.5} if daemons else {}
        out += [tcp(path, "tcp1-cubic", rnd, a, cpu), tcp(path, "tcp4-cubic", rnd, b, cpu), tcp(path, "tcp1-bbr", rnd, a * 0.9, cpu)]
        out += [udp(path, rnd, kpps), ping(path, rnd, ms)]
    return out


def a_run() -> dict:
    samples = (
        path_samples("sleeve-ctr", [6.0, 5.0, 7.0], [6.5, 6.6, 6.4], 100, 0.2)
        + path_samples("sleeve-host", [6.4, 6.6, 6.5], [7.0, 7.0, 7.0], 110, 0.19)
        + path_samples("fastdp-ctr", [9.7, 9.7, 9.7], [9.0, 9.0, 9.0], 70, 0.1)
        + path_samples("kvxlan-ctr", [10.0, 10.0, 10.0], [11.0, 11.0, 11.0], 72, 0.1, daemons=False)
        + path_samples("raw", [20.0, 20.0, 20.0], [25.0, 25.0, 25.0], 160, 0.06, daemons=False)
        + path_samples("sleeve-aes-host", [3.0, 3.0, 3.0], [3.1, 3.1, 3.1], 80, 0.3)
        + path_samples("wggo", [0.4, 0.4, 0.4], [0.4, 0.4, 0.4], 30, 0.7)
        + path_samples("fastd-null", [0.5, 0.5, 0.5], [0.5, 0.5, 0.5], 40, 0.15)
    )
    samples[0] = {**samples[0], "error": "iperf3 client timed out"}  # sleeve-ctr tcp1, round 0
    samples[0].pop("gbps")
    names = ["sleeve-ctr", "fastdp-ctr", "kvxlan-ctr", "raw", "sleeve-host", "sleeve-aes-host", "fastd-null", "wggo"]
    paths = {n: Path(n, [Pair("a", "b", "10.0.0.2")], {"h1": 1, "h2": 2}, 1422, f"note of {n}", {"df_ok": n != "wggo"}) for n in names}
    paths["fastdp-ctr"].checks["changed"] = ["after round 2: not fastdp: {'h1->h2': ('sleeve', 'probe lost')}"]
    env = {"date": "2026-12-04 20:00:00 UTC", "cpu": "test CPU", "nproc": 2, "kernel": "6.1", "tcp_cc_default": "bbr"}
    return results_data(PLAN, env, paths, {"tinc-null": "tincd not installed (apt-get install tinc)"}, samples)


# -- medians, spreads, CPU per GB ---------------------------------------------------------------


def test_median_and_spread_over_rounds_ignore_failed_rounds():
    run = a_run()
    s = run["summary"]["sleeve-ctr"]["tcp1-cubic"]
    assert s["values"] == [None, 5.0, 7.0] and s["n"] == 2
    assert s["median"] == 6.0 and (s["min"], s["max"]) == (5.0, 7.0)
    assert s["spread_pct"] == pytest.approx((7.0 - 5.0) / 6.0 * 100)
    assert s["errors"] == ["iperf3 client timed out"]
    assert aggregate.spread_pct([5.0]) is None and aggregate.median([None, None]) is None


def test_udp_is_received_kpps_and_ping_the_average_rtt():
    s = a_run()["summary"]["sleeve-ctr"]
    assert s["udp64"]["median"] == 100 and s["udp64"]["tx_kpps"] == 200 and s["udp64"]["loss_pct"] == 50
    assert s["ping"]["median"] == 0.2 and s["ping"]["unit"] == "ms"


def test_cpu_seconds_per_gb_per_daemon_all_daemons_and_the_box():
    # 8 Gbit/s for 7 s moved 7 GB; daemons used 0.7 + 0.5 s, the box 3.5 s
    sample = tcp("x", "tcp1-cubic", 0, 8.0, {"h1": 0.7, "h2": 0.5}, box=3.5)
    cpu = aggregate.cpu_per_gb(sample)
    assert cpu["daemon"] == {"h1": pytest.approx(0.1), "h2": pytest.approx(0.5 / 7)}
    assert cpu["daemons"] == pytest.approx(1.2 / 7) and cpu["box"] == pytest.approx(0.5)
    gone = aggregate.cpu_per_gb(tcp("x", "tcp1-cubic", 0, 8.0, {"h1": 0.7, "h2": None}))
    assert gone["daemons"] is None and gone["daemon"]["h2"] is None  # a daemon that died is not zero
    assert aggregate.cpu_per_gb({"error": "x"}) is None


# -- ratios and targets -------------------------------------------------------------------------


def test_ratios_come_from_one_run():
    run = a_run()
    rows = {r["what"]: r["ratio"] for r in run["ratios"]}
    assert rows["containers: fastdp / kernel VXLAN by hand"] == pytest.approx(0.97)
    assert rows["sleeve: container / host"] == pytest.approx(6.0 / 6.5)
    assert rows["sleeve-ctr: TCP x4 / TCP x1"] == pytest.approx(6.5 / 6.0)
    assert "relayed / direct, sleeve" not in rows  # not measured: no row, no guess


def test_targets_are_met_missed_or_unknown():
    rows = {r["target"]: r for r in a_run()["targets"]}
    ctr = rows["container to container: sleeve vs meshnet's host-to-host sleeve"]
    assert ctr["met"] is True and ctr["ratio"] == pytest.approx(6.0 / 6.5)
    assert rows["container to container: fastdp vs kernel VXLAN by hand"]["met"] is True  # 0.97 exactly
    wg = rows["sleeve encrypted vs wireguard-go (host to host, TCP x1)"]
    assert wg["met"] is True and "wggo" in wg["detail"] and wg["ratio"] == pytest.approx(7.5)
    pps = rows["UDP 64 B received pps, sleeve plain vs best peer"]
    assert pps["met"] is False and "fastd-null" in pps["detail"]  # the best peer, not the first
    rtt = rows["RTT, sleeve plain vs best peer"]
    assert rtt["met"] is False and rtt["ratio"] == pytest.approx(0.19 / 0.15)  # fastd-null is the lowest RTT
    assert rows["sleeve encrypted vs sleeve plain (containers, TCP x1)"]["met"] is None  # sleeve-aes-ctr not measured
    assert rows["more streams never less: fastdp-ctr, TCP x4 vs x1"]["met"] is False


def test_best_picks_the_highest_or_the_lowest():
    s = a_run()["summary"]
    assert aggregate.best(s, ["wggo", "fastd-null", "tinc-null"], "tcp1-cubic") == ("fastd-null", 0.5)
    assert aggregate.best(s, ["wggo", "fastd-null"], "ping", lowest=True) == ("fastd-null", 0.15)
    assert aggregate.best(s, ["tinc-null"], "ping") == (None, None)
    assert targets.test_names("bbr")["tcp1"] == "tcp1-bbr"


# -- the table, the charts, the docs page -------------------------------------------------------


def table_rows(text: str) -> dict[str, list[str]]:
    """The rows of the main tables (above the targets), by path."""
    main = text.split("### Targets", 1)[0]
    return {cells[1].strip(): [c.strip() for c in cells[2:-1]] for line in main.splitlines() if line.startswith("| ") and (cells := line.split("|"))}


def test_table_has_a_row_per_path_in_its_group_with_ratio_to_raw_spread_and_cpu():
    text = report.render(a_run())
    assert text.index("### Container to container") < text.index("### Host to host")
    assert text.index("| sleeve-ctr |") < text.index("### Host to host") < text.index("| raw |")
    rows = table_rows(text)
    assert rows["sleeve-ctr"][:3] == ["1422", "6 (33%) [1 err]", "0.3"]  # median 6.0 of 5 and 7; / raw 20
    assert rows["raw"][-2:] == ["– (kernel)", rows["raw"][-1]]
    assert rows["sleeve-host"][-2] == "0.211 (h1 0.12, h2 0.088)"  # 1.2 CPU-s over 6.5 Gbit/s x 7 s
    assert "100 (0%), 50% lost" in rows["sleeve-ctr"]
    assert "TCP x1 bbr" in text and "cubic is the headline" in text


def test_table_lists_targets_skips_and_failed_mtu_checks():
    text = report.render(a_run())
    assert "### Targets of issue 16" in text and "| **no** |" in text and "| yes |" in text
    assert "`tinc-null`: tincd not installed (apt-get install tinc)" in text
    assert "full-size DF ping failed at MTU 1422" in text.split("| wggo |", 2)[2]
    assert "**after round 2: not fastdp:" in text.split("| fastdp-ctr |", 2)[2].split("\n")[0]


def test_a_quick_run_says_its_figures_mean_nothing():
    quick = results_data(Plan.quick_plan(), {}, {}, {}, [])
    assert "QUICK (smoke test: figures are not meaningful)" in report.render(quick)


def test_results_round_trip_through_json():
    run = a_run()
    again = json.loads(json.dumps(run))
    assert report.render(again) == report.render(run)


def test_charts_are_png_files_one_per_metric(tmp_path):
    pytest.importorskip("matplotlib")
    from bench import charts

    written = charts.draw(json.loads(json.dumps(a_run())), tmp_path)
    assert sorted(p.name for p in written) == sorted(charts.FILES)
    for p in written:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000


def test_docs_page_is_rendered_from_a_results_directory(tmp_path):
    pytest.importorskip("matplotlib")
    from bench.render import render

    results = tmp_path / "20261204-200000"
    results.mkdir()
    (results / "results.json").write_text(json.dumps(a_run()))
    docs = tmp_path / "docs"
    page = render(results, docs, "29m").read_text()
    assert "(`20261204-200000`)" in page and "![throughput.png](benchmarks/throughput.png)" in page
    assert (docs / "benchmarks" / "cpu.png").exists() and "about 29m" in page
    assert report.render(a_run()).strip() in page
