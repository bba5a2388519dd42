"""CPU time from /proc: one process (all its threads) and the whole box.

The parsers take the file's text, so they are tested without a live /proc; the readers
return None for a process that is gone (a daemon that died mid-run is an error in the
sample, not a crash of the suite).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

HZ = os.sysconf("SC_CLK_TCK")


def parse_pid_stat(text: str, hz: int = HZ) -> float:
    """utime + stime in seconds from /proc/PID/stat (the leader's line covers every thread).

    The command name (field 2) may hold spaces and parentheses, so fields are counted
    from the last ')'. Raises ValueError on a line that does not have them.
    """
    rest = text[text.rindex(")") + 2 :].split()
    utime, stime = int(rest[11]), int(rest[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / hz


def pid_cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return parse_pid_stat(f.read())
    except (OSError, ValueError, IndexError):
        return None


@dataclass(frozen=True)
class BoxTicks:
    """Clock ticks summed over all CPUs since boot (the `cpu` line of /proc/stat)."""

    busy: int  # user + nice + system + irq + softirq: everything but idle, iowait and steal
    steal: int
    total: int


def parse_box_stat(text: str) -> BoxTicks:
    for line in text.splitlines():
        if line.startswith("cpu "):
            v = [int(x) for x in line.split()[1:9]]
            user, nice, system, idle, iowait, irq, softirq, steal = v + [0] * (8 - len(v))
            return BoxTicks(busy=user + nice + system + irq + softirq, steal=steal, total=sum(v))
    raise ValueError("no aggregate cpu line in /proc/stat")


def box_ticks() -> BoxTicks:
    with open("/proc/stat") as f:
        return parse_box_stat(f.read())


def idle_busy_cores(seconds: float) -> float:
    """How many CPUs' worth the box is busy over `seconds` while nothing is measured."""
    import time

    b0 = box_ticks()
    time.sleep(seconds)
    return (box_ticks().busy - b0.busy) / HZ / seconds


@dataclass
class CpuWindow:
    """CPU used between `start` and `stop`: per daemon (by label) and by the whole box."""

    daemons: dict[str, int]
    _d0: dict[str, float | None] | None = None
    _b0: BoxTicks | None = None

    def start(self) -> None:
        self._d0 = {label: pid_cpu_seconds(pid) for label, pid in self.daemons.items()}
        self._b0 = box_ticks()

    def stop(self) -> dict:
        assert self._d0 is not None and self._b0 is not None, "stop() before start()"
        b1 = box_ticks()
        used: dict[str, float | None] = {}
        for label, pid in self.daemons.items():
            end, begin = pid_cpu_seconds(pid), self._d0[label]
            used[label] = None if end is None or begin is None else round(end - begin, 3)
        return {
            "daemon_cpu_s": used,
            "box_busy_s": (b1.busy - self._b0.busy) / HZ,
            "box_steal_s": (b1.steal - self._b0.steal) / HZ,
        }
