"""meshnet-cni run directly (as a runtime would exec it) against a real router in a lab host:
bad input gives spec-conformant errors and leaves nothing half-made; ADD/CHECK/DEL/GC/STATUS;
DEL while the router is stopped is journalled and the address becomes free exactly once
when the router starts again; the router's /metrics."""

from __future__ import annotations

import json
import os
import time

import pytest

from test_cni_support import cni_lab, out, sh

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]

CID_A = "a" * 64
CID_B = "b" * 64


def pod_netns(lab, name: str) -> str:
    ns = f"mnk8s-h1-{name}"
    lab.lab.containers[ns] = ""  # lab.down() removes it
    sh("ip", "netns", "add", ns)
    return f"/run/netns/{ns}"


def env(cid: str, netns: str | None, args: str = "IgnoreUnknown=1", ifname: str = "eth0") -> dict[str, str]:
    e = {"CNI_CONTAINERID": cid, "CNI_IFNAME": ifname, "CNI_ARGS": args}
    if netns is not None:
        e["CNI_NETNS"] = netns
    return e


def entry(lab, version: str = "1.0.0", **extra) -> dict:
    """The meshnet-cni entry of host 1's conflist, as a runtime hands it to the plugin."""
    conf = lab.conflist(1, version=version)
    return {**conf["plugins"][0], "name": conf["name"], "cniVersion": version, **extra}


def pod_links(netns: str) -> set[str]:
    return {l["ifname"] for l in json.loads(out(sh("ip", "-n", os.path.basename(netns), "-j", "link", "show")))}


def test_bad_input_and_full_cycle():
    with cni_lab(1, "direct", seconds=120) as lab:
        pod = pod_netns(lab, "p1")
        host_before, owners_before = lab.links(1), lab.owners(1)
        bad = [
            ("malformed JSON", b'{"cniVersion": "1.0.0", "name": ', env(CID_A, pod), 6),
            ("unknown cniVersion", entry(lab, version="9.9.9"), env(CID_A, pod), 1),
            ("pre-0.3 cniVersion", entry(lab, version="0.2.0"), env(CID_A, pod), 1),
            ("missing CNI_NETNS", entry(lab), env(CID_A, None), 4),
            ("netns that does not exist", entry(lab), env(CID_A, "/run/netns/mnk8s-nope"), 3),
            ("bad IP= in CNI_ARGS", entry(lab), env(CID_A, pod, "IgnoreUnknown=1;IP=10.32.0.999"), 4),
            ("static IP outside the range", entry(lab), env(CID_A, pod, "IgnoreUnknown=1;IP=192.0.2.1"), 101),
            ("bad config field", entry(lab, mtu="big"), env(CID_A, pod), 7),
        ]
        for what, conf, e, code in bad:
            rc, err = lab.plugin(1, "ADD", conf, **e)
            assert rc != 0, what
            assert err["code"] == code and err["msg"], (what, err)
            assert err["cniVersion"] == "1.0.0", err  # the config's, or 1.0.0 when we do not speak it
        assert lab.links(1) == host_before, "a failed ADD left links on the host"
        assert lab.owners(1) == owners_before, "a failed ADD left an address allocated"
        assert pod_links(pod) == {"lo"}

        rc, version = lab.plugin(1, "VERSION", {"cniVersion": "1.0.0"})
        assert rc == 0 and "1.1.0" in version["supportedVersions"]

        rc, result = lab.plugin(1, "ADD", entry(lab), **env(CID_A, pod))
        assert rc == 0, result
        address = result["ips"][0]["address"]
        assert pod_links(pod) == {"lo", "eth0"}
        assert lab.owners(1)[f"cni:meshnet:{CID_A}:eth0"] == [address.split("/")[0]]
        assert any(e["id"] == f"cni:{CID_A}:eth0" for e in lab.api(1, "GET", "/endpoints")["local"])
        assert lab.plugin(1, "CHECK", entry(lab, prevResult=result), **env(CID_A, pod)) == (0, None)
        # ADD of a second interface in the same pod: a different owner, a different veth
        rc, result2 = lab.plugin(1, "ADD", entry(lab), **env(CID_A, pod, ifname="net1"))
        assert rc == 0 and result2["ips"][0]["address"] != address
        for _ in range(2):  # DEL is idempotent
            assert lab.plugin(1, "DEL", entry(lab, prevResult=result), **env(CID_A, pod)) == (0, None)
        assert pod_links(pod) == {"lo", "net1"}
        rc, err = lab.plugin(1, "CHECK", entry(lab, prevResult=result), **env(CID_A, pod))
        assert rc != 0 and err["code"] == 103

        # 1.1.0: STATUS, and GC releases what no pod holds
        assert lab.plugin(1, "STATUS", entry(lab, version="1.1.0")) == (0, None)
        pod_b = pod_netns(lab, "p2")
        assert lab.plugin(1, "ADD", entry(lab, version="1.1.0"), **env(CID_B, pod_b))[0] == 0
        gc = entry(lab, version="1.1.0", **{"cni.dev/valid-attachments": [{"containerID": CID_B, "ifname": "eth0"}]})
        assert lab.plugin(1, "GC", gc) == (0, None)
        owners = lab.owners(1)
        assert f"cni:meshnet:{CID_B}:eth0" in owners and f"cni:meshnet:{CID_A}:net1" not in owners
        assert pod_links(pod) == {"lo"} and pod_links(pod_b) == {"lo", "eth0"}


