"""No duplicate address, ever: checked on the wire, by who answers ARP.

::

    mnrd-h1 ---- mnrd-h2 ---- mnrd-h3      each host: a probe namespace (arping from there),
                                           containers as namespaces

Issue 13, item 2: `reset` refuses while this peer's addresses are in use, and `--release`
detaches them first; a router that lost its state takes the veths it no longer knows off
the overlay; a peer removed with `rmpeer` that comes back is recognised everywhere, refuses
to allocate until reset, and its containers whose addresses went to others are taken down.
"""

import json
import subprocess
import ipaddress
import sys

import pytest

from meshnet.api.client import ApiClient
from meshnet.lab import Lab, arp_macs, wait_for
from meshnet.lab.procs import alive

pytestmark = pytest.mark.netns


@pytest.fixture
def lab():
    lab = Lab(prefix="mnrd", hosts=3)
    try:
        lab.up()
        lab.wait_mesh()
        lab.probes = {i: lab.add_container(i, 0)[0] for i in (1, 2, 3)}
        yield lab
    finally:
        lab.down()


def api(lab: Lab, i: int) -> ApiClient:
    return ApiClient(f"{lab.run_dir(i)}/meshnet.sock")


def answering(lab: Lab, ip: str, hosts=(1, 2, 3)) -> dict[int, set[str]]:
    """Who answers ARP for `ip`, asked from the probe namespace of each live host."""
    return {i: arp_macs(lab.probes[i], ip) for i in hosts}


def mac_in(ns: str) -> str:
    out = subprocess.run(["ip", "-n", ns, "-j", "link", "show", "dev", "mesh0"], capture_output=True, text=True, check=True).stdout
    return json.loads(out)[0]["address"]


def metrics(lab: Lab, i: int) -> str:
    script = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:6782/metrics', timeout=5).read().decode())"
    return subprocess.run(["ip", "netns", "exec", lab.host_ns(i), sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout


def gauge(text: str, name: str) -> float:
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def test_reset_refuses_while_addresses_are_in_use_and_release_detaches_them(lab):
    ns, ip = lab.add_container(3, 1)
    refused = subprocess.run(lab.meshnet(3, "reset", "--state-dir", lab.state_dir(3)), capture_output=True, text=True)
    assert refused.returncode == 1 and "in use" in refused.stderr and "--release" in refused.stderr, refused.stderr
    assert ip in [a for addrs in api(lab, 3).get("/ipam/owners")["owners"].values() for a in addrs]
    pid = int(open(f"{lab.run_dir(3)}/meshnet.pid").read())
    done = subprocess.run(lab.meshnet(3, "reset", "--release", "--state-dir", lab.state_dir(3)), capture_output=True, text=True)
    assert done.returncode == 0 and "detached" in done.stdout, done.stderr
    assert not alive(pid) and "mesh0" not in subprocess.run(["ip", "-n", ns, "link"], capture_output=True, text=True).stdout
    # its space went to a live peer, which may give the address out again: one owner on the wire
    owner = next(i for i in (1, 2) if _owns(lab, i, ip))
    again, _ = lab.add_container(owner, 2, f"{ip}/12")
    lab.start_router(3, seed=True)  # relaunched: a new peer
    lab.wait_mesh_of([1, 2])
    assert answering(lab, ip, hosts=(1, 2)) == {1: {mac_in(again)}, 2: {mac_in(again)}}


def _owns(lab: Lab, i: int, ip: str) -> bool:
    """Whether host i's router owns the range holding `ip` (claims are made there)."""
    status = api(lab, i).get("/ipam/status")
    a = ipaddress.ip_address(ip)
    ranges = status["peers"].get(status["name"], {}).get("ranges", [])
    return any(ipaddress.ip_address(r["start"]) <= a <= ipaddress.ip_address(r["end"]) and not r["reclaim"] for r in ranges)


def test_a_router_that_lost_its_state_takes_the_veths_it_does_not_know_off_the_overlay(lab):
    ns, ip = lab.add_container(3, 1)
    assert answering(lab, ip, hosts=(1,)) == {1: {mac_in(ns)}}
    lab.stop_router(3)
    subprocess.run(["rm", "-rf", lab.state_dir(3)], check=True)  # a new identity, nothing remembered
    lab.start_router(3)
    lab.wait_mesh()
    refused = api(lab, 3).get("/endpoints")["refused"]
    assert [k for k in refused if k.startswith("orphan:")], refused
    assert answering(lab, ip, hosts=(1, 2)) == {1: set(), 2: set()}


def test_a_removed_peer_that_comes_back_is_recognised_everywhere_and_must_reset(lab):
    ns, ip = lab.add_container(2, 1)
    h2 = api(lab, 2).get("/status")["router"]["name"]
    lab.kill_router(2)  # its kernel (and container) stay: a VM that will come back from a snapshot
    assert wait_for(lambda: h2 in api(lab, 1).get("/ipam/status")["unreachable_owners"], 15) is not None
    assert api(lab, 1).post("/ipam/rmpeer", {"peer": h2})["reclaimed"] > 0
    assert wait_for(lambda: all(h2 not in api(lab, i).get("/ipam/status")["peers"] for i in (1, 3)), 20) is not None
    owner = next(i for i in (1, 3) if _owns(lab, i, ip))
    taken, _ = lab.add_container(owner, 2, f"{ip}/12")  # its address, given out anew
    assert answering(lab, ip, hosts=(1, 3)) == {1: {mac_in(taken)}, 3: {mac_in(taken)}}

    lab.start_router(2, seed=True)  # it comes back with its old state
    assert wait_for(lambda: api(lab, 2).get("/ipam/status")["tombstoned"], 20) is not None
    for i in (1, 3):
        assert wait_for(lambda: api(lab, i).get("/ipam/status")["reclaiming"]["returned"] == [h2], 10) is not None
        assert gauge(metrics(lab, i), "meshnet_ipam_removed_peers_back") == 1
    assert gauge(metrics(lab, 2), "meshnet_ipam_tombstoned") == 1
    assert wait_for(lambda: f"netns:/run/netns/{ns}" in api(lab, 2).get("/endpoints")["refused"], 10) is not None
    assert answering(lab, ip, hosts=(1, 3)) == {1: {mac_in(taken)}, 3: {mac_in(taken)}}
    new_ns = "mnrd-h2-new"
    subprocess.run(["ip", "netns", "add", new_ns], check=True)
    lab.containers[new_ns] = ""
    refused = subprocess.run(lab.meshnet(2, "attach", new_ns), capture_output=True, text=True)
    assert refused.returncode == 1 and "reset" in refused.stderr, refused.stderr

    done = subprocess.run(lab.meshnet(2, "reset", "--release", "--state-dir", lab.state_dir(2)), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lab.start_router(2, seed=True)  # a new peer now: it may allocate again
    lab.wait_mesh()
    assert subprocess.run(lab.meshnet(2, "attach", new_ns), capture_output=True, text=True).returncode == 0
    assert answering(lab, ip, hosts=(1, 3)) == {1: {mac_in(taken)}, 3: {mac_in(taken)}}
