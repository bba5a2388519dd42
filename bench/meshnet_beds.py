"""meshnet's paths: real routers in a `meshnet.lab.Lab`, containers attached the way users
attach them (`meshnet attach`: veth -> bridge -> TAP or VXLAN), host addresses from
`meshnet expose`. Each bed checks that its path is the one claimed (the peer's mode in
`status`, the relay in `via`) before it is measured.
"""

from __future__ import annotations

import subprocess
import time

from bench.bed import Bed
from bench.catalog import Path, Skip, all_pairs
from bench.tools import Pair, wait_ping
from meshnet.cli.status import describe_pump
from meshnet.lab import block

MODES = {  # bed -> (lab password, router flags, the mode status must show)
    "sleeve": (None, ["--no-fastdp"], "sleeve"),
    "aes": ("bench-not-secret", ["--no-fastdp"], "sleeve+encrypted"),
    "fastdp": (None, [], "fastdp"),
    "multi-sleeve": (None, ["--no-fastdp"], "sleeve"),
    "multi-fastdp": (None, [], "fastdp"),
    "relay": (None, ["--no-fastdp"], "sleeve"),
}
PATH_PREFIX = {"sleeve": "sleeve", "aes": "sleeve-aes", "fastdp": "fastdp"}


def lab_options(bed: str) -> tuple[str | None, list[str]]:
    password, flags, _ = MODES[bed]
    return password, flags


def _describe(bed: Bed, mode: str) -> str:
    st = bed.lab.status(1)
    if mode == "fastdp":
        return f"meshnet {st['router']['version']}, MTU {st['router']['mtu']}; fastdp: kernel VXLAN programmed by the routers"
    pump = describe_pump(st["dataplane"]["pump"])
    threads = (st["dataplane"]["pump"].get("features") or {}).get("threads")
    return f"meshnet {st['router']['version']}, MTU {st['router']['mtu']}; pump {pump}" + (f", {threads} thread(s)" if threads else "")


def _wrong_modes(bed: Bed, hosts: list[int], want: str) -> dict[str, tuple]:
    """{"hN->nick": (mode, reason)} for every router in `hosts` not in `want` towards another."""
    nicks = {f"{bed.lab.prefix}-h{i}" for i in hosts}
    wrong, seen = {}, 0
    for i in hosts:
        for p in bed.lab.status(i)["peers"]:
            if p["nick"] in nicks and p["nick"] != f"{bed.lab.prefix}-h{i}":
                seen += 1
                if p.get("mode") != want:
                    wrong[f"h{i}->{p['nick']}"] = (p.get("mode"), p.get("mode_reason"))
    if seen < len(hosts) * (len(hosts) - 1):
        wrong["peers"] = (f"{seen} of {len(hosts) * (len(hosts) - 1)} seen", None)
    return wrong


def _wait_modes(bed: Bed, hosts: list[int], want: str, timeout: float = 30) -> None:
    """Every router in `hosts` shows `want` towards every other one (fastdp needs its probes answered)."""
    deadline = time.monotonic() + timeout
    while (wrong := _wrong_modes(bed, hosts, want)) and time.monotonic() < deadline:
        time.sleep(0.3)
    if wrong:
        raise Skip(f"data path is not {want} after {timeout:.0f}s: {wrong}")


def _still(bed: Bed, hosts: list[int], want: str):
    """A check the runner makes after each round: is the path still the one measured?"""

    def verify() -> str | None:
        try:
            wrong = _wrong_modes(bed, hosts, want)
        except Exception as exc:  # a router that stopped answering is the finding itself
            return f"status failed: {exc}"
        return f"not {want}: {wrong}" if wrong else None

    return verify


