"""A Kubernetes cluster without Kubernetes: the harness of the k8s netns tests (no tests here).

Each node is a lab namespace `mnk-hN` on the underlay 192.168.90.0/24 plus its own "host
paths" (under /var/lib/mnk/hN: /opt/cni/bin, /etc/cni/net.d, /opt/meshnet,
/var/lib/meshnet, /run/meshnet), seen at their real paths by every process of that node
through a private mount namespace (`unshare --mount` + bind mounts). On it runs:

- the DaemonSet's containers **as written** in cni/kubernetes/meshnet.yaml: the init
  container's and the router's exact command, args and env (downward API and `$(VAR)`
  expanded as the kubelet does, the Secret, the service-account mount, the in-cluster
  `KUBERNETES_SERVICE_*`), their volumeMounts bound to the node's host paths, in the node's
  network namespace (hostNetwork). The image is stood in for by the venv's Python on PATH
  and the repo's cni/ at /opt/meshnet/cni (what cni/Dockerfile puts there);
- containerd 1.6 with its CRI plugin, its CNI dirs the node's /opt/cni/bin and
  /etc/cni/net.d (so it runs the plugin and conflist the init container installed), driven
  like a kubelet over CRI gRPC (`run_pod`, `exec_sync`).

The API server is `FakeApi` (tests/k8s/fakeapi.py) on 192.168.90.250 in the underlay
namespace, over HTTPS with a token, enforcing the manifest's ClusterRole. A host outside
the cluster, `mnk-out` (192.168.90.200), answers HTTP on :9000 with the caller's address.

Everything is named mnk*, lives under /run/mnk and /var/lib/mnk, and `down()` removes it
(pods, containerd, routers by PID, namespaces, mount points it had to create).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "k8s"))

from fakeapi import FakeApi, node_object  # noqa: E402
from test_cni_support import write_containerd_config  # noqa: E402

from meshnet.api.client import ApiClient  # noqa: E402
from meshnet.kernel.netns import in_netns  # noqa: E402
from meshnet.lab import Lab  # noqa: E402

PREFIX = "mnk"
RUN = f"/run/{PREFIX}"
LIB = f"/var/lib/{PREFIX}"
API_IP = "192.168.90.250"
OUT_IP = "192.168.90.200"
OUT_NS = f"{PREFIX}-out"
TOKEN = "mnk-service-account-token"
PASSWORD = "mnk-cluster-secret"
PAUSE = f"localhost/pause:{PREFIX}"
MANIFEST = os.path.join(ROOT, "cni", "kubernetes", "meshnet.yaml")
IMAGE_PATH = f"{os.path.dirname(sys.executable)}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NODE_PATHS = ("/opt/cni/bin", "/etc/cni/net.d", "/opt/meshnet", "/var/lib/meshnet", "/run/meshnet")
SA_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
REFERENCE_PLUGINS = ("portmap", "bandwidth", "loopback", "host-local")
WHOAMI = (
    "import http.server as h\n"
    "class H(h.BaseHTTPRequestHandler):\n"
    "    def do_GET(s):\n"
    "        b = s.client_address[0].encode()\n"
    "        s.send_response(200); s.send_header('Content-Length', str(len(b))); s.end_headers(); s.wfile.write(b)\n"
    "    def log_message(s, *a): pass\n"
    "h.ThreadingHTTPServer(('0.0.0.0', 9000), H).serve_forever()\n"
)


def sh(*cmd: str, timeout: float = 60, check: bool = True, env: dict | None = None, input: bytes | None = None) -> subprocess.CompletedProcess:
    r = subprocess.run(list(cmd), capture_output=True, timeout=timeout, env=env, input=input)
    if check and r.returncode != 0:
        raise AssertionError(f"{shlex.join(cmd)} -> {r.returncode}\n{r.stdout.decode(errors='replace')}\n{r.stderr.decode(errors='replace')}")
    return r


def manifest() -> list[dict[str, Any]]:
    import yaml

    with open(MANIFEST) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def daemonset() -> dict[str, Any]:
    return next(d for d in manifest() if d["kind"] == "DaemonSet")


def cluster_role_rules() -> list[dict[str, Any]]:
    return next(d for d in manifest() if d["kind"] == "ClusterRole")["rules"]


_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand(value: str, env: dict[str, str]) -> str:
    """The kubelet's `$(VAR)` expansion: defined names are replaced, `$$` is `$`, others stay."""
    return _REF.sub(lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), value)


