"""`expose --nat` does not make the host a router into the overlay (issue 12 item 6).

A neighbour on the underlay adds a route to the overlay range via host h1, as an attacker
on the same segment would. Counters inside the containers (an nftables rule in each
container's own namespace, before anything else sees the packet) count what arrives from
the neighbour. Control: with forwarding on and the host exposed but no guard, the
neighbour's packets do reach the container (the setup can deliver). Then `expose --nat`:
none reaches a container on h1 or on h2, while the container's own flow out through the
host (masqueraded) still works; `hide` puts IPv4 forwarding back as it found it.

    neighbour 192.168.90.77 --route 10.32.0.0/12 via .11-->  h1 [router, c1]   h2 [router, c2]
"""

from __future__ import annotations

import json
import subprocess

import pytest

from meshnet.api.client import ApiClient
from meshnet.lab import Lab, wait_for

pytestmark = pytest.mark.netns

PREFIX = "mnk"
NEIGHBOUR = f"{PREFIX}-nb"
NB_IP = "192.168.90.77"


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=60, check=check)


def count_from_neighbour(ns: str) -> int:
    out = sh("ip", "netns", "exec", ns, "nft", "-j", "list", "table", "ip", "mnkcount").stdout
    rules = [x["rule"] for x in json.loads(out)["nftables"] if "rule" in x]
    return sum(e["counter"]["packets"] for r in rules for e in r["expr"] if "counter" in e)


def forwarding(lab: Lab, i: int) -> str:
    return sh("ip", "netns", "exec", lab.host_ns(i), "cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip()


def probe(ips: list[str]) -> None:
    """From the neighbour: ping, a TCP connect and a UDP datagram to each address."""
    for ip in ips:
        sh("ip", "netns", "exec", NEIGHBOUR, "ping", "-c", "2", "-W", "1", ip, check=False)
        sh("ip", "netns", "exec", NEIGHBOUR, "python3", "-c",
           f"import socket\ns=socket.socket(); s.settimeout(1)\ntry: s.connect(('{ip}', 80))\nexcept OSError: pass\n"
           f"u=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.sendto(b'x', ('{ip}', 53))", check=False)


@pytest.fixture(scope="module")
def lab():
    lab = Lab(prefix=PREFIX, hosts=2)
    try:
        lab.up()
        lab.wait_mesh()
        lab.c1 = lab.add_container(1, 1)
        lab.c2 = lab.add_container(2, 1)
        sh("ip", "netns", "add", NEIGHBOUR)
        lab.containers[NEIGHBOUR] = ""  # removed with the lab
        sh("ip", "-n", lab.underlay_ns, "link", "add", "ulnb", "type", "veth", "peer", "name", "eth0", "netns", NEIGHBOUR)
        sh("ip", "-n", lab.underlay_ns, "link", "set", "ulnb", "master", "ulbr", "up")
        sh("ip", "-n", NEIGHBOUR, "addr", "add", f"{NB_IP}/24", "dev", "eth0")
        sh("ip", "-n", NEIGHBOUR, "link", "set", "eth0", "up")
        sh("ip", "-n", NEIGHBOUR, "route", "add", "10.32.0.0/12", "via", lab.host_ip(1))
        for ns, _ in (lab.c1, lab.c2):
            subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], check=True, text=True, timeout=30, input=(
                "table ip mnkcount {\n  chain pre {\n    type filter hook prerouting priority -400; policy accept;\n"
                f"    ip saddr {NB_IP} counter\n  }}\n}}\n"))
        yield lab
    finally:
        lab.down()


def api(lab: Lab, i: int) -> ApiClient:
    return ApiClient(f"{lab.run_dir(i)}/meshnet.sock")


def test_control_an_exposed_forwarding_host_without_the_guard_lets_the_neighbour_in(lab):
    (ns1, ip1), (ns2, ip2) = lab.c1, lab.c2
    sh("ip", "netns", "exec", lab.host_ns(1), "sysctl", "-qw", "net.ipv4.ip_forward=1")
    api(lab, 1).post("/expose", {"nat": False})
    try:
        probe([ip1])
        assert count_from_neighbour(ns1) > 0
    finally:
        api(lab, 1).post("/hide", {})
        sh("ip", "netns", "exec", lab.host_ns(1), "sysctl", "-qw", "net.ipv4.ip_forward=0")


@pytest.mark.parametrize("found", ["0", "1"])
def test_expose_nat_lets_no_packet_in_and_hide_restores_forwarding(lab, found):
    (ns1, ip1), (ns2, ip2) = lab.c1, lab.c2
    sh("ip", "netns", "exec", lab.host_ns(1), "sysctl", "-qw", f"net.ipv4.ip_forward={found}")
    before = (count_from_neighbour(ns1), count_from_neighbour(ns2))
    exposed = api(lab, 1).post("/expose", {"nat": True})
    try:
        assert forwarding(lab, 1) == "1" and exposed["nat"] is True
        probe([ip1, ip2])
        assert (count_from_neighbour(ns1), count_from_neighbour(ns2)) == before, "a packet from the underlay reached a container"
        # the container's own flow out, through the host, masqueraded: its replies come back
        gw = exposed["cidrs"][0].split("/")[0]
        sh("ip", "netns", "exec", ns1, "ip", "route", "replace", "default", "via", gw)
        assert wait_for(lambda: sh("ip", "netns", "exec", ns1, "ping", "-c", "1", "-W", "2", NB_IP, check=False).returncode == 0, 10)
        assert (count_from_neighbour(ns1), count_from_neighbour(ns2))[1] == before[1]
    finally:
        sh("ip", "netns", "exec", ns1, "ip", "route", "del", "default", check=False)
        api(lab, 1).post("/hide", {})
    assert forwarding(lab, 1) == found
    assert sh("ip", "netns", "exec", lab.host_ns(1), "nft", "list", "table", "ip", "meshnet-nat", check=False).returncode != 0
