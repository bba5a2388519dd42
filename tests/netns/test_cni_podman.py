"""meshnet-cni under podman 4.3 (CNI backend) on simulated hosts (lab mnk8s, routers in
namespaces): pods on different hosts ping and move data; stop/start/restart/rm; a static
--ip; -p through the reference portmap, reached from another host; every cniVersion podman
speaks. Each test builds and removes its own lab (tests/netns/test_cni_support.py)."""

from __future__ import annotations

import os

import pytest

from test_cni_support import PM_ULIMIT, cni_lab, missing_tools, out

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
    pytest.mark.skipif(bool(missing_tools("podman", "runc", "/usr/lib/cni/portmap", "/bin/busybox")),
                       reason="needs apt packages podman, runc, containernetworking-plugins, busybox-static"),
]

IMG = "localhost/bb:mnk8s"
WEB = "mkdir -p /www && echo hello-from-meshnet-pod > /www/index.html && dd if=/dev/zero of=/www/big bs=1024 count=2048 2>/dev/null && exec httpd -f -p 80 -h /www"


def owner_of(lab, i: int, name: str) -> str:
    cid = out(lab.pm(i, "inspect", "-f", "{{.Id}}", name))
    return f"cni:meshnet:{cid}:eth0"


def ping(lab, i: int, name: str, ip: str) -> bool:
    return lab.pm(i, "exec", name, "ping", "-c", "2", "-W", "3", ip, check=False).returncode == 0


def test_podman_pods_across_three_hosts():
    with cni_lab(3, "podman3", seconds=200, gateway=True) as lab:
        lab.podman_setup()
        # a static address: one that h3's IPAM can hand out (probe, release, then ask for it)
        probe = lab.api(3, "POST", "/ipam/allocate", {"owner": "mnk8s-probe"})
        lab.api(3, "POST", "/ipam/release", {"owner": "mnk8s-probe"})
        static = probe["address"]

        lab.pm(1, "run", "-d", "--name", "web", "--network", "meshnet", "-p", "8080:80", *PM_ULIMIT, IMG, "sh", "-c", WEB)
        lab.pm(2, "run", "-d", "--name", "p2", "--network", "meshnet", *PM_ULIMIT, IMG, "sleep", "600")
        lab.pm(3, "run", "-d", "--name", "p3", "--network", "meshnet", "--ip", static, *PM_ULIMIT, IMG, "sleep", "600")
        ip1, ip2, ip3 = lab.pod_ip(1, "web"), lab.pod_ip(2, "p2"), lab.pod_ip(3, "p3")
        assert ip3 == static, "podman --ip (CNI_ARGS IP=) must be honoured"
        assert len({ip1, ip2, ip3}) == 3
        for i, name, ip in ((1, "web", ip1), (2, "p2", ip2), (3, "p3", ip3)):
            assert lab.owners(i)[owner_of(lab, i, name)] == [ip]

        # pods on different hosts reach each other
        assert ping(lab, 2, "p2", ip1) and ping(lab, 1, "web", ip3) and ping(lab, 3, "p3", ip2)
        # and move data: 2 MiB over HTTP from web (h1) to p2 (h2)
        got = lab.pm(2, "exec", "p2", "sh", "-c", f"printf 'GET /big HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {ip1} 80 | wc -c", timeout=60)
        assert int(out(got)) > 2048 * 1024

        # -p 8080:80 through portmap, reached from the other hosts' namespaces
        for i in (2, 3):
            r = lab.ns(i, "curl", "-sS", "-m", "5", f"http://{lab.lab.host_ip(1)}:8080/", check=False, timeout=15)
            assert b"hello-from-meshnet-pod" in r.stdout, r.stderr

        # lifecycle: stop -> DEL frees the address; start -> ADD; restart; rm
        owner2 = owner_of(lab, 2, "p2")
        lab.pm(2, "stop", "-t", "0", "p2")
        assert owner2 not in lab.owners(2)
        assert not any(l.startswith("mnp") for l in lab.links(2))
        lab.pm(2, "start", "p2")
        ip2b = lab.pod_ip(2, "p2")
        assert lab.owners(2)[owner2] == [ip2b]
        assert ping(lab, 2, "p2", ip1) and ping(lab, 1, "web", ip2b)
        lab.pm(2, "restart", "-t", "0", "p2")
        ip2c = lab.pod_ip(2, "p2")
        assert lab.owners(2)[owner2] == [ip2c] and ping(lab, 3, "p3", ip2c)
        lab.pm(2, "rm", "-f", "-t", "0", "p2")
        assert owner2 not in lab.owners(2)
        assert not any(l.startswith("mnp") for l in lab.links(2))
        lab.pm(1, "rm", "-f", "-t", "0", "web")
        rules = out(lab.ns(1, "iptables-nft", "-t", "nat", "-S"))
        assert "CNI-DN-" not in rules, "portmap left its rules behind"


def test_podman_each_cni_version_with_bandwidth():
    """podman 4.3 speaks 0.3.0 ... 1.0.0 (1.1.0 conflists it drops); chained with portmap and
    the reference bandwidth plugin (which needs our host-side veth in the result)."""
    with cni_lab(1, "podman-versions", seconds=120) as lab:
        lab.podman_setup()
        for version in ("0.3.0", "0.3.1", "0.4.0", "1.0.0"):
            lab.write_podman_conflist(1, lab.conflist(1, version=version, bandwidth=True))
            r = lab.pm(1, "run", "--rm", "--network", "meshnet", *PM_ULIMIT, IMG, "ip", "-o", "-4", "addr", "show", "eth0")
            assert "inet 10." in out(r), (version, out(r))
            assert not [o for o in lab.owners(1) if o.startswith("cni:meshnet:")], f"{version}: run --rm must release the address"
