"""The benchmark command itself, as a user runs it: `python -m bench --quick` on two paths
(the underlay, and containers over the sleeve through real routers) measures them, writes
its results and charts, and leaves no namespace, router or ledger behind."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(not shutil.which("iperf3"), reason="needs iperf3"),
]

ROOT = pathlib.Path(__file__).parents[2]
PREFIX = "mnbt"


def test_quick_run_measures_two_paths_reports_them_and_cleans_up(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "bench", "--quick", "--paths", "raw,sleeve-ctr", "--prefix", PREFIX, "--out", str(out)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=90)  # ~25 s on an idle 2-vCPU VM
    assert result.returncode == 0, result.stderr[-3000:]

    progress = [line for line in result.stderr.splitlines() if re.match(r"\[\s*\d+/10\s+\d+%\] round 1/1 ", line)]
    assert len(progress) == 10 and all("ETA" in line for line in progress)

    data = json.loads((out / "results.json").read_text())
    assert list(data["paths"]) == ["sleeve-ctr", "raw"] and data["skipped"] == {}
    errors = [s for s in data["samples"] if s.get("error")]
    assert not errors
    for name in ("raw", "sleeve-ctr"):
        s = data["summary"][name]
        assert s["tcp1-cubic"]["median"] > 0 and s["tcp4-cubic"]["median"] > 0 and s["tcp1-bbr"]["median"] > 0
        assert s["udp64"]["median"] > 0 and 0 < s["ping"]["median"] < 50
    assert {x["cc"] for x in data["samples"] if x["kind"] == "tcp"} == {"cubic", "bbr"}  # what iperf3 reported using
    sleeve = data["paths"]["sleeve-ctr"]
    assert sleeve["checks"] == {"mode": "sleeve", "df_ok": True} and sleeve["mtu"] == 1422
    cpu = data["summary"]["sleeve-ctr"]["tcp1-cubic"]["cpu_s_per_gb"]
    assert set(cpu["daemon"]) == {"h1", "h2"} and cpu["daemons"] > 0 and cpu["box"] > 0  # the pumps' CPU, counted

    table = (out / "table.md").read_text()
    assert "| sleeve-ctr | 1422 |" in table and "| raw | 1500 |" in table
    if _has_matplotlib():
        for png in ("throughput.png", "pps.png", "rtt.png", "cpu.png"):
            assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert (out / "logs" / "sleeve" / "router-h1.log").exists()

    left = [ns for ns in os.listdir("/run/netns") if ns.startswith(f"{PREFIX}-")] if os.path.isdir("/run/netns") else []
    assert left == []
    assert not os.path.exists(f"/run/meshnet-bench/{PREFIX}.json")
    assert not os.path.exists(f"/run/meshnet-lab/{PREFIX}-s")


def _has_matplotlib() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None
