"""Real routers at scale on this machine, in the default mode (fastdp): the targets of issue 15.

    sudo .venv/bin/python bench/router_scale.py                  # 100 routers, then 50 at once
    sudo .venv/bin/python bench/router_scale.py --routers 30 --saturate 0   # smaller, no phase B

Phase A, 100 routers launched one after another, each seeded with h1 only (`meshnet lab`
hosts: one network namespace per router on one underlay bridge). Reports the launch times
(target: 100 launches in under 60 s), the time from the last launch until every router
reaches every other one and holds the connections its policy wants (target: 30 s; a full
mesh up to --full-mesh-limit routers, the bounded graph beyond), then idle CPU per router
over --idle seconds (target: 0.5 % of a core) and RSS per router (target: 40 MiB).

Phase B, 50 routers launched at once (saturation: 50 interpreters starting on 2 cores,
plus --burn busy processes if asked). Reports the time until the mesh converges (target:
120 s) and whether any router's connection count ever dropped once established (target:
never), polled every 2 s, and from the routers' logs.

Needs root. Bounded: every wait has a deadline; the labs are removed at the end, even on
failure or Ctrl-C. Figures are only meaningful on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from meshnet.errors import MeshnetError
from meshnet.lab import Lab

CLK = os.sysconf("SC_CLK_TCK")


def pid_of(lab: Lab, i: int) -> int:
    with open(f"{lab.run_dir(i)}/meshnet.pid") as f:
        return int(f.read())


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS")).split()[1]) / 1024


def snapshot(lab: Lab, i: int) -> dict | None:
    try:
        st = lab.status(i)
    except (OSError, MeshnetError):
        return None
    names = {p["nick"] for p in st["peers"] if p["reachable"]}
    graph = st.get("control_graph", {})
    return {
        "reachable": len(names),
        "connections": sum(1 for c in st["connections"] if c["state"] == "established"),
        "satisfied": graph.get("wanted_connected") == graph.get("wanted"),
        "full_mesh": graph.get("full_mesh"),
        "pruned": graph.get("pruned", 0),
    }


def converged(lab: Lab, n: int, pool: ThreadPoolExecutor) -> tuple[bool, list[dict | None]]:
    snaps = list(pool.map(lambda i: snapshot(lab, i), range(1, n + 1)))
    ok = all(s is not None and s["reachable"] == n and s["satisfied"] for s in snaps)
    return ok, snaps


def log_drops(lab: Lab, n: int) -> int:
    """Established connections that ended, as the routers logged them."""
    count = 0
    for i in range(1, n + 1):
        try:
            with open(f"{lab.run_dir(i)}/meshnet.log", errors="replace") as f:
                count += sum(1 for line in f if "disconnected from" in line)
        except OSError:
            pass
    return count


def machine_busy() -> float:
    """Core-seconds the whole machine has been busy since boot (/proc/stat: all but idle and iowait)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLK


def phase_a(n: int, idle: float, prefix: str, flags: list[str]) -> dict:
    lab = Lab(prefix=prefix, hosts=n, extra_flags=flags)
    out: dict = {"routers": n}
    try:
        lab.up(start_routers=False)
        launches = []
        busy0, first = machine_busy(), time.monotonic()
        for i in range(1, n + 1):
            t = time.monotonic()
            lab.start_router(i)
            launches.append(time.monotonic() - t)
        last = time.monotonic()
        routers_cpu = sum(cpu_seconds(pid_of(lab, i)) for i in range(1, n + 1))
        out.update(launch_total_s=last - first, launch_mean_s=sum(launches) / n, launch_max_s=max(launches), launch_first10_s=sum(launches[:10]) / 10)
        # Where launch time goes: the machine's busy share while launching, and what the
        # routers themselves spent (joins are mesh-wide work: each router meets the newcomer).
        out.update(launches_s=[round(x, 3) for x in launches], launch_busy=(machine_busy() - busy0) / (last - first), launch_routers_cpu_s=routers_cpu)
        with ThreadPoolExecutor(16) as pool:
            deadline = last + 120
            while time.monotonic() < deadline:
                ok, snaps = converged(lab, n, pool)
                if ok:
                    break
                time.sleep(1)
            out["converged"] = ok
            out["converge_s"] = time.monotonic() - last
            out["full_mesh"] = snaps[0]["full_mesh"] if snaps[0] else None
            out["degree_mean"] = sum(s["connections"] for s in snaps if s) / n
            out["degree_max"] = max((s["connections"] for s in snaps if s), default=0)
            time.sleep(10)  # settle: probes find their rhythm, seed connections get pruned (30 s after)
            pids = [pid_of(lab, i) for i in range(1, n + 1)]
            before = {p: cpu_seconds(p) for p in pids}
            t0 = time.monotonic()
            time.sleep(idle)
            took = time.monotonic() - t0
            cpu = [(cpu_seconds(p) - before[p]) / took * 100 for p in pids]
            rss = [rss_mib(p) for p in pids]
            out.update(idle_cpu_mean=sum(cpu) / n, idle_cpu_max=max(cpu), rss_mean=sum(rss) / n, rss_max=max(rss))
            _, snaps = converged(lab, n, pool)
            pruned = sum(s["pruned"] for s in snaps if s)
            out.update(log_drops=log_drops(lab, n), pruned=pruned)
    finally:
        lab.down()
    return out


