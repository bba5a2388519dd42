"""Simulated Docker hosts: a `Lab` (meshnet.lab.hosts) plus one real dockerd per host (`DockerLab`).

Each host hN gets, besides the lab's namespace and router:
  * a dockerd started as `unshare --mount` + `nsenter --net=/run/netns/<prefix>-hN` (never
    `ip netns exec`: it remounts /sys and dockerd loses the cgroup v1 mounts), with its own
    socket, data-root, exec-root (so its own containerd), pidfile and cgroup parent, all
    under RUN/<prefix>/hN and LIB/<prefix>/hN;
  * a private /run/docker/plugins (a bind mount in dockerd's mount namespace) pointing at
    the router's `--plugin-dir`, so every host's `-d meshnet` reaches its own router;
  * an offline busybox image `bb:local` made from /bin/busybox (busybox-static).

Teardown order matters (testbed/README.md): containers are removed while the plugin
still answers, then dockerd stops, then the routers. Only PIDs this lab recorded are
signalled; cleanup runs even after a failure, and is safe to run twice.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import tarfile
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

from meshnet.api.client import ApiClient
from meshnet.lab import procs
from meshnet.lab.hosts import Lab

RUN = "/run/mndk"
LIB = "/var/lib/mndk"
IMAGE = "bb:local"
BUSYBOX = "/bin/busybox"


def busybox_rootfs() -> bytes:
    """A tar of a minimal busybox root file system (needs busybox-static)."""
    if not os.path.exists(BUSYBOX):
        raise RuntimeError("needs a static busybox at /bin/busybox (apt-get install busybox-static)")
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True, timeout=10).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:

        def add_dir(path: str) -> None:
            info = tarfile.TarInfo(path)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)

        def add_file(path: str, data: bytes, mode: int = 0o644) -> None:
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))

        for d in ("bin", "sbin", "etc", "proc", "sys", "dev", "tmp", "root", "var", "var/run", "usr", "usr/bin", "usr/sbin"):
            add_dir(d)
        with open(BUSYBOX, "rb") as f:
            add_file("bin/busybox", f.read(), 0o755)
        for applet in applets:
            if applet != "busybox":
                info = tarfile.TarInfo(f"bin/{applet}")
                info.type, info.linkname = tarfile.SYMTYPE, "busybox"
                tar.addfile(info)
        add_file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
        add_file("etc/group", b"root:x:0:\n")
    return buf.getvalue()


@dataclass
class DockerLab(Lab):
    prefix: str = "mndk"
    dockerd_pids: dict[int, int] = field(default_factory=dict)
    launch_flags: list[str] = field(default_factory=lambda: ["--router-mode=process"])  # extra flags for every router
    docker_bridge: set[int] = field(default_factory=set)  # hosts whose dockerd has its default bridge and iptables (-p works)

    def __post_init__(self) -> None:
        self._clients: dict[int, Any] = {}

    # -- names ---------------------------------------------------------------------------
    def docker_dir(self, i: int) -> str:
        return f"{RUN}/{self.prefix}/h{i}"

    def docker_lib(self, i: int) -> str:
        return f"{LIB}/{self.prefix}/h{i}"

    def docker_sock(self, i: int) -> str:
        return f"{self.docker_dir(i)}/docker.sock"

    def plugin_dir(self, i: int) -> str:
        return f"{self.docker_dir(i)}/plugins"

    def meshnet(self, i: int, *args: str) -> list[str]:
        cmd = super().meshnet(i, *args)
        if args[:1] == ("launch",):
            cmd += [
                f"--docker-socket=unix://{self.docker_sock(i)}",
                f"--plugin-dir={self.plugin_dir(i)}",
                "--dns-upstream=none",
                *self.launch_flags,
            ]
        return cmd

    # -- dockerd -------------------------------------------------------------------------
    def start_dockerd(self, i: int, timeout: float = 60) -> None:
        d, lib = self.docker_dir(i), self.docker_lib(i)
        for path in (d, lib, self.plugin_dir(i)):
            os.makedirs(path, exist_ok=True)
        if not os.path.exists(f"{d}/daemon.json"):
            with open(f"{d}/daemon.json", "w") as f:
                f.write("{}\n")  # never read /etc/docker/daemon.json
        os.makedirs("/run/docker/plugins", exist_ok=True)  # the mount point (an empty dir) must exist
        cmd = [
            "unshare", "--mount", "--propagation", "slave", "--",
            "sh", "-c", 'mount --bind "$0" /run/docker/plugins && exec "$@"', self.plugin_dir(i),
            "nsenter", f"--net=/run/netns/{self.host_ns(i)}", "--",
            "dockerd",
            "-H", f"unix://{self.docker_sock(i)}",
            "--config-file", f"{d}/daemon.json",
            "--data-root", f"{lib}/docker",
            "--exec-root", f"{d}/exec",
            "--pidfile", f"{d}/docker.pid",
            "--cgroup-parent", f"/{self.prefix}-h{i}",
            *(["--bridge=none", "--iptables=false", "--ip-masq=false"] if i not in self.docker_bridge else []),
            "--userland-proxy=false", "--shutdown-timeout", "2",
        ]  # fmt: skip
        with open(f"{d}/dockerd.log", "ab") as log:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        self.dockerd_pids[i] = proc.pid  # unshare, sh and nsenter exec: this is dockerd's pid
        self._save_docker()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"dockerd on h{i} exited: {self._tail(f'{d}/dockerd.log')}")
            try:
                self.client(i).ping()
                return
            except Exception:
                time.sleep(0.1)
        raise RuntimeError(f"dockerd on h{i} not ready within {timeout}s: {self._tail(f'{d}/dockerd.log')}")

    def stop_dockerd(self, i: int, *, remove_containers: bool = True, timeout: float = 30) -> None:
        pid = self.dockerd_pids.get(i)
        if pid is None or not procs.alive(pid):
            self.dockerd_pids.pop(i, None)
            return
        if remove_containers:
            try:
                api = self.client(i)
                # the router container last: the others' endpoints are released while the plugin answers
                for c in sorted(api.containers(all=True), key=lambda c: "/meshnet-router" in (c.get("Names") or [])):
                    api.remove_container(c["Id"], force=True)
            except Exception:
                pass
        containerd = procs.read_pid(f"{self.docker_dir(i)}/exec/containerd/containerd.pid")
        os.kill(pid, signal.SIGTERM)
        if not procs.wait_gone(pid, timeout):
            os.kill(pid, signal.SIGKILL)
            procs.wait_gone(pid, 5)
        if containerd and procs.alive(containerd) and self.docker_dir(i) in procs.cmdline(containerd):
            if not procs.wait_gone(containerd, 5):
                os.kill(containerd, signal.SIGKILL)
                procs.wait_gone(containerd, 5)
        for shim in procs.pids_with(f"{self.docker_dir(i)}/exec/containerd"):
            os.kill(shim, signal.SIGKILL)
        self.dockerd_pids.pop(i, None)
        self._save_docker()
        self._clients.pop(i, None)

    def client(self, i: int) -> Any:
        """docker-py's low-level client for host i (API version negotiated)."""
        import docker

        cached = self._clients.get(i)
        if cached is None:
            cached = docker.APIClient(base_url=f"unix://{self.docker_sock(i)}", version="auto", timeout=60)
            self._clients[i] = cached
        return cached

    def import_image(self, i: int) -> None:
        path = f"{LIB}/busybox-rootfs.tar"
        if not os.path.exists(path):
            os.makedirs(LIB, exist_ok=True)
            with open(path + ".tmp", "wb") as f:
                f.write(busybox_rootfs())
            os.replace(path + ".tmp", path)
        with open(path, "rb") as f:
            self.client(i).import_image_from_data(f.read(), repository=IMAGE.split(":")[0], tag=IMAGE.split(":")[1], changes=['CMD ["/bin/sh"]'])

    def run_container(self, i: int, name: str, *, network: str | None = None, restart: str | None = None, dns: list[str] | None = None, command: list[str] | None = None) -> str:
        api = self.client(i)
        host_config = api.create_host_config(
            network_mode=network,
            restart_policy={"Name": restart} if restart else None,
            dns=dns,
            dns_search=["meshnet.local"] if dns else None,
        )
        c = api.create_container(IMAGE, command or ["sleep", "3600"], name=name, host_config=host_config, stop_timeout=1)
        api.start(c["Id"])
        return c["Id"]

    def sh(self, i: int, container: str, cmd: str, timeout: float = 20) -> tuple[int, str]:
        """Run `sh -c cmd` in a container; (exit code, output). Bounded by busybox timeout."""
        api = self.client(i)
        exec_id = api.exec_create(container, ["timeout", str(int(timeout)), "sh", "-c", cmd])
        out = api.exec_start(exec_id)
        return api.exec_inspect(exec_id)["ExitCode"], out.decode(errors="replace")

    # -- checks (tests) --------------------------------------------------------------------
    def cli(self, i: int, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
        """The meshnet CLI on host i."""
        return subprocess.run(self.meshnet(i, *args), capture_output=True, text=True, timeout=timeout)

    def ok(self, i: int, *args: str) -> str:
        r = self.cli(i, *args)
        if r.returncode != 0:
            raise AssertionError(f"meshnet {' '.join(args)} on h{i} failed: {r.stderr.strip()}")
        return r.stdout

    def api(self, i: int) -> Any:
        return ApiClient(f"{self.run_dir(i)}/meshnet.sock")

    def ipam_owners(self, i: int, prefix: str = "") -> dict[str, list[str]]:
        owners = self.api(i).get("/ipam/owners")["owners"]
        return {o: sorted(ips) for o, ips in owners.items() if o.startswith(prefix)}

    def own_address(self, i: int, offset: int = 33) -> str:
        """An address in a range host i's IPAM owns (a static address must be claimed there)."""
        import ipaddress

        status = self.api(i).get("/ipam/status")
        ranges = status["peers"][status["name"]]["ranges"]
        big = max(ranges, key=lambda r: r["size"])
        return str(ipaddress.ip_address(big["start"]) + min(offset, big["size"] - 2))

    def ip_of(self, i: int, container: str, ifname: str = "ethwe") -> str:
        rc, out = self.sh(i, container, f"ip -o -4 addr show {ifname}")
        if rc != 0 or len(out.split()) < 4:
            raise AssertionError(f"{container} has no IPv4 address on {ifname}: {out}")
        return out.split()[3].split("/")[0]

    def can_reach(self, i: int, container: str, target: str) -> bool:
        return self.sh(i, container, f"ping -c 1 -W 2 {target}", timeout=10)[0] == 0

    def resolves(self, i: int, container: str, fqdn: str, server: str) -> str | None:
        """The address `nslookup fqdn server` gives inside the container, None if none."""
        rc, out = self.sh(i, container, f"nslookup {fqdn} {server}", timeout=10)
        parts = out.split(f"Name:\t{fqdn}")
        if rc != 0 or len(parts) < 2 or "Address:" not in parts[1]:
            return None
        return parts[1].split("Address:")[1].split()[0]

    def tcp_transfer(self, src: tuple[int, str], dst: tuple[int, str], target: str, size: int = 3_000_000) -> bool:
        """`size` random bytes from container src to dst over TCP (busybox nc); digests must match."""
        api = self.client(dst[0])
        self.sh(dst[0], dst[1], "rm -f /tmp/got")
        listen = ["timeout", "30", "nc", "-l", "-p", "5001", "-e", "sh", "-c", "cat > /tmp/got"]
        api.exec_start(api.exec_create(dst[1], listen), detach=True)
        script = f"head -c {size} /dev/urandom > /tmp/data && md5sum < /tmp/data && sleep 0.3 && nc {target} 5001 < /tmp/data"
        rc, sent = self.sh(src[0], src[1], script, timeout=40)
        if rc != 0:
            raise AssertionError(f"sending from {src[1]} failed: {sent}")

        def arrived() -> bool:
            rc, got = self.sh(dst[0], dst[1], f"test $(wc -c < /tmp/got) -eq {size} && md5sum < /tmp/got")
            return rc == 0 and got.split()[0] == sent.split()[0]

        return self.wait(arrived, 20, f"{size} bytes {src[1]} -> {dst[1]} intact")

    # -- lab -----------------------------------------------------------------------------
    def up(self, *, dockerd: bool = True) -> None:  # type: ignore[override]
        try:
            super().up()  # namespaces and routers (the plugin sockets exist before dockerd starts)
            if dockerd:
                for i in range(1, self.hosts + 1):
                    self.start_dockerd(i)
                    self.import_image(i)
        except BaseException:
            self.down()
            raise

    def down(self) -> None:
        self._load_docker()
        for i in range(1, self.hosts + 1):
            try:
                self.stop_dockerd(i)
            except Exception:
                pass
        super().down()
        for i in range(1, self.hosts + 1):
            for base in (self.docker_dir(i), self.docker_lib(i)):
                procs.umount_under(base)
            for c in procs.cgroup_dirs(f"{self.prefix}-h{i}"):
                try:
                    os.rmdir(c)
                except OSError:
                    pass
        shutil.rmtree(f"{RUN}/{self.prefix}", ignore_errors=True)
        shutil.rmtree(f"{LIB}/{self.prefix}", ignore_errors=True)
        try:
            os.rmdir(RUN)  # only when no other lab uses it
        except OSError:
            pass

    def _save_docker(self) -> None:
        os.makedirs(f"{RUN}/{self.prefix}", exist_ok=True)
        with open(f"{RUN}/{self.prefix}/dockerd.pids", "w") as f:
            f.write(" ".join(f"{i}:{p}" for i, p in self.dockerd_pids.items()))

    def _load_docker(self) -> None:
        try:
            with open(f"{RUN}/{self.prefix}/dockerd.pids") as f:
                for item in f.read().split():
                    i, p = item.split(":")
                    self.dockerd_pids.setdefault(int(i), int(p))
        except (OSError, ValueError):
            pass

    def dump_logs(self, lines: int = 40) -> str:
        """The tail of every router's and dockerd's log (printed by tests, shown on failure)."""
        out = []
        for i in range(1, self.hosts + 1):
            for path in (f"{self.run_dir(i)}/meshnet.log", f"{self.docker_dir(i)}/dockerd.log"):
                try:
                    with open(path, errors="replace") as f:
                        out.append(f"==== {path}\n" + "".join(f.readlines()[-lines:]))
                except OSError:
                    pass
        return "\n".join(out)

    @staticmethod
    def _tail(path: str) -> str:
        try:
            with open(path, errors="replace") as f:
                return "".join(f.readlines()[-5:])
        except OSError:
            return ""

    def wait(self, check: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = check()
                if last:
                    return last
            except Exception as exc:  # keep polling; report the last error
                last = exc
            time.sleep(interval)
        raise TimeoutError(f"{what} not within {timeout}s (last: {last!r})")


@contextlib.contextmanager
def running_lab(hosts: int = 3, prefix: str = "mndk", keep: bool | None = None) -> Iterator[DockerLab]:
    """A DockerLab that is up (mesh formed) inside the block and torn down after it, even on
    failure; the logs are printed at the end (pytest shows them for a failed test).
    MNDK_KEEP=1 keeps it for debugging (remove it with `DockerLab(prefix).down()`)."""
    lab = DockerLab(prefix=prefix, hosts=hosts)
    lab.up()
    try:
        lab.wait_mesh()
        yield lab
    finally:
        print(lab.dump_logs())
        if not (keep if keep is not None else os.environ.get("MNDK_KEEP") == "1"):
            lab.down()


__all__ = ["DockerLab", "IMAGE", "busybox_rootfs", "running_lab"]
