"""Render one peerbench run (with meshnet's EXTRA paths) into docs/benchmarks.md (the
run's full table, the targets of issue 5 checked against it) and docs/benchmarks.png.

    .venv/bin/python bench/render_benchmarks.py /work/shared/peerbench/results/<ts> [--micro micro.json]

Ratios are taken within the run only (the machine's speed drifts between runs).
"""

from __future__ import annotations

import argparse
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
USERSPACE_PLAIN = ("tinc-null", "fastd-null")  # "best userspace peer without cipher"
ENCRYPTED = ("tinc-aes", "nebula", "fastd-salsa", "wggo", "n2n")
PEERS = ("tinc-aes", "tinc-null", "nebula", "fastd-salsa", "fastd-null", "wggo", "n2n")
OURS = ("meshnet-plain", "meshnet-aes")


def best(summary: dict, names, key: str, low: bool = False):
    have = [(summary[n][key], n) for n in names if n in summary and summary[n].get(key) is not None]
    if not have:
        return None, None
    return min(have) if low else max(have)


def targets(s: dict) -> list[tuple[str, str, str, bool | None]]:
    rows = []

    def ratio_row(what, ours, peers, key, need):
        mine = s.get(ours, {}).get(key)
        value, name = best(s, peers, key)
        if mine is None or value is None:
            rows.append((what, "-", f">= {need}x", None))
            return
        r = mine / value
        rows.append((what, f"{mine:.3g} vs {name} {value:.3g}: **{r:.1f}x**", f">= {need}x", r >= need))

    ratio_row("sleeve plain, TCP x1 vs best userspace peer without cipher", "meshnet-plain", USERSPACE_PLAIN, "tcp1_gbps", 4)
    ratio_row("sleeve encrypted, TCP x1 vs best encrypted peer", "meshnet-aes", ENCRYPTED, "tcp1_gbps", 2.5)
    ratio_row("sleeve plain, UDP 64 B received pps vs best peer", "meshnet-plain", PEERS, "udp64_rx_kpps", 2)
    ratio_row("sleeve encrypted, UDP 64 B received pps vs best peer", "meshnet-aes", PEERS, "udp64_rx_kpps", 2)
    value, name = best(s, PEERS, "rtt_avg_ms", low=True)
    for ours in OURS:
        mine = s.get(ours, {}).get("rtt_avg_ms")
        if mine is None or value is None:
            rows.append((f"{ours} RTT vs best peer", "-", "<= 1x", None))
        else:
            rows.append((f"{ours} ping RTT vs best peer", f"{mine:.3f} ms vs {name} {value:.3f} ms: **{mine / value:.2f}x**",
                         "<= 1x", mine <= value))
    return rows


def chart(s: dict, path: pathlib.Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in ("raw", "vxlan", *PEERS, *OURS) if n in s]
    colors = ["#4c72b0" if n in OURS else "#999999" if n in ("raw", "vxlan") else "#dd8452" for n in names]
    fig, axes = plt.subplots(1, 4, figsize=(17, 5.2))
    panels = [
        ("tcp1_gbps", "TCP, 1 stream (Gbit/s, log)", True),
        ("tcp4_gbps", "TCP, 4 streams (Gbit/s, log)", True),
        ("udp64_rx_kpps", "UDP 64 B received (kpps)", False),
        ("rtt_avg_ms", "ping RTT (ms, lower is better)", False),
    ]
    for ax, (key, label, log) in zip(axes, panels):
        vals = [s[n].get(key) or 0 for n in names]
        ax.barh(names, vals, color=colors)
        ax.invert_yaxis()
        if log:
            ax.set_xscale("log")
        ax.set_title(label, fontsize=10)
        for i, v in enumerate(vals):
            ax.text(v, i, f" {v:.3g}", va="center", fontsize=8)
        ax.tick_params(axis="y", labelsize=9)
        ax.margins(x=0.25)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=pathlib.Path)
    ap.add_argument("--micro", type=pathlib.Path, help="pytest-benchmark --benchmark-json output")
    ap.add_argument("--out", type=pathlib.Path, default=ROOT / "docs" / "benchmarks.md")
    args = ap.parse_args()
    data = json.loads((args.results / "results.json").read_text())
    s = data["summary"]
    env = (args.results / "env.txt").read_text()
    table = (args.results / "table.md").read_text()
    probe = args.results / "probe.txt"
    png = args.out.with_suffix(".png")
    date = next((line.split(": ", 1)[1] for line in env.splitlines() if line.startswith("date:")), "?")
    try:
        chart(s, png, f"peerbench run {args.results.name} (2 netns hosts over veth, 2 vCPUs, iperf3 -C cubic); "
                      "blue = meshnet sleeve")
    except ImportError:
        print("matplotlib is not installed (.venv/bin/pip install matplotlib): chart not redrawn")
    lines = [
        "# Benchmarks",
        "",
        "Regenerate: `sudo bench/run_peerbench.sh` (one ../shared/peerbench run with meshnet's",
        "sleeve plugged in through its EXTRA hook: `bench/peerbench_meshnet.sh`), then this file",
        "and the chart come from `bench/render_benchmarks.py`. Micro-benchmarks:",
        "`.venv/bin/python -m pytest bench/test_micro.py`. Container-to-container in a lab:",
        "`sudo .venv/bin/python bench/sleeve_lab.py`.",
        "",
        f"## peerbench run {args.results.name} ({date})",
        "",
        "Two network namespaces (hA, hB) joined by a veth underlay (MTU 1500) on one 2-vCPU VM:",
        "both hosts, all daemons and both iperf3 ends share the same 2 cores. Every path is set",
        "up at once and measured round-robin, medians of the rounds; ratios are to `raw` of the",
        "same run. TCP congestion control: CUBIC (`iperf3 -C cubic`; the machine default is BBR).",
        "meshnet paths: a router per host with kernel VXLAN off (`--no-fastdp`), so all traffic",
        "rides the sleeve; iperf3 talks to an address on the meshnet bridge (bridge -> TAP ->",
        "pump -> UDP), MTU 1422 (the peers use 1420). `meshnet-aes` is the sleeve with a mesh",
        "password (AES-256-GCM per datagram).",
        "",
        "![chart](benchmarks.png)",
        "",
        "### Targets of issue 5 (ratios from this one run)",
        "",
        "| target | this run | wanted | met |",
        "|---|---|---|---|",
    ]
    for what, got, want, ok in targets(s):
        lines.append(f"| {what} | {got} | {want} | {'yes' if ok else 'no' if ok is not None else '?'} |")
    lines += ["", "### The run's full table (peerbench output, unedited)", "", table.strip(), ""]
    if probe.exists():
        lines += ["### Kernel feature probes of this run", "", "```", *[l[6:] for l in probe.read_text().splitlines() if l.startswith("PROBE ")], "```", ""]
    lines += ["### Environment", "", "```", env.strip(), "```", ""]
    extra = ROOT / "bench" / "benchmarks_notes.md"
    if extra.exists():
        lines += [extra.read_text().strip(), ""]
    if args.micro and args.micro.exists():
        micro = json.loads(args.micro.read_text())
        lines += ["## Micro-benchmarks (pytest-benchmark, per datagram/frame)", "",
                  "| benchmark | median per call | per frame |", "|---|---|---|"]
        for b in micro["benchmarks"]:
            lines.append(f"| {b['name']} | {b['stats']['median'] * 1e6:.1f} us | {b['extra_info'].get('per_frame_ns', '-')} ns |")
        lines.append("")
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out} and {png}")


if __name__ == "__main__":
    main()
