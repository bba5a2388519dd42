"""End to end: real routers on simulated hosts, containers as namespaces.

::

    mno-h1 (seed)          mno-h2                 mno-h3
    c1 .1.1  c2 .1.2       c1 .2.1  c2 .2.2       c1 .3.1  c2 .3.2     (10.32.H.C/12)
       \\      /               \\      /               \\      /
       [router]               [router]               [router]
          |eth0 192.168.90.11    |eth0 .12              |eth0 .13
          +----------------------+----------------------+   underlay bridge in mno-ul

Run once with the sleeve only (--no-fastdp) and once with fastdp allowed.
"""

import itertools
import json
import os
import subprocess
import sys
import time

import pytest

from meshnet.lab import Lab, ping, transfer, wait_for

pytestmark = pytest.mark.netns


@pytest.fixture(params=["sleeve", "fastdp"], scope="module")
def lab(request):
    flags = ["--no-fastdp"] if request.param == "sleeve" else []
    lab = Lab(prefix="mno", hosts=3, extra_flags=flags)
    lab.mode = request.param
    try:
        lab.up()
        lab.wait_mesh()
        lab.ctrs = [lab.add_container(i, j) for i in (1, 2, 3) for j in (1, 2)]
        if request.param == "fastdp":
            all_fastdp = lambda: all(c["mode"] == "fastdp" for i in (1, 2, 3) for c in lab.status(i)["connections"])
            assert wait_for(all_fastdp, 15)
        yield lab
    finally:
        lab.down()


def test_every_ordered_pair_pings(lab):
    failed = [(a, ip) for (a, _), (b, ip) in itertools.permutations(lab.ctrs, 2) if not ping(a, ip, wait=3)]
    assert failed == []


def test_status_shows_peers_connections_and_modes(lab):
    status = lab.status(2)
    assert sum(p["reachable"] for p in status["peers"]) == 3
    conns = [c for c in status["connections"] if c["state"] == "established"]
    assert len(conns) == 2
    assert {c["mode"] for c in conns} == {lab.mode}
    assert {c["direction"] for c in conns} <= {"inbound", "outbound"}
    assert status["router"]["encrypted"] is False
    assert status["dataplane"]["pump"]["compiled"] is True
    text = subprocess.run(lab.meshnet(2, "status"), capture_output=True, text=True, check=True).stdout
    assert "mno-h1" in text and "established" in text


def test_8mib_transfer_across_hosts_is_identical(lab):
    (src, _), (dst, dst_ip) = lab.ctrs[0], lab.ctrs[4]  # h1-c1 -> h3-c1
    before = lab.status(1)["dataplane"]["stats"]["udp_tx_bytes"]
    assert transfer(src, dst, dst_ip, size=8 << 20)
    sleeve_bytes = lab.status(1)["dataplane"]["stats"]["udp_tx_bytes"] - before
    if lab.mode == "sleeve":
        assert sleeve_bytes > 8 << 20  # the pump carried it
    else:
        assert sleeve_bytes < 1 << 20  # the kernel's VXLAN carried it
        vx = json.loads(subprocess.run(["ip", "-n", lab.host_ns(1), "-s", "-j", "link", "show", "vxmesh"], capture_output=True, text=True, check=True).stdout)
        assert vx[0]["stats64"]["tx"]["bytes"] > 8 << 20


def test_router_kill_and_restart(lab):
    h1c1, h2c1, h3c1 = lab.ctrs[0][0], lab.ctrs[2], lab.ctrs[4]
    lab.kill_router(2)
    if lab.mode == "fastdp":  # the kernel forwards while no router runs, within the grace period
        time.sleep(4)  # longer than a path without probe replies is kept
        assert ping(h1c1, h2c1[1], wait=2), "h2's containers unreachable while its kernel still forwards"
    else:  # the sleeve lives in the router
        assert wait_for(lambda: not ping(h1c1, h2c1[1], wait=1), 10) is not None, "h2's containers still reachable"
    assert ping(h1c1, h3c1[1], wait=2), "h1 <-> h3 broke when h2's router died"
    assert ping(h3c1[0], lab.ctrs[1][1], wait=2)
    lab.start_router(2, seed=False)  # comes back from its persisted peers alone
    took = wait_for(lambda: ping(h1c1, h2c1[1], wait=1) and ping(h3c1[0], h2c1[1], wait=1), 10)
    assert took is not None, "traffic to h2 did not come back within 10 s"
    assert lab.status(2)["router"]["name"] == lab.status(1)["peers"][1]["name"]  # same peer name after restart


