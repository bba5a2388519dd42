"""Ratios within one run, and issue 16's targets checked against them.

Only ratios of figures from the same run are meaningful (the machine's speed drifts
between runs). Comparisons with the peers use host-to-host figures on both sides, since
the peers have no container path; meshnet's own targets use the container paths (the
headline), except the first, which is containers against meshnet's own host path.
"""

from __future__ import annotations

from bench.aggregate import best, figure, ratio
from bench.catalog import MESHNET, PEERS


def test_names(cc: str) -> dict[str, str]:
    return {"tcp1": f"tcp1-{cc}", "tcp4": f"tcp4-{cc}", "udp64": "udp64", "ping": "ping"}


RATIOS = [  # (what, path, base, test key): path / base on that test
    ("sleeve: container / host", "sleeve-ctr", "sleeve-host", "tcp1"),
    ("sleeve encrypted: container / host", "sleeve-aes-ctr", "sleeve-aes-host", "tcp1"),
    ("fastdp: container / host", "fastdp-ctr", "fastdp-host", "tcp1"),
    ("kernel VXLAN by hand: container / host", "kvxlan-ctr", "kvxlan-host", "tcp1"),
    ("containers: fastdp / kernel VXLAN by hand", "fastdp-ctr", "kvxlan-ctr", "tcp1"),
    ("containers: sleeve / kernel VXLAN by hand", "sleeve-ctr", "kvxlan-ctr", "tcp1"),
    ("containers: sleeve encrypted / sleeve", "sleeve-aes-ctr", "sleeve-ctr", "tcp1"),
    ("all pairs at once (sum) / one pair, sleeve", "multi-sleeve-ctr", "sleeve-ctr", "tcp1"),
    ("all pairs at once (sum) / one pair, fastdp", "multi-fastdp-ctr", "fastdp-ctr", "tcp1"),
    ("relayed / direct, sleeve", "relay-sleeve-ctr", "sleeve-ctr", "tcp1"),
    ("relayed / direct, sleeve, RTT", "relay-sleeve-ctr", "sleeve-ctr", "ping"),
]


def ratio_rows(summary: dict, cc: str) -> list[dict]:
    names = test_names(cc)
    rows = []
    for what, path, base, key in RATIOS:
        value = ratio(summary, path, base, names[key])
        if value is not None:
            rows.append({"what": what, "path": path, "base": base, "test": names[key], "ratio": value})
    for path in MESHNET:
        x4, x1 = figure(summary, path, names["tcp4"]), figure(summary, path, names["tcp1"])
        if x4 is not None and x1:
            rows.append({"what": f"{path}: TCP x4 / TCP x1", "path": path, "base": path, "test": f"{names['tcp4']}/{names['tcp1']}", "ratio": x4 / x1})
    return rows


def _row(target: str, want: str, value: float | None, detail: str, met: bool | None) -> dict:
    return {"target": target, "want": want, "ratio": value, "detail": detail, "met": met}


def _at_least(target: str, need: float, path: str, base: str, test: str, summary: dict) -> dict:
    a, b = figure(summary, path, test), figure(summary, base, test)
    if a is None or not b:
        return _row(target, f">= {need}x", None, f"{path} or {base} not measured", None)
    r = a / b
    return _row(target, f">= {need}x", r, f"{path} {a:.3g} / {base} {b:.3g}", r >= need)


def _vs_best_peer(target: str, path: str, test: str, summary: dict, need: float, peers: list[str], lowest: bool = False) -> dict:
    want = f"<= {need}x" if lowest else f">= {need}x"
    name, b = best(summary, peers, test, lowest=lowest)
    a = figure(summary, path, test)
    if a is None or not b:
        return _row(target, want, None, f"{path} or every peer not measured", None)
    r = a / b
    return _row(target, want, r, f"{path} {a:.3g} / {name} {b:.3g}", r <= need if lowest else r >= need)


def targets(summary: dict, cc: str) -> list[dict]:
    """Issue 16's targets, each met, missed, or None when its paths were not measured."""
    n = test_names(cc)
    rows = [
        _at_least("container to container: sleeve vs meshnet's host-to-host sleeve", 0.9, "sleeve-ctr", "sleeve-host", n["tcp1"], summary),
        _at_least("container to container: fastdp vs kernel VXLAN by hand", 0.97, "fastdp-ctr", "kvxlan-ctr", n["tcp1"], summary),
        _vs_best_peer("sleeve encrypted vs wireguard-go (host to host, TCP x1)", "sleeve-aes-host", n["tcp1"], summary, 3, ["wggo", "wggo-bin"]),
        _at_least("sleeve encrypted vs sleeve plain (containers, TCP x1)", 0.6, "sleeve-aes-ctr", "sleeve-ctr", n["tcp1"], summary),
        _vs_best_peer("UDP 64 B received pps, sleeve plain vs best peer", "sleeve-host", n["udp64"], summary, 3, PEERS),
        _vs_best_peer("UDP 64 B received pps, sleeve encrypted vs best peer", "sleeve-aes-host", n["udp64"], summary, 3, PEERS),
        _vs_best_peer("RTT, sleeve plain vs best peer", "sleeve-host", n["ping"], summary, 1, PEERS, lowest=True),
        _vs_best_peer("RTT, sleeve encrypted vs best peer", "sleeve-aes-host", n["ping"], summary, 1, PEERS, lowest=True),
    ]
    for path in MESHNET:
        x4, x1 = figure(summary, path, n["tcp4"]), figure(summary, path, n["tcp1"])
        if x4 is not None and x1:
            rows.append(_row(f"more streams never less: {path}, TCP x4 vs x1", ">= 1x", x4 / x1, f"x4 {x4:.3g} / x1 {x1:.3g}", x4 >= x1))
    return rows
