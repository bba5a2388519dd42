"""What a long run is doing and how far it is: one line per measurement, with an ETA.

    [ 37/228  16%] round 2/3  sleeve-ctr         tcp1-cubic  6s ... 5.81 Gbit/s   4m12s done, ETA 21m30s

The ETA scales what is left of the plan's estimate by how the measurements so far
compared with theirs, so a slow machine corrects it after the first few lines.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def fmt_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{h}h{m:02d}m"
    return f"{m}m{s:02d}s" if m else f"{s}s"


def eta_seconds(done_estimate: float, done_actual: float, remaining_estimate: float) -> float:
    """Remaining time: the plan's estimate of what is left, corrected by the observed pace."""
    if done_estimate <= 0 or done_actual <= 0:
        return remaining_estimate
    return remaining_estimate * (done_actual / done_estimate)


def fmt_value(test_kind: str, sample: dict) -> str:
    """A sample as the progress line shows it."""
    if sample.get("error"):
        return "ERROR " + str(sample["error"])[:80]
    if test_kind == "tcp":
        return f"{sample['gbps']:.3g} Gbit/s"
    if test_kind == "udp":
        return f"{sample['rx_pps'] / 1e3:.0f} kpps rx ({sample['loss_pct']:.0f}% lost)"
    return f"{sample['rtt_ms']:.3f} ms"


class Progress:
    def __init__(self, estimates: list[float], rounds: int, out: TextIO = sys.stderr, clock=time.monotonic):
        self.estimates = estimates
        self.rounds = rounds
        self.out = out
        self.clock = clock
        self.t0 = clock()
        self.index = 0

    def start(self, rnd: int, path: str, test: str, seconds: float) -> None:
        n = len(self.estimates)
        pct = 100 * self.index // max(1, n)
        self.out.write(f"[{self.index + 1:>{len(str(n))}}/{n} {pct:>3}%] round {rnd + 1}/{self.rounds}  {path:<18} {test:<11} {seconds:>4g}s ... ")
        self.out.flush()

    def done(self, value: str) -> None:
        self.index += 1
        elapsed = self.clock() - self.t0
        eta = eta_seconds(sum(self.estimates[: self.index]), elapsed, sum(self.estimates[self.index :]))
        self.out.write(f"{value:<24} {fmt_duration(elapsed)} done, ETA {fmt_duration(eta)}\n")
        self.out.flush()


def note(message: str, out: TextIO = sys.stderr) -> None:
    """A setup or teardown line, stamped with the wall clock."""
    out.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")
    out.flush()
