"""The control plane at 100, 1,000 and 5,000 routers, simulated as the router runs it.

    .venv/bin/python bench/gossip_scale.py                 # 100 1000 5000, about 30 min
    .venv/bin/python bench/gossip_scale.py 100 1000 --steady 30

Every simulated router is the router's own control plane (meshnet/testing/meshsim.py):
`MeshCore` with the router's timing, the connection policy (a full mesh up to 64 peers,
4 chosen connections each beyond), `Targets`, and the IPAM allocator with the router's
anti-entropy, over an in-process wire through the real codec. Bytes are encoded control
messages plus their 4-byte frames (no TCP/IP headers); time is simulated.

Per size it reports
- steady state, per router: bytes and messages per second (mean and the busiest router),
  with heartbeats, summaries and IPAM traffic as the router sends them;
- a join (a new router launched with one peer, as `meshnet launch h1`): simulated seconds
  and message rounds until every router holds the same entries and the joiner holds its
  own chosen connections, and the bytes that took; then the join's whole wave, including
  the pruning of its seed connection 30 s later, less the steady-state background;
- a leave (a router that goes away without a word): seconds until every other router
  has stopped routing through it and the routers that had chosen it have replaced it.
The targets (issue 15): at 1,000 routers at most 2 KB/s per router at rest, and a join
converged within 10 s with at most N log2 N x 1 KB.
"""

from __future__ import annotations

import argparse
import math
import resource
import time

from meshnet.testing.meshsim import MeshSim

WAVE = 40.0  # simulated seconds after a join that its wave is followed (the seed is pruned at 30)


def settled(sim: MeshSim, joiner: int):
    """Converged, and the joiner holds the connections it chooses."""

    return lambda: sim.converged() and settled_router(sim, joiner)


def settled_router(sim: MeshSim, i: int) -> bool:
    core, router = sim.cores[i], sim.routers[i]
    connected = {c.peer: (c.outbound, c.since) for c in core.conns.values()}
    return router.policy.plan(core.topology, connected=connected, now=sim.now).wanted <= connected.keys()


def run(n: int, steady: float) -> dict[str, float]:
    t0 = time.perf_counter()
    sim = MeshSim.primed(n)
    sim.run(10.0)  # the timers find their rhythm
    sim.reset_counters()
    sim.run(steady)
    per_router = [(s + r) / 2 / steady for s, r in zip(sim.sent, sim.received)]
    out = {
        "n": n,
        "degree": sum(sim.degrees()) / n,
        "max_degree": max(sim.degrees()),
        "bps": sum(per_router) / n,
        "bps_max": max(per_router),
        "mps": sum(sim.messages) / n / steady,
        "kinds": {k: v / n / steady for k, v in sorted(sim.by_kind.items())},
    }
    background = sum(sim.sent) / steady  # all routers' bytes per second at rest

    sim.reset_counters()
    joiner = sim.join(seed=0)
    took = sim.run_until(settled(sim, joiner), 60.0)
    out.update(join_s=took, join_rounds=sim.rounds, join_bytes=sum(sim.sent), join_ok=settled(sim, joiner)())
    sim.run(WAVE - took)
    out["wave_bytes"] = max(0.0, sum(sim.sent) - background * WAVE)

    gone = 1
    sim.reset_counters()
    leaver = sim.cores[gone].name
    choosers = [i for i, c in enumerate(sim.cores) if i != gone and gone in sim.neighbours(i)]
    sim.kill(gone)  # it dies: its neighbours see the connections drop
    others = [i for i in range(len(sim.cores)) if i != gone]

    def left() -> bool:
        if not sim.converged() or any(leaver in sim.cores[i].topology.reachable() for i in others[:: max(1, n // 50)]):
            return False
        return all(settled_router(sim, i) for i in choosers)

    out["leave_s"] = sim.run_until(left, 120.0)
    out["leave_ok"] = left()
    out["leave_bytes"] = max(0.0, sum(sim.sent) - background * out["leave_s"])
    out["wall_s"] = time.perf_counter() - t0
    out["rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sizes", nargs="*", type=int, default=[100, 1000, 5000])
    parser.add_argument("--steady", type=float, default=60.0, help="simulated seconds of steady state (default 60)")
    args = parser.parse_args()
    rows = []
    for n in args.sizes:
        r = run(n, args.steady)
        rows.append(r)
        print(
            f"{n} routers: degree {r['degree']:.1f} (max {r['max_degree']}); at rest {r['bps']:.0f} B/s and "
            f"{r['mps']:.2f} msg/s per router (busiest {r['bps_max']:.0f} B/s) {r['kinds']}; join "
            f"{'settled' if r['join_ok'] else 'NOT settled'} in {r['join_s']:.2f} s, {r['join_rounds']} rounds, "
            f"{r['join_bytes'] / 1e6:.2f} MB (wave {r['wave_bytes'] / 1e6:.2f} MB; N log2 N KB = {n * math.log2(n) / 1e3:.2f} MB); "
            f"leave {'repaired' if r['leave_ok'] else 'NOT repaired'} in {r['leave_s']:.1f} s, {r['leave_bytes'] / 1e6:.2f} MB; "
            f"{r['wall_s']:.0f} s wall, {r['rss_mib']:.0f} MiB",
            flush=True,
        )
    print()
    print("| routers | degree (max) | at rest: B/s per router (busiest) | msg/s per router | join: sim s | rounds | bytes | whole wave | N log2 N x 1 KB | leave: sim s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        n = r["n"]
        print(
            f"| {n} | {r['degree']:.1f} ({r['max_degree']}) | {r['bps']:.0f} ({r['bps_max']:.0f}) | {r['mps']:.2f} | "
            f"{r['join_s']:.2f} | {r['join_rounds']} | {r['join_bytes'] / 1e6:.2f} MB | {r['wave_bytes'] / 1e6:.2f} MB | "
            f"{n * math.log2(n) / 1e3:.2f} MB | {r['leave_s']:.1f} |"
        )


if __name__ == "__main__":
    main()
