"""`meshnet lab up / down / demo`: the lab's subcommands (`meshnet.cli` calls `add_parser`).

Flags and output are the CLI's contract (docs/cli.md is generated from this parser).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from meshnet.lab.hosts import Lab, run


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lab", help="simulated hosts as network namespaces, each with a router (root)")
    lab_sub = p.add_subparsers(dest="lab_command", metavar="LAB_COMMAND", required=True)
    for name, help_text in (
        ("up", "create the underlay and N hosts, start a router on each"),
        ("down", "stop the lab's routers and remove its namespaces"),
        ("demo", "3 hosts x 2 containers: all-pairs ping, iperf3 across hosts, status; then down"),
    ):
        q = lab_sub.add_parser(name, help=help_text)
        q.add_argument("--prefix", default="mnlab", help="namespace name prefix (default %(default)s)")
        if name != "down":
            q.add_argument("--hosts", type=int, default=3, help="number of hosts (default %(default)s)")
            q.add_argument("--password", default=None, help="run the lab mesh encrypted with this password")
        if name == "demo":
            q.add_argument("--containers", type=int, default=2, help="containers per host (default %(default)s)")
            q.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
        q.set_defaults(func=cmd_lab)


def cmd_lab(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        print("meshnet lab needs root (it creates network namespaces)", file=sys.stderr)
        return 1
    if args.lab_command == "down":
        try:
            lab = Lab.load(args.prefix)
        except OSError:
            lab = Lab(prefix=args.prefix, hosts=16)
        lab.down()
        print(f"lab {args.prefix} removed")
        return 0
    lab = Lab(prefix=args.prefix, hosts=args.hosts, password=args.password)
    lab.up()
    print(f"lab {lab.prefix}: {lab.hosts} hosts up; try: meshnet status --run-dir {lab.run_dir(1)}")
    if args.lab_command == "up":
        return 0
    try:
        return demo(lab, args.containers)
    finally:
        if not args.keep:
            lab.down()
            print(f"lab {lab.prefix} removed (use --keep to keep it)")


def demo(lab: Lab, per_host: int) -> int:
    lab.wait_mesh()
    containers = [lab.add_container(i, j) for i in range(1, lab.hosts + 1) for j in range(1, per_host + 1)]
    print(f"\n{len(containers)} containers attached; all-pairs ping:")
    failures = 0
    for src, _ in containers:
        row = []
        for dst, ip in containers:
            if src == dst:
                continue
            ok = lab.ping(src, ip, wait=3)
            failures += not ok
            row.append(f"{ip}:{'ok' if ok else 'FAIL'}")
        print(f"  {src:<14} -> " + " ".join(row))
    (server, server_ip), (client, _) = containers[0], containers[per_host]
    print(f"\niperf3 TCP {client} -> {server} ({server_ip}), 3 s:")
    srv = subprocess.Popen(["ip", "netns", "exec", server, "iperf3", "-s", "-1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        out = run(["ip", "netns", "exec", client, "iperf3", "-c", server_ip, "-t", "3", "-J"], check=False, timeout=30)
        if out.returncode == 0:
            bps = json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"]
            print(f"  {bps / 1e9:.2f} Gbit/s")
        else:
            failures += 1
            print(f"  iperf3 failed: {out.stderr.strip() or out.stdout[-300:]}")
    finally:
        srv.kill()
        srv.wait()
    print(f"\nmeshnet status on {lab.host_ns(1)}:")
    print(run(lab.meshnet(1, "status")).stdout)
    print("demo: " + ("all checks passed" if not failures else f"{failures} checks FAILED"))
    return 0 if not failures else 1
