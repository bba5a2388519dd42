"""One router per run dir, state dir and namespace; `stop` that waits; an interrupted attach.

::

    mnrl-h1 ---- mnrl-h2       routers launched and stopped through the meshnet CLI, as an
                               operator would; a second router started by mistake

Issue 13, item 3: a second router with another state dir but the same run dir is refused
and leaves the first one's socket and pid file alone; a second launch that fails in the
same namespace never deletes the live router's files; `meshnet stop` returns only when the
process has exited (or says it had to kill it); a kill -9 of the router during `attach`
is told apart: the CLI reports what it found once the router is back.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from meshnet.api.client import ApiClient
from meshnet.kernel.links import veth_name
from meshnet.lab import Lab
from meshnet.lab.procs import alive

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def lab():
    lab = Lab(prefix="mnrl", hosts=2)
    try:
        lab.up()
        lab.wait_mesh()
        yield lab
    finally:
        lab.down()


def files(lab: Lab, i: int) -> tuple[str, int, int]:
    """The first router's pid file content, its socket's inode, and its pid."""
    with open(f"{lab.run_dir(i)}/meshnet.pid") as f:
        text = f.read()
    return text, os.stat(f"{lab.run_dir(i)}/meshnet.sock").st_ino, int(text)


def launch(lab: Lab, i: int, *flags: str, foreground: bool = False) -> subprocess.CompletedProcess:
    cmd = ["ip", "netns", "exec", lab.host_ns(i), sys.executable, "-m", "meshnet", "launch", "--docker-socket=none", *flags]
    cmd += ["--foreground"] if foreground else []
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("foreground", [False, True])
def test_a_second_router_on_the_same_run_dir_is_refused_and_touches_nothing(lab, tmp_path, foreground):
    before = files(lab, 1)
    result = launch(lab, 1, "--run-dir", lab.run_dir(1), "--state-dir", str(tmp_path / "other"), "--port", "7783", foreground=foreground)
    assert result.returncode == 1 and "run dir" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert files(lab, 1) == before
    assert lab.status(1)["router"]["nick"] == "mnrl-h1"
    assert not os.path.exists(tmp_path / "other" / "meshnet.db")  # refused before its state was opened


def test_a_second_router_in_the_same_namespace_fails_and_leaves_the_first_ones_files(lab, tmp_path):
    before = files(lab, 1)
    run_dir = tmp_path / "run"
    result = launch(lab, 1, "--run-dir", str(run_dir), "--state-dir", str(tmp_path / "state"), "--port", "7783", "--udp-port", "7783")
    assert result.returncode == 1 and "network namespace" in result.stderr, result.stderr
    assert files(lab, 1) == before and lab.status(1)["router"]["nick"] == "mnrl-h1"
    assert not os.path.exists(run_dir / "meshnet.pid")  # nor does it leave one of its own
    # the router's own lock holds even when the CLI's early check is not in the way
    script = (
        "import sys; from meshnet.cli.main import build_parser; from meshnet.config import from_args; "
        "from meshnet.cli.launch import run_foreground\n"
        f"args = build_parser().parse_args(['launch', '--docker-socket=none', '--run-dir', {str(run_dir)!r}, "
        f"'--state-dir', {str(tmp_path / 'state')!r}, '--port', '7783', '--udp-port', '7783', '--metrics-addr', ''])\n"
        "run_foreground(from_args(args))"
    )
    direct = subprocess.run(["ip", "netns", "exec", lab.host_ns(1), sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert direct.returncode != 0 and "network namespace" in direct.stderr, direct.stderr[-2000:]
    assert files(lab, 1) == before and lab.status(1)["router"]["nick"] == "mnrl-h1"
    links = subprocess.run(["ip", "-n", lab.host_ns(1), "-o", "link"], capture_output=True, text=True).stdout
    assert "mntap" in links and "vxmesh" in links


def test_stop_returns_only_once_the_router_has_exited(lab):
    _, _, pid = files(lab, 2)
    result = subprocess.run(lab.meshnet(2, "stop"), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and f"pid {pid}" in result.stdout, result.stderr
    assert not alive(pid), "meshnet stop returned while the router was still running"
    lab.start_router(2)
    lab.wait_mesh()


def test_stop_kills_a_router_that_does_not_leave_and_says_so(lab):
    _, _, pid = files(lab, 2)
    os.kill(pid, signal.SIGSTOP)  # hung: it will not answer, nor exit on SIGTERM
    try:
        started = time.monotonic()
        result = subprocess.run(lab.meshnet(2, "stop"), capture_output=True, text=True, timeout=90)
        took = time.monotonic() - started
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGCONT)
    assert result.returncode == 1 and "killed it" in result.stderr, (result.stdout, result.stderr)
    assert not alive(pid) and took < 60
    lab.start_router(2)
    lab.wait_mesh()


def attached(lab: Lab, i: int, ns: str) -> tuple[list[str], list[str]]:
    """(addresses of mesh0 inside ns, addresses IPAM holds for its endpoint on host i)."""
    out = subprocess.run(["ip", "-n", ns, "-j", "addr", "show", "dev", "mesh0"], capture_output=True, text=True)
    inside = [f"{a['local']}/{a['prefixlen']}" for link in json.loads(out.stdout or "[]") for a in link["addr_info"] if a["family"] == "inet"]
    owners = ApiClient(f"{lab.run_dir(i)}/meshnet.sock").get("/ipam/owners")["owners"]
    return inside, owners.get(f"netns:/run/netns/{ns}", [])


def test_a_kill_during_attach_is_reported_as_what_it_was(lab):
    """kill -9 of the router at a random moment of `meshnet attach`, then a restart: the CLI
    reports success exactly when the namespace is attached, with the address IPAM holds."""
    rng = random.Random(int(os.environ.get("MNR_SEED", "13")))
    probe = "mnrl-h1-timing"
    subprocess.run(["ip", "netns", "add", probe], check=True)
    lab.containers[probe] = ""
    started = time.monotonic()
    subprocess.run(lab.meshnet(1, "attach", probe), capture_output=True, check=True)
    window = time.monotonic() - started  # how long an attach takes here: kill somewhere in it
    outcomes = []
    for k in range(6):
        ns = f"mnrl-h1-a{k}"
        subprocess.run(["ip", "netns", "add", ns], check=True)
        lab.containers[ns] = ""
        cli = subprocess.Popen(lab.meshnet(1, "attach", ns), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(0.0, 1.2 * window))
        lab.kill_router(1)
        lab.start_router(1)
        out, err = cli.communicate(timeout=90)
        inside, held = attached(lab, 1, ns)
        if cli.returncode == 0:
            result = json.loads(out)
            assert inside == result["cidrs"] and [c.split("/")[0] for c in inside] == held, (out, err, inside, held)
            outcomes.append(result.get("state", "?") + (" after a lost answer" if "went away" in err else ""))
        else:  # the router was gone before the request reached it: nothing was done
            assert "no meshnet router is running" in err, err
            assert inside == [] and held == [], (err, inside, held)
            outcomes.append("refused: no router")
    print("\nattach interrupted by kill -9:", outcomes)
    lab.wait_mesh()


def test_an_attach_whose_answer_was_lost_is_asked_again_and_reported(lab):
    """Deterministic: the router is frozen with the request in its socket, then killed, then
    started again. The CLI must not report a failure: it asks again and says what it found."""
    ns = "mnrl-h1-lost"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    lab.containers[ns] = ""
    _, _, pid = files(lab, 1)
    os.kill(pid, signal.SIGSTOP)
    cli = subprocess.Popen(lab.meshnet(1, "attach", ns), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)  # connected, request sent, no answer
    lab.kill_router(1)
    os.kill(pid, signal.SIGCONT)
    lab.start_router(1)
    out, err = cli.communicate(timeout=90)
    assert cli.returncode == 0 and "went away during attach" in err and "had not completed" in err, (out, err)
    inside, held = attached(lab, 1, ns)
    assert inside == json.loads(out)["cidrs"] and [c.split("/")[0] for c in inside] == held
    lab.wait_mesh()


def test_attach_again_says_it_is_already_attached(lab):
    ns = "mnrl-h2-again"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    lab.containers[ns] = ""
    first = json.loads(subprocess.run(lab.meshnet(2, "attach", ns), capture_output=True, text=True, check=True).stdout)
    again = subprocess.run(lab.meshnet(2, "attach", ns), capture_output=True, text=True)
    assert again.returncode == 0 and json.loads(again.stdout)["state"] == "already attached"
    assert json.loads(again.stdout)["cidrs"] == first["cidrs"] and first["state"] == "attached"
    other = subprocess.run(lab.meshnet(2, "attach", ns, "10.32.9.9/12"), capture_output=True, text=True)
    assert other.returncode == 1 and "already attached" in other.stderr


def test_an_attach_cut_short_before_its_veth_was_on_the_bridge_is_made_afresh(lab):
    """Deterministic: what a kill -9 right after the veth pair was created leaves (our veth
    for the namespace, off the bridge, its inner end not yet named). The next attach of the
    namespace replaces it instead of refusing ("already attached")."""
    ns = "mnrl-h1-half"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    lab.containers[ns] = ""
    host = veth_name(f"/run/netns/{ns}")
    subprocess.run(["ip", "-n", lab.host_ns(1), "link", "add", host, "type", "veth", "peer", "name", "tmp0", "netns", ns], check=True)
    result = subprocess.run(lab.meshnet(1, "attach", ns), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["state"] == "attached"
    inside, held = attached(lab, 1, ns)
    assert inside == out["cidrs"] and [c.split("/")[0] for c in inside] == held
