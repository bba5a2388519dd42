"""What a Docker lab (`meshnet.lab.dockerd`) may stop or remove outside its namespaces:
processes by a PID it recorded, containerd shims whose command line names its own exec-root,
mounts under its own dirs, and its own cgroups.
"""

from __future__ import annotations

import os
import subprocess
import time


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            return True
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.05)
    return not alive(pid)


def read_pid(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def pids_with(text: str) -> list[int]:
    """PIDs of the containerd shims whose command line contains `text` (a lab's exec-root)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and text in cmdline(int(entry)) and "containerd-shim" in cmdline(int(entry)):
            out.append(int(entry))
    return out


def umount_under(base: str) -> None:
    try:
        with open("/proc/mounts") as f:
            points = [line.split()[1] for line in f if line.split()[1].startswith(base + "/") or line.split()[1] == base]
    except OSError:
        return
    for point in sorted(points, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, timeout=10)


def cgroup_dirs(name: str) -> list[str]:
    out = []
    root = "/sys/fs/cgroup"
    try:
        for controller in os.listdir(root):
            path = os.path.join(root, controller, name)
            if os.path.isdir(path):
                out.append(path)
    except OSError:
        pass
    if os.path.isdir(os.path.join(root, name)):
        out.append(os.path.join(root, name))
    return out
