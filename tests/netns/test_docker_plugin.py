"""The Docker network plugin on 3 simulated hosts with real dockerds: `docker network create
-d meshnet --ipam-driver meshnet`, the network the router makes itself, `docker run --network`,
names and a TCP transfer across hosts; stop/start/rm, a dockerd restart with a `--restart
always` container and a router restart; no address leaked or handed out twice. The lab
(meshnet.lab.DockerLab) and the markers come with the `docker_lab` fixture (tests/netns/conftest.py)."""

from __future__ import annotations

import ipaddress
import subprocess

import docker.errors
import pytest


def container_ips(lab, hosts=(1, 2, 3)) -> dict[str, str]:
    """name -> address of every running container on a meshnet network, all hosts."""
    out = {}
    for i in hosts:
        api = lab.client(i)
        for c in api.containers():
            for net in c["NetworkSettings"]["Networks"].values():
                if net.get("IPAddress") and ipaddress.ip_address(net["IPAddress"]) in ipaddress.ip_network("10.32.0.0/12"):
                    out[c["Names"][0].lstrip("/")] = net["IPAddress"]
    return out


def check_no_leak(lab) -> None:
    """Every docker endpoint address is used by exactly one running container, and each
    host holds at most one gateway address per meshnet network."""
    used = container_ips(lab)
    assert len(set(used.values())) == len(used), f"an address is handed out twice: {used}"
    for i in (1, 2, 3):
        eps = [ip for o, ips in lab.ipam_owners(i, "docker-ep:").items() for ip in ips]
        mine = {ip for name, ip in container_ips(lab, (i,)).items()}
        assert sorted(eps) == sorted(mine), f"h{i}: IPAM holds {eps}, containers use {mine}"
        nets = [n for n in lab.client(i).networks(filters={"driver": "meshnet"})]
        gws = [ip for ips in lab.ipam_owners(i, "docker-gw:").values() for ip in ips]
        assert len(gws) == len(nets), f"h{i}: {len(gws)} gateway addresses for {len(nets)} networks"


def test_network_plugin(docker_lab):
    lab = docker_lab
    dns = {i: lab.ok(i, "expose").split()[0].split("/")[0] for i in (1, 2, 3)}
    for i in (1, 2, 3):  # the router made the default network `meshnet` in its dockerd
        lab.wait(lambda: lab.client(i).networks(names=["meshnet"]), 15, f"network meshnet on h{i}")

    # without meshnet's IPAM: a clear error, and no network
    with pytest.raises(docker.errors.APIError) as exc:
        lab.client(1).create_network("plain", driver="meshnet")
    assert "--ipam-driver meshnet" in str(exc.value)
    assert not lab.client(1).networks(names=["plain"])
    # a host route overlapping the range: libnetwork would re-ask for the pool forever; the
    # plugin breaks the loop with advice, and --subnet works
    subprocess.run(["ip", "-n", "mndk-h1", "route", "add", "10.0.0.0/8", "dev", "eth0"], check=True, timeout=10)
    try:
        with pytest.raises(docker.errors.APIError) as exc:
            lab.client(1).create_network("loop", driver="meshnet", ipam={"Driver": "meshnet", "Config": []})
        assert "--subnet 10.32.0.0/12" in str(exc.value)
        lab.client(1).create_network("sub", driver="meshnet", ipam={"Driver": "meshnet", "Config": [{"Subnet": "10.32.0.0/12"}]})
        lab.client(1).remove_network("sub")
    finally:
        subprocess.run(["ip", "-n", "mndk-h1", "route", "del", "10.0.0.0/8", "dev", "eth0"], timeout=10)
    for i in (1, 2):
        lab.client(i).create_network("mnet", driver="meshnet", ipam={"Driver": "meshnet", "Config": []})

    w = {1: "w1", 2: "w2", 3: "w3"}
    lab.run_container(1, "w1", network="mnet", dns=[dns[1]])
    lab.run_container(2, "w2", network="mnet", dns=[dns[2]], restart="always")
    lab.run_container(3, "w3", network="meshnet", dns=[dns[3]])
    for i in (1, 2, 3):
        _, routes = lab.sh(i, w[i], "ip -4 route; ip -o link")
        assert "default" not in routes and "eth1" not in routes, f"no docker_gwbridge NIC: {routes}"
    ips = {i: lab.ip_of(i, w[i], "eth0") for i in (1, 2, 3)}
    assert len(set(ips.values())) == 3

    for i in (1, 2, 3):
        for j in (1, 2, 3):
            if i != j:
                lab.wait(lambda: lab.can_reach(i, w[i], f"{w[j]}.meshnet.local"), 30, f"{w[i]} -> {w[j]} by name")
    assert lab.tcp_transfer((2, "w2"), (1, "w1"), "w1.meshnet.local")
    assert "w3" in lab.ok(3, "ps")
    check_no_leak(lab)

    # stop (name withdrawn, address released) / start (back, maybe another address)
    lab.client(1).stop("w1", timeout=1)
    lab.wait(lambda: lab.resolves(3, "w3", "w1.meshnet.local", dns[3]) is None, 20, "w1's name withdrawn")
    check_no_leak(lab)
    lab.client(1).start("w1")
    lab.wait(lambda: lab.can_reach(3, "w3", "w1.meshnet.local"), 30, "w3 -> w1 after start")

    # dockerd restart with a --restart always container
    lab.stop_dockerd(2, remove_containers=False)
    lab.start_dockerd(2)
    lab.wait(lambda: lab.client(2).inspect_container("w2")["State"]["Running"], 30, "w2 restarted with dockerd")
    lab.wait(lambda: lab.can_reach(2, "w2", "w1.meshnet.local"), 30, "w2 -> w1 after the dockerd restart")
    lab.wait(lambda: lab.can_reach(1, "w1", "w2.meshnet.local"), 30, "w1 -> w2 after the dockerd restart")

    # router restart: containers keep working, new ones get addresses
    lab.stop_router(3)
    lab.start_router(3)
    lab.wait(lambda: lab.can_reach(1, "w1", "w3.meshnet.local"), 30, "w1 -> w3 after h3's router restart")
    lab.run_container(3, "w4", network="meshnet", dns=[dns[3]])
    lab.wait(lambda: lab.can_reach(3, "w4", "w2.meshnet.local"), 30, "w4 (started after the restart) -> w2")
    check_no_leak(lab)

    # rm releases; network rm releases the gateway
    lab.client(1).remove_container("w1", force=True)
    lab.client(1).remove_network("mnet")
    assert lab.ipam_owners(1, "docker-ep:") == {}
    assert len(lab.ipam_owners(1, "docker-gw:")) == 1  # the default network's
    check_no_leak(lab)
