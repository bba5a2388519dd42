"""From samples to figures: medians, spreads, CPU-seconds per GB, ratios within one run.

A sample is one measurement of one path in one round (a dict, as results.json keeps it):
`gbps`/`bytes` (TCP), `rx_pps`/`tx_pps`/`loss_pct` (UDP), `rtt_ms` (ping), or `error`;
plus `active_s` (the seconds the tool ran, slow start included), `daemon_cpu_s` (per
daemon label, None if it was gone), `box_busy_s` (all CPUs).
"""

from __future__ import annotations

import statistics

UNITS = {"tcp": "Gbit/s", "udp": "kpps", "ping": "ms"}


def median(xs: list[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def spread_pct(xs: list[float | None]) -> float | None:
    """(max - min) / median, in percent: how far the rounds disagree (None under 2 rounds)."""
    xs = [x for x in xs if x is not None]
    if len(xs) < 2:
        return None
    mid = statistics.median(xs)
    return (max(xs) - min(xs)) / mid * 100 if mid else None


def value_of(kind: str, sample: dict) -> float | None:
    """The headline number of a sample: Gbit/s, received kpps, or RTT ms."""
    if sample.get("error"):
        return None
    if kind == "tcp":
        return sample.get("gbps")
    if kind == "udp":
        return sample["rx_pps"] / 1e3 if sample.get("rx_pps") is not None else None
    return sample.get("rtt_ms")


def cpu_per_gb(sample: dict) -> dict | None:
    """CPU-seconds per GB (1e9 bytes) moved: each daemon, all daemons, and the whole box.

    The CPU window spans the whole client run, slow start included, so the bytes are the
    measured rate times the same seconds (iperf3 leaves the -O seconds out of its sum).
    """
    if sample.get("error") or not sample.get("gbps") or not sample.get("active_s"):
        return None
    gb = sample["gbps"] / 8 * sample["active_s"]
    daemons = sample.get("daemon_cpu_s") or {}
    per = {label: (s / gb if s is not None else None) for label, s in daemons.items()}
    known = [v for v in per.values() if v is not None]
    return {
        "daemon": per,
        "daemons": sum(known) if known and len(known) == len(per) else None,
        "box": sample["box_busy_s"] / gb if sample.get("box_busy_s") is not None else None,
    }


def summarize_test(kind: str, samples: list[dict]) -> dict:
    values = [value_of(kind, s) for s in samples]
    out = {
        "unit": UNITS[kind],
        "median": median(values),
        "min": min((v for v in values if v is not None), default=None),
        "max": max((v for v in values if v is not None), default=None),
        "spread_pct": spread_pct(values),
        "n": sum(v is not None for v in values),
        "values": values,
        "errors": [s["error"] for s in samples if s.get("error")],
    }
    if kind == "udp":
        out["tx_kpps"] = median([s["tx_pps"] / 1e3 for s in samples if not s.get("error")])
        out["loss_pct"] = median([s["loss_pct"] for s in samples if not s.get("error")])
    if kind == "tcp":
        out["retransmits"] = median([s.get("retransmits") for s in samples if not s.get("error")])
        cpus = [c for c in (cpu_per_gb(s) for s in samples) if c is not None]
        labels = sorted({label for c in cpus for label in c["daemon"]})
        out["cpu_s_per_gb"] = {
            "daemon": {label: median([c["daemon"].get(label) for c in cpus]) for label in labels},
            "daemons": median([c["daemons"] for c in cpus]),
            "box": median([c["box"] for c in cpus]),
        }
    if kind == "ping":
        out["mdev_ms"] = median([s.get("rtt_mdev_ms") for s in samples if not s.get("error")])
    return out


def summarize(samples: list[dict], tests: list[dict]) -> dict[str, dict[str, dict]]:
    """{path: {test: summary}} for every path and test that has samples, in run order."""
    kind_of = {t["name"]: t["kind"] for t in tests}
    grouped: dict[str, dict[str, list[dict]]] = {}
    for s in samples:
        grouped.setdefault(s["path"], {}).setdefault(s["test"], []).append(s)
    return {path: {test: summarize_test(kind_of[test], ss) for test, ss in by_test.items()} for path, by_test in grouped.items()}


def figure(summary: dict, path: str, test: str) -> float | None:
    return summary.get(path, {}).get(test, {}).get("median")


def ratio(summary: dict, path: str, base: str, test: str) -> float | None:
    """path's median over base's median, both of this run; None when either is missing."""
    a, b = figure(summary, path, test), figure(summary, base, test)
    return a / b if a is not None and b else None


def best(summary: dict, paths: list[str], test: str, *, lowest: bool = False) -> tuple[str | None, float | None]:
    """The best of `paths` on `test` in this run: (name, median), highest unless lowest."""
    have = [(v, p) for p in paths if (v := figure(summary, p, test)) is not None]
    if not have:
        return None, None
    v, p = min(have) if lowest else max(have)
    return p, v