def test_second_router_on_same_state_dir_is_refused(lab):
    cmd = ["ip", "netns", "exec", lab.host_ns(3), sys.executable, "-m", "meshnet", "launch", "--foreground"]
    cmd += ["--state-dir", lab.state_dir(3), "--run-dir", lab.run_dir(3) + "-second", "--port", "7783", "--udp-port", "7783"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "already running with state dir" in result.stderr
    assert ping(lab.ctrs[4][0], lab.ctrs[0][1])  # the first router is unharmed


@pytest.mark.parametrize(
    "args,message,code",
    [
        (["{ns}", "10.32.9.9/33"], "not a valid IP/CIDR", 2),  # usage errors: exit 2
        (["{ns}", "banana"], "not ADDRESS/PREFIX", 2),
        (["/run/netns/mno-does-not-exist", "10.32.9.9/12"], "does not exist", 1),  # not found: exit 1
        (["mno-no-such-thing", "10.32.9.9/12"], "no network namespace named", 1),
    ],
)
def test_attach_bad_input_fails_clearly_and_leaves_nothing(lab, args, message, code):
    ns = "mno-h1-bad"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        ports_before = subprocess.run(["ip", "-n", lab.host_ns(1), "-o", "link", "show", "master", "meshnet"], capture_output=True, text=True).stdout
        result = subprocess.run(lab.meshnet(1, "attach", *[a.format(ns=ns) for a in args]), capture_output=True, text=True)
        assert result.returncode == code and message in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        ports_after = subprocess.run(["ip", "-n", lab.host_ns(1), "-o", "link", "show", "master", "meshnet"], capture_output=True, text=True).stdout
        assert ports_after == ports_before
        inner = subprocess.run(["ip", "-n", ns, "-o", "link"], capture_output=True, text=True).stdout
        assert "mesh0" not in inner
    finally:
        subprocess.run(["ip", "netns", "del", ns])


def test_detach_removes_the_interface(lab):
    ns, ip = lab.add_container(1, 9)
    assert ping(lab.ctrs[2][0], ip, wait=3)
    result = subprocess.run(lab.meshnet(1, "detach", ns), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "mesh0" not in subprocess.run(["ip", "-n", ns, "-o", "link"], capture_output=True, text=True).stdout
    assert not ping(lab.ctrs[2][0], ip, wait=1)


def test_malformed_datagrams_are_counted_not_fatal(lab):
    """Garbage to the sleeve port from a peer's address: dropped, counted, router alive."""
    script = "import socket,os\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n" + "".join(
        f"s.sendto({payload!r},('{lab.host_ip(1)}',6783))\n" for payload in (b"", b"\x01", b"\x07" * 40, os.urandom(200))
    )
    subprocess.run(["ip", "netns", "exec", lab.host_ns(2), sys.executable, "-c", script], check=True)
    garbage = b"\x00\x00\x10\x00" + os.urandom(4096)  # a TCP control connection fed junk
    tcp = f"import socket\ns=socket.create_connection(('{lab.host_ip(1)}',6783))\ns.sendall({garbage!r})\ns.close()"
    subprocess.run(["ip", "netns", "exec", lab.host_ns(2), sys.executable, "-c", tcp], check=True)
    stats = lab.status(1)["dataplane"]["stats"]
    assert sum(v for k, v in stats.items() if k.startswith("drop_")) >= 3
    assert ping(lab.ctrs[0][0], lab.ctrs[2][1], wait=3)
