"""One run: build the beds, check every path, measure round-robin, write the results.

Beds are built only for the paths asked for; a path that cannot be built is skipped with
its reason. Results (JSON, table) are rewritten after every round, so an interrupted run
keeps what it measured; the beds are always torn down, Ctrl-C and SIGTERM included.
"""

from __future__ import annotations

import json
import pathlib
import signal
import sys
import time
from dataclasses import dataclass, field

from bench import aggregate, charts, envinfo, report, targets
from bench.bare_bed import build_bare
from bench.bed import Bed, Ledger
from bench.catalog import BY_NAME, Path, Skip
from bench.meshnet_beds import BUILDERS, lab_options
from bench.plan import Plan, Test
from bench.procstat import CpuWindow, idle_busy_cores
from bench.progress import Progress, fmt_duration, fmt_value, note
from bench.tools import combine, df_ping, run_iperf, run_ping
from meshnet.lab import Lab

BED_CODES = {"bare": "b", "sleeve": "s", "aes": "e", "fastdp": "f", "multi-sleeve": "m", "multi-fastdp": "n", "relay": "r"}
PAUSE_S = 0.3  # between measurements: queues drain, iperf3 ports close


@dataclass
class Options:
    prefix: str = "mnb"
    multi_hosts: int = 3
    router_args: list[str] = field(default_factory=list)


def bed_hosts(bed: str, opts: Options) -> int:
    return {"multi-sleeve": opts.multi_hosts, "multi-fastdp": opts.multi_hosts, "relay": 3}.get(bed, 2)


def make_bed(ledger: Ledger, bed: str, opts: Options, logs: pathlib.Path) -> Bed:
    prefix = f"{opts.prefix}-{BED_CODES[bed]}"
    if bed == "bare":
        lab = Lab(prefix=prefix, hosts=2)
    else:
        password, flags = lab_options(bed)
        lab = Lab(prefix=prefix, hosts=bed_hosts(bed, opts), password=password, extra_flags=[*flags, *opts.router_args])
    return Bed(ledger, lab, logs / bed)


def build(names: list[str], ledger: Ledger, opts: Options, logs: pathlib.Path, beds: list[Bed]) -> tuple[dict[str, Path], dict[str, str]]:
    paths: dict[str, Path] = {}
    skipped: dict[str, str] = {}

    def skip(name: str, why: str) -> None:
        skipped[name] = why
        note(f"  skip {name}: {why}")

    for bed_name in dict.fromkeys(BY_NAME[n].bed for n in names):
        wanted = [n for n in names if BY_NAME[n].bed == bed_name]
        bed = make_bed(ledger, bed_name, opts, logs)
        beds.append(bed)
        t0 = time.monotonic()
        note(f"setting up bed {bed_name} ({bed.lab.prefix}, {bed.lab.hosts} hosts) for {', '.join(wanted)}")
        try:
            got = build_bare(bed, wanted, skip) if bed_name == "bare" else BUILDERS[bed_name](bed, bed_name, wanted)
        except Exception as exc:  # a bed that cannot be built costs its paths, not the run
            got = {}
            why = str(exc) if isinstance(exc, Skip) else f"{type(exc).__name__}: {exc}"
            for n in wanted:
                skip(n, f"bed {bed_name}: {why}")
        paths.update(got)
        note(f"  bed {bed_name} ready in {time.monotonic() - t0:.1f}s: {', '.join(got) or 'nothing'}")
        if not got:
            bed.down()
            beds.remove(bed)
    ordered = {n: paths[n] for n in names if n in paths}
    for path in ordered.values():
        path.checks["df_ok"] = all(df_ping(p, path.mtu) for p in path.pairs)
        if not path.checks["df_ok"]:
            note(f"  {path.name}: a full-size packet (MTU {path.mtu}, DF) does not cross: the figures may include fragmentation")
    return ordered, skipped


