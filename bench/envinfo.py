"""The machine and the versions a run was taken with (results.json `env`)."""

from __future__ import annotations

import os
import pathlib
import platform
import subprocess
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    lines = (out.stdout or out.stderr).strip().splitlines()
    return lines[0].strip() if lines else "?"


def _read(path: str, default: str = "?") -> str:
    try:
        return pathlib.Path(path).read_text().strip()
    except OSError:
        return default


def loadavg() -> str:
    return " ".join(_read("/proc/loadavg").split()[:3])


def cpu_model() -> str:
    for line in _read("/proc/cpuinfo", "").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def git_commit() -> str:
    head = _first_line(["git", "-C", str(ROOT), "describe", "--always", "--dirty", "--abbrev=12"])
    return head if "not a git" not in head else "?"


def collect() -> dict:
    from meshnet import __version__

    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "kernel": platform.release(),
        "cpu": cpu_model(),
        "nproc": os.cpu_count(),
        "loadavg_start": loadavg(),
        "tcp_cc_default": _read("/proc/sys/net/ipv4/tcp_congestion_control"),
        "tcp_cc_available": _read("/proc/sys/net/ipv4/tcp_available_congestion_control"),
        "meshnet": f"{__version__} ({git_commit()})",
        "python": platform.python_version(),
        "iperf3": _first_line(["iperf3", "--version"]),
        "ping": _first_line(["ping", "-V"]),
        "iproute2": _first_line(["ip", "-V"]),
    }
