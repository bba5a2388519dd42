"""A mesh with 100,000 gossiped endpoints, on real routers (issue 12, "Benchmarks").

    sudo .venv/bin/python bench/endpoint_scale.py                       # 100,000 endpoints
    sudo .venv/bin/python bench/endpoint_scale.py --endpoints 20000 --idle 10

Two real routers (`meshnet lab` hosts mnes-h1 and mnes-h2, the default mode: fastdp) and a
scripted peer in mnes-h3 (`meshnet/testing/scripted_peer.py`): it completes the real
handshake with h1 and announces the endpoints, its own and those of fake peers behind it
(one peer may announce at most `--per-peer`, the routers' --max-peer-endpoints), each
with a MAC and an address outside the lab's IPAM range. Every one of those peers answers
fastdp probes in the kernel of mnes-h3 (`meshnet/testing/probe_answer.py`), so the
routers reach them over VXLAN: each endpoint is one VXLAN and one bridge FDB entry on
each router, as in a mesh of real routers. Measured on h1, which holds them all:

- attach latency: `meshnet attach` of a fresh namespace (the CLI's wall time, and the API
  request alone), median of --samples, without the endpoints and with them;
- one fastdp update: the scripted peer adds one endpoint; the time until h1's kernel FDB
  has it (`bridge monitor fdb` in h1's namespace), the kernel FDB events it took, and
  the router's own count of syncs and netlink ops (`status`: dataplane.fastdp.sync);
- router RSS (VmRSS) and idle CPU (% of a core over --idle seconds, utime + stime) of
  both routers, without and with the endpoints;
- loading: from the announcement until h1's kernel holds every endpoint, the longest
  `status` answer meanwhile (how long its loop was busy), and whether any control connection
  (h1-h2, h1-scripted peer) dropped at any point.

Prints a markdown table (and writes the figures as JSON with --json). Needs root. Every
wait has a deadline and the whole run has --budget seconds; the lab (routers, namespaces)
is removed at the end, on failure and on Ctrl-C or SIGTERM too. Figures are only worth
reporting from a quiet machine: the table says how busy the rest of the box was.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import threading
import time
from typing import Any, Callable

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # run as a file: `bench` is importable

from bench.kernel_fdb import FdbWatch, fdb_counts  # noqa: E402
from bench.procstat import HZ, box_ticks, pid_cpu_seconds  # noqa: E402
from meshnet.api.client import ApiClient  # noqa: E402
from meshnet.dataplane.layout import peer_id  # noqa: E402
from meshnet.errors import MeshnetError  # noqa: E402
from meshnet.lab import Lab, ping  # noqa: E402
from meshnet.mesh.quota import Limits  # noqa: E402
from meshnet.testing.probe_answer import answer_probes  # noqa: E402
from meshnet.testing.scripted_peer import ScriptedPeer, endpoints, fake_peer  # noqa: E402

MAC_PREFIX = "02:6e"  # the announced endpoints' MACs: 02:6e + a 32-bit index
EP_NETWORK = "10.64.0.0/12"  # their addresses: outside the lab's IPAM range, so attach never conflicts
SCRIPTED_NICK = "mnes-scripted"


class HealthProbe:
    """Asks the router's `/health` (a few microseconds of work) every 20 ms on a thread:
    its answer times are how long the loop kept requests waiting (plus the request itself)."""

    def __init__(self, client: ApiClient, every: float = 0.02):
        self.client, self.every = client, every
        self.times: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health-probe", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            t = time.monotonic()
            try:
                self.client.get("/health")
            except MeshnetError:
                pass  # an unhealthy answer took as long
            self.times.append(time.monotonic() - t)

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join(10)
        ms = sorted(t * 1000 for t in self.times) or [0.0]
        return {"n": len(self.times), "median_ms": round(statistics.median(ms), 1),
                "p99_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 1), "max_ms": round(ms[-1], 1)}


class Deadline(Exception):
    pass


STARTED = time.monotonic()


def say(what: str) -> None:
    """Progress on stderr (the table goes to stdout)."""
    print(f"[{time.monotonic() - STARTED:6.1f}s] {what}", file=sys.stderr, flush=True)


def until(what: str, seconds: float, check: Callable[[], Any], interval: float = 0.5) -> Any:
    """Poll `check` until it returns something true; that value. Deadline after `seconds`."""
    end = time.monotonic() + seconds
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > end:
            raise Deadline(f"{what}: not within {seconds:.0f}s")
        time.sleep(interval)


# -- the routers, from /proc -------------------------------------------------------------------


def router_pid(lab: Lab, i: int) -> int:
    with open(f"{lab.run_dir(i)}/meshnet.pid") as f:
        return int(f.read())


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS")).split()[1]) / 1024


def idle_cpu(pids: dict[int, int], seconds: float) -> dict[str, Any]:
    """% of a core each router used over `seconds` of doing nothing, and how many cores the
    rest of the box kept busy meanwhile (the bench itself only sleeps)."""
    c0, b0, t0 = {i: pid_cpu_seconds(p) for i, p in pids.items()}, box_ticks().busy, time.monotonic()
    time.sleep(seconds)
    c1, b1, wall = {i: pid_cpu_seconds(p) for i, p in pids.items()}, box_ticks().busy, time.monotonic() - t0
    if None in (*c0.values(), *c1.values()):
        raise RuntimeError("a router exited while idle")
    used = {i: c1[i] - c0[i] for i in pids}
    return {"pct": {i: round(100 * used[i] / wall, 2) for i in pids}, "others_cores": round(((b1 - b0) / HZ - sum(used.values())) / wall, 2)}


# -- the bench ---------------------------------------------------------------------------------------


def plan_entries(total: int, share: int, updates: int) -> tuple[int, list[int]]:
    """How many endpoints the scripted peer's own entry holds (room left for `updates` more
    within its share) and how many each fake peer holds: `total` together."""
    own = min(total, share - updates)
    rest = total - own
    ghosts = [share] * (rest // share) + ([rest % share] if rest % share else [])
    return own, ghosts


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        flags = ["--max-peer-endpoints", str(args.per_peer)]
        if args.endpoints + args.per_peer + 64 > Limits.max_endpoints:  # room for everyone else's too
            flags += ["--max-endpoints", str(args.endpoints + args.per_peer + 1024)]
        self.lab = Lab(prefix=args.prefix, hosts=3, extra_flags=flags)
        self.peer: ScriptedPeer | None = None
        self.watch: FdbWatch | None = None
        self.figures: dict[str, Any] = {"endpoints": args.endpoints, "per_peer": args.per_peer, "idle_s": args.idle, "router_flags": flags}
        self.attached = 0

    def status(self, i: int) -> dict:
        return self.lab.status(i)

    # -- phases ----------------------------------------------------------------------------------

    def up(self) -> None:
        lab = self.lab
        lab.up(start_routers=False)
        lab.start_router(1)
        lab.start_router(2)
        lab.wait_mesh_of([1, 2], timeout=60)
        c1, _ = lab.add_container(1, 1)
        _, ip2 = lab.add_container(2, 1)
        until("c1 reaching c2 over the overlay", 60, lambda: ping(c1, ip2, wait=1))
        self.pids = {i: router_pid(lab, i) for i in (1, 2)}

    def settle(self, what: str) -> None:
        """Until h1's kernel sync has been still for 3 s (then the figures are at rest)."""
        seen: list[tuple[float, int]] = []

        def still() -> bool:
            sync = self.status(1)["dataplane"]["fastdp"]["sync"]
            seen.append((time.monotonic(), sync["ops"] + sync["syncs"]))
            recent = [n for t, n in seen if t >= seen[-1][0] - 3.0]
            return seen[-1][0] - seen[0][0] >= 3.0 and len(set(recent)) == 1

        until(f"{what}: h1's fastdp sync at rest", 120, still, interval=1.0)

    def measure_rest(self, phase: str) -> None:
        self.settle(phase)
        self.figures[f"{phase}_rss_mib"] = {i: round(rss_mib(p), 1) for i, p in self.pids.items()}
        self.figures[f"{phase}_idle"] = idle_cpu(self.pids, self.args.idle)
        self.figures[f"{phase}_attach"] = self.attach_samples(phase)
        self.figures[f"{phase}_fdb"] = dict(fdb_counts(self.lab.host_ns(1), ""))

    def attach_samples(self, phase: str) -> dict[str, list[float]]:
        """`meshnet attach` of fresh namespaces on h1: the CLI's wall time, then the API request
        alone (the same attach with no interpreter start); each detached and removed after."""
        lab, cli, api = self.lab, [], []
        client = ApiClient(f"{lab.run_dir(1)}/meshnet.sock")
        for k in range(self.args.samples * 2):
            self.attached += 1
            ns = f"{lab.prefix}-a{self.attached}"
            subprocess.run(["ip", "netns", "add", ns], check=True, timeout=30)
            lab.containers[ns] = ""  # removed by lab.down() if we do not get to it
            t0 = time.monotonic()
            if k % 2 == 0:
                result = subprocess.run(lab.meshnet(1, "attach", ns), capture_output=True, text=True, timeout=120)
                took = time.monotonic() - t0
                if result.returncode != 0:
                    raise RuntimeError(f"attach {ns}: {result.stderr.strip()}")
                cli.append(round(took, 3))
            else:
                client.post("/attach", {"netns": ns, "cidrs": [], "ifname": "mesh0"})
                api.append(round(time.monotonic() - t0, 3))
            subprocess.run(lab.meshnet(1, "detach", ns), capture_output=True, timeout=120, check=True)
            subprocess.run(["ip", "netns", "del", ns], timeout=30, check=True)
            del lab.containers[ns]
        return {"cli_s": cli, "api_s": api}

    def load(self) -> None:
        """The scripted peer joins through h1 and announces the endpoints; until h1's kernel
        holds all of them, timing h1's API answers meanwhile."""
        a, lab = self.args, self.lab
        own, sizes = plan_entries(a.endpoints, a.per_peer, a.updates)
        peer = self.peer = ScriptedPeer(lab.host_ns(3), lab.host_ip(1), nick=SCRIPTED_NICK).handshake()
        self.own = endpoints(own, prefix=MAC_PREFIX, network=EP_NETWORK)
        ghosts, start = [], own
        for k, size in enumerate(sizes):
            ghosts.append(fake_peer(peer.name, peer.ip, nick=f"mnes-ghost{k}", eps=endpoints(size, start=start, prefix=MAC_PREFIX, network=EP_NETWORK)))
            start += size
        self.ghost_names = [g["n"] for g in ghosts]
        ours = {peer.name.hex()} | {n.hex() for n in self.ghost_names}
        h1 = self.status(1)["router"]
        routers = {h1["id"]: lab.host_ip(1), self.status(2)["router"]["id"]: lab.host_ip(2)}
        try:
            answer_probes(lab.host_ns(3), peer.ip, [peer_id(n) for n in [peer.name, *self.ghost_names]], routers, mtu=h1["mtu"])
            want = "fastdp"
        except RuntimeError as exc:
            print(f"endpoint_scale: the fake peers cannot answer fastdp probes ({exc}); they stay on the sleeve", file=sys.stderr)
            want = "sleeve"
        self.figures.update(peers_announcing=len(ours), mode_wanted=want)
        self.loaded_at = time.monotonic()
        slowest = [0.0]  # the longest `status` answer: how long h1's loop was busy at most

        def stored() -> bool:
            t = time.monotonic()
            s = self.status(1)
            slowest[0] = max(slowest[0], time.monotonic() - t)
            mine = [p for p in s["peers"] if p["name"] in ours]
            return sum(p["endpoints"] for p in mine) == a.endpoints and len(mine) == len(ours) and all(p.get("mode") == want for p in mine)

        probe = HealthProbe(ApiClient(f"{self.lab.run_dir(1)}/meshnet.sock"))
        probe.start()
        peer.announce(eps=self.own, ghosts=ghosts, ghost_ip=peer.ip)
        until("h1 storing every endpoint, its peers on " + want, a.load_timeout, stored, interval=1.0)
        in_status = time.monotonic() - self.loaded_at
        kinds = ("vxlan", "bridge:vxmesh") if want == "fastdp" else ("bridge:mntap",)

        def in_kernel() -> dict | None:
            stored()
            counts = fdb_counts(lab.host_ns(1), MAC_PREFIX)
            return dict(counts) if all(counts[k] == a.endpoints for k in kinds) and sum(counts.values()) == len(kinds) * a.endpoints else None

        try:
            rows = until("h1's kernel FDB holding every endpoint", a.load_timeout, in_kernel, interval=2.0)
        finally:
            health = probe.stop()
        self.figures["load"] = {
            "in_status_s": round(in_status, 1),
            "in_kernel_s": round(time.monotonic() - self.loaded_at, 1),
            "max_status_answer_s": round(slowest[0], 3),
            "health": health,
            "kernel_rows": rows,  # of the announced MACs, by kind
            "sync": self.status(1)["dataplane"]["fastdp"]["sync"],
        }

    def updates(self) -> None:
        """The scripted peer adds one endpoint at a time to its own entry (one new version of
        it, the fake peers' entries untouched)."""
        peer, a = self.peer, self.args
        watch = self.watch = FdbWatch(self.lab.host_ns(1))
        took, events, syncs, ops = [], [], [], []
        for k in range(a.updates):
            new = endpoints(1, start=a.endpoints + k, prefix=MAC_PREFIX, network=EP_NETWORK)[0]
            self.own.append(new)
            before = self.status(1)["dataplane"]["fastdp"]["sync"]
            entry = peer.linked_entry(self.ghost_names, peer.ip, eps=self.own)
            t, n = watch.update(lambda: peer.send_entries([entry]), new[0], timeout=60)
            after = self.status(1)["dataplane"]["fastdp"]["sync"]
            took.append(round(t, 3))
            events.append(n)
            syncs.append(after["syncs"] - before["syncs"])
            ops.append(after["ops"] - before["ops"])
            time.sleep(1.0)
        self.figures["update"] = {"kernel_s": took, "fdb_events": events, "syncs": syncs, "ops": ops}

    def connections(self) -> None:
        """Whether a control connection dropped since the load began: each one's age on h1
        and h2 against the time since, and the scripted peer's own view."""
        elapsed = time.monotonic() - self.loaded_at
        ages = {}
        for i, other in ((1, f"{self.lab.prefix}-h2"), (1, SCRIPTED_NICK), (2, f"{self.lab.prefix}-h1")):
            since = [c["since"] for c in self.status(i)["connections"] if c.get("nick") == other and c["state"] == "established"]
            ages[f"h{i}-{other}"] = since[0] if since else None
        dropped = [k for k, age in ages.items() if age is None or age < elapsed - 2]
        if self.peer is not None and self.peer.closed:
            dropped.append("scripted peer: closed by h1")
        self.figures["connections"] = {"since_load_s": round(elapsed, 1), "ages_s": ages, "dropped": dropped}
        self.figures["healthy"] = {i: self.status(i)["health"]["healthy"] for i in (1, 2)}

    def run(self) -> None:
        say(f"lab {self.lab.prefix}: routers on h1 and h2, a container each")
        self.up()
        say("at rest without the endpoints: RSS, idle CPU, attach")
        self.measure_rest("before")
        say(f"the scripted peer announces {self.args.endpoints:,} endpoints through h1")
        self.load()
        say(f"loaded in {self.figures['load']['in_kernel_s']} s; at rest with them: RSS, idle CPU, attach")
        self.measure_rest("loaded")
        say(f"{self.args.updates} one-endpoint updates")
        self.updates()
        self.connections()
        say("done; removing the lab")

    def close(self) -> None:
        for done in (self.watch, self.peer):
            if done is not None:
                try:
                    done.close()
                except Exception as exc:  # cleanup goes on
                    print(f"endpoint_scale: cleanup: {exc}", file=sys.stderr)
        self.lab.down()


