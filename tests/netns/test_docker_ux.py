"""Docker hosts as a Weave user meets them (issue 14), on 3 simulated hosts with real dockerds:
every mistake is one line on stderr and no traceback; status reasons are current; `run -p`
publishes through Docker and is reached from another host; `dns-args` gives a plain
`docker run` meshnet's names, and `dns-add` records reach every host; `ps` lists every
endpoint once, also after a dockerd restart; the router runs as a container (the image
image/build.sh makes) and comes back by itself after a kill and a `docker restart`.

One lab for the module (building it costs more than most checks); the tests run in file
order and each leaves the lab usable for the next.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest

from meshnet.lab import running_lab
from meshnet.lab.image import router_image

pytestmark = [
    pytest.mark.netns,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(not shutil.which("dockerd") or not os.path.exists("/bin/busybox"), reason="needs docker.io and busybox-static"),
]


@pytest.fixture(scope="module")
def lab():
    with running_lab(3, prefix="mndu") as lab:
        yield lab


def one_line(r: subprocess.CompletedProcess, *words: str, rc: int | None = None) -> str:
    """The command failed with exactly one `meshnet: ...` line (after progress lines) and no traceback."""
    assert r.returncode != 0, r.stdout
    if rc is not None:
        assert r.returncode == rc, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = [line for line in r.stderr.strip().splitlines() if not line.startswith("meshnet: pulling ")]
    assert len(lines) == 1 and lines[0].startswith("meshnet: "), r.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def docker(lab, i: int, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """The plain docker CLI against host i's dockerd, in host i's network namespace."""
    cmd = ["nsenter", f"--net=/run/netns/{lab.host_ns(i)}", "docker", "-H", f"unix://{lab.docker_sock(i)}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def in_netns(lab, i: int, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", lab.host_ns(i), *cmd], capture_output=True, text=True, timeout=timeout)


def launch(lab, i: int, *flags: str) -> subprocess.CompletedProcess:
    cmd = ["ip", "netns", "exec", lab.host_ns(i), *lab.meshnet(i, "launch", "--state-dir", lab.state_dir(i))]
    cmd += ["--nickname", f"{lab.prefix}-h{i}", "--ipalloc-init", f"consensus={lab.hosts}", *flags]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90)


def test_mistakes_are_one_line_without_traceback(lab):
    lab.ok(1, "expose")  # so `run` has no DNS note to add
    assert lab.ok(1, "run", "--name", "c1", "bb:local", "sleep", "3600")
    one_line(lab.cli(1, "run", "--name", "c1", "bb:local", "sleep", "3600"), "c1", "already in use", rc=1)
    one_line(lab.cli(1, "run", "--name", "x1", "nosuch.invalid/none:1"), "cannot pull nosuch.invalid/none:1", rc=1)
    one_line(lab.cli(1, "run", "--pull=never", "--name", "x2", "nosuch.invalid/none:1"), "nosuch.invalid/none:1")
    one_line(lab.cli(1, "run", "--frobnicate", "bb:local"), "--frobnicate", rc=2)
    one_line(lab.cli(1, "run", "-p", "99999:80", "bb:local"), "-p", rc=2)
    one_line(lab.cli(1, "run"), "needs an image", rc=2)
    one_line(lab.cli(1, "attach", "ghost"), "ghost", rc=1)
    one_line(lab.cli(1, "detach", "ghost"), "ghost", rc=1)
    one_line(lab.cli(2, "dns-args"), "meshnet expose", rc=1)
    one_line(lab.cli(1, "dns-lookup", "nobody"), "nobody.meshnet.local", rc=1)
    one_line(lab.cli(1, "dns-add", "10.32.9.9", "-h", "not a name"), rc=2)
    one_line(lab.cli(1, "status", "bogus"), "bogus", rc=2)
    # launch: flags are checked before anything forks, so a bad one costs no router start
    started = time.monotonic()
    one_line(launch(lab, 1, "--mtu", "100"), "--mtu", rc=2)
    one_line(launch(lab, 1, "--router-mode", "vm"), "--router-mode", rc=2)
    assert time.monotonic() - started < 10
    one_line(launch(lab, 1), "another meshnet router", rc=1)  # launch twice
    # another run and state dir in the same namespace: refused before it starts (one router
    # per network namespace), in one line of its own, not the running router's log
    spare = ["--run-dir", f"/run/meshnet-lab/{lab.prefix}/spare", "--state-dir", f"/var/lib/meshnet-lab/{lab.prefix}/spare"]
    spare += ["--docker-socket=none", "--router-mode=process", "--bridge=mnspare", "--tap=mnsparetap", "--no-fastdp", "--metrics-addr="]
    cmd = ["ip", "netns", "exec", lab.host_ns(1), *lab.meshnet(1, "launch"), *spare]
    line = one_line(subprocess.run(cmd, capture_output=True, text=True, timeout=60), "another meshnet router", "network namespace", rc=1)
    assert "INFO" not in line
    one_line(subprocess.run(lab.meshnet(1, "stop", "--run-dir", f"/run/meshnet-lab/{lab.prefix}/nowhere"), capture_output=True, text=True, timeout=30), "no router", rc=1)
    docker(lab, 1, "rm", "-f", "c1")


def test_status_reasons_are_current(lab):
    status = lambda i: json.loads(lab.ok(i, "status", "--json"))  # noqa: E731
    # h2 dials h1 (its seed) and keeps failing while h1 is down; h1 comes back and dials
    # h2 itself: once connected, h2 must not keep showing its old "retrying" line
    lab.stop_router(1)
    lab.wait(lambda: any(c["state"] == "retrying" for c in status(2)["connections"]), 30, "h2 retrying h1")
    lab.start_router(1)
    lab.wait_mesh(30)
    lab.wait(lambda: all(c["state"] == "established" for c in status(2)["connections"]), 15, "no stale retry reason on h2")
    text = lab.ok(1, "status")
    assert "IPAM     ready" in text and "Runs as  process" in text and "retrying" not in text
    # a peer without fastdp says so, instead of "not yet verified"
    lab.stop_router(3)
    lab.extra_flags = ["--no-fastdp"]
    try:
        lab.start_router(3)
    finally:
        lab.extra_flags = []
    lab.wait_mesh(30)
    lab.wait(lambda: "peer has fastdp off" in lab.ok(1, "status", "connections"), 15, "h1 names h3's fastdp off")
    report = json.loads(lab.ok(1, "report"))
    assert report["router"]["router"]["nick"] == f"{lab.prefix}-h1" and "ipam" in report and report["ps"] is not None
    assert lab.ok(1, "version").startswith("meshnet ")


def test_dns_args_and_records(lab):
    lab.ok(1, "expose")  # both ends have a resolver (a no-op if the host is exposed already)
    lab.ok(2, "expose")
    lab.ok(2, "run", "--name", "web", "bb:local", "sleep", "3600")
    web_ip = lab.ip_of(2, "web")
    flags = lab.ok(1, "dns-args").split()
    assert any(f.startswith("--dns=") for f in flags) and "--dns-search=meshnet.local" in flags
    # a container made by plain `docker run` with those flags resolves names across hosts
    r = docker(lab, 1, "run", "--rm", "--network", "meshnet", *flags, "bb:local", "nslookup", "web")
    assert r.returncode == 0 and web_ip in r.stdout, r.stdout + r.stderr
    # dns-add on one host is answered on another; dns-remove takes it away
    assert lab.ok(2, "dns-add", "10.32.9.9", "-h", "db.meshnet.local").split() == ["db.meshnet.local", "10.32.9.9"]
    lab.wait(lambda: lab.cli(1, "dns-lookup", "db").stdout.split() == ["10.32.9.9"], 15, "db resolves on h1")
    r = docker(lab, 1, "run", "--rm", "--network", "meshnet", *flags, "bb:local", "nslookup", "db")
    assert "10.32.9.9" in r.stdout, r.stdout + r.stderr
    lab.ok(2, "dns-add", "web")  # a container's own name and addresses, again: no change
    lab.ok(2, "dns-remove", "-h", "db")
    lab.wait(lambda: lab.cli(1, "dns-lookup", "db").returncode == 1, 15, "db gone on h1")
    assert "db.meshnet.local" not in lab.ok(1, "status", "dns")
    # hide then expose gives the host its old address back: containers keep their DNS server
    before = lab.ok(2, "expose").split()[0]
    lab.ok(2, "hide")
    assert lab.ok(2, "expose").split()[0] == before


def test_run_publish_is_reached_from_another_host(lab):
    lab.stop_dockerd(1)
    lab.docker_bridge.add(1)  # Docker publishes ports on its own bridge network (iptables DNAT)
    lab.start_dockerd(1)
    lab.import_image(1)
    script = "mkdir -p /www && echo hello-published > /www/index.html && httpd -f -p 80 -h /www"
    lab.ok(1, "run", "-p", "8080:80", "--name", "httpd", "bb:local", "sh", "-c", script)
    url = f"http://{lab.host_ip(1)}:8080/"
    lab.wait(lambda: "hello-published" in in_netns(lab, 2, "curl", "-s", "-m", "3", url).stdout, 20, "h2 reaches h1:8080")
    assert lab.ok(1, "ps").count("httpd") == 1


def test_ps_after_dockerd_restart_has_no_duplicates(lab):
    r = docker(lab, 3, "run", "-d", "--name", "w1", "--restart", "always", "--network", "meshnet", "--stop-timeout", "1", "bb:local", "sleep", "3600")
    assert r.returncode == 0, r.stderr
    cid = r.stdout.strip()
    lab.ok(3, "expose")
    ns = f"{lab.host_ns(3)}-c9"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    lab.containers[ns] = ""  # removed with the lab
    lab.ok(3, "attach", ns)

    def rows():
        return json.loads(lab.ok(3, "ps", "--json"))["endpoints"]

    lab.wait(lambda: any(r["name"] == "w1" for r in rows()), 20, "w1 in ps")
    lab.stop_dockerd(3, remove_containers=False)
    lab.start_dockerd(3)
    lab.wait(lambda: lab.client(3).inspect_container("w1")["State"]["Running"], 60, "w1 running again")
    lab.wait(lambda: [r["state"].split(",")[0] for r in rows() if r["name"] == "w1"] == ["attached"], 30, "w1 attached, once")
    got = rows()
    w1 = [r for r in got if r["name"] == "w1"]
    assert len(w1) == 1 and w1[0]["kind"] == "network" and w1[0]["id"] == cid, got
    assert [r["id"] for r in got if r["kind"] == "netns"] == [f"/run/netns/{ns}"]
    assert [r["kind"] for r in got if r["kind"] == "host"] == ["host"]
    docker(lab, 3, "rm", "-f", "w1")


def test_router_container_comes_back_by_itself(lab):
    archive = router_image()
    with open(archive, "rb") as f:
        lab.client(2).load_image(f)
    lab.stop_router(2)
    r = launch(lab, 2, "--router-mode=container", lab.host_ip(1))
    assert r.returncode == 0 and "started in container meshnet-router" in r.stdout, r.stderr
    lab.wait_mesh(30)
    assert "Runs as  container meshnet-router" in lab.ok(2, "status")
    lab.ok(2, "run", "--name", "inner", "bb:local", "sleep", "3600")
    lab.ok(1, "run", "--name", "outer", "bb:local", "sleep", "3600")
    inner = lab.ip_of(2, "inner")
    assert lab.wait(lambda: lab.can_reach(1, "outer", inner), 20, "outer -> inner")

    def came_back(since_pid: int) -> bool:
        status = json.loads(lab.ok(2, "status", "--json"))
        return status["router"]["pid"] != since_pid and len([p for p in status["peers"] if p["reachable"]]) == 3

    for how in ("kill", "docker restart"):
        pid = json.loads(lab.ok(2, "status", "--json"))["router"]["pid"]
        if how == "kill":
            os.kill(pid, 9)
        else:
            assert docker(lab, 2, "restart", "-t", "5", "meshnet-router").returncode == 0
        lab.wait(lambda: came_back(pid), 60, f"the router back on the mesh after {how}")
        lab.wait_mesh(30)
        assert lab.wait(lambda: lab.can_reach(1, "outer", inner), 30, f"outer -> inner after {how}")
    assert "restarted" in lab.ok(2, "status")
    out = lab.ok(2, "stop")
    assert "stopped and removed" in out
    assert docker(lab, 2, "ps", "-a", "-q", "--filter", "name=meshnet-router").stdout.strip() == ""
    for name, host in (("inner", 2), ("outer", 1)):
        docker(lab, host, "rm", "-f", name)