def test_del_while_router_is_down_frees_the_address_once():
    with cni_lab(1, "routerdown", seconds=120) as lab:
        pod_a, pod_b = pod_netns(lab, "pa"), pod_netns(lab, "pb")
        rc, result = lab.plugin(1, "ADD", entry(lab), **env(CID_A, pod_a))
        assert rc == 0, result
        address = result["ips"][0]["address"].split("/")[0]
        owner_a = f"cni:meshnet:{CID_A}:eth0"

        lab.lab.stop_router(1)
        assert not os.path.exists(f"{lab.lab.run_dir(1)}/meshnet.pid")
        for _ in range(2):  # twice, still fine
            rc, err = lab.plugin(1, "DEL", entry(lab), **env(CID_A, pod_a))
            assert (rc, err) == (0, None), open(lab.log).read()[-3000:]
        assert pod_links(pod_a) == {"lo"}
        with open(f"{lab.lab.state_dir(1)}/ipam-releases.journal") as f:
            assert [json.loads(line)["owner"] for line in f if line.strip()] == [owner_a, owner_a]
        rc, err = lab.plugin(1, "STATUS", entry(lab, version="1.1.0"))
        assert rc != 0 and err["code"] == 51  # the bridge is there, the router is not
        rc, err = lab.plugin(1, "ADD", entry(lab), **env(CID_B, pod_b))
        assert rc != 0 and err["code"] == 11 and pod_links(pod_b) == {"lo"}

        lab.lab.start_router(1)
        lab.wait_ipam()
        assert owner_a not in lab.owners(1)
        assert os.path.getsize(f"{lab.lab.state_dir(1)}/ipam-releases.journal") == 0
        # the freed address goes to the next pod that asks for it, and stays there
        rc, result_b = lab.plugin(1, "ADD", entry(lab), **env(CID_B, pod_b, f"IgnoreUnknown=1;IP={address}"))
        assert rc == 0, result_b
        lab.lab.stop_router(1)
        lab.lab.start_router(1)
        lab.wait_ipam()
        assert lab.owners(1)[f"cni:meshnet:{CID_B}:eth0"] == [address], "the journal was replayed twice"

        # the router's metrics, from inside its host's namespace
        deadline = time.monotonic() + 10
        while True:
            r = lab.ns(1, "curl", "-sS", "-m", "3", "http://127.0.0.1:6782/metrics", check=False, timeout=10)
            if r.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        text = r.stdout.decode()
        assert "meshnet_up 1.0" in text and "meshnet_handshake_failures_total" in text and "meshnet_connections" in text
