"""The image image/build.sh makes, as the DaemonSet uses it: it holds every tool the
manifest's commands name, its init container's command installs a plugin that runs on the
node with the Python it copied there, and its router command's Python has the compiled pump.
The image's file system is unpacked from the archive and entered with chroot (root)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile

import pytest
import yaml

from meshnet.lab.image import router_image

pytestmark = [
    pytest.mark.netns,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chroot, mmdebstrap)"),
    pytest.mark.skipif(not shutil.which("mmdebstrap"), reason="needs mmdebstrap"),
]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory):
    archive = router_image()
    base = tmp_path_factory.mktemp("image")
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))[0]
        config = json.load(tar.extractfile(manifest["Config"]))
        root = base / "root"
        root.mkdir()
        for layer in manifest["Layers"]:
            with tarfile.open(fileobj=tar.extractfile(layer)) as fs:
                fs.extractall(root, filter="fully_trusted")
    assert manifest["RepoTags"] == ["meshnet/meshnet:0.1.0"] and config["config"]["Cmd"] == ["meshnet", "launch", "--foreground"]
    yield root
    shutil.rmtree(base, ignore_errors=True)


def chroot(root, *cmd: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    return subprocess.run(["chroot", str(root), *cmd], input=stdin, capture_output=True, text=True, timeout=120, env=env)


def manifest_containers():
    with open(os.path.join(ROOT, "cni", "kubernetes", "meshnet.yaml")) as f:
        ds = next(d for d in yaml.safe_load_all(f) if d and d["kind"] == "DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    return spec["initContainers"] + spec["containers"]


def test_every_tool_the_manifest_names_is_in_the_image(rootfs):
    for c in manifest_containers():
        for cmd in [c["command"]] + [p["exec"]["command"] for k in ("readinessProbe", "livenessProbe") if (p := c.get(k))]:
            r = chroot(rootfs, "sh", "-c", f"command -v {cmd[0]}")
            assert r.returncode == 0, f"{c['name']}: {cmd[0]} is not in the image"
    for tool in ("ip", "nft", "iptables", "nsenter", "/usr/lib/cni/portmap", "/usr/lib/cni/loopback", "/usr/lib/cni/bandwidth"):
        assert chroot(rootfs, "sh", "-c", f"command -v {tool}").returncode == 0, tool
    r = chroot(rootfs, "python3", "-c", "import meshnet._fastpath, meshnet.cni.kube, pyroute2, docker, dns, prometheus_client; print('ok')")
    assert r.stdout.strip() == "ok", r.stderr
    assert chroot(rootfs, "meshnet", "version").stdout.startswith("meshnet 0.1.0")


def test_the_init_container_installs_a_plugin_that_runs_on_the_node(rootfs):
    init = next(c for c in manifest_containers() if c["name"] == "install-cni")
    (rootfs / "host").mkdir()
    r = chroot(rootfs, *init["command"], *init.get("args", []))
    assert r.returncode == 0, r.stderr
    host = rootfs / "host"
    assert (host / "etc/cni/net.d/10-meshnet.conflist").exists()
    launcher = (host / "opt/cni/bin/meshnet-cni").read_text()
    assert "/opt/meshnet/runtime/bin/python3" in launcher
    # run it as the node would, outside the image: its runtime is where the launcher says (under /host here)
    runtime = host / "opt/meshnet/runtime"
    env = {
        "CNI_COMMAND": "VERSION",
        "PYTHONHOME": str(runtime),
        "PYTHONPATH": str(next(runtime.glob("lib/python3.*/site-packages"))),
        "LD_LIBRARY_PATH": str(runtime / "lib"),
    }
    r = subprocess.run([str(runtime / "bin/python3"), "-s", "-m", "meshnet.cni"], input='{"cniVersion":"1.0.0"}', env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "1.0.0" in json.loads(r.stdout)["supportedVersions"], r.stderr
