"""`meshnet run` / `attach` / `detach` / `ps` / `expose` on 3 simulated hosts, each with its own
real dockerd and router (meshnet.docker.lab.DockerLab): ping and DNS between every pair, a TCP
transfer across hosts, bad input, and the container lifecycle (restart keeps addresses, stop
withdraws the name, rm releases, router restarts)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from meshnet.docker.lab import IMAGE, DockerLab

pytestmark = [
    pytest.mark.netns,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(not shutil.which("dockerd") or not os.path.exists("/bin/busybox"), reason="needs docker.io and busybox-static"),
]


def cli(lab: DockerLab, i: int, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run(lab.meshnet(i, *args), capture_output=True, text=True, timeout=timeout)


def ok(lab: DockerLab, i: int, *args: str) -> str:
    r = cli(lab, i, *args)
    assert r.returncode == 0, f"meshnet {' '.join(args)} on h{i}: {r.stderr}"
    return r.stdout


def _owners(lab: DockerLab, i: int) -> dict[str, list[str]]:
    from meshnet.runtime.api import ApiClient

    return ApiClient(f"{lab.run_dir(i)}/meshnet.sock").get("/ipam/owners")["owners"]


def docker_owned(lab: DockerLab, i: int) -> dict[str, list[str]]:
    return {o: sorted(ips) for o, ips in _owners(lab, i).items() if o.startswith("docker:")}


def ip_of(lab: DockerLab, i: int, name: str) -> str:
    rc, out = lab.sh(i, name, "ip -o -4 addr show ethwe")
    assert rc == 0, out
    return out.split()[3].split("/")[0]


def can_reach(lab: DockerLab, i: int, src: str, target: str) -> bool:
    rc, _ = lab.sh(i, src, f"ping -c 1 -W 2 {target}", timeout=10)
    return rc == 0


def resolves(lab: DockerLab, i: int, src: str, name: str, dns_ip: str) -> str | None:
    rc, out = lab.sh(i, src, f"nslookup {name}.meshnet.local {dns_ip}", timeout=10)
    if rc != 0:
        return None
    lines = out.split(f"Name:\t{name}.meshnet.local")
    return lines[1].split("Address:")[1].split()[0] if len(lines) > 1 else None


def tcp_transfer(lab: DockerLab, src: tuple[int, str], dst: tuple[int, str], target: str, size: int = 3_000_000) -> bool:
    """3 MB of random bytes from src to dst over TCP (busybox nc); True if the digests match."""
    api = lab.client(dst[0])
    lab.sh(dst[0], dst[1], "rm -f /tmp/got")
    api.exec_start(api.exec_create(dst[1], ["timeout", "30", "nc", "-l", "-p", "5001", "-e", "sh", "-c", "cat > /tmp/got"]), detach=True)
    rc, sent = lab.sh(src[0], src[1], f"head -c {size} /dev/urandom > /tmp/data && md5sum < /tmp/data && sleep 0.3 && nc {target} 5001 < /tmp/data", timeout=40)
    assert rc == 0, sent

    def arrived() -> bool:
        rc, got = lab.sh(dst[0], dst[1], f"test $(wc -c < /tmp/got) -eq {size} && md5sum < /tmp/got")
        return rc == 0 and got.split()[0] == sent.split()[0]

    return lab.wait(arrived, 20, "the transfer")


@pytest.fixture
def lab():
    lab = DockerLab(prefix="mndk", hosts=3)
    lab.up()
    try:
        lab.wait_mesh()
        yield lab
    finally:
        print(lab.dump_logs())  # shown when the test fails
        if os.environ.get("MNDK_KEEP") != "1":  # debugging: keep the lab (then down with DockerLab().down())
            lab.down()


def test_attach_run_dns_lifecycle(lab):
    dns = {i: ok(lab, i, "expose").split()[0].split("/")[0] for i in (1, 2, 3)}
    # h1: meshnet run (IPAM address, --dns added); h2: docker run + meshnet attach; h3: meshnet run with an address
    cid1 = ok(lab, 1, "run", "--name", "c1", "--stop-timeout", "1", IMAGE, "sleep", "3600").split()[0]
    lab.run_container(2, "c2", network="none", dns=[dns[2]])
    out2 = ok(lab, 2, "attach", "c2")
    assert out2.split()[1] == "c2" and out2.split()[3].endswith("/12")
    ok(lab, 3, "run", "10.32.3.33/12", "--name", "c3", "--stop-timeout", "1", IMAGE, "sleep", "3600")
    c = {1: "c1", 2: "c2", 3: "c3"}
    ips = {i: ip_of(lab, i, c[i]) for i in (1, 2, 3)}
    assert ips[3] == "10.32.3.33" and len(set(ips.values())) == 3
    rc, resolv = lab.sh(1, "c1", "cat /etc/resolv.conf")
    assert f"nameserver {dns[1]}" in resolv and "meshnet.local" in resolv

    # every pair pings by name (resolved through the container's resolv.conf) and resolves it
    for i in (1, 2, 3):
        for j in (1, 2, 3):
            if i != j:
                lab.wait(lambda: can_reach(lab, i, c[i], f"{c[j]}.meshnet.local"), 30, f"{c[i]} -> {c[j]} by name")
                assert resolves(lab, i, c[i], c[j], dns[i]) == ips[j]

    # a TCP transfer across hosts is intact
    assert tcp_transfer(lab, (1, "c1"), (3, "c3"), "c3.meshnet.local")

    # meshnet ps: containers with MAC and addresses
    ps = ok(lab, 2, "ps")
    assert "c2" in ps and ips[2] in ps
    row = json.loads(ok(lab, 1, "ps", "--json"))["containers"][0]
    assert row["name"] == "c1" and row["mac"] and row["cidrs"] == [f"{ips[1]}/12"] and row["id"] == cid1

    # bad input: clear errors, nothing half-made
    before_owners = docker_owned(lab, 1)
    before_links = subprocess.run(["ip", "-n", "mndk-h1", "-o", "link"], capture_output=True, text=True).stdout.count("\n")
    r = cli(lab, 1, "attach", "ghost")
    assert r.returncode == 1 and "no such container: ghost" in r.stderr
    lab.run_container(1, "c1b", network="none")
    r = cli(lab, 1, "attach", "c1b", "192.168.7.7/24")
    assert r.returncode == 1 and "outside" in r.stderr, r.stderr
    r = cli(lab, 1, "attach", "c1b", f"{ips[1]}/12")
    assert r.returncode == 1 and "in use" in r.stderr, r.stderr
    r = cli(lab, 1, "run", "10.32.0.0/12", "--name", "c1c", IMAGE)
    assert r.returncode == 1 and "network or broadcast" in r.stderr
    r = cli(lab, 1, "run", f"{ips[1]}/12", "--name", "c1d", "--stop-timeout", "1", IMAGE, "sleep", "60")
    assert r.returncode == 1 and "in use" in r.stderr
    names = {n.lstrip("/") for x in lab.client(1).containers(all=True) for n in x["Names"]}
    assert "c1c" not in names and "c1d" not in names, "a failed meshnet run leaves no container"
    assert docker_owned(lab, 1) == before_owners
    after_links = subprocess.run(["ip", "-n", "mndk-h1", "-o", "link"], capture_output=True, text=True).stdout.count("\n")
    assert after_links == before_links
    lab.client(1).remove_container("c1b", force=True)

    # docker restart keeps the address
    lab.client(2).restart("c2", timeout=1)
    lab.wait(lambda: ip_of(lab, 2, "c2") == ips[2], 20, "c2 re-attached with its address")
    lab.wait(lambda: can_reach(lab, 1, "c1", "c2.meshnet.local"), 30, "c1 -> c2 after restart")

    # docker stop: the name goes (the address stays reserved); start: back with the same address
    lab.client(1).stop("c1", timeout=1)
    lab.wait(lambda: resolves(lab, 3, "c3", "c1", dns[3]) is None, 20, "c1's name withdrawn")
    assert any(ips[1] in v for v in docker_owned(lab, 1).values())
    lab.client(1).start("c1")
    lab.wait(lambda: resolves(lab, 3, "c3", "c1", dns[3]) == ips[1], 20, "c1 back with its address")
    lab.wait(lambda: can_reach(lab, 3, "c3", "c1.meshnet.local"), 30, "c3 -> c1 after start")

    # router restarts: a clean one on h3; on h2 with c2 restarted while the router was down
    lab.stop_router(3)
    lab.start_router(3)
    lab.wait(lambda: can_reach(lab, 1, "c1", "c3.meshnet.local"), 30, "c1 -> c3 after h3's router restart")
    assert "c3" in ok(lab, 3, "ps")
    lab.stop_router(2)
    lab.client(2).restart("c2", timeout=1)
    lab.start_router(2)
    lab.wait(lambda: ip_of(lab, 2, "c2") == ips[2], 30, "c2 re-attached by the restarted router")
    lab.wait(lambda: can_reach(lab, 3, "c3", "c2.meshnet.local"), 30, "c3 -> c2 after h2's router restart")

    # rm releases, detach releases; nothing leaks
    cid2 = lab.client(2).inspect_container("c2")["Id"]
    lab.client(2).remove_container("c2", force=True)
    lab.wait(lambda: f"docker:{cid2}" not in _owners(lab, 2), 20, "c2's address released after docker rm")
    out = ok(lab, 3, "detach", "c3")
    assert "10.32.3.33" in out
    assert docker_owned(lab, 3) == {}
    rc, _ = lab.sh(3, "c3", "ip link show ethwe")
    assert rc != 0, "detach removed the interface"
    assert list(docker_owned(lab, 1)) == [f"docker:{cid1}"]
    ok(lab, 1, "hide")
    assert not any(o.startswith("host:") for o in _owners(lab, 1))
