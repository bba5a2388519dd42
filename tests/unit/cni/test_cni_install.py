"""cni/install.sh without root: the launcher it writes answers VERSION from any directory
with an empty environment (as runtimes exec plugins), the conflist takes MESHNET_*
overrides, reinstall is atomic and --uninstall removes exactly its two files."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
INSTALL = os.path.join(ROOT, "cni", "install.sh")


def install(tmp_path, *args, env=None):
    return subprocess.run(
        ["sh", INSTALL, "--bin-dir", str(tmp_path / "bin"), "--conf-dir", str(tmp_path / "net.d"), "--python", sys.executable, *args],
        capture_output=True, text=True, timeout=60, cwd="/", env={**os.environ, **(env or {})},
    )


def test_install_version_conflist_uninstall(tmp_path):
    r = install(tmp_path, env={"MESHNET_SOCKET": "/run/x/meshnet.sock", "MESHNET_CNI_MTU": "1300"})
    assert r.returncode == 0, r.stderr
    plugin = tmp_path / "bin" / "meshnet-cni"
    assert os.access(plugin, os.X_OK)
    v = subprocess.run([str(plugin)], input=b'{"cniVersion": "0.4.0"}', env={"CNI_COMMAND": "VERSION"}, capture_output=True, cwd="/", timeout=30)
    assert v.returncode == 0, v.stderr
    assert json.loads(v.stdout) == {"cniVersion": "0.4.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]}
    conf = json.loads((tmp_path / "net.d" / "10-meshnet.conflist").read_text())
    entry = conf["plugins"][0]
    assert entry["type"] == "meshnet-cni" and entry["socket"] == "/run/x/meshnet.sock" and entry["mtu"] == 1300
    assert [p["type"] for p in conf["plugins"]] == ["meshnet-cni", "portmap", "bandwidth"]
    # again (upgrade): same result, no temp files left
    assert install(tmp_path).returncode == 0
    assert sorted(os.listdir(tmp_path / "bin")) == ["meshnet-cni"]
    assert sorted(os.listdir(tmp_path / "net.d")) == ["10-meshnet.conflist"]
    assert install(tmp_path, "--uninstall").returncode == 0
    assert os.listdir(tmp_path / "bin") == [] and os.listdir(tmp_path / "net.d") == []


def test_install_rejects_a_python_without_meshnet(tmp_path):
    r = install(tmp_path, "--python", "/nonexistent/python3")
    assert r.returncode != 0 and "no Python" in r.stderr
    assert not (tmp_path / "bin" / "meshnet-cni").exists()


def test_install_no_conflist(tmp_path):
    assert install(tmp_path, "--no-conflist").returncode == 0
    assert not (tmp_path / "net.d" / "10-meshnet.conflist").exists()
