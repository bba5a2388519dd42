"""PNG charts of one run: throughput, small-packet rate, RTT and CPU per GB, per path.

Bars are medians, whiskers the lowest and highest round. meshnet's paths are blue, the
baselines (underlay, kernel VXLAN by hand) grey, the peers orange. Needs matplotlib (the
`bench` extra); without it the run still writes its JSON and table.
"""

from __future__ import annotations

import pathlib

from bench.catalog import BY_NAME, GROUPS
from bench.targets import test_names

COLORS = {"meshnet": "#4c72b0", "baseline": "#8c8c8c", "peer": "#dd8452"}
FILES = ("throughput.png", "pps.png", "rtt.png", "cpu.png")


def ordered_paths(data: dict) -> list[str]:
    """Paths grouped as the table groups them (containers first)."""
    return [p for g in GROUPS for p in data["paths"] if BY_NAME[p].group == g and p in data["summary"]]


def _bars(ax, names: list[str], stats: list[dict | None], title: str) -> None:
    vals = [(s or {}).get("median") or 0 for s in stats]
    lo = [max(0.0, v - ((s or {}).get("min") or v)) for v, s in zip(vals, stats)]
    hi = [max(0.0, ((s or {}).get("max") or v) - v) for v, s in zip(vals, stats)]
    colors = [COLORS[BY_NAME[n].family] for n in names]
    ax.barh(names, vals, color=colors, xerr=[lo, hi], error_kw={"elinewidth": 0.8, "capsize": 2})
    for i in range(1, len(names)):  # a rule between groups (containers, hosts, more hosts)
        if BY_NAME[names[i]].group != BY_NAME[names[i - 1]].group:
            ax.axhline(i - 0.5, color="#cccccc", linewidth=0.8)
    ax.set_title(title, fontsize=10)
    ax.tick_params(axis="y", labelsize=8)
    for i, v in enumerate(vals):
        if v:
            ax.text(v, i, f" {v:.3g}", va="center", fontsize=7)
    ax.margins(x=0.2)


def draw(data: dict, out_dir: pathlib.Path) -> list[pathlib.Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cc = data["params"]["cc"]
    n = test_names(cc[0])
    names = ordered_paths(data)
    if not names:
        return []
    s = data["summary"]
    height = 1.2 + 0.32 * len(names)
    rounds = "QUICK smoke run, not meaningful" if data["params"].get("quick") else f"{data['params']['rounds']} rounds"
    title = f"{data.get('env', {}).get('date', '')}  {rounds}"
    written = []

    def save(fig, name: str) -> None:
        fig.suptitle(f"meshnet bench: {title}; blue meshnet, grey baselines, orange peers", fontsize=9)
        fig.tight_layout()
        path = out_dir / name
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)

    tcp = [(n["tcp1"], f"TCP x1 {cc[0]} (Gbit/s)"), (n["tcp4"], f"TCP x4 {cc[0]} (Gbit/s)")] + [(f"tcp1-{c}", f"TCP x1 {c} (Gbit/s)") for c in cc[1:]]
    fig, axes = plt.subplots(1, len(tcp), figsize=(5 * len(tcp), height), sharey=True, squeeze=False)
    for ax, (test, label) in zip(axes[0], tcp):
        _bars(ax, names, [s[p].get(test) for p in names], label)
    axes[0][0].invert_yaxis()  # shared: once for all panels, first path on top
    save(fig, "throughput.png")

    fig, ax = plt.subplots(figsize=(7, height))
    _bars(ax, names, [s[p].get("udp64") for p in names], "UDP 64 B received (kpps)")
    ax.invert_yaxis()
    save(fig, "pps.png")

    fig, ax = plt.subplots(figsize=(7, height))
    _bars(ax, names, [s[p].get("ping") for p in names], "ping RTT (ms, lower is better)")
    ax.invert_yaxis()
    save(fig, "rtt.png")

    fig, axes = plt.subplots(1, 2, figsize=(11, height), sharey=True)
    cpu = [((s[p].get(n["tcp1"]) or {}).get("cpu_s_per_gb") or {}) for p in names]
    _bars(axes[0], names, [{"median": c.get("daemons")} for c in cpu], "daemons' CPU-s per GB (TCP x1; kernel paths: none)")
    _bars(axes[1], names, [{"median": c.get("box")} for c in cpu], "whole box CPU-s per GB (TCP x1, lower is better)")
    axes[0].invert_yaxis()
    save(fig, "cpu.png")
    return written