def measure(path: Path, test: Test, plan: Plan) -> dict:
    t0 = time.monotonic()
    if test.kind == "ping":
        sample = combine("ping", run_ping(test, path.pairs, plan.ping_interval))
        cpu: dict = {}
    else:
        results, cpu = run_iperf(test, path.pairs, around=CpuWindow(path.daemons))
        sample = combine(test.kind, results)
        gone = [label for label, s in (cpu.get("daemon_cpu_s") or {}).items() if s is None]
        if gone and not sample.get("error"):
            sample = {"error": f"daemon(s) {', '.join(gone)} gone"}
        if test.cc and sample.get("cc") and sample["cc"] != test.cc:  # iperf3 says what the sender used
            sample = {"error": f"asked for congestion control {test.cc}, the sender used {sample['cc']}"}
    wall = round(time.monotonic() - t0, 3)
    return {"path": path.name, "test": test.name, "kind": test.kind, **sample, **cpu, "active_s": test.seconds + test.omit, "wall_s": wall}


def results_data(plan: Plan, env: dict, paths: dict[str, Path], skipped: dict[str, str], samples: list[dict]) -> dict:
    params = plan.as_dict()
    summary = aggregate.summarize(samples, params["tests"])
    return {
        "params": params,
        "env": env,
        "paths": {n: p.as_dict() for n, p in paths.items()},
        "skipped": skipped,
        "summary": summary,
        "ratios": targets.ratio_rows(summary, plan.headline_cc),
        "targets": targets.targets(summary, plan.headline_cc),
        "samples": samples,
    }


def write(out: pathlib.Path, data: dict, *, with_charts: bool) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(data, indent=1, default=str))
    (out / "table.md").write_text(report.render(data))
    if not with_charts:
        return []
    try:
        return [p.name for p in charts.draw(data, out)]
    except ImportError:
        note("matplotlib is not installed (pip install -e '.[bench]'): no charts")
        return []


def _sigterm(signum, frame):
    raise KeyboardInterrupt


def run(plan: Plan, names: list[str], opts: Options, out: pathlib.Path) -> dict:
    ledger = Ledger(opts.prefix)
    ledger.lock()
    previous = signal.signal(signal.SIGTERM, _sigterm)
    beds: list[Bed] = []
    samples: list[dict] = []
    env = envinfo.collect()
    paths: dict[str, Path] = {}
    skipped: dict[str, str] = {}
    try:
        t0 = time.monotonic()
        paths, skipped = build(names, ledger, opts, out / "logs", beds)
        note(f"setup done in {time.monotonic() - t0:.0f}s: {len(paths)} paths up, {len(skipped)} skipped")
        env["idle_busy_cores"] = round(idle_busy_cores(1 if plan.quick else 5), 3)
        note(f"box busy with every path up and nothing measured: {env['idle_busy_cores']:.2f} CPUs")
        order = list(paths)
        runs = plan.measurements(order)
        note(f"measuring {len(order)} paths x {len(plan.tests())} tests x {plan.rounds} rounds, about {fmt_duration(plan.estimate_s(len(order)))}")
        progress = Progress([t.estimate_s() for _, _, t in runs], plan.rounds)
        for k, (rnd, name, test) in enumerate(runs):
            progress.start(rnd, name, test.name, test.seconds + test.omit)
            sample = {"round": rnd, **measure(paths[name], test, plan)}
            samples.append(sample)
            progress.done(fmt_value(test.kind, sample))
            time.sleep(PAUSE_S)
            last_test_of_path = k + 1 == len(runs) or runs[k + 1][1] != name
            if last_test_of_path and paths[name].verify and (problem := paths[name].verify()):
                paths[name].checks.setdefault("changed", []).append(f"after round {rnd + 1}: {problem}")
                note(f"  {name} is no longer the path measured: {problem}")
            if k + 1 == len(runs) or runs[k + 1][0] != rnd:
                write(out, results_data(plan, env, paths, skipped, samples), with_charts=False)
    except KeyboardInterrupt:
        sys.stderr.write("\n")  # the progress line may be half written
        note("interrupted: tearing down, keeping what was measured")
    finally:
        note("tearing down")
        clean = True
        for bed in reversed(beds):
            try:
                bed.down()
            except Exception as exc:  # keep tearing down the others; `clean` can finish
                clean = False
                note(f"  teardown of {bed.lab.prefix} failed: {exc} (python -m bench clean --prefix {opts.prefix})")
        if clean:
            ledger.forget()
        ledger.unlock()
        signal.signal(signal.SIGTERM, previous)
    env["loadavg_end"] = envinfo.loadavg()
    data = results_data(plan, env, paths, skipped, samples)
    pngs = write(out, data, with_charts=True)
    note(f"results in {out}: results.json, table.md" + (", " + ", ".join(pngs) if pngs else ""))
    return data
