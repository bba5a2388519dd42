"""The endpoint benchmark as a user runs it (`python bench/endpoint_scale.py`), small: it
loads the endpoints into the kernel of a real router over fastdp, measures one update as
2 FDB changes, prints its table, and leaves no namespace or router behind."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.netns, pytest.mark.slow]

ROOT = pathlib.Path(__file__).parents[2]
PREFIX = "mnest"


def test_a_small_run_loads_measures_and_cleans_up(tmp_path):
    out = tmp_path / "figures.json"
    cmd = [sys.executable, "bench/endpoint_scale.py", "--endpoints", "3000", "--per-peer", "1024", "--idle", "1",
           "--samples", "1", "--updates", "2", "--prefix", PREFIX, "--json", str(out), "--budget", "280"]  # fmt: skip
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)  # ~35 s on an idle 2-vCPU VM
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| figure | no gossiped endpoints | 3,000 gossiped endpoints |" in result.stdout

    f = json.loads(out.read_text())
    assert f["peers_announcing"] == 3 and f["mode_wanted"] == "fastdp"  # 1021 + 1024 + 955: fake peers answer probes
    assert f["load"]["kernel_rows"] == {"vxlan": 3000, "bridge:vxmesh": 3000}
    assert f["update"]["ops"] == [2, 2] and f["update"]["syncs"] == [1, 1] and min(f["update"]["fdb_events"]) >= 2
    assert f["connections"]["dropped"] == [] and f["healthy"] == {"1": True, "2": True}
    assert not [ns for ns in os.listdir("/run/netns") if ns.startswith(PREFIX + "-")]
    assert not os.path.exists(f"/run/meshnet-lab/{PREFIX}")
