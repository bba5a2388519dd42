"""Shared harness for the CNI netns tests (no tests in here).

`CniLab` is a `meshnet.lab.Lab(prefix="mnk8s")` (routers in namespaces mnk8s-hN on the
underlay 192.168.90.0/24) plus, per test, a CNI bin dir with `meshnet-cni` installed by
`cni/install.sh` next to the reference `portmap`/`bandwidth`/`loopback`, and per host a
conflist aimed at that host's router. It drives podman (CNI backend) and containerd's CRI
plugin the way they were verified to work on this kind of machine: `nsenter --net` (never `ip netns exec`) for the
runtimes, podman's ulimit flags, `restrict_oom_score_adj` for containerd.

Everything it makes is named mnk8s-* or lives under /run/mnk8s and /var/lib/mnk8s, and
`down()` removes it (runtime containers first, then daemons by their PID, mounts, the lab),
also after a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from typing import Any

from meshnet.lab import Lab

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PREFIX = "mnk8s"
RUN = f"/run/{PREFIX}"
LIB = f"/var/lib/{PREFIX}"
ROOTFS = f"{LIB}/busybox-rootfs.tar"
PAUSE_TAR = f"{LIB}/pause-image.tar"
# runc cannot raise rlimits here (no CAP_SYS_RESOURCE); our own cgroup parent, removed in down()
PM_ULIMIT = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", "--cgroup-parent", f"/{PREFIX}-pods/podman"]
REFERENCE = "/usr/lib/cni"


def sh(*cmd: str, timeout: float = 60, check: bool = True, env: dict | None = None, input: bytes | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(list(cmd), capture_output=True, timeout=timeout, env=env, input=input)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} -> {result.returncode}\n{result.stdout.decode(errors='replace')}\n{result.stderr.decode(errors='replace')}")
    return result


def out(result: subprocess.CompletedProcess) -> str:
    return result.stdout.decode(errors="replace").strip()


def missing_tools(*tools: str) -> list[str]:
    return [t for t in tools if shutil.which(t) is None and not os.path.exists(t)]


@contextmanager
def deadline(seconds: int):
    """Bound a test in time (SIGALRM in the main thread)."""

    def expired(signum, frame):
        raise TimeoutError(f"test exceeded {seconds}s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def busybox_rootfs() -> str:
    """An offline busybox rootfs tar (from Debian's busybox-static), made once."""
    if os.path.exists(ROOTFS):
        return ROOTFS
    os.makedirs(LIB, exist_ok=True)
    tmp = f"{LIB}/rootfs.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    for d in ("bin", "sbin", "etc", "proc", "sys", "dev", "tmp", "root", "var/run", "usr/bin", "usr/sbin", "www"):
        os.makedirs(f"{tmp}/{d}")
    shutil.copy("/bin/busybox", f"{tmp}/bin/busybox")
    for applet in out(sh("/bin/busybox", "--list")).split():
        if applet != "busybox":
            os.symlink("busybox", f"{tmp}/bin/{applet}")
    with open(f"{tmp}/etc/passwd", "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\n")
    with open(f"{tmp}/etc/group", "w") as f:
        f.write("root:x:0:\n")
    with open(f"{tmp}/www/index.html", "w") as f:
        f.write("hello-from-meshnet-pod\n")
    sh("tar", "-C", tmp, "-cf", f"{ROOTFS}.tmp", ".")
    os.rename(f"{ROOTFS}.tmp", ROOTFS)
    shutil.rmtree(tmp, ignore_errors=True)
    return ROOTFS


def write_containerd_config(d: str, root: str, *, sandbox_image: str, bin_dir: str, conf_dir: str) -> None:
    """containerd's config.toml in `d` (its sockets and state there, images under `root`):
    CRI with one CNI conflist from `conf_dir` and plugins from `bin_dir`, runc without systemd."""
    with open(f"{d}/config.toml", "w") as f:
        f.write(f"""version = 2
root = "{root}"
state = "{d}/state"
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  disable_apparmor = true
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin_dir}"
    conf_dir = "{conf_dir}"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
""")


class CniLab:
    def __init__(self, hosts: int, tag: str, gateway: bool = False, copy_runtime: bool = False):
        self.hosts = hosts
        self.tag = tag
        self.lab = Lab(prefix=PREFIX, hosts=hosts)
        self.dir = f"{RUN}/{tag}"
        self.lib = f"{LIB}/{tag}"
        self.bin = f"{self.dir}/bin"
        self.gateway = gateway
        self.copy_runtime = copy_runtime  # install like the DaemonSet: a private Python copy
        self.exposed: dict[int, str] = {}
        self.containerd: dict[int, subprocess.Popen] = {}
        self.log = f"{self.dir}/cni.log"

    # -- lab ------------------------------------------------------------------------------

    def up(self) -> CniLab:
        for path in (self.dir, self.lib):
            shutil.rmtree(path, ignore_errors=True)
            os.makedirs(path)
        self.lab.up()
        self.lab.wait_mesh(30)
        self.wait_ipam()
        os.makedirs(self.bin)
        runtime = ["--copy-runtime", f"{self.dir}/runtime"] if self.copy_runtime else []
        sh("sh", f"{ROOT}/cni/install.sh", "--bin-dir", self.bin, "--no-conflist", "--python", sys.executable, "--source", ROOT, *runtime)
        for plugin in ("portmap", "bandwidth", "loopback", "host-local"):
            os.symlink(f"{REFERENCE}/{plugin}", f"{self.bin}/{plugin}")
        for i in range(1, self.hosts + 1):
            self.ns(i, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            if self.gateway:
                self.expose(i)
        return self

    def wait_ipam(self, timeout: float = 30) -> None:
        """Until every router's allocator has the ring (GET /ipam/status: state "ready")."""
        from meshnet.errors import MeshnetError

        end = time.monotonic() + timeout
        for i in range(1, self.hosts + 1):
            while True:
                try:
                    state = self.api(i, "GET", "/ipam/status").get("state")
                except (MeshnetError, OSError) as exc:
                    state = str(exc)
                if state == "ready":
                    break
                if time.monotonic() > end:
                    raise TimeoutError(f"IPAM on h{i} not ready: {state}")
                time.sleep(0.2)

    def ns(self, i: int, *cmd: str, **kw: Any) -> subprocess.CompletedProcess:
        return sh("nsenter", f"--net=/run/netns/{self.lab.host_ns(i)}", "--", *cmd, **kw)

    def api(self, i: int, method: str, path: str, body: dict | None = None) -> dict:
        from meshnet.api.client import ApiClient

        client = ApiClient(f"{self.lab.run_dir(i)}/meshnet.sock", timeout=60)
        return client.call(method, path, body)

    def owners(self, i: int) -> dict[str, list[str]]:
        return self.api(i, "GET", "/ipam/owners")["owners"]

    def expose(self, i: int) -> str:
        """Give host i an address on its bridge (what `weave expose` did): the gateway for
        pods that must answer outside the overlay (portmap/hostPort)."""
        alloc = self.api(i, "POST", "/ipam/allocate", {"owner": f"{PREFIX}-expose:h{i}"})
        self.ns(i, "ip", "addr", "replace", alloc["cidr"], "dev", "meshnet")
        self.exposed[i] = alloc["address"]
        return alloc["address"]

    def conflist(self, i: int, *, version: str = "1.0.0", bandwidth: bool = False, **extra: Any) -> dict:
        entry = {
            "type": "meshnet-cni",
            "socket": f"{self.lab.run_dir(i)}/meshnet.sock",
            "state_dir": self.lab.state_dir(i),
            "bridge": "meshnet",
            "log_file": self.log,
            "capabilities": {"ips": True},
            **extra,
        }
        if i in self.exposed:
            entry["gateway"] = self.exposed[i]
        plugins = [entry, {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True}]
        if bandwidth:
            plugins.append({"type": "bandwidth", "ingressRate": 100_000_000, "ingressBurst": 1_000_000,
                            "egressRate": 100_000_000, "egressBurst": 1_000_000})
        return {"cniVersion": version, "name": "meshnet", "plugins": plugins}

    def plugin(self, i: int, command: str, conf: dict | bytes, **env: str) -> tuple[int, dict | None]:
        """Run the installed meshnet-cni in host i's netns, as a runtime would."""
        base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": command, "CNI_PATH": self.bin, **env}
        data = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
        r = self.ns(i, f"{self.bin}/meshnet-cni", env=base, input=data, check=False, timeout=60)
        text = out(r)
        return r.returncode, (json.loads(text) if text else None)

    def links(self, i: int) -> set[str]:
        return {l["ifname"] for l in json.loads(out(self.ns(i, "ip", "-j", "link", "show")))}

    # -- podman ---------------------------------------------------------------------------

    def podman_setup(self) -> None:
        busybox_rootfs()
        conf = f"{self.dir}/containers.conf"
        with open(conf, "w") as f:
            f.write(f'[containers]\ndefault_ulimits = []\n[network]\nnetwork_backend = "cni"\ncni_plugin_dirs = ["{self.bin}"]\n')
        for i in range(1, self.hosts + 1):
            os.makedirs(f"{self.dir}/h{i}/net.d")
            self.write_podman_conflist(i, self.conflist(i))
            self.pm(i, "import", "-q", ROOTFS, "localhost/bb:mnk8s", timeout=60)

    def write_podman_conflist(self, i: int, conflist: dict) -> None:
        with open(f"{self.dir}/h{i}/net.d/meshnet.conflist", "w") as f:
            json.dump(conflist, f)

    def pm(self, i: int, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        env = dict(os.environ, CONTAINERS_CONF=f"{self.dir}/containers.conf")
        return sh(
            "nsenter", f"--net=/run/netns/{self.lab.host_ns(i)}", "--", "podman",
            "--root", f"{self.lib}/h{i}/podman", "--runroot", f"{self.dir}/h{i}/podman", "--tmpdir", f"{self.dir}/h{i}/libpod",
            "--network-config-dir", f"{self.dir}/h{i}/net.d", "--cgroup-manager", "cgroupfs", "--events-backend", "file",
            *args, env=env, check=check, timeout=timeout,
        )

    def pod_ip(self, i: int, name: str) -> str:
        text = out(self.pm(i, "exec", name, "ip", "-o", "-4", "addr", "show", "eth0"))
        return text.split("inet ", 1)[1].split("/", 1)[0]

    # -- containerd CRI -------------------------------------------------------------------

    def pause_image(self) -> str:
        """An offline sandbox image (docker-archive), made once with a throwaway podman store."""
        if os.path.exists(PAUSE_TAR):
            return PAUSE_TAR
        busybox_rootfs()
        tmp = f"{LIB}/pause-build.{os.getpid()}"
        store = ["podman", "--root", f"{tmp}/root", "--runroot", f"{tmp}/run", "--tmpdir", f"{tmp}/tmp", "--events-backend", "none"]
        try:
            sh(*store, "import", "-q", "--change", "ENV PATH=/bin:/sbin:/usr/bin:/usr/sbin", "--change", 'CMD ["/bin/sleep","999999"]',
               ROOTFS, "localhost/pause:mnk8s", timeout=120)
            sh(*store, "save", "-q", "--format", "docker-archive", "-o", f"{PAUSE_TAR}.tmp", "localhost/pause:mnk8s", timeout=120)
            os.rename(f"{PAUSE_TAR}.tmp", PAUSE_TAR)
        finally:
            sh(*store, "rmi", "-a", "-f", check=False, timeout=60)
            self._umount_under(tmp)
            shutil.rmtree(tmp, ignore_errors=True)
        return PAUSE_TAR

    def cri_sock(self, i: int) -> str:
        return f"{self.dir}/h{i}/ctd/containerd.sock"

    def containerd_up(self, i: int) -> None:
        d, r = f"{self.dir}/h{i}/ctd", f"{self.lib}/h{i}/ctd"
        for p in (f"{d}/net.d", f"{d}/bin", r):
            os.makedirs(p, exist_ok=True)
        for plugin in os.listdir(self.bin):  # CRI 1.6: ONE bin dir, loopback included
            os.symlink(os.path.realpath(f"{self.bin}/{plugin}") if plugin != "meshnet-cni" else f"{self.bin}/meshnet-cni", f"{d}/bin/{plugin}")
        write_containerd_config(d, r, sandbox_image="localhost/pause:mnk8s", bin_dir=f"{d}/bin", conf_dir=f"{d}/net.d")
        conflist = self.conflist(i)
        conflist["plugins"][0]["capabilities"] = {"portMappings": True}
        with open(f"{d}/net.d/10-meshnet.conflist", "w") as f:
            json.dump(conflist, f)
        log = open(f"{d}/containerd.log", "wb")
        self.containerd[i] = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{self.lab.host_ns(i)}", "--", "containerd", "--config", f"{d}/config.toml"],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL,
        )
        log.close()
        end = time.monotonic() + 30
        while sh("ctr", "-a", self.cri_sock(i), "version", check=False, timeout=10).returncode != 0:
            if self.containerd[i].poll() is not None or time.monotonic() > end:
                raise AssertionError(f"containerd on h{i} did not start:\n{open(f'{d}/containerd.log').read()[-2000:]}")
            time.sleep(0.1)
        sh("ctr", "-a", self.cri_sock(i), "-n", "k8s.io", "images", "import", self.pause_image(), timeout=120)

    def cri(self, i: int):
        import grpc
        from cri_api.v1 import api_pb2_grpc as rpc

        return rpc.RuntimeServiceStub(grpc.insecure_channel(f"unix://{self.cri_sock(i)}"))

    def run_pod(self, i: int, name: str, cmd: list[str], ports: list[tuple[int, int]] = ()) -> tuple[str, str, str]:
        """RunPodSandbox + a container, like kubelet; returns (sandbox id, container id, pod IP)."""
        from cri_api.v1 import api_pb2 as pb

        rt = self.cri(i)
        meta = pb.PodSandboxMetadata(name=name, namespace="default", uid=str(uuid.uuid4()), attempt=0)
        config = pb.PodSandboxConfig(
            metadata=meta, hostname=name, log_directory=f"{self.dir}/podlogs/{name}",
            port_mappings=[pb.PortMapping(protocol=pb.TCP, container_port=c, host_port=h) for h, c in ports],
            linux=pb.LinuxPodSandboxConfig(
                cgroup_parent=f"/{PREFIX}-pods/{name}",
                security_context=pb.LinuxSandboxSecurityContext(namespace_options=pb.NamespaceOption(network=pb.POD, pid=pb.POD, ipc=pb.POD)),
            ),
        )
        sid = rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=60).pod_sandbox_id
        status = rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=sid), timeout=30)
        cc = pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name="main"), image=pb.ImageSpec(image="localhost/pause:mnk8s"), command=cmd,
            log_path="main.log",
            linux=pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(
                namespace_options=pb.NamespaceOption(network=pb.POD, pid=pb.CONTAINER, ipc=pb.POD))),
        )
        cid = rt.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id=sid, config=cc, sandbox_config=config), timeout=60).container_id
        rt.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=60)
        return sid, cid, status.status.network.ip

    def exec_sync(self, i: int, cid: str, cmd: list[str], timeout: int = 20) -> tuple[int, str]:
        from cri_api.v1 import api_pb2 as pb

        r = self.cri(i).ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=cmd, timeout=timeout), timeout=timeout + 10)
        return r.exit_code, (r.stdout + r.stderr).decode(errors="replace")

    def stop_pod(self, i: int, sid: str, remove: bool = True) -> None:
        from cri_api.v1 import api_pb2 as pb

        rt = self.cri(i)
        rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=60)
        if remove:
            rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sid), timeout=60)

    def _containerd_down(self, i: int) -> None:
        proc = self.containerd.pop(i)
        if proc.poll() is None:
            try:
                from cri_api.v1 import api_pb2 as pb

                rt = self.cri(i)
                for s in rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=30).items:
                    self.stop_pod(i, s.id)
            except Exception:  # noqa: BLE001 - best effort, the kill below still runs
                pass
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        # shims of this instance only: their command line names our socket
        sock = self.cri_sock(i)
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        cmdline = f.read()
                except OSError:
                    continue
                if b"containerd-shim" in cmdline and sock.encode() in cmdline:
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except ProcessLookupError:
                        pass

    # -- teardown -------------------------------------------------------------------------

    @staticmethod
    def _umount_under(path: str) -> None:
        try:
            with open("/proc/mounts") as f:
                mounts = [line.split()[1] for line in f]
        except OSError:
            return
        for m in sorted((m for m in mounts if m.startswith(path + "/") or m == path), reverse=True):
            subprocess.run(["umount", "-l", m], capture_output=True, timeout=30)

    def down(self) -> None:
        for i in list(self.containerd):
            self._containerd_down(i)
        if os.path.exists(f"{self.dir}/containers.conf"):
            for i in range(1, self.hosts + 1):
                if os.path.isdir(f"{self.lib}/h{i}/podman"):
                    self.pm(i, "rm", "-a", "-f", "-t", "0", check=False, timeout=120)
                    self.pm(i, "rmi", "-a", "-f", check=False, timeout=60)
        self._umount_under(self.lib)
        self._umount_under(self.dir)
        self.lab.down()
        shutil.rmtree(self.dir, ignore_errors=True)
        shutil.rmtree(self.lib, ignore_errors=True)
        for base in ("/sys/fs/cgroup",):
            for ctl in os.listdir(base) if os.path.isdir(base) else ():
                cg = f"{base}/{ctl}/{PREFIX}-pods"
                if os.path.isdir(cg):
                    for root, dirs, _ in sorted(os.walk(cg, topdown=False), key=lambda t: -len(t[0])):
                        try:
                            os.rmdir(root)
                        except OSError:
                            pass


@contextmanager
def cni_lab(hosts: int, tag: str, seconds: int = 120, **kw: Any):
    lab = CniLab(hosts, tag, **kw)
    with deadline(seconds):
        try:
            yield lab.up()
        finally:
            signal.alarm(0)
            lab.down()
