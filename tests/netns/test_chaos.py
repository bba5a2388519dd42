"""Chaos: random operator actions on 4 hosts, the invariants checked on the wire after each.

::

    mnrc-h1   mnrc-h2   mnrc-h3   mnrc-h4      each host: a router, a probe namespace
       \\________\\_________/_________/          (arping and ping from there) and the
              underlay (nftables cuts pairs)     containers the steps attach

Steps, drawn from a seeded random generator among those that apply: attach, detach, claim
of a removed peer's address elsewhere, kill -9, restart, upgrade-restart (another build),
reset --release (then a relaunch: a new peer), rmpeer of a dead peer (its host may come
back later: tombstoned, it must reset), partition of two hosts and heal.

Invariants, after every step:

1. no address answers ARP from two MACs, asked from every host whose router runs;
2. no acknowledged allocation is lost: IPAM on its host still holds every address an
   attach acknowledged, while that host's router runs and was neither reset nor removed;
3. every live endpoint answers (ARP and ping) from every host whose router runs and that
   reaches it: over the underlay graph of serving routers (a cut pair relays through a
   third, never through a removed peer), and, while its own router is down within the grace period, directly.

Docker container start/stop is not part of this lab (see tests/netns/test_docker_*.py).

MNR_CHAOS_SEED replays a run (the seed is printed first); MNR_CHAOS_STEPS sets the number of
steps: 10 by default (CI, a few minutes), e.g. MNR_CHAOS_STEPS=300 for a soak.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from meshnet.api.client import ApiClient
from meshnet.errors import MeshnetError
from meshnet.lab import Lab, arp_table, block, ping, unblock, wait_for

pytestmark = pytest.mark.netns

HOSTS = 4
STEPS = int(os.environ.get("MNR_CHAOS_STEPS", "10"))
SEED = int(os.environ.get("MNR_CHAOS_SEED", str(random.SystemRandom().randrange(1 << 32))))
KEPT_FOR = 40.0  # s a dead router's endpoints must stay reachable (the grace period is 60 s)
SETTLE = 60.0  # s the mesh may take to settle after a step


@dataclass
class Host:
    i: int
    up: bool = True
    down_since: float = 0.0
    removed: bool = False  # rmpeer'd while down
    tombstoned: bool = False  # came back after that: must reset
    build: str = "main"


@dataclass
class Ep:
    ns: str
    host: int
    ip: str
    mac: str
    live: bool = True  # False once its host was removed: the address may be given out again


class Chaos:
    def __init__(self, lab: Lab, rng: random.Random, upgrade: dict):
        self.lab, self.rng, self.upgrade = lab, rng, upgrade
        self.hosts = {i: Host(i) for i in range(1, HOSTS + 1)}
        self.eps: dict[str, Ep] = {}
        self.cut: set[frozenset[int]] = set()
        self.cut_while_down: set[tuple[int, int]] = set()  # (down host, other) cut during its downtime
        self.probe = {i: lab.add_container(i, 0)[0] for i in self.hosts}
        self.serial = 0
        self.names: dict[int, str] = {}
        self.log: list[str] = []

    # -- views ---------------------------------------------------------------------------

    def running(self) -> list[int]:
        return [i for i, h in self.hosts.items() if h.up]

    def serving(self) -> list[int]:
        """Hosts whose router runs and may serve endpoints (not a tombstoned one)."""
        return [i for i in self.running() if not self.hosts[i].tombstoned]

    def api(self, i: int) -> ApiClient:
        return ApiClient(f"{self.lab.run_dir(i)}/meshnet.sock", timeout=60)

    def components(self) -> list[set[int]]:
        """Serving routers connected over uncut underlay pairs, relays included (the others no
        longer serve a peer removed with rmpeer, so none sends through it)."""
        left, out = set(self.serving()), []
        while left:
            todo, comp = [left.pop()], set()
            while todo:
                a = todo.pop()
                comp.add(a)
                for b in list(left):
                    if frozenset((a, b)) not in self.cut:
                        left.discard(b)
                        todo.append(b)
            out.append(comp)
        return out

    def expected(self, ep: Ep, j: int) -> bool:
        """Must `ep` answer from host j's probe namespace?"""
        h = self.hosts[ep.host]
        if not ep.live or h.tombstoned or h.removed:
            return False
        if ep.host == j:
            return True
        if h.up:
            return any(ep.host in c and j in c for c in self.components())
        fresh = time.monotonic() - h.down_since < KEPT_FOR
        return fresh and frozenset((ep.host, j)) not in self.cut and (ep.host, j) not in self.cut_while_down

    # -- steps ---------------------------------------------------------------------------

    def step(self) -> str:
        up, serving = self.running(), self.serving()
        down = [i for i, h in self.hosts.items() if not h.up]
        live = [e for e in self.eps.values() if e.live and e.host in serving]
        dead = [e for e in self.eps.values() if not e.live and not any(x.ip == e.ip and x.live for x in self.eps.values())]
        choices = []
        choices += [("attach", i) for i in up] * 2
        choices += [("detach", e.ns) for e in live]
        choices += [("claim", e.ns) for e in dead] * 2
        choices += [("kill", i) for i in up if len(up) > 2]
        choices += [("restart", i) for i in down] * 2
        choices += [("upgrade", i) for i in up if len(up) > 2]
        choices += [("reset", i) for i in up if len(up) > 2 or self.hosts[i].tombstoned]
        choices += [("rmpeer", i) for i in down if not self.hosts[i].removed and serving] * 3
        pairs = [(a, b) for a in up for b in up if a < b and frozenset((a, b)) not in self.cut]
        choices += [("partition", p) for p in pairs if not self.cut]
        choices += [("heal", None)] * (3 if self.cut else 0)
        action, arg = self.rng.choice(choices)
        getattr(self, f"do_{action}")(arg)
        return f"{action} {arg}"

    def do_attach(self, i: int) -> None:
        self.serial += 1
        ns = f"mnrc-h{i}-e{self.serial}"
        self._attach(i, ns, [])

    def _attach(self, i: int, ns: str, cidrs: list[str]) -> None:
        subprocess.run(["ip", "netns", "add", ns], check=True)
        self.lab.containers[ns] = ""
        result = subprocess.run(self.lab.meshnet(i, "attach", ns, *cidrs), capture_output=True, text=True, timeout=120)
        if self.hosts[i].tombstoned:
            assert result.returncode == 1 and "reset" in result.stderr, f"a tombstoned peer allocated: {result.stdout}"
        if result.returncode == 0:
            ip = json.loads(result.stdout)["cidrs"][0].split("/")[0]
            self.eps[ns] = Ep(ns, i, ip, mac_of(ns))
        self.log.append(f"  attach {ns} on h{i} {cidrs}: rc {result.returncode} {result.stderr.strip()[-120:]}")

    def do_detach(self, ns: str) -> None:
        ep = self.eps.pop(ns)
        result = subprocess.run(self.lab.meshnet(ep.host, "detach", ns), capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr

    def do_claim(self, ns: str) -> None:
        """A removed peer's address, claimed anew where its range now lives."""
        ep = self.eps[ns]
        owner = next((i for i in self.serving() if owns(self.api(i), ep.ip)), None)
        if owner is not None:
            self.serial += 1
            self._attach(owner, f"mnrc-h{owner}-e{self.serial}", [f"{ep.ip}/12"])

    def do_kill(self, i: int) -> None:
        self.lab.kill_router(i)
        self._down(i)

    def _down(self, i: int) -> None:
        h = self.hosts[i]
        h.up, h.down_since = False, time.monotonic()
        self.cut_while_down |= {(i, j) for pair in self.cut if i in pair for j in pair if j != i}

    def _start(self, i: int, build: str) -> None:
        peers = [self.lab.host_ip(j) for j in self.hosts if j != i]
        self.lab.start_router(i, peers=peers, **(self.upgrade if build == "upgrade" else {}))
        h = self.hosts[i]
        h.up, h.build = True, build
        self.cut_while_down = {(a, b) for a, b in self.cut_while_down if a != i}
        if h.removed:
            h.tombstoned = True

    def do_restart(self, i: int) -> None:
        self._start(i, self.hosts[i].build)

    def do_upgrade(self, i: int) -> None:
        """To the other build (and back, another time): a clean stop or a kill -9 first."""
        if self.rng.random() < 0.5:
            self.lab.stop_router(i)
        else:
            self.lab.kill_router(i)
        self._down(i)
        self._start(i, "upgrade" if self.hosts[i].build == "main" else "main")

    def do_reset(self, i: int) -> None:
        result = subprocess.run(self.lab.meshnet(i, "reset", "--release", "--state-dir", self.lab.state_dir(i)), capture_output=True, text=True, timeout=120)
        self.log.append(f"  reset h{i}: rc {result.returncode} {result.stderr.strip()[-160:]}")
        if result.returncode != 0:
            assert "in use" not in result.stderr, result.stderr
            return  # no heir (cut off), or an rmpeer being confirmed: nothing changed
        for ns in [ns for ns, e in self.eps.items() if e.host == i]:
            del self.eps[ns]
        self._down(i)
        h = self.hosts[i]
        h.removed = h.tombstoned = False  # a new peer from now on
        self._start(i, h.build)
        # --release detached the probe namespace too: attach it again
        probe = subprocess.run(self.lab.meshnet(i, "attach", self.probe[i]), capture_output=True, text=True, timeout=120)
        assert probe.returncode == 0, probe.stderr

    def do_rmpeer(self, i: int) -> None:
        name = self.names[i]
        j = self.rng.choice(self.serving())
        result = subprocess.run(self.lab.meshnet(j, "rmpeer", name), capture_output=True, text=True, timeout=60)
        self.log.append(f"  rmpeer h{i} on h{j}: rc {result.returncode} {result.stderr.strip()[-120:]}")
        if result.returncode == 0:
            self.hosts[i].removed = True
            for e in self.eps.values():
                if e.host == i:
                    e.live = False

    def do_partition(self, pair: tuple[int, int]) -> None:
        a, b = pair
        block(self.lab.host_ns(a), self.lab.host_ip(b))
        block(self.lab.host_ns(b), self.lab.host_ip(a))
        self.cut.add(frozenset(pair))
        for i in pair:
            if not self.hosts[i].up:
                self.cut_while_down.add((i, a + b - i))

    def do_heal(self, _: None) -> None:
        for i in self.hosts:
            unblock(self.lab.host_ns(i))
        self.cut.clear()

    # -- settling and the invariants -------------------------------------------------------

    def learn_names(self) -> None:
        for i in self.running():
            self.names[i] = self.api(i).get("/status")["router"]["name"]

    def settle(self) -> None:
        for comp in self.components():
            self.lab.wait_mesh_of(sorted(comp), timeout=SETTLE)
        self.learn_names()

    def check(self) -> None:
        probes = self.serving()
        ips = sorted({e.ip for e in self.eps.values()})
        seen: dict[int, dict[str, set[str]]] = {}

        if not probes:  # every router is down or removed: nothing can answer, nothing to check
            return

        def holds() -> bool:
            with ThreadPoolExecutor(len(probes)) as pool:
                seen.update(zip(probes, pool.map(lambda j: arp_table(self.probe[j], ips), probes)))
            for j in probes:
                for ip, macs in seen[j].items():
                    assert len(macs) <= 1, f"{ip} answers ARP from {sorted(macs)} (asked from h{j})"
            return all(
                seen[j].get(e.ip) == {e.mac} for e in self.eps.values() for j in probes if self.expected(e, j)
            )

        if wait_for(holds, SETTLE, interval=1.0) is None:
            missing = [(e.ns, e.ip, j, sorted(seen[j].get(e.ip, ()))) for e in self.eps.values() for j in probes if self.expected(e, j) and seen[j].get(e.ip) != {e.mac}]
            raise AssertionError(f"live endpoints do not answer where they must: {missing}")
        for e in self.eps.values():  # ARP proved L2; one ping proves the overlay carries IP too
            reachers = [j for j in probes if self.expected(e, j) and j != e.host]
            if reachers:
                j = self.rng.choice(reachers)
                assert wait_for(lambda: ping(self.probe[j], e.ip, wait=1), 20) is not None, f"{e.ns} ({e.ip}) does not answer ping from h{j}"
        for i in self.serving():
            owners = self.api(i).get("/ipam/owners")["owners"]
            for e in self.eps.values():
                if e.host == i and e.live:
                    assert owners.get(f"netns:/run/netns/{e.ns}") == [e.ip], f"h{i} lost the acknowledged allocation of {e.ns} ({e.ip})"


def mac_of(ns: str) -> str:
    out = subprocess.run(["ip", "-n", ns, "-j", "link", "show", "dev", "mesh0"], capture_output=True, text=True, check=True).stdout
    return json.loads(out)[0]["address"]


def owns(api: ApiClient, ip: str) -> bool:
    try:
        status = api.get("/ipam/status")
    except MeshnetError:
        return False
    a = ipaddress.ip_address(ip)
    ranges = status["peers"].get(status["name"], {}).get("ranges", [])
    return any(ipaddress.ip_address(r["start"]) <= a <= ipaddress.ip_address(r["end"]) and not r["reclaim"] for r in ranges)


def test_chaos(upgrade_build):
    print(f"\nchaos: seed {SEED}, {STEPS} steps (replay: MNR_CHAOS_SEED={SEED} MNR_CHAOS_STEPS={STEPS})")
    rng = random.Random(SEED)
    lab = Lab(prefix="mnrc", hosts=HOSTS)
    chaos = None
    try:
        lab.up()
        lab.wait_mesh(timeout=60)
        chaos = Chaos(lab, rng, upgrade_build)
        chaos.learn_names()
        for _ in range(3):
            chaos.do_attach(rng.choice(list(chaos.hosts)))
        chaos.settle()
        chaos.check()
        for n in range(STEPS):
            started = time.monotonic()
            what = chaos.step()
            chaos.log.append(f"step {n}: {what}")
            chaos.settle()
            chaos.check()
            print(f"  step {n:3d} {what:<22} {time.monotonic() - started:5.1f}s  endpoints {len(chaos.eps)}")
    except BaseException:
        if chaos is not None:
            print("\n".join(chaos.log[-40:]))
        print(f"chaos failed; replay with MNR_CHAOS_SEED={SEED} MNR_CHAOS_STEPS={STEPS}")
        raise
    finally:
        for i in range(1, HOSTS + 1):
            unblock(lab.host_ns(i))
        lab.down()