def container_env(container: dict[str, Any], *, node: str, host_ip: str, secrets: dict[tuple[str, str], str],
                  service_env: dict[str, str]) -> dict[str, str]:
    """What the kubelet gives a container: service env, then `env` in order (downward API,
    Secrets, `$(VAR)` references to what came before)."""
    env = dict(service_env)
    for item in container.get("env", []):
        name = item["name"]
        if "value" in item:
            env[name] = expand(str(item["value"]), env)
            continue
        source = item["valueFrom"]
        if "fieldRef" in source:
            env[name] = {"spec.nodeName": node, "status.hostIP": host_ip, "status.podIP": host_ip}[source["fieldRef"]["fieldPath"]]
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            if (ref["name"], ref["key"]) in secrets:
                env[name] = secrets[(ref["name"], ref["key"])]
            elif not ref.get("optional"):
                raise AssertionError(f"secret {ref['name']}/{ref['key']} is missing and not optional")
        else:
            raise AssertionError(f"env {name}: unsupported source {source}")
    return env


class MountPoints:
    """Mount points that must exist on the real file system; those we create go again.
    What we created is recorded in RECORD (outside RUN), so a later `down` finds it too."""

    RECORD = f"/run/{PREFIX}.mountpoints"

    def need(self, path: str, file: bool = False) -> None:
        path = os.path.realpath(path)
        if os.path.lexists(path):
            return
        missing = []
        p = path
        while not os.path.lexists(p):
            missing.append(p)
            p = os.path.dirname(p)
        with open(self.RECORD, "a") as record:
            for d in reversed(missing[1:]):
                os.mkdir(d)
                record.write(d + "\n")
            if file:
                open(path, "a").close()
            else:
                os.mkdir(path)
            record.write(path + "\n")

    def remove(self) -> None:
        try:
            with open(self.RECORD) as f:
                created = [line.strip() for line in f if line.strip()]
        except OSError:
            return
        for p in reversed(created):  # only what we made, and only while empty
            try:
                os.unlink(p) if os.path.isfile(p) and os.path.getsize(p) == 0 else os.rmdir(p)
            except OSError:
                pass
        os.unlink(self.RECORD)