# -- the table -------------------------------------------------------------------------------------


def spread(values: list[float], unit: str = " s") -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.3f}{unit} ({min(values):.3f}-{max(values):.3f})"


def table(f: dict[str, Any]) -> str:
    n = f"{f['endpoints']:,}"
    before, loaded, upd, load = f["before_attach"], f["loaded_attach"], f["update"], f["load"]
    samples = len(loaded["cli_s"])
    rows = [
        (f"attach, CLI wall time (median of {samples}, min-max)", spread(before["cli_s"]), spread(loaded["cli_s"])),
        (f"attach, API request alone (median of {samples})", spread(before["api_s"]), spread(loaded["api_s"])),
        (f"one fastdp update: peer's gossip to h1's kernel FDB (median of {len(upd['kernel_s'])})", "-", spread(upd["kernel_s"])),
        ("one fastdp update: kernel FDB events / router syncs / netlink ops", "-",
         f"{statistics.median(upd['fdb_events']):g} / {statistics.median(upd['syncs']):g} / {statistics.median(upd['ops']):g}"),
    ]
    for i in (1, 2):
        rows.append((f"router RSS, h{i} (VmRSS)", f"{f['before_rss_mib'][i]:.1f} MiB", f"{f['loaded_rss_mib'][i]:.1f} MiB"))
    for i in (1, 2):
        rows.append((f"idle CPU, h{i} (% of a core over {f['idle_s']:g} s)", f"{f['before_idle']['pct'][i]:.2f} %", f"{f['loaded_idle']['pct'][i]:.2f} %"))
    kernel = f["loaded_fdb"]
    rows += [
        (f"loading: announced until all {n} in h1's kernel FDB", "-", f"{load['in_kernel_s']:.1f} s (in status after {load['in_status_s']:.1f} s)"),
        ("loading: h1's FDB syncs / netlink ops / longest sync", "-",
         f"{load['sync']['syncs']} / {load['sync']['ops']:,} / {load['sync']['coalesce_max_run_s']:.2f} s"),
        ("loading: longest `status` answer (polled every second or two)", "-", f"{load['max_status_answer_s']:.3f} s"),
        ("loading: `/health` answer, asked every 20 ms (median / 99th percentile / max, of n)", "-",
         "{median_ms} / {p99_ms} / {max_ms} ms, of {n}".format(**load["health"])),
        ("h1's kernel FDB rows (all MACs)", f"{sum(f['before_fdb'].values()):,}", f"{sum(kernel.values()):,}"),
        (f"peers announcing the endpoints (path from h1)", "-", f"{f['peers_announcing']} ({f['mode_wanted']})"),
        ("control connections dropped (h1-h2, h2-h1, h1-scripted peer)", "-",
         ", ".join(f["connections"]["dropped"]) or f"none (all up since before the load, {f['connections']['since_load_s']:.0f} s)"),
        ("rest of the box busy during the idle windows (cores)", f"{f['before_idle']['others_cores']:.2f}", f"{f['loaded_idle']['others_cores']:.2f}"),
    ]
    lines = [f"| figure | no gossiped endpoints | {n} gossiped endpoints |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--endpoints", type=int, default=100_000, help="gossiped endpoints (default 100,000)")
    p.add_argument("--idle", type=float, default=20.0, help="seconds of each idle CPU window (default 20)")
    p.add_argument("--samples", type=int, default=5, help="attaches of each kind per phase (default 5)")
    p.add_argument("--updates", type=int, default=5, help="one-endpoint updates measured (default 5)")
    p.add_argument("--per-peer", type=int, default=4096, help="endpoints per announcing peer: the routers' --max-peer-endpoints (default 4096)")
    p.add_argument("--load-timeout", type=float, default=600.0, help="seconds the endpoints may take to load (default 600)")
    p.add_argument("--budget", type=float, default=1800.0, help="seconds the whole run may take (default 1800)")
    p.add_argument("--prefix", default="mnes", help="lab prefix: namespaces PREFIX-h1.. (default mnes)")
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args(argv)
    if not 1 <= args.endpoints <= 1_000_000 or not 1 <= args.updates < args.per_peer <= 4096 or args.samples < 1:
        p.error("need 1 <= --endpoints <= 1,000,000, 1 <= --updates < --per-peer <= 4096, --samples >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    if os.geteuid() != 0:
        print("endpoint_scale: needs root (network namespaces, routers)", file=sys.stderr)
        return 2

    def stop(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    def out_of_time(_signum: int, _frame: Any) -> None:
        raise Deadline(f"the run took more than --budget {args.budget:.0f}s")

    for signum in (signal.SIGTERM, signal.SIGINT):  # SIGINT too when started ignoring it (a background job)
        signal.signal(signum, stop)
    signal.signal(signal.SIGALRM, out_of_time)
    signal.alarm(int(args.budget))
    bench = Bench(args)
    try:
        bench.run()
    except (Deadline, RuntimeError, OSError, MeshnetError, subprocess.SubprocessError) as exc:
        print(f"endpoint_scale: {type(exc).__name__}: {exc}", file=sys.stderr)
        print(json.dumps(bench.figures, indent=1, default=str), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("endpoint_scale: interrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        signal.alarm(0)
        for signum in (signal.SIGTERM, signal.SIGINT):  # the cleanup runs to its end
            signal.signal(signum, signal.SIG_IGN)
        bench.close()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(bench.figures, f, indent=1, default=str)
    print(table(bench.figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
