"""The sleeve's paths side by side in one run: container to container and host to host,
plain and encrypted, round-robin, medians of N (issue 16 "Targets").

    sudo .venv/bin/python bench/sleeve_sidebyside.py [--rounds 3] [--seconds 5] [--tests tcp1,tcp4,udp64,rtt]
        [--labs plain,aes] [--env plain:MESHNET_PUMP_THREADS=2 ...] [--json out.json]

Two `meshnet lab`s at once, 2 hosts each, kernel VXLAN off (prefixes mnvp, mnve; plain2
and aes2, mnvq and mnvf, for a second configuration of each, e.g. --env
plain2:MESHNET_PUMP_THREADS=2): containers attached
through the real path (veth, bridge, TAP, pump) and an address on each host's bridge
(the "host to host" figure: bridge, TAP, pump, without the container's veth). Every test
alternates over all (lab, path) pairs within a round; each figure is the median of the
rounds, with its spread. For each test it also records the CPU seconds of the two pump
threads per GB moved and the pump counters that explain a figure (TSO frames read from
the TAP, merged writes, drops). iperf3 runs with `-C cubic`. The load average of the
machine is printed with the table: other work on the box moves absolute figures, so
compare within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from meshnet.lab import Lab  # noqa: E402
from meshnet.lab.hosts import run  # noqa: E402

LABS = {
    "plain": dict(prefix="mnvp", password=None),
    "aes": dict(prefix="mnve", password="bench-not-secret"),
    "plain2": dict(prefix="mnvq", password=None),
    "aes2": dict(prefix="mnvf", password="bench-not-secret"),
}
HOST_NET = "10.99.40"  # the hosts' own addresses on their meshnet bridge
COUNTERS = ("tap_rx", "gso_segments", "udp_tx", "udp_rx", "tap_tx", "gro_frames", "gro_segments",
            "drop_send_error", "drop_tap_write", "drop_replay", "drop_auth")


def in_ns(ns: str, *cmd: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *cmd]


def pump_cpu(lab: Lab) -> float:
    """CPU seconds of the pump threads of the lab's routers so far."""
    total = 0
    for i in (1, 2):
        with open(f"{lab.run_dir(i)}/meshnet.pid") as f:
            pid = int(f.read())
        for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
            try:
                if (task / "comm").read_text().startswith("meshnet-pump"):
                    fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                    total += int(fields[11]) + int(fields[12])
            except OSError:
                pass
    return total / os.sysconf("SC_CLK_TCK")


def counters(lab: Lab) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in (1, 2):
        stats = lab.status(i)["dataplane"]["stats"]
        for k in COUNTERS:
            out[k] = out.get(k, 0) + stats.get(k, 0)
    return out