class Node:
    def __init__(self, cluster: Cluster, i: int):
        self.cluster = cluster
        self.i = i
        self.name = cluster.lab.host_ns(i)
        self.ip = cluster.lab.host_ip(i)
        self.root = f"{LIB}/h{i}"
        self.run = f"{RUN}/h{i}"
        self.router: subprocess.Popen | None = None
        self.containerd: subprocess.Popen | None = None
        self.logs_of: dict[str, str] = {}
        self.attempts: dict[str, int] = {}  # container name -> restarts + 1 (the CRI attempt)

    def host(self, path: str) -> str:
        """This node's file at the path its processes see as `path`."""
        return self.root + path

    @property
    def socket(self) -> str:
        return self.host("/run/meshnet/meshnet.sock")

    def api(self, method: str, path: str, body: dict | None = None) -> dict:
        return ApiClient(self.socket, timeout=60).call(method, path, body)

    def ns(self, *cmd: str, **kw: Any) -> subprocess.CompletedProcess:
        return sh("nsenter", f"--net=/run/netns/{self.name}", "--", *cmd, **kw)

    def spawn(self, argv: list[str], *, env: dict[str, str], binds: list[tuple[str, str]], tmpfs: tuple[str, ...] = (),
              log: str, host_paths: bool = False) -> subprocess.Popen:
        """Run argv in the node's network namespace and a private mount namespace with
        `binds` ((path seen, real path)): a container sees only its volumes; a process of
        the node itself (`host_paths`) sees the node's host paths."""
        steps = [f"mount -t tmpfs tmpfs {shlex.quote(t)}" for t in tmpfs]
        for seen, real in [(p, self.host(p)) for p in NODE_PATHS if host_paths] + binds:
            inside = any(seen.startswith(t + "/") for t in tmpfs)
            if inside:
                steps.append(f"{'touch' if os.path.isfile(real) else 'mkdir -p'} {shlex.quote(seen)}")
            else:
                self.cluster.mounts.need(seen, file=os.path.isfile(real))
            steps.append(f"mount --bind {shlex.quote(real)} {shlex.quote(seen)}")
        for t in tmpfs:
            self.cluster.mounts.need(t)
        script = " && ".join(steps + [f'exec nsenter --net=/run/netns/{self.name} -- "$@"'])
        out = open(log, "ab")
        try:
            return subprocess.Popen(["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", script, "sh", *argv],
                                    env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            out.close()

    # -- the DaemonSet's containers ---------------------------------------------------------

    def _container(self, name: str) -> tuple[dict, dict]:
        pod = daemonset()["spec"]["template"]["spec"]
        found = [c for c in pod.get("initContainers", []) + pod["containers"] if c["name"] == name]
        return pod, found[0]

    def container_argv_env(self, name: str) -> tuple[list[str], dict[str, str], list[tuple[str, str]]]:
        pod, c = self._container(name)
        service_env = {"KUBERNETES_SERVICE_HOST": API_IP, "KUBERNETES_SERVICE_PORT": str(self.cluster.api.port),
                       "KUBERNETES_PORT": f"tcp://{API_IP}:{self.cluster.api.port}", "HOSTNAME": self.name, "PATH": IMAGE_PATH}
        env = container_env(c, node=self.name, host_ip=self.ip, secrets={("meshnet-passwd", "meshnet-passwd"): self.cluster.password} if self.cluster.password else {},
                            service_env=service_env)
        argv = [expand(a, env) for a in c.get("command", []) + c.get("args", [])]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        binds = [(SA_PATH, self.cluster.sa_dir)]
        for vm in c.get("volumeMounts", []):
            hp = volumes[vm["name"]]["hostPath"]
            real = self.host(hp["path"])
            if hp.get("type") == "FileOrCreate":
                os.makedirs(os.path.dirname(real), exist_ok=True)
                open(real, "a").close()
            else:
                os.makedirs(real, exist_ok=True)
            binds.append((vm["mountPath"], real))
        return argv, env, binds

    def run_init(self) -> tuple[int, str]:
        if self.cluster.image:
            rc = self.cri_wait_exit(self.cri_container("install-cni"), 180)
            with open(self.logs_of["install-cni"], errors="replace") as f:
                return rc, f.read()
        argv, env, binds = self.container_argv_env("install-cni")
        log = f"{self.run}/install-cni.log"
        # the image's files: cni/Dockerfile copies cni/install.sh and the conflist there
        proc = self.spawn(argv, env=env, binds=[("/opt/meshnet/cni", os.path.join(ROOT, "cni"))] + binds,
                          tmpfs=("/opt/meshnet", "/host"), log=log)
        rc = proc.wait(180)
        with open(log) as f:
            return rc, f.read()

    def start_router(self) -> None:
        if self.cluster.image:
            self.router_cid = self.cri_container("router")
            return
        argv, env, binds = self.container_argv_env("router")
        self.router = self.spawn(argv, env=env, binds=binds, log=f"{self.run}/router.log")

    # -- the DaemonSet's pod from the image, under containerd, as the kubelet runs it ------------

    def ds_sandbox(self) -> str:
        """The DaemonSet pod's sandbox: host network, privileged (the manifest's router is)."""
        from cri_api.v1 import api_pb2 as pb

        if getattr(self, "ds_sid", None):
            return self.ds_sid
        meta = pb.PodSandboxMetadata(name=f"meshnet-{self.name}", namespace="kube-system", uid=str(uuid.uuid4()), attempt=0)
        self.ds_config = pb.PodSandboxConfig(
            metadata=meta, log_directory=f"{self.run}/podlogs/meshnet",
            linux=pb.LinuxPodSandboxConfig(
                cgroup_parent=f"/{PREFIX}-pods/{self.name}-meshnet",
                security_context=pb.LinuxSandboxSecurityContext(privileged=True, namespace_options=pb.NamespaceOption(
                    network=pb.NODE, pid=pb.POD, ipc=pb.POD))),
        )
        self.ds_sid = self.cri().RunPodSandbox(pb.RunPodSandboxRequest(config=self.ds_config), timeout=120).pod_sandbox_id
        return self.ds_sid

    def cri_container(self, name: str) -> str:
        """Create and start the manifest's container `name` from the image in the DaemonSet pod."""
        from cri_api.v1 import api_pb2 as pb

        pod, c = self._container(name)
        argv, env, binds = self.container_argv_env(name)
        env.pop("PATH")  # the image's own
        sid = self.ds_sandbox()
        self.attempts[name] = attempt = self.attempts.get(name, 0) + 1
        mounts = []
        for seen, real in binds:  # as containerd sees them: the node's host paths, else the real path
            inner = real[len(self.root):]
            host = inner if real.startswith(self.root + "/") and any(inner == p or inner.startswith(p + "/") for p in NODE_PATHS) else real
            mounts.append(pb.Mount(container_path=seen, host_path=host, readonly=seen == SA_PATH))
        config = pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name=name, attempt=attempt), image=pb.ImageSpec(image=c["image"]),
            command=argv, envs=[pb.KeyValue(key=k, value=v) for k, v in env.items()], mounts=mounts, log_path=f"{name}-{attempt}.log",
            linux=pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(
                privileged=True, namespace_options=pb.NamespaceOption(network=pb.NODE, pid=pb.CONTAINER, ipc=pb.POD))),
        )
        rt = self.cri()
        cid = rt.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id=sid, config=config, sandbox_config=self.ds_config),
                                 timeout=120).container_id
        rt.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=120)
        self.logs_of[name] = f"{self.run}/podlogs/meshnet/{name}-{attempt}.log"
        return cid

    def cri_wait_exit(self, cid: str, timeout: float) -> int:
        from cri_api.v1 import api_pb2 as pb

        end = time.monotonic() + timeout
        while time.monotonic() < end:
            st = self.cri().ContainerStatus(pb.ContainerStatusRequest(container_id=cid), timeout=30).status
            if st.state == pb.CONTAINER_EXITED:
                return st.exit_code
            time.sleep(0.3)
        raise AssertionError(f"container {cid[:12]} on {self.name} did not exit in {timeout}s")

    def router_alive(self) -> bool:
        if not self.cluster.image:
            return self.router is not None and self.router.poll() is None
        from cri_api.v1 import api_pb2 as pb

        cid = getattr(self, "router_cid", None)
        return bool(cid) and self.cri().ContainerStatus(pb.ContainerStatusRequest(container_id=cid), timeout=30).status.state == pb.CONTAINER_RUNNING

    def probe(self, kind: str = "readinessProbe") -> bool:
        """The container's exec probe, run in the container (its mounts, its env)."""
        _, c = self._container("router")
        if not self.router_alive():
            return False
        if self.cluster.image:
            from cri_api.v1 import api_pb2 as pb

            timeout = c[kind].get("timeoutSeconds", 5)
            r = self.cri().ExecSync(pb.ExecSyncRequest(container_id=self.router_cid, cmd=c[kind]["exec"]["command"], timeout=timeout),
                                    timeout=timeout + 15)
            return r.exit_code == 0
        _, env, _ = self.container_argv_env("router")
        cmd = c[kind]["exec"]["command"]
        r = subprocess.run(["nsenter", "-t", str(self.router.pid), "-m", "-n", "--", *cmd], env=env, capture_output=True,
                           timeout=c[kind].get("timeoutSeconds", 5) + 10)
        return r.returncode == 0

    def stop_router(self, sig: int = signal.SIGTERM) -> None:
        if self.cluster.image:
            from cri_api.v1 import api_pb2 as pb

            if getattr(self, "router_cid", None) and self.containerd is not None:
                timeout = 0 if sig == signal.SIGKILL else 10  # the manifest's terminationGracePeriodSeconds
                self.cri().StopContainer(pb.StopContainerRequest(container_id=self.router_cid, timeout=timeout), timeout=60)
            self.router_cid = None
            return
        if self.router is not None and self.router.poll() is None:
            os.kill(self.router.pid, sig)
            try:
                self.router.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(self.router.pid, signal.SIGKILL)
                self.router.wait(10)
        self.router = None

    def logs(self) -> str:
        """What `kubectl logs` shows (every attempt's, in image mode: CRI log lines)."""
        if self.cluster.image:
            d = f"{self.run}/podlogs/meshnet"
            out = ""
            for name in sorted(n for n in os.listdir(d) if n.startswith("router-")):
                with open(f"{d}/{name}", errors="replace") as f:
                    out += f.read()
            return out
        with open(f"{self.run}/router.log", errors="replace") as f:
            return f.read()

    # -- containerd (the kubelet's runtime) -------------------------------------------------

    @property
    def cri_sock(self) -> str:
        return f"{self.run}/ctd/containerd.sock"

    def start_containerd(self) -> None:
        d, r = f"{self.run}/ctd", f"{self.root}/ctd"
        os.makedirs(d, exist_ok=True)
        os.makedirs(r, exist_ok=True)
        write_containerd_config(d, r, sandbox_image=PAUSE, bin_dir="/opt/cni/bin", conf_dir="/etc/cni/net.d")
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
        self.containerd = self.spawn(["containerd", "--config", f"{d}/config.toml"], env=env, binds=[], log=f"{d}/containerd.log",
                                     host_paths=True)
        end = time.monotonic() + 30
        while sh("ctr", "-a", self.cri_sock, "version", check=False, timeout=10).returncode != 0:
            if self.containerd.poll() is not None or time.monotonic() > end:
                raise AssertionError(f"containerd on {self.name} did not start:\n{open(f'{d}/containerd.log').read()[-2000:]}")
            time.sleep(0.1)
        sh("ctr", "-a", self.cri_sock, "-n", "k8s.io", "images", "import", self.cluster.pause_image(), timeout=120)
        if self.cluster.image:
            sh("ctr", "-a", self.cri_sock, "-n", "k8s.io", "images", "import", self.cluster.image, timeout=300)

    def cri(self):
        import grpc
        from cri_api.v1 import api_pb2_grpc as rpc

        return rpc.RuntimeServiceStub(grpc.insecure_channel(f"unix://{self.cri_sock}"))

    def run_pod(self, name: str, cmd: list[str], ports: list[tuple[int, int]] = ()) -> Pod:
        """RunPodSandbox + one container, as the kubelet does."""
        from cri_api.v1 import api_pb2 as pb

        rt = self.cri()
        meta = pb.PodSandboxMetadata(name=name, namespace="default", uid=str(uuid.uuid4()), attempt=0)
        config = pb.PodSandboxConfig(
            metadata=meta, hostname=name, log_directory=f"{self.run}/podlogs/{name}",
            port_mappings=[pb.PortMapping(protocol=pb.TCP, container_port=c, host_port=h) for h, c in ports],
            linux=pb.LinuxPodSandboxConfig(
                cgroup_parent=f"/{PREFIX}-pods/{self.name}-{name}",
                security_context=pb.LinuxSandboxSecurityContext(namespace_options=pb.NamespaceOption(network=pb.POD, pid=pb.POD, ipc=pb.POD)),
            ),
        )
        sid = rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=120).pod_sandbox_id
        status = rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=sid), timeout=30)
        cc = pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name="main"), image=pb.ImageSpec(image=PAUSE), command=cmd, log_path="main.log",
            linux=pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(
                namespace_options=pb.NamespaceOption(network=pb.POD, pid=pb.CONTAINER, ipc=pb.POD))),
        )
        cid = rt.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id=sid, config=cc, sandbox_config=config), timeout=60).container_id
        rt.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=60)
        return Pod(self, name, sid, cid, status.status.network.ip)

    def stop_containerd(self) -> None:
        if self.containerd is None:
            return
        if self.containerd.poll() is None:
            try:
                from cri_api.v1 import api_pb2 as pb

                rt = self.cri()
                for s in rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=30).items:
                    rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=s.id), timeout=60)
                    rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=s.id), timeout=60)
            except Exception:  # noqa: BLE001 - best effort; the kill below still runs
                pass
            self.containerd.terminate()
            try:
                self.containerd.wait(15)
            except subprocess.TimeoutExpired:
                self.containerd.kill()
                self.containerd.wait(5)
        for pid in os.listdir("/proc"):  # this instance's shims: their command line names our socket
            if pid.isdigit():
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        line = f.read()
                except OSError:
                    continue
                if b"containerd-shim" in line and self.cri_sock.encode() in line:
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        self.containerd = None