def burn() -> None:
    while True:
        pass


def phase_b(n: int, burners: int, prefix: str, flags: list[str]) -> dict:
    lab = Lab(prefix=prefix, hosts=n, extra_flags=flags)
    out: dict = {"routers": n, "burners": burners}
    procs = []
    try:
        lab.up(start_routers=False)
        procs = [multiprocessing.Process(target=burn, daemon=True) for _ in range(burners)]
        for p in procs:
            p.start()
        start = time.monotonic()
        with ThreadPoolExecutor(n) as launcher:
            failed = [e for e in launcher.map(lambda i: _launch(lab, i), range(1, n + 1)) if e]
        out["launch_failures"] = failed[:3]
        out["all_launched_s"] = time.monotonic() - start
        best: dict[int, int] = {}
        drops = 0
        with ThreadPoolExecutor(16) as pool:
            deadline = start + 120
            ok = False
            while time.monotonic() < deadline:
                ok, snaps = converged(lab, n, pool)
                for i, s in enumerate(snaps, 1):
                    if s is None:
                        continue
                    if s["connections"] < best.get(i, 0):
                        drops += 1
                    best[i] = max(best.get(i, 0), s["connections"])
                if ok:
                    break
                time.sleep(2)
        out.update(converged=ok, converge_s=time.monotonic() - start, polled_drops=drops, log_drops=log_drops(lab, n))
        out["load_avg"] = os.getloadavg()[0]
    finally:
        for p in procs:
            p.kill()
        lab.down()
    return out


def _launch(lab: Lab, i: int) -> str:
    try:
        lab.start_router(i)
        return ""
    except Exception as exc:  # report, do not stop the others
        return f"h{i}: {exc}"


def main() -> int:
    if os.geteuid() != 0:
        print("router_scale needs root (network namespaces)", file=sys.stderr)
        return 1
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--routers", type=int, default=100)
    parser.add_argument("--saturate", type=int, default=50, help="routers launched at once in phase B (0: skip)")
    parser.add_argument("--burn", type=int, default=0, help="busy processes during phase B (keeps the machine saturated)")
    parser.add_argument("--idle", type=float, default=30.0, help="seconds of idle CPU measurement")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("flags", nargs="*", help="extra router flags (after --)")
    args = parser.parse_args()
    results = {}
    if args.routers:
        a = results["a"] = phase_a(args.routers, args.idle, "mnra", args.flags)
        print(
            f"A: {a['routers']} routers launched in {a['launch_total_s']:.1f} s (mean {a['launch_mean_s']:.2f} s, first ten "
            f"{a['launch_first10_s']:.2f} s, max {a['launch_max_s']:.2f} s); {'converged' if a['converged'] else 'NOT converged'} "
            f"{a['converge_s']:.1f} s after the last ({'full mesh' if a['full_mesh'] else 'bounded graph'}, "
            f"{a['degree_mean']:.1f} connections per router, max {a['degree_max']}); idle CPU {a['idle_cpu_mean']:.2f} % of a core "
            f"per router (max {a['idle_cpu_max']:.2f}); RSS {a['rss_mean']:.1f} MiB (max {a['rss_max']:.1f}); "
            f"{a['log_drops']} connection ends logged ({a['pruned']} connections pruned by the policy, each logged at both ends); while launching the machine was "
            f"{a['launch_busy'] / (os.cpu_count() or 1) * 100:.0f} % busy and the routers spent {a['launch_routers_cpu_s']:.0f} CPU-s",
            flush=True,
        )
    if args.saturate:
        b = results["b"] = phase_b(args.saturate, args.burn, "mnrb", args.flags)
        print(
            f"B: {b['routers']} routers launched at once ({b['burners']} burners), all launched after {b['all_launched_s']:.1f} s; "
            f"{'converged' if b['converged'] else 'NOT converged'} {b['converge_s']:.1f} s after the start; connection count "
            f"dropped {b['polled_drops']} times (polled), {b['log_drops']} connections ended (logs); load {b['load_avg']:.1f}"
            + (f"; launch failures: {b['launch_failures']}" if b["launch_failures"] else ""),
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
