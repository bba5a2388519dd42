"""`meshnet run` / `attach` / `detach` / `ps` / `expose` on 3 simulated hosts, each with its own
real dockerd and router (meshnet.lab.DockerLab): ping and DNS between every pair, a TCP
transfer across hosts, bad input, and the container lifecycle (restart keeps addresses, stop
withdraws the name, rm releases, router restarts). The lab and the markers come with the
`docker_lab` fixture (tests/netns/conftest.py)."""

from __future__ import annotations

import json
import subprocess

from meshnet.lab import IMAGE


def links_in(ns: str) -> int:
    return subprocess.run(["ip", "-n", ns, "-o", "link"], capture_output=True, text=True, timeout=10).stdout.count("\n")


def test_attach_run_dns_lifecycle(docker_lab):
    lab = docker_lab
    dns = {i: lab.ok(i, "expose").split()[0].split("/")[0] for i in (1, 2, 3)}
    # h1: meshnet run (IPAM address, --dns added); h2: docker run + meshnet attach; h3: meshnet run with an address
    cid1 = lab.ok(1, "run", "--name", "c1", "--stop-timeout", "1", IMAGE, "sleep", "3600").split()[0]
    lab.run_container(2, "c2", network="none", dns=[dns[2]])
    out2 = lab.ok(2, "attach", "c2").split()
    assert out2[1] == "c2" and out2[3].endswith("/12")
    static = lab.own_address(3)  # in a range h3's IPAM owns
    lab.ok(3, "run", f"{static}/12", "--name", "c3", "--stop-timeout", "1", IMAGE, "sleep", "3600")
    c = {1: "c1", 2: "c2", 3: "c3"}
    ips = {i: lab.ip_of(i, c[i]) for i in (1, 2, 3)}
    assert ips[3] == static and len(set(ips.values())) == 3
    _, resolv = lab.sh(1, "c1", "cat /etc/resolv.conf")
    assert f"nameserver {dns[1]}" in resolv and "meshnet.local" in resolv

    # every pair pings by name (through the container's resolv.conf) and resolves it
    for i in (1, 2, 3):
        for j in (1, 2, 3):
            if i != j:
                lab.wait(lambda: lab.can_reach(i, c[i], f"{c[j]}.meshnet.local"), 30, f"{c[i]} -> {c[j]} by name")
                assert lab.resolves(i, c[i], f"{c[j]}.meshnet.local", dns[i]) == ips[j]

    # a TCP transfer across hosts is intact
    assert lab.tcp_transfer((1, "c1"), (3, "c3"), "c3.meshnet.local")

    # meshnet ps: containers with MAC and addresses
    ps = lab.ok(2, "ps")
    assert "c2" in ps and ips[2] in ps
    row = next(r for r in json.loads(lab.ok(1, "ps", "--json"))["endpoints"] if r["kind"] == "container")
    assert row["name"] == "c1" and row["mac"] and row["cidrs"] == [f"{ips[1]}/12"] and row["id"] == cid1

    # bad input: clear errors, nothing half-made
    before_owners, before_links = lab.ipam_owners(1, "docker:"), links_in("mndk-h1")
    r = lab.cli(1, "attach", "ghost")
    assert r.returncode == 1 and "no such container: ghost" in r.stderr
    lab.run_container(1, "c1b", network="none")
    r = lab.cli(1, "attach", "c1b", "192.168.7.7/24")
    assert r.returncode == 2 and "outside" in r.stderr, r.stderr
    r = lab.cli(1, "attach", "c1b", f"{ips[1]}/12")
    assert r.returncode == 1 and "in use" in r.stderr, r.stderr
    r = lab.cli(1, "run", "10.32.0.0/12", "--name", "c1c", IMAGE)
    assert r.returncode == 2 and "network or broadcast" in r.stderr
    r = lab.cli(1, "run", f"{ips[1]}/12", "--name", "c1d", "--stop-timeout", "1", IMAGE, "sleep", "60")
    assert r.returncode == 1 and "in use" in r.stderr
    r = lab.cli(1, "run", "--frobnicate", "80:80", IMAGE)
    assert r.returncode == 2 and "does not support" in r.stderr
    names = {n.lstrip("/") for x in lab.client(1).containers(all=True) for n in x["Names"]}
    assert "c1c" not in names and "c1d" not in names, "a failed meshnet run leaves no container"
    assert lab.ipam_owners(1, "docker:") == before_owners
    assert links_in("mndk-h1") == before_links
    lab.client(1).remove_container("c1b", force=True)

    # docker restart keeps the address (and the MAC)
    lab.client(2).restart("c2", timeout=1)
    lab.wait(lambda: lab.ip_of(2, "c2") == ips[2], 20, "c2 re-attached with its address")
    lab.wait(lambda: lab.can_reach(1, "c1", "c2.meshnet.local"), 30, "c1 -> c2 after restart")

    # docker stop: the name goes (the address stays reserved); start: back with the same address
    lab.client(1).stop("c1", timeout=1)
    lab.wait(lambda: lab.resolves(3, "c3", "c1.meshnet.local", dns[3]) is None, 20, "c1's name withdrawn")
    assert [ips[1]] in lab.ipam_owners(1, "docker:").values()
    lab.client(1).start("c1")
    lab.wait(lambda: lab.resolves(3, "c3", "c1.meshnet.local", dns[3]) == ips[1], 20, "c1 back with its address")
    lab.wait(lambda: lab.can_reach(3, "c3", "c1.meshnet.local"), 30, "c3 -> c1 after start")

    # router restarts: a clean one on h3; on h2 with c2 restarted while the router was down
    lab.stop_router(3)
    lab.start_router(3)
    lab.wait(lambda: lab.can_reach(1, "c1", "c3.meshnet.local"), 30, "c1 -> c3 after h3's router restart")
    assert "c3" in lab.ok(3, "ps")
    lab.stop_router(2)
    lab.client(2).restart("c2", timeout=1)
    lab.start_router(2)
    lab.wait(lambda: lab.ip_of(2, "c2") == ips[2], 30, "c2 re-attached by the restarted router")
    lab.wait(lambda: lab.can_reach(3, "c3", "c2.meshnet.local"), 30, "c3 -> c2 after h2's router restart")

    # rm releases, detach releases; nothing leaks
    cid2 = lab.client(2).inspect_container("c2")["Id"]
    lab.client(2).remove_container("c2", force=True)
    lab.wait(lambda: f"docker:{cid2}" not in lab.ipam_owners(2), 20, "c2's address released after docker rm")
    assert static in lab.ok(3, "detach", "c3")
    assert lab.ipam_owners(3, "docker:") == {}
    assert lab.sh(3, "c3", "ip link show ethwe")[0] != 0, "detach removed the interface"
    assert list(lab.ipam_owners(1, "docker:")) == [f"docker:{cid1}"]

    # expose --nat: c1 (default route via its host's overlay address) reaches h2's underlay
    # address, masqueraded behind h1's; hide takes the address, the NAT rule and DNS away
    assert "NAT on" in lab.ok(1, "expose", "--nat")
    pid = lab.client(1).inspect_container("c1")["State"]["Pid"]
    subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", "ip", "route", "add", "default", "via", dns[1]], check=True, timeout=10)
    assert lab.can_reach(1, "c1", lab.host_ip(2))
    rules = subprocess.run(["ip", "netns", "exec", "mndk-h1", "nft", "list", "table", "ip", "meshnet-nat"], capture_output=True, text=True, timeout=10).stdout
    masq = [line for line in rules.splitlines() if line.strip().endswith("masquerade")]
    assert masq and "packets 0 " not in masq[0], rules
    lab.ok(1, "hide")
    assert lab.ipam_owners(1, "host:") == {}
    gone = subprocess.run(["ip", "netns", "exec", "mndk-h1", "nft", "list", "table", "ip", "meshnet-nat"], capture_output=True, text=True, timeout=10)
    assert gone.returncode != 0, "hide removed the NAT table"
    assert lab.resolves(1, "c1", "c1.meshnet.local", dns[1]) is None, "no resolver without an overlay address"