class Pod:
    def __init__(self, node: Node, name: str, sandbox: str, container: str, ip: str):
        self.node, self.name, self.sandbox, self.container, self.ip = node, name, sandbox, container, ip

    def exec(self, *cmd: str, timeout: int = 20) -> tuple[int, str]:
        """A command inside the pod, with the pod's own (busybox) tools."""
        from cri_api.v1 import api_pb2 as pb

        r = self.node.cri().ExecSync(pb.ExecSyncRequest(container_id=self.container, cmd=list(cmd), timeout=timeout), timeout=timeout + 15)
        return r.exit_code, (r.stdout + r.stderr).decode(errors="replace")

    def http_get(self, url: str, timeout: int = 5) -> str | None:
        """The body of GET url from inside the pod (busybox `nc`: busybox-static's `wget`
        segfaults on this machine), None when it fails or is not a 200."""
        hostport = url.split("://", 1)[1].split("/", 1)[0]
        host, _, port = hostport.partition(":")
        request = f"GET / HTTP/1.0\\r\\nHost: {hostport}\\r\\n\\r\\n"
        rc, out = self.exec("sh", "-c", f"printf '{request}' | nc -w {timeout} {host} {port or 80}", timeout=timeout + 10)
        head, sep, body = out.partition("\r\n\r\n")
        if rc != 0 or not sep or " 200 " not in head.split("\r\n", 1)[0]:
            return None
        return body.strip()


