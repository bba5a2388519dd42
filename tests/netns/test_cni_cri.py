"""meshnet-cni under containerd 1.6's CRI plugin on two simulated hosts, driven over CRI gRPC
the way kubelet drives it (RunPodSandbox ... StopPodSandbox, RemovePodSandbox): pod IPs
reported, cross-host ping, hostPort through portmap, DEL twice."""

from __future__ import annotations

import os

import pytest

from test_cni_support import cni_lab, missing_tools

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
    pytest.mark.skipif(bool(missing_tools("containerd", "ctr", "runc", "podman", "/usr/lib/cni/portmap", "/bin/busybox")),
                       reason="needs apt packages containerd, runc, podman, containernetworking-plugins, busybox-static"),
]
pytest.importorskip("cri_api", reason="needs PyPI container-runtime-interface-api (extra [kubernetes])")

WEB = "mkdir -p /www && echo hello-from-cri-pod > /www/index.html && exec httpd -f -p 80 -h /www"


def test_cri_pods_on_two_hosts():
    # the plugin installed the DaemonSet's way: a private copy of the Python runtime
    with cni_lab(2, "cri", seconds=200, gateway=True, copy_runtime=True) as lab:
        assert "PYTHONHOME" in open(f"{lab.bin}/meshnet-cni").read()
        lab.containerd_up(1)
        lab.containerd_up(2)
        sid1, c1, ip1 = lab.run_pod(1, "web", ["sh", "-c", WEB], ports=[(8080, 80)])
        sid2, c2, ip2 = lab.run_pod(2, "client", ["sleep", "600"])
        # the pod IPs CRI reports are the ones IPAM holds for (sandbox id, eth0)
        assert ip1 and ip2 and ip1 != ip2
        assert lab.owners(1)[f"cni:meshnet:{sid1}:eth0"] == [ip1]
        assert lab.owners(2)[f"cni:meshnet:{sid2}:eth0"] == [ip2]
        rc, text = lab.exec_sync(2, c2, ["ping", "-c", "2", "-W", "3", ip1])
        assert rc == 0, text
        rc, text = lab.exec_sync(1, c1, ["ping", "-c", "2", "-W", "3", ip2])
        assert rc == 0, text
        # hostPort: CRI port_mappings -> runtimeConfig.portMappings (Go-cased) -> portmap
        r = lab.ns(2, "curl", "-sS", "-m", "5", f"http://{lab.lab.host_ip(1)}:8080/", check=False, timeout=15)
        assert b"hello-from-cri-pod" in r.stdout, r.stderr
        # StopPodSandbox and RemovePodSandbox both call DEL: the second must be harmless
        lab.stop_pod(2, sid2, remove=False)
        assert f"cni:meshnet:{sid2}:eth0" not in lab.owners(2)
        lab.stop_pod(2, sid2, remove=True)
        lab.stop_pod(1, sid1)
        assert not [o for o in lab.owners(1) if o.startswith("cni:")]
        assert not any(l.startswith("mnp") for l in lab.links(1) | lab.links(2))
        with open(f"{lab.dir}/h2/ctd/containerd.log") as f:
            assert "failed to destroy network" not in f.read()
