"""What one run measures: the tests, their lengths, the rounds, and the time it will take.

A `Plan` is data (it goes into results.json as `params`); `measurements()` lays the run
out round-robin (every path once per round, in the same order) so that machine noise
hits every path alike.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

OVERHEAD_S = 1.0  # per measurement: starting iperf3 in two namespaces, its handshake, the pause after it


@dataclass(frozen=True)
class Test:
    __test__ = False  # not a pytest test class

    name: str  # tcp1-cubic, tcp4-cubic, tcp1-bbr, udp64, ping
    kind: str  # tcp, udp, ping
    seconds: float
    streams: int = 1
    cc: str | None = None  # TCP congestion control (iperf3 -C), None for UDP and ping
    omit: int = 0  # iperf3 -O: seconds of slow start left out of the figure
    count: int = 0  # ping: echo requests

    def estimate_s(self) -> float:
        return self.seconds + self.omit + OVERHEAD_S


@dataclass
class Plan:
    rounds: int = 3
    tcp_seconds: int = 6  # TCP x1 (each congestion control)
    tcp4_seconds: int = 4
    udp_seconds: int = 3
    omit: int = 1
    ping_count: int = 20
    ping_interval: float = 0.05
    cc: list[str] = field(default_factory=lambda: ["cubic", "bbr"])  # the first is the headline
    quick: bool = False

    @classmethod
    def quick_plan(cls) -> Plan:
        """Seconds per measurement and one round: proves the command, not the figures."""
        return cls(rounds=1, tcp_seconds=1, tcp4_seconds=1, udp_seconds=1, omit=0, ping_count=5, quick=True)

    @property
    def headline_cc(self) -> str:
        return self.cc[0]

    def tests(self) -> list[Test]:
        head = self.headline_cc
        out = [Test(f"tcp1-{head}", "tcp", self.tcp_seconds, 1, head, self.omit)]
        out += [Test(f"tcp4-{head}", "tcp", self.tcp4_seconds, 4, head, self.omit)]
        out += [Test(f"tcp1-{cc}", "tcp", self.tcp_seconds, 1, cc, self.omit) for cc in self.cc[1:]]
        out.append(Test("udp64", "udp", self.udp_seconds))
        out.append(Test("ping", "ping", round(self.ping_count * self.ping_interval, 2), count=self.ping_count))
        return out

    def measurements(self, paths: list[str]) -> list[tuple[int, str, Test]]:
        """(round, path, test) in run order: round by round, path by path, test by test."""
        return [(r, p, t) for r in range(self.rounds) for p in paths for t in self.tests()]

    def estimate_s(self, n_paths: int) -> float:
        return self.rounds * n_paths * sum(t.estimate_s() for t in self.tests())

    def as_dict(self) -> dict:
        return {**asdict(self), "tests": [asdict(t) for t in self.tests()]}