def iperf(src: str, dst: str, ip: str, args: list[str], seconds: int) -> dict:
    srv = subprocess.Popen(in_ns(dst, "iperf3", "-s", "-1"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        out = subprocess.run(in_ns(src, "iperf3", "-c", ip, "-J", "-t", str(seconds), *args),
                             capture_output=True, text=True, timeout=seconds + 30)
        return json.loads(out.stdout).get("end", {})
    except (ValueError, subprocess.TimeoutExpired):
        return {}
    finally:
        srv.kill()
        srv.wait()


def measure(test: str, src: str, dst: str, ip: str, seconds: int) -> tuple[float, float]:
    """(figure, bytes moved): Gbit/s for TCP, kpps received for UDP 64 B, ms for RTT."""
    if test in ("tcp1", "tcp4"):
        end = iperf(src, dst, ip, ["-C", "cubic", "-O", "1"] + (["-P", "4"] if test == "tcp4" else []), seconds)
        r = end.get("sum_received", {})
        return r.get("bits_per_second", 0) / 1e9, r.get("bytes", 0)
    if test == "udp64":
        end = iperf(src, dst, ip, ["-u", "-l", "64", "-b", "0"], max(2, seconds // 2))
        r = end.get("sum_received") or end.get("sum") or {}
        got = r.get("packets", 0) - r.get("lost_packets", 0)
        return (got / r["seconds"] / 1e3 if r.get("seconds") else 0.0), got * 64
    out = subprocess.run(in_ns(src, "ping", "-c", "50", "-i", "0.02", "-q", ip), capture_output=True, text=True, timeout=30)
    try:
        return float(out.stdout.rsplit("=", 1)[1].split("/")[1]), 0
    except (IndexError, ValueError):
        return float("nan"), 0


def up(name: str, env: dict[str, str]) -> tuple[Lab, dict[str, tuple[str, str, str]]]:
    spec = LABS[name]
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the routers inherit it (the lab launches them with os.environ)
    lab = Lab(prefix=spec["prefix"], hosts=2, password=spec["password"], extra_flags=["--no-fastdp"])
    try:
        lab.up()
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    lab.wait_mesh()
    (c1, _), (c2, ip2) = lab.add_container(1, 1), lab.add_container(2, 1)
    for i in (1, 2):
        run(["ip", "-n", lab.host_ns(i), "addr", "add", f"{HOST_NET}.{i}/24", "dev", "meshnet"])
    for ns, ip in ((c1, ip2), (lab.host_ns(1), f"{HOST_NET}.2")):
        deadline = time.monotonic() + 20
        while not lab.ping(ns, ip, wait=1) and time.monotonic() < deadline:
            pass
    paths = {"c2c": (c1, c2, ip2), "h2h": (lab.host_ns(1), lab.host_ns(2), f"{HOST_NET}.2")}
    return lab, paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--tests", default="tcp1,tcp4,udp64,rtt")
    ap.add_argument("--labs", default="plain,aes")
    ap.add_argument("--paths", default="c2c,h2h")
    ap.add_argument("--env", action="append", default=[], help="LAB:NAME=VALUE for that lab's routers")
    ap.add_argument("--json")
    args = ap.parse_args()
    envs: dict[str, dict[str, str]] = {}
    for item in args.env:
        name, _, kv = item.partition(":")
        k, _, v = kv.partition("=")
        envs.setdefault(name, {})[k] = v
    labs: dict[str, tuple[Lab, dict]] = {}
    results: dict[tuple[str, str, str], list[dict]] = {}
    load = [os.getloadavg()[0]]
    try:
        for name in args.labs.split(","):
            labs[name] = up(name, envs.get(name, {}))
        pairs = [(lab, path) for lab in labs for path in args.paths.split(",")]
        for rnd in range(args.rounds):
            order = pairs if rnd % 2 == 0 else pairs[::-1]
            for test in args.tests.split(","):
                for name, path in order:
                    lab, paths = labs[name]
                    cpu0, c0 = pump_cpu(lab), counters(lab)
                    figure, moved = measure(test, *paths[path], args.seconds)
                    cpu1, c1 = pump_cpu(lab), counters(lab)
                    results.setdefault((test, name, path), []).append({
                        "figure": figure, "cpu_s_per_gb": (cpu1 - cpu0) / (moved / 1e9) if moved else None,
                        "counters": {k: c1[k] - c0[k] for k in COUNTERS}})
                    print(f"round {rnd + 1} {test:5} {name:6} {path}: {figure:.3f}", file=sys.stderr, flush=True)
            load.append(os.getloadavg()[0])
    finally:
        for lab, _ in labs.values():
            lab.down()
    print(f"load average (1 min) during the run: {min(load):.1f}..{max(load):.1f}; {args.rounds} rounds, medians (min..max)")
    print("| test | lab | path | figure | spread | pump CPU-s/GB | TSO frames/tap_rx | merged/tap_tx | drops send/tap |")
    print("|---|---|---|---:|---|---:|---:|---:|---|")
    table = {}
    for (test, name, path), rows in results.items():
        figs = [r["figure"] for r in rows]
        med = statistics.median(figs)
        cpu = [r["cpu_s_per_gb"] for r in rows if r["cpu_s_per_gb"] is not None]
        c = {k: sum(r["counters"][k] for r in rows) for k in COUNTERS}
        tso = c["gso_segments"] / c["tap_rx"] if c["tap_rx"] else 0
        merged = c["gro_segments"] / c["tap_tx"] if c["tap_tx"] else 0
        table[f"{test}/{name}/{path}"] = {"median": med, "runs": figs, "cpu_s_per_gb": statistics.median(cpu) if cpu else None, "counters": c}
        print(f"| {test} | {name} | {path} | {med:.3f} | {min(figs):.3f}..{max(figs):.3f} | "
              f"{statistics.median(cpu) if cpu else float('nan'):.2f} | {tso:.1f} | {merged:.2f} | "
              f"{c['drop_send_error']}/{c['drop_tap_write']} |")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"load": load, "results": table}, indent=1))


if __name__ == "__main__":
    main()
