"""The kernel FDB of a lab namespace, seen from outside the router: its rows counted by kind
(`bridge fdb show`) and its changes as they happen (`bridge monitor fdb`).
Used by bench/endpoint_scale.py.
"""

from __future__ import annotations

import os
import select
import subprocess
import time
from collections import Counter
from typing import Callable

QUIET = 1.0  # seconds of no FDB events that end one update's window


def classify_fdb(text: str, prefix: str) -> Counter:
    """`bridge fdb show` rows of MACs starting with `prefix`, by kind: "vxlan" (the VXLAN
    device's own entries, with a dst) and "bridge:<port>" (the bridge's)."""
    kinds: Counter = Counter()
    for line in text.splitlines():
        if not line.startswith(prefix):
            continue
        f = line.split()
        dev = f[f.index("dev") + 1] if "dev" in f else "?"
        kinds["bridge:" + dev if "master" in f else "vxlan" if "dst" in f else dev] += 1
    return kinds


def fdb_counts(ns: str, prefix: str) -> Counter:
    out = subprocess.run(["bridge", "-n", ns, "fdb", "show"], capture_output=True, text=True, timeout=120, check=True).stdout
    return classify_fdb(out, prefix)


class FdbWatch:
    """`bridge monitor fdb` in a namespace: each kernel FDB change as it happens."""

    def __init__(self, ns: str):
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, "bridge", "monitor", "fdb"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        os.set_blocking(self.proc.stdout.fileno(), False)
        self._buf = b""

    def read(self, until_t: float) -> list[tuple[float, str]]:
        """Lines that arrive before monotonic time `until_t`, each with its arrival time."""
        out = []
        fd = self.proc.stdout.fileno()
        while (left := until_t - time.monotonic()) > 0:
            if not select.select([fd], [], [], left)[0]:
                break
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise RuntimeError("bridge monitor ended")
            now = time.monotonic()
            self._buf += chunk
            *lines, self._buf = self._buf.split(b"\n")
            out += [(now, line.decode(errors="replace")) for line in lines]
        return out

    def update(self, send: Callable[[], None], mac: str, timeout: float) -> tuple[float, int]:
        """Run `send`; seconds until the bridge has `mac` (its last FDB entry: VXLAN first),
        and the FDB events from `send` until QUIET seconds pass without one."""
        self.read(time.monotonic() + 0.2)  # what came before is not ours
        t0 = time.monotonic()
        send()
        events, took, end = 0, None, t0 + timeout
        while True:
            lines = self.read(min(end, time.monotonic() + QUIET))
            events += len(lines)
            for at, line in lines:
                if took is None and line.startswith(mac) and " master " in line and not line.startswith("Deleted"):
                    took = at - t0
            if took is not None and (not lines or time.monotonic() - t0 > took + 5 * QUIET):
                return took, events
            if time.monotonic() >= end:
                raise TimeoutError(f"the kernel FDB did not get {mac} within {timeout:.0f}s")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)
