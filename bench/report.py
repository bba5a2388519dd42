"""results.json -> the run's markdown: a table per group, ratios, targets, skips, details.

Pure: takes the results dict (as written to results.json) and returns text, so the
table of an old run can be printed again (`python -m bench table DIR`).
"""

from __future__ import annotations

from bench.catalog import BY_NAME, GROUPS
from bench.targets import test_names


def fmt(v: float | None, digits: int = 3) -> str:
    if v is None:
        return "–"
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.{digits}g}"


def cell(s: dict | None, digits: int = 3) -> str:
    """A median with its spread over the rounds, e.g. `5.81 (8%)`; errors are counted."""
    if not s:
        return "–"
    text = fmt(s.get("median"), digits)
    if s.get("spread_pct") is not None:
        text += f" ({s['spread_pct']:.0f}%)"
    if s.get("errors"):
        text += f" [{len(s['errors'])} err]"
    return text


def cpu_cell(s: dict | None, key: str) -> str:
    cpu = (s or {}).get("cpu_s_per_gb") or {}
    if key == "box":
        return fmt(cpu.get("box"), 3)
    each = cpu.get("daemon") or {}
    if not each:
        return "– (kernel)"
    parts = ", ".join(f"{label} {fmt(v, 2)}" for label, v in each.items())
    return f"{fmt(cpu.get('daemons'), 3)} ({parts})"


def main_tables(data: dict) -> list[str]:
    cc = data["params"]["cc"]
    n = test_names(cc[0])
    summary = data["summary"]
    raw = summary.get("raw", {}).get(n["tcp1"], {}).get("median")
    extra = [f"tcp1-{c}" for c in cc[1:]]
    head = (
        f"| path | MTU | TCP x1 {cc[0]} Gbit/s | x raw | TCP x4 {cc[0]} | "
        + "".join(f"TCP x1 {t.split('-', 1)[1]} | " for t in extra)
        + "UDP 64 B rx kpps | RTT ms | daemons CPU-s/GB (each) | box CPU-s/GB |"
    )
    rule = "|" + "---|" * (head.count("|") - 1)
    lines: list[str] = []
    for group, title in GROUPS.items():
        names = [p for p in data["paths"] if BY_NAME[p].group == group and p in summary]
        if not names:
            continue
        lines += [f"### {title}", "", head, rule]
        for p in names:
            s = summary[p]
            t1 = s.get(n["tcp1"])
            x_raw = t1["median"] / raw if t1 and t1.get("median") is not None and raw else None
            udp = s.get("udp64")
            udp_text = cell(udp, 3) + (f", {udp['loss_pct']:.0f}% lost" if udp and udp.get("loss_pct") is not None else "")
            row = [p, str(data["paths"][p]["mtu"]), cell(t1), fmt(x_raw), cell(s.get(n["tcp4"]))]
            row += [cell(s.get(t)) for t in extra]
            row += [udp_text, cell(s.get("ping")), cpu_cell(t1, "daemons"), cpu_cell(t1, "box")]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    return lines


def ratio_lines(data: dict) -> list[str]:
    rows = data.get("ratios") or []
    if not rows:
        return []
    lines = ["### Ratios within this run", "", "| ratio | test | value |", "|---|---|---:|"]
    for r in rows:
        pair = "" if r["path"] == r["base"] else f" ({r['path']} / {r['base']})"
        lines.append(f"| {r['what']}{pair} | {r['test']} | {r['ratio']:.3f} |")
    return lines + [""]


def target_lines(data: dict) -> list[str]:
    rows = data.get("targets") or []
    if not rows:
        return []
    lines = ["### Targets of issue 16 (ratios from this run)", "", "| target | this run | wanted | met |", "|---|---|---|---|"]
    for r in rows:
        got = f"{r['detail']}: **{r['ratio']:.2f}x**" if r["ratio"] is not None else r["detail"]
        met = {True: "yes", False: "**no**", None: "?"}[r["met"]]
        lines.append(f"| {r['target']} | {got} | {r['want']} | {met} |")
    return lines + [""]


def note_lines(data: dict) -> list[str]:
    lines = ["### Paths", "", "| path | what | setup of this run |", "|---|---|---|"]
    for name, p in data["paths"].items():
        checks = p.get("checks") or {}
        flags = []
        if checks.get("df_ok") is False:
            flags.append(f"**full-size DF ping failed at MTU {p['mtu']}**")
        flags += [f"**{change}**" for change in checks.get("changed", [])]
        lines.append(f"| {name} | {p['about']} | {p['note']}{'; ' if flags else ''}{'; '.join(flags)} |")
    lines.append("")
    if data.get("skipped"):
        lines += ["Not measured in this run:", ""]
        lines += [f"- `{name}`: {why}" for name, why in data["skipped"].items()]
        lines.append("")
    return lines


def detail_lines(data: dict) -> list[str]:
    lines = ["### Every round (in run order)", "", "```"]
    for path, tests in data["summary"].items():
        parts = []
        for test, s in tests.items():
            vals = ", ".join(fmt(v) for v in s["values"])
            parts.append(f"{test} [{vals}] {s['unit']}")
        lines.append(f"{path:<18} " + " | ".join(parts))
        errors = [e for s in tests.values() for e in s["errors"]]
        if errors:
            lines.append(f"{'':<18} errors: {errors[:4]}")
    return lines + ["```", ""]


def header_lines(data: dict) -> list[str]:
    p, env = data["params"], data.get("env", {})
    tests = ", ".join(f"{t['name']} {t['seconds']:g}s" + (f" (+{t['omit']}s slow start left out)" if t.get("omit") else "") for t in p["tests"])
    mode = "QUICK (smoke test: figures are not meaningful)" if p.get("quick") else f"{p['rounds']} rounds, medians"
    return [
        f"Run {env.get('date', '?')} on {env.get('cpu', '?')} ({env.get('nproc', '?')} CPUs), kernel {env.get('kernel', '?')}, "
        f"load {env.get('loadavg_start', '?')} at start, {env.get('loadavg_end', '?')} at end; "
        f"{env.get('idle_busy_cores', '?')} CPUs busy with every path up and nothing measured (in the box figures).",
        "",
        f"{mode}; every path measured once per round, round-robin. Tests: {tests}. "
        f"TCP congestion control set per test (`iperf3 -C`): {p['cc'][0]} is the headline, "
        + (", ".join(p["cc"][1:]) + " beside it" if len(p["cc"]) > 1 else "no other")
        + f" (the machine's default is {env.get('tcp_cc_default', '?')}). Figures are medians; (N%) is the spread of the rounds, "
        "(max - min) / median. CPU-s/GB is from the TCP x1 headline test: CPU seconds (utime + stime from /proc/PID/stat "
        "for each daemon, all CPUs' busy time from /proc/stat for the box) per 10^9 bytes received.",
        "",
    ]


def render(data: dict) -> str:
    lines = header_lines(data) + main_tables(data) + target_lines(data) + ratio_lines(data) + note_lines(data) + detail_lines(data)
    return "\n".join(lines).rstrip() + "\n"
