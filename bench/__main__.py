"""meshnet's benchmark suite: `python -m bench [run] [options]`, as root, from the checkout.

    sudo .venv/bin/python -m bench                      all paths, 3 rounds (see `list`)
    sudo .venv/bin/python -m bench --quick              1 round of 1-second tests (smoke)
    sudo .venv/bin/python -m bench --paths raw,sleeve-ctr --rounds 5
    python -m bench list                                the paths and what each needs
    python -m bench table bench/results/<run>           print a run's table again
    python -m bench render bench/results/<run>          docs/benchmarks.md + charts from a run
    sudo .venv/bin/python -m bench clean                remove what a killed run left behind

Exit status: 0 when the run finished (skipped paths are listed, not failures), 1 when
nothing could be measured, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import sys
import time

from bench import peers
from bench.catalog import NAMES, SPECS, select
from bench.plan import Plan
from bench.progress import fmt_duration

ROOT = pathlib.Path(__file__).resolve().parent.parent
SETUP_S = 90  # building every bed and path, checking them, tearing down (2 vCPUs)
NEEDS = {"run": ("ip", "ss", "iperf3", "ping", "bridge", "nft")}
COMMANDS = ("run", "list", "table", "render", "clean")


def full_estimate() -> str:
    return fmt_duration(Plan().estimate_s(len(NAMES)) + SETUP_S)


def _csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command")
    run = sub.add_parser("run", help="build the hosts, measure every path round-robin, write the results (the default)")
    run.add_argument("--quick", action="store_true", help="1 round, 1-second tests, 5 pings: proves the suite works, nothing more")
    run.add_argument("--rounds", type=int, help="rounds (default 3; --quick 1)")
    run.add_argument("--seconds", type=int, help="TCP x1 seconds (default 6; TCP x4 and UDP take about half)")
    run.add_argument("--paths", type=_csv, help=f"comma-separated subset (default all): {','.join(NAMES)}")
    run.add_argument("--skip", type=_csv, default=[], help="comma-separated paths to leave out")
    run.add_argument("--cc", type=_csv, help="TCP congestion controls, headline first (default cubic,bbr)")
    run.add_argument("--hosts", type=int, default=3, help="hosts of the multi-host paths (default %(default)s)")
    run.add_argument("--out", type=pathlib.Path, help="results directory (default bench/results/<time>)")
    run.add_argument("--prefix", default="mnb", help="namespace prefix of this run (default %(default)s)")
    run.add_argument(
        "--wireguard-go",
        default=os.environ.get("MESHNET_BENCH_WIREGUARD_GO") or None,
        metavar="PATH",
        help="a wireguard-go binary to measure as wggo-bin (env MESHNET_BENCH_WIREGUARD_GO)",
    )
    run.add_argument("--router-arg", action="append", default=[], metavar="ARG", help="extra `meshnet launch` argument for every router (repeatable)")
    sub.add_parser("list", help="the paths, and whether each can run on this machine")
    for name, text in (("table", "print the table of a run again"), ("render", "write docs/benchmarks.md and its charts from a run")):
        p = sub.add_parser(name, help=text)
        p.add_argument("results", type=pathlib.Path)
        if name == "render":
            p.add_argument("--docs", type=pathlib.Path, default=ROOT / "docs")
    p = sub.add_parser("clean", help="remove the namespaces, routers and daemons a killed run left behind")
    p.add_argument("--prefix", default="mnb")
    return ap


def plan_of(args: argparse.Namespace) -> Plan:
    plan = Plan.quick_plan() if args.quick else Plan()
    if args.rounds is not None:
        plan.rounds = args.rounds
    if args.seconds is not None:
        plan.tcp_seconds = args.seconds
        plan.tcp4_seconds = plan.udp_seconds = max(1, args.seconds // 2)
    if args.cc:
        plan.cc = args.cc
    available = open("/proc/sys/net/ipv4/tcp_available_congestion_control").read().split()
    unknown = [c for c in plan.cc if c not in available]
    if unknown:
        raise ValueError(f"congestion control {', '.join(unknown)} not available (have {', '.join(available)})")
    if plan.rounds < 1 or plan.tcp_seconds < 1 or not 2 <= args.hosts <= 9:
        raise ValueError("need --rounds >= 1, --seconds >= 1, 2 <= --hosts <= 9")
    return plan


def cmd_run(args: argparse.Namespace) -> int:
    from bench.runner import Options, run

    if os.geteuid() != 0:
        print("python -m bench: needs root (it builds network namespaces): sudo .venv/bin/python -m bench", file=sys.stderr)
        return 2
    missing = [t for t in NEEDS["run"] if not shutil.which(t)]
    if missing:
        print(f"python -m bench: missing {', '.join(missing)} (bash install.sh installs them)", file=sys.stderr)
        return 2
    try:
        plan = plan_of(args)
        names = select(args.paths, args.skip)
    except ValueError as exc:
        print(f"python -m bench: {exc}", file=sys.stderr)
        return 2
    peers.wireguard_go_binary = args.wireguard_go
    out = args.out or ROOT / "bench" / "results" / (time.strftime("%Y%m%d-%H%M%S") + ("-quick" if plan.quick else ""))
    try:
        data = run(plan, names, Options(prefix=args.prefix, multi_hosts=args.hosts, router_args=args.router_arg), out)
    except RuntimeError as exc:  # another run holds the prefix, or a killed one left state
        print(f"python -m bench: {exc}", file=sys.stderr)
        return 1
    print((out / "table.md").read_text())
    return 0 if data["samples"] else 1


def cmd_list(args: argparse.Namespace) -> int:
    from bench.catalog import GROUPS

    for group, title in GROUPS.items():
        print(f"{title}:")
        for spec in SPECS:
            if spec.group == group:
                need = _needs(spec.name)
                print(f"  {spec.name:<18} {spec.about}" + (f"  [{need}]" if need else ""))
    print(f"\nA full run of every path takes about {full_estimate()} on 2 vCPUs.")
    return 0


def _needs(name: str) -> str:
    programs = {"tinc": ["tincd"], "nebula": ["nebula", "nebula-cert"], "fastd": ["fastd"], "wggo": ["wireguard-go", "wg"], "wggo-bin": ["wg"]}
    key = name if name in programs else name.split("-")[0]
    missing = [p for p in programs.get(key, []) if not shutil.which(p)]
    if name == "wggo-bin" and not os.environ.get("MESHNET_BENCH_WIREGUARD_GO"):
        missing.append("--wireguard-go PATH")
    return ("not runnable here: needs " + ", ".join(missing)) if missing else ""


def cmd_table(args: argparse.Namespace) -> int:
    import json

    from bench import report

    print(report.render(json.loads((args.results / "results.json").read_text())))
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from bench.render import render

    out = render(args.results, args.docs, full_estimate())
    print(f"wrote {out} and {args.docs / 'benchmarks'}/*.png")
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    from bench.bed import clean

    done = clean(args.prefix)
    print("\n".join(done) if done else f"nothing recorded for prefix {args.prefix}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS and argv[0] not in ("-h", "--help"):
        argv.insert(0, "run")
    args = parser().parse_args(argv)
    return {"run": cmd_run, "list": cmd_list, "table": cmd_table, "render": cmd_render, "clean": cmd_clean}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