def _expose(bed: Bed, i: int) -> str:
    out = subprocess.run(bed.lab.meshnet(i, "expose"), capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise Skip(f"meshnet expose on h{i} failed: {out.stderr.strip()[-200:]}")
    return out.stdout.split()[0].split("/")[0]


def _reachable(pairs: list[Pair], what: str) -> None:
    for pair in pairs:
        if not wait_ping(pair, 20):
            raise Skip(f"{what}: no ping from {pair.src_ns} to {pair.dst_ip}")


def build_two_hosts(bed: Bed, name: str, wanted: list[str]) -> dict[str, Path]:
    """sleeve / aes / fastdp: the host path and the container path over the same two routers."""
    _, _, mode = MODES[name]
    bed.up()
    bed.lab.wait_mesh(timeout=60)
    daemons = {"h1": bed.router_pid(1), "h2": bed.router_pid(2)}
    mtu = bed.lab.status(1)["router"]["mtu"]
    out: dict[str, Path] = {}
    prefix = PATH_PREFIX[name]
    if f"{prefix}-host" in wanted:
        _expose(bed, 1)
        pair = Pair(bed.ns(1), bed.ns(2), _expose(bed, 2))
        out[f"{prefix}-host"] = Path(f"{prefix}-host", [pair], daemons, mtu, "")
    if f"{prefix}-ctr" in wanted:
        c1, _ = bed.lab.add_container(1, 1)
        c2, ip2 = bed.lab.add_container(2, 1)
        out[f"{prefix}-ctr"] = Path(f"{prefix}-ctr", [Pair(c1, c2, ip2)], daemons, mtu, "")
    for path in out.values():
        _reachable(path.pairs, path.name)
    _wait_modes(bed, [1, 2], mode)
    for path in out.values():
        path.note = _describe(bed, mode)
        path.checks["mode"] = mode
        path.verify = _still(bed, [1, 2], mode)
    return out


def build_multi(bed: Bed, name: str, wanted: list[str]) -> dict[str, Path]:
    """N hosts, a container on each, one flow per pair of hosts, all at once."""
    _, _, mode = MODES[name]
    n = bed.lab.hosts
    bed.up()
    bed.lab.wait_mesh(timeout=60)
    ctrs = {i: bed.lab.add_container(i, 1) for i in range(1, n + 1)}
    pairs = [Pair(ctrs[a][0], ctrs[b][0], ctrs[b][1]) for a, b in all_pairs(n)]
    path = Path(f"{name}-ctr", pairs, {f"h{i}": bed.router_pid(i) for i in range(1, n + 1)}, bed.lab.status(1)["router"]["mtu"], "")
    _reachable(pairs, path.name)
    _wait_modes(bed, list(range(1, n + 1)), mode)
    flows = ", ".join(f"h{a}->h{b}" for a, b in all_pairs(n))
    path.note = f"{n} hosts, flows {flows} at once; figures are the sum (RTT: the mean); " + _describe(bed, mode)
    path.checks["mode"] = mode
    path.verify = _still(bed, list(range(1, n + 1)), mode)
    return {path.name: path}


def build_relay(bed: Bed, name: str, wanted: list[str]) -> dict[str, Path]:
    """h1 and h3 drop each other's underlay address, so h1's container reaches h3's through h2.

    h3 is seeded with h2 (it cannot reach the seed h1); the check is h1's own route to h3
    (`via` h2) and h2's `relayed` counter growing while the path is up.
    """
    lab = bed.lab
    bed.up(start_routers=False)
    block(lab.host_ns(1), lab.host_ip(3))
    block(lab.host_ns(3), lab.host_ip(1))
    lab.start_router(1)
    lab.start_router(2)
    lab.start_router(3, peers=[lab.host_ip(2)])
    lab.wait_mesh(timeout=60)
    (c1, _), (c3, ip3) = lab.add_container(1, 1), lab.add_container(3, 1)
    daemons = {"h1": bed.router_pid(1), "h2-relay": bed.router_pid(2), "h3": bed.router_pid(3)}
    path = Path("relay-sleeve-ctr", [Pair(c1, c3, ip3)], daemons, lab.status(1)["router"]["mtu"], "")
    _reachable(path.pairs, path.name)
    problem = _relay_problem(bed)
    if problem:
        raise Skip(problem)
    path.note = "h1 <-x-> h3 dropped by nftables in h1 and h3; " + _describe(bed, "sleeve")
    path.checks.update(mode="sleeve", via="h2")
    path.verify = lambda: _relay_problem(bed)
    return {path.name: path}


def _relay_problem(bed: Bed) -> str | None:
    """None while h1 routes to h3 through h2 and h2 has relayed frames; else what is wrong."""
    prefix = bed.lab.prefix
    try:
        h1 = bed.lab.status(1)
        relayed = bed.lab.status(2)["dataplane"]["stats"]["relayed"]
    except Exception as exc:
        return f"status failed: {exc}"
    h2_name = next((p["name"] for p in h1["peers"] if p["nick"] == f"{prefix}-h2"), None)
    to_h3 = next((p for p in h1["peers"] if p["nick"] == f"{prefix}-h3"), {})
    if h2_name is None or to_h3.get("via") != h2_name:
        return f"h1 does not route to h3 via h2 (via={to_h3.get('via')})"
    if relayed <= 0:
        return "h2 has relayed nothing although h1 and h3 ping each other"
    return None


BUILDERS = {
    "sleeve": build_two_hosts,
    "aes": build_two_hosts,
    "fastdp": build_two_hosts,
    "multi-sleeve": build_multi,
    "multi-fastdp": build_multi,
    "relay": build_relay,
}
