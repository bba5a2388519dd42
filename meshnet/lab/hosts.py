"""The lab's hosts: network namespaces on one shared underlay, a router in each (`Lab`).

::

      {prefix}-h1              {prefix}-h2              {prefix}-h3        hosts: a router each,
     [router, bridge]        [router, bridge]        [router, bridge]      own state and run dirs
      |eth0 .11               |eth0 .12               |eth0 .13
      +-----------------------+-----------------------+---- bridge ulbr in {prefix}-ul
                         underlay 192.168.90.0/24 (only inside these namespaces)

    containers: {prefix}-hN-cM, attached to hN's router, addressed by IPAM from 10.32.0.0/12

The routers run under `ip netns exec` (they need no cgroups), are started and stopped
through the meshnet CLI itself, and are stopped by the PID they wrote. `down` removes
exactly what `up` recorded in the lab file, nothing else. The `meshnet lab` commands are
in `meshnet.lab.cli`, a dockerd per host in `meshnet.lab.dockerd`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Iterable

from meshnet.api.client import ApiClient
from meshnet.errors import MeshnetError
from meshnet.lab import neigh
from meshnet.lab.procs import alive

UNDERLAY = "192.168.90"
LAB_RUN = "/run/meshnet-lab"
LAB_STATE = "/var/lib/meshnet-lab"
NEIGH_RECORD = f"{LAB_RUN}/neigh.json"  # the labs holding room in the kernel's neighbour table


def run(cmd: list[str], *, check: bool = True, timeout: float = 60, capture: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, timeout=timeout, text=True, capture_output=capture)


def netns_exists(name: str) -> bool:
    return os.path.exists(f"/run/netns/{name}")


@dataclass
class Lab:
    prefix: str = "mnlab"
    hosts: int = 3
    password: str | None = None
    extra_flags: list[str] = field(default_factory=list)
    containers: dict[str, str] = field(default_factory=dict)  # netns -> address

    # -- names -------------------------------------------------------------------------
    @property
    def underlay_ns(self) -> str:
        return f"{self.prefix}-ul"

    def host_ns(self, i: int) -> str:
        return f"{self.prefix}-h{i}"

    def host_ip(self, i: int) -> str:
        return f"{UNDERLAY}.{10 + i}"

    def run_dir(self, i: int) -> str:
        return f"{LAB_RUN}/{self.prefix}/h{i}"

    def state_dir(self, i: int) -> str:
        return f"{LAB_STATE}/{self.prefix}/h{i}"

    @property
    def lab_file(self) -> str:
        return f"{LAB_RUN}/{self.prefix}/lab.json"

    def meshnet(self, i: int, *args: str) -> list[str]:
        """The meshnet CLI aimed at host i's router."""
        return [sys.executable, "-m", "meshnet", *args[:1], "--run-dir", self.run_dir(i), *args[1:]]

    # -- building ----------------------------------------------------------------------
    def up(self, *, start_routers: bool = True) -> None:
        for name in [self.underlay_ns] + [self.host_ns(i) for i in range(1, self.hosts + 1)]:
            if netns_exists(name):
                raise RuntimeError(f"namespace {name} already exists: run `meshnet lab down --prefix {self.prefix}` first")
        self._save()
        try:
            neigh.reserve(self.prefix, self.hosts, record=NEIGH_RECORD)  # one ARP table for all hosts
            run(["ip", "netns", "add", self.underlay_ns])
            ul = ["ip", "-n", self.underlay_ns]
            run([*ul, "link", "add", "ulbr", "type", "bridge"])
            run([*ul, "link", "set", "ulbr", "up"])
            for i in range(1, self.hosts + 1):
                self._add_host(i)
            for i in range(1, self.hosts + 1) if start_routers else ():
                self.start_router(i)
        except BaseException:
            self.down()
            raise

    def _add_host(self, i: int) -> None:
        ns = self.host_ns(i)
        run(["ip", "netns", "add", ns])
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        peer = f"ul{i}"
        run(["ip", "-n", self.underlay_ns, "link", "add", peer, "type", "veth", "peer", "name", "eth0", "netns", ns])
        run(["ip", "-n", self.underlay_ns, "link", "set", peer, "master", "ulbr", "up"])
        run(["ip", "-n", ns, "addr", "add", f"{self.host_ip(i)}/24", "dev", "eth0"])
        run(["ip", "-n", ns, "link", "set", "eth0", "up"])

    def start_router(
        self, i: int, *, seed: bool = True, peers: list[str] | None = None, password: str | None = None, env: dict[str, str] | None = None, cwd: str | None = None
    ) -> None:
        """Launch host i's router, seeded with h1 unless seed=False or other peers are given.

        `password` overrides the lab's (to test a wrong one); `env` adds to the environment and
        `cwd` is where it runs (both naming another copy of meshnet: an upgrade to another build).
        """
        if peers is None:
            peers = [self.host_ip(1)] if i > 1 and seed else []
        # A lab router ignores the machine's own dockerd (a Docker lab's meshnet() adds its own
        # socket after this); all routers split the address range among all lab hosts.
        launch = self.meshnet(i, "launch", "--docker-socket=none", "--state-dir", self.state_dir(i))
        cmd = ["ip", "netns", "exec", self.host_ns(i), *launch]
        cmd += ["--nickname", f"{self.prefix}-h{i}", "--ipalloc-init", f"consensus={self.hosts}", *self.extra_flags, *peers]
        environ = {**os.environ, **(env or {})}
        environ.pop("MESHNET_PASSWORD", None)
        if password or self.password:
            environ["MESHNET_PASSWORD"] = password or self.password
        result = subprocess.run(cmd, text=True, capture_output=True, timeout=60, env=environ, cwd=cwd)
        if result.returncode != 0:
            raise RuntimeError(f"router on h{i} did not start: {result.stderr.strip()}")

    def stop_router(self, i: int) -> None:
        run(self.meshnet(i, "stop"), check=False)

    def kill_router(self, i: int, sig: int = 9) -> None:
        """Kill host i's router by the pid it wrote (a crash, not a clean stop)."""
        with open(f"{self.run_dir(i)}/meshnet.pid") as f:
            pid = int(f.read())
        os.kill(pid, sig)
        for _ in range(200):
            if not alive(pid):  # a zombie has exited: waiting for its reaping would add seconds
                return
            time.sleep(0.01)

    def add_container(self, i: int, j: int, address: str | None = None) -> tuple[str, str]:
        """A namespace attached to host i's router, addressed by IPAM unless given; (ns, ip)."""
        ns = f"{self.host_ns(i)}-c{j}"
        run(["ip", "netns", "add", ns])
        self.containers[ns] = address or ""
        self._save()
        result = run(self.meshnet(i, "attach", ns, *([address] if address else [])), check=False)
        if result.returncode != 0:
            raise RuntimeError(f"attach {ns} failed: {result.stderr.strip()}")
        cidr = json.loads(result.stdout)["cidrs"][0]
        self.containers[ns] = cidr
        self._save()
        return ns, cidr.split("/")[0]

    def status(self, i: int) -> dict:
        return ApiClient(f"{self.run_dir(i)}/meshnet.sock").get("/status")

    def _save(self) -> None:
        os.makedirs(os.path.dirname(self.lab_file), exist_ok=True)
        with open(self.lab_file, "w") as f:
            json.dump({"prefix": self.prefix, "hosts": self.hosts, "containers": self.containers}, f)

    @classmethod
    def load(cls, prefix: str) -> Lab:
        with open(f"{LAB_RUN}/{prefix}/lab.json") as f:
            data = json.load(f)
        return cls(prefix=prefix, hosts=data["hosts"], containers=data["containers"])

    def down(self) -> None:
        """Remove every router, namespace and dir of this lab; safe to run twice."""
        for i in range(1, self.hosts + 1):
            if os.path.exists(f"{self.run_dir(i)}/meshnet.pid"):
                self.stop_router(i)
                if os.path.exists(f"{self.run_dir(i)}/meshnet.pid"):
                    try:
                        self.kill_router(i)
                    except (OSError, ValueError):
                        pass
        for ns in list(self.containers) + [self.host_ns(i) for i in range(1, self.hosts + 1)] + [self.underlay_ns]:
            if netns_exists(ns):
                run(["ip", "netns", "del", ns], check=False)
        neigh.release(self.prefix, record=NEIGH_RECORD)
        shutil.rmtree(f"{LAB_RUN}/{self.prefix}", ignore_errors=True)
        shutil.rmtree(f"{LAB_STATE}/{self.prefix}", ignore_errors=True)

    # -- checks ------------------------------------------------------------------------
    def ping(self, ns: str, ip: str, *, count: int = 1, wait: float = 2) -> bool:
        result = run(["ip", "netns", "exec", ns, "ping", "-c", str(count), "-W", str(wait), "-q", ip], check=False)
        return result.returncode == 0

    def wait_mesh(self, timeout: float = 20) -> None:
        """Wait until every router sees every other one reachable."""
        self.wait_mesh_of(range(1, self.hosts + 1), timeout)

    def wait_mesh_of(self, hosts: Iterable[int], timeout: float = 20) -> None:
        """Wait until each of these hosts' routers sees all of them reachable."""
        hosts = list(hosts)
        nicks = {f"{self.prefix}-h{i}" for i in hosts}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if all(nicks <= {p["nick"] for p in self.status(i)["peers"] if p["reachable"]} for i in hosts):
                    return
            except (OSError, MeshnetError):
                pass
            time.sleep(0.3)
        raise TimeoutError(f"routers {hosts} of lab {self.prefix} did not form a mesh within {timeout}s")
