"""A test bed: one `meshnet.lab.Lab` (hosts as namespaces on a bridged underlay) plus
what the suite adds to it: daemons it starts (peers), namespaces (hand-made containers),
files (sockets). Everything is recorded in a ledger under /run/meshnet-bench before it is
created, so `python -m bench clean` can remove what an interrupted run left behind, and
nothing else: processes by the PID recorded (checked against their command name) or
running inside the suite's own namespaces.
"""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
import signal
import shutil
import subprocess
import tempfile
import time

from meshnet.lab import Lab, netns_exists

LEDGER_DIR = pathlib.Path("/run/meshnet-bench")


class Ledger:
    """What one run (one prefix) created, on disk as JSON; one run per prefix at a time."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.path = LEDGER_DIR / f"{prefix}.json"
        self.data: dict = {"beds": [], "netns": [], "pids": [], "files": [], "dirs": []}
        self._lock_fd: int | None = None

    def lock(self) -> None:
        LEDGER_DIR.mkdir(parents=True, exist_ok=True)
        fd = os.open(LEDGER_DIR / f"{self.prefix}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RuntimeError(f"another bench run with prefix {self.prefix} is running") from None
        self._lock_fd = fd
        if self.path.exists():
            self.unlock()
            raise RuntimeError(f"a bench run with prefix {self.prefix} did not clean up: run `python -m bench clean --prefix {self.prefix}`")

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def load(self) -> bool:
        try:
            self.data = json.loads(self.path.read_text())
            return True
        except (OSError, ValueError):
            return False

    def add(self, key: str, item) -> None:
        self.data.setdefault(key, []).append(item)
        self.path.write_text(json.dumps(self.data))

    def forget(self) -> None:
        self.path.unlink(missing_ok=True)


def comm_of(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv0 = f.read().split(b"\0", 1)[0].decode(errors="replace")
        return os.path.basename(argv0)
    except OSError:
        return None


def stop_pid(pid: int, expected: str, timeout: float = 3.0) -> None:
    """SIGTERM, then SIGKILL, a process the suite started: only if it still runs `expected`."""
    if comm_of(pid) != expected:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    return
            except ChildProcessError:
                if not comm_of(pid):  # gone, or a zombie its parent will reap
                    return
            time.sleep(0.05)


def pids_in(ns: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=10)
    return [int(p) for p in out.stdout.split() if p.isdigit()]


def clear_netns(names: list[str]) -> None:
    """Stop whatever still runs inside these (the suite's own) namespaces, then delete them."""
    for ns in names:
        if netns_exists(ns):
            for pid in pids_in(ns):
                stop_pid(pid, comm_of(pid) or "", timeout=2)
    for ns in names:
        if netns_exists(ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)


class Bed:
    """One Lab and what the suite adds to it; `down()` removes all of it."""

    def __init__(self, ledger: Ledger, lab: Lab, logs: pathlib.Path):
        self.ledger = ledger
        self.lab = lab
        self.logs = logs
        self.netns: list[str] = []
        self.pids: list[tuple[int, str]] = []
        self.files: list[str] = []
        self._work: pathlib.Path | None = None

    @property
    def work(self) -> pathlib.Path:
        """A private directory for configurations and keys (never copied into the results)."""
        if self._work is None:
            self._work = pathlib.Path(tempfile.mkdtemp(prefix=f"meshnet-bench-{self.lab.prefix}-"))
            self.ledger.add("dirs", str(self._work))
        return self._work

    def up(self, *, start_routers: bool = True) -> None:
        self.ledger.add("beds", {"prefix": self.lab.prefix, "hosts": self.lab.hosts})
        self.lab.up(start_routers=start_routers)

    def ns(self, i: int) -> str:
        return self.lab.host_ns(i)

    def ip(self, i: int) -> str:
        return self.lab.host_ip(i)

    def add_netns(self, name: str) -> str:
        self.ledger.add("netns", name)
        self.netns.append(name)
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, timeout=20)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, capture_output=True, timeout=20)
        return name

    def add_file(self, path: str) -> None:
        self.ledger.add("files", path)
        self.files.append(path)

    def spawn(self, ns: str, argv: list[str], log_name: str, env: dict | None = None) -> int:
        """Start a daemon in `ns` (`ip netns exec` execs it: the PID is the daemon's)."""
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / log_name, "ab") as log:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                start_new_session=True,  # a Ctrl-C at the terminal reaches the suite, which stops it
            )
        name = os.path.basename(argv[0])
        self.ledger.add("pids", [proc.pid, name])
        self.pids.append((proc.pid, name))
        return proc.pid

    def router_pid(self, i: int) -> int:
        with open(f"{self.lab.run_dir(i)}/meshnet.pid") as f:
            return int(f.read().strip())

    def down(self) -> None:
        for pid, name in reversed(self.pids):
            stop_pid(pid, name)
        for i in range(1, self.lab.hosts + 1):
            if os.path.exists(f"{self.lab.run_dir(i)}/meshnet.pid"):
                self.lab.stop_router(i)
            self._keep_log(f"{self.lab.run_dir(i)}/meshnet.log", f"router-h{i}.log")
        hosts = [self.lab.host_ns(i) for i in range(1, self.lab.hosts + 1)]
        clear_netns(self.netns + list(self.lab.containers) + hosts)
        self.lab.down()
        for path in self.files:
            pathlib.Path(path).unlink(missing_ok=True)
        if self._work is not None:
            shutil.rmtree(self._work, ignore_errors=True)


    def _keep_log(self, src: str, name: str) -> None:
        """The router's log goes with the results (the lab removes its run dir)."""
        if os.path.exists(src):
            self.logs.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, self.logs / name)


def clean(prefix: str) -> list[str]:
    """Remove what a run with this prefix left behind (from its ledger); what was done."""
    ledger = Ledger(prefix)
    if not ledger.load():
        return []
    done = []
    for pid, name in ledger.data["pids"]:
        if comm_of(pid) == name:
            stop_pid(pid, name)
            done.append(f"stopped {name} (pid {pid})")
    for bed in ledger.data["beds"]:
        lab = Lab(prefix=bed["prefix"], hosts=bed["hosts"])
        try:
            lab = Lab.load(bed["prefix"])
        except (OSError, ValueError, KeyError):
            pass
        for i in range(1, lab.hosts + 1):
            if os.path.exists(f"{lab.run_dir(i)}/meshnet.pid"):
                lab.stop_router(i)
        clear_netns(ledger.data["netns"] + list(lab.containers) + [lab.host_ns(i) for i in range(1, lab.hosts + 1)])
        lab.down()
        done.append(f"removed lab {bed['prefix']}")
    for path in ledger.data.get("files", []):
        pathlib.Path(path).unlink(missing_ok=True)
    for path in ledger.data.get("dirs", []):
        shutil.rmtree(path, ignore_errors=True)
        done.append(f"removed {path}")
    ledger.forget()
    return done
