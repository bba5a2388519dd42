"""The Kubernetes manifests validate offline against the Kubernetes schemas
(`kubernetes-validate --strict`), and agree with the router, the plugin and the installer."""

from __future__ import annotations

import copy
import glob
import os
import re
import shutil
import subprocess
import sys

import pytest

yaml = pytest.importorskip("yaml")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MANIFESTS = sorted(glob.glob(os.path.join(ROOT, "cni", "kubernetes", "*.yaml")))
VERSIONS = ["1.25.0", "1.29.0", "1.33.0", "1.37.0"]


def documents():
    for path in MANIFESTS:
        with open(path) as f:
            for doc in yaml.safe_load_all(f):
                if doc:
                    yield os.path.basename(path), doc


def daemonset():
    return next(doc for _, doc in documents() if doc["kind"] == "DaemonSet")


def test_there_are_manifests():
    kinds = {doc["kind"] for _, doc in documents()}
    assert {"DaemonSet", "ServiceAccount", "ClusterRole", "ClusterRoleBinding"} <= kinds


@pytest.mark.parametrize("version", VERSIONS)
def test_manifests_validate_strict(version):
    for name, doc in documents():
        kubernetes_validate.validate(doc, version, strict=True)  # raises ValidationError


def test_kubernetes_validate_cli_strict():
    exe = shutil.which("kubernetes-validate") or os.path.join(os.path.dirname(sys.executable), "kubernetes-validate")
    if not os.path.exists(exe):
        pytest.skip("kubernetes-validate CLI not installed")
    result = subprocess.run([exe, "--strict", *MANIFESTS], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_strict_catches_a_misspelled_field():
    """The negative control: strict validation is really on."""
    doc = copy.deepcopy(daemonset())
    spec = doc["spec"]["template"]["spec"]
    spec["hostNetwrok"] = spec.pop("hostNetwork")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, "1.29.0", strict=True)


def _env(container):
    return {e["name"]: e for e in container.get("env", [])}


def test_daemonset_shape():
    ds = daemonset()
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    router = next(c for c in pod["containers"] if c["name"] == "router")
    env = _env(router)
    # config from the environment: range, password from a Secret, peers, MTU, no-fastdp
    for name in ("MESHNET_IPALLOC_RANGE", "MESHNET_PEERS", "MESHNET_PEERS_FILE", "MESHNET_MTU", "MESHNET_NO_FASTDP"):
        assert name in env, name
    ref = env["MESHNET_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] == "meshnet-passwd" and ref.get("optional") is True
    assert router["command"][-3:] == ["-m", "meshnet.cni.kube", "launch"]
    # the plugin on the host reaches the router's socket and state dir through hostPaths
    mounts = {m["mountPath"] for m in router["volumeMounts"]}
    assert {"/var/lib/meshnet", "/run/meshnet"} <= mounts
    # the init container runs the installer shipped in the image, into the host's CNI dirs
    init = pod["initContainers"][0]
    assert init["command"][0] == "/opt/meshnet/cni/install.sh"
    assert {"/host/opt/cni/bin", "/host/etc/cni/net.d"} <= {m["mountPath"] for m in init["volumeMounts"]}
    assert pod["serviceAccountName"] == "meshnet"


def test_rbac_is_exactly_what_the_router_uses():
    """The launcher lists nodes; the node agent lists and watches them and patches its own
    node's status; the policy agent lists and watches pods, namespaces and networkpolicies
    (tests/netns/test_k8s_daemonset.py runs them against these rules)."""
    role = next(doc for _, doc in documents() if doc["kind"] == "ClusterRole")
    rules = sorted((tuple(r["apiGroups"]), tuple(r["resources"]), tuple(sorted(r["verbs"]))) for r in role["rules"])
    assert rules == [
        (("",), ("nodes",), ("list", "watch")), (("",), ("nodes/status",), ("patch",)), (("",), ("pods", "namespaces"), ("list", "watch")),
        (("networking.k8s.io",), ("networkpolicies",), ("list", "watch")),
    ]
    binding = next(doc for _, doc in documents() if doc["kind"] == "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"][0]["name"] == daemonset()["spec"]["template"]["spec"]["serviceAccountName"]


def test_every_meshnet_value_in_the_manifest_parses():
    """Each MESHNET_* value the DaemonSet sets (empty ones included: unset) passes the
    router's own checks, as `meshnet launch` would make them."""
    import argparse

    from meshnet.config import OPTIONS, add_launch_flags, from_args

    pod = daemonset()["spec"]["template"]["spec"]
    router = next(c for c in pod["containers"] if c["name"] == "router")
    env = {e["name"]: e.get("value", "") for e in router["env"] if "value" in e}
    env = {k: v.replace("$(NODE_NAME)", "node-1").replace("$(HOST_IP)", "192.0.2.1") for k, v in env.items()}
    parser = argparse.ArgumentParser()
    add_launch_flags(parser)
    config = from_args(parser.parse_args([]), env)
    assert config.pod_network is True and config.mtu is None and config.nickname == "node-1"
    assert {o.env_name for o in OPTIONS} >= {k for k in env if k.startswith("MESHNET_") and k not in ("MESHNET_PEERS_FILE",)}


def test_every_meshnet_variable_is_read_by_someone():
    """Each MESHNET_* the DaemonSet sets is a `meshnet launch` flag's twin or read by the
    launcher (meshnet.cni.kube) or the installer (cni/install.sh)."""
    from meshnet.cli import build_parser

    parser = build_parser()
    launch = parser._subparsers._group_actions[0].choices["launch"]  # noqa: SLF001
    flags_env = set(re.findall(r"MESHNET_[A-Z_]+", launch.format_help()))
    with open(os.path.join(ROOT, "meshnet", "cni", "kube.py")) as f:
        kube_env = set(re.findall(r"MESHNET_[A-Z_]+", f.read()))
    with open(os.path.join(ROOT, "cni", "install.sh")) as f:
        install_env = set(re.findall(r"MESHNET_[A-Z_]+", f.read()))
    pod = daemonset()["spec"]["template"]["spec"]
    for container in pod["containers"] + pod["initContainers"]:
        for name in _env(container):
            if name.startswith("MESHNET_"):
                assert name in flags_env | kube_env | install_env, f"{name} is set by the DaemonSet but nothing reads it"


def test_conflist_example_matches_the_plugin():
    import json

    from meshnet.cni import spec

    with open(os.path.join(ROOT, "cni", "10-meshnet.conflist")) as f:
        conflist = json.load(f)
    assert conflist["cniVersion"] in spec.SUPPORTED_VERSIONS
    types = [p["type"] for p in conflist["plugins"]]
    assert types == ["meshnet-cni", "portmap", "bandwidth"]
    entry = dict(conflist["plugins"][0], name=conflist["name"], cniVersion=conflist["cniVersion"])
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0"}
    req = spec.parse_request(env, json.dumps(entry).encode())
    assert (req.conf.socket, req.conf.state_dir, req.conf.bridge) == ("/run/meshnet/meshnet.sock", "/var/lib/meshnet", "meshnet")