class Cluster:
    def __init__(self, nodes: int = 3, password: str | None = PASSWORD, image: str | None = None):
        self.password = password  # the optional Secret meshnet-passwd; None: not created
        self.image = image  # the image archive (image/build.sh): the DaemonSet's pod runs under containerd
        self.lab = Lab(prefix=PREFIX, hosts=nodes)
        self.api = FakeApi(token=TOKEN, tls=True, rules=cluster_role_rules(), host=API_IP, bookmark_interval=10)
        self.mounts = MountPoints()
        self.nodes = [Node(self, i) for i in range(1, nodes + 1)]
        self.sa_dir = ""
        self.whoami: list[subprocess.Popen] = []

    def up(self) -> Cluster:
        for path in (RUN, LIB):
            shutil.rmtree(path, ignore_errors=True)
        self.lab.up(start_routers=False)
        ul = self.lab.underlay_ns
        sh("ip", "-n", ul, "addr", "add", f"{API_IP}/24", "dev", "ulbr")
        sh("ip", "netns", "add", OUT_NS)
        self.lab.containers[OUT_NS] = ""  # the lab removes it with the rest
        sh("ip", "-n", ul, "link", "add", "ulout", "type", "veth", "peer", "name", "eth0", "netns", OUT_NS)
        sh("ip", "-n", ul, "link", "set", "ulout", "master", "ulbr", "up")
        sh("ip", "-n", OUT_NS, "addr", "add", f"{OUT_IP}/24", "dev", "eth0")
        sh("ip", "-n", OUT_NS, "link", "set", "eth0", "up")
        sh("ip", "-n", OUT_NS, "link", "set", "lo", "up")
        with in_netns(ul):  # the API server's socket lives on the underlay
            self.api.start()
        self.sa_dir = self.api.service_account_dir()
        for node in self.nodes:
            os.makedirs(node.run, exist_ok=True)
            for p in NODE_PATHS:
                os.makedirs(node.host(p), exist_ok=True)
            for plugin in REFERENCE_PLUGINS:  # what the node's CNI plugins package put there
                os.symlink(f"/usr/lib/cni/{plugin}", node.host(f"/opt/cni/bin/{plugin}"))
            self.api.create("nodes", node_object(node.name, node.ip, ready=False))
        self.whoami.append(self.serve_whoami(OUT_NS))
        return self

    def serve_whoami(self, netns: str) -> subprocess.Popen:
        return subprocess.Popen(["nsenter", f"--net=/run/netns/{netns}", "--", sys.executable, "-c", WHOAMI],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def pause_image(self) -> str:
        """An offline sandbox/pod image (busybox), made once with a throwaway podman store."""
        tar = f"{LIB}/pause-image.tar"
        if os.path.exists(tar):
            return tar
        from meshnet.lab import busybox_rootfs

        rootfs = f"{LIB}/busybox-rootfs.tar"
        with open(rootfs, "wb") as f:
            f.write(busybox_rootfs())
        tmp = f"{LIB}/pause-build"
        store = ["podman", "--root", f"{tmp}/root", "--runroot", f"{tmp}/run", "--tmpdir", f"{tmp}/tmp", "--events-backend", "none"]
        try:
            sh(*store, "import", "-q", "--change", "ENV PATH=/bin:/sbin:/usr/bin:/usr/sbin", "--change", 'CMD ["/bin/sleep","999999"]',
               rootfs, PAUSE, timeout=120)
            sh(*store, "save", "-q", "--format", "docker-archive", "-o", f"{tar}.tmp", PAUSE, timeout=120)
            os.rename(f"{tar}.tmp", tar)
        finally:
            sh(*store, "rmi", "-a", "-f", check=False, timeout=60)
            umount_under(tmp)
            shutil.rmtree(tmp, ignore_errors=True)
        return tar

    def wait(self, what: str, predicate, timeout: float = 60, interval: float = 0.5) -> None:
        end = time.monotonic() + timeout
        while True:
            try:
                if predicate():
                    return
            except Exception:  # noqa: BLE001 - not yet
                pass
            if time.monotonic() > end:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(interval)

    def down(self) -> None:
        for node in self.nodes:
            try:
                node.stop_containerd()
            except Exception:  # noqa: BLE001
                pass
            node.stop_router(signal.SIGKILL)
        for p in self.whoami:
            p.kill()
            p.wait(5)
        try:
            self.api.stop()
        except Exception:  # noqa: BLE001
            pass
        self.lab.down()
        if os.path.exists(f"/run/netns/{OUT_NS}"):
            sh("ip", "netns", "del", OUT_NS, check=False)
        umount_under(RUN)
        umount_under(LIB)
        shutil.rmtree(RUN, ignore_errors=True)
        shutil.rmtree(LIB, ignore_errors=True)
        self.mounts.remove()
        for ctl in os.listdir("/sys/fs/cgroup") if os.path.isdir("/sys/fs/cgroup") else ():
            cg = f"/sys/fs/cgroup/{ctl}/{PREFIX}-pods"
            if os.path.isdir(cg):
                for root, _, _ in sorted(os.walk(cg, topdown=False), key=lambda t: -len(t[0])):
                    try:
                        os.rmdir(root)
                    except OSError:
                        pass


def umount_under(path: str) -> None:
    try:
        with open("/proc/mounts") as f:
            points = [line.split()[1] for line in f]
    except OSError:
        return
    for m in sorted((m for m in points if m == path or m.startswith(path + "/")), reverse=True):
        subprocess.run(["umount", "-l", m], capture_output=True, timeout=30)


def conflist_of(node: Node) -> dict:
    with open(node.host("/etc/cni/net.d/10-meshnet.conflist")) as f:
        return json.load(f)


if __name__ == "__main__":  # `python tests/netns/k8s_cluster.py down`: remove a cluster kept with MNK_KEEP=1
    if sys.argv[1:] == ["down"]:
        from cri_api.v1 import api_pb2 as pb

        kept = Cluster(3)
        for node in kept.nodes:  # pods first (CNI DEL, netns files), as the kubelet would
            if os.path.exists(node.cri_sock):
                try:
                    rt = node.cri()
                    for sb in rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=30).items:
                        rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sb.id), timeout=60)
                        rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sb.id), timeout=60)
                except Exception as exc:  # noqa: BLE001
                    print(f"{node.name}: {exc}")
        ours = set()
        for ns in [f"{PREFIX}-h{i}" for i in (1, 2, 3)] + [OUT_NS]:
            try:
                ours.add(os.stat(f"/run/netns/{ns}").st_ino)
            except OSError:
                pass
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                line = open(f"/proc/{pid}/cmdline", "rb").read()
                netns = os.stat(f"/proc/{pid}/ns/net").st_ino
            except OSError:
                continue
            if (netns in ours and (b"meshnet" in line or b"ThreadingHTTPServer" in line)) or f"{RUN}/".encode() in line:
                os.kill(int(pid), signal.SIGKILL)
        time.sleep(1)
        kept.down()
