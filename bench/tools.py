"""The measuring tools, run inside namespaces: iperf3 (TCP, UDP 64 B) and ping.

Every pair of a path runs at once (a multi-host path has several), each with its own
iperf3 server port. Parsers take the tools' output text, so they are unit-tested against
recorded output (tests/data/bench/). Every wait is bounded; an error becomes the sample's
`error`, never an exception out of the run.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from dataclasses import dataclass

from bench.plan import Test

PORT_BASE = 5301


@dataclass(frozen=True)
class Pair:
    """One flow of a path: from a namespace to an address living in another namespace."""

    src_ns: str
    dst_ns: str
    dst_ip: str


def in_ns(ns: str, *cmd: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *cmd]


# -- parsers ----------------------------------------------------------------------------------


def parse_iperf(text: str, udp: bool) -> dict:
    """One iperf3 -J report: Gbit/s (TCP) or received packets per second (UDP), or an error."""
    try:
        data = json.loads(text)
    except ValueError:
        return {"error": "iperf3 printed no JSON: " + text.strip()[-160:]}
    if not isinstance(data, dict):
        return {"error": "iperf3 JSON is not an object"}
    if data.get("error"):
        return {"error": str(data["error"])[:200]}
    try:
        end = data["end"]
        received = end["sum_received"]
        if udp:
            sent = end["sum_sent"]
            rx = received["packets"] - received["lost_packets"]
            return {
                "rx_pps": rx / received["seconds"] if received["seconds"] else 0.0,
                "tx_pps": sent["packets"] / sent["seconds"] if sent["seconds"] else 0.0,
                "loss_pct": float(received["lost_percent"]),
                "bytes": rx * 64,
            }
        return {
            "gbps": received["bits_per_second"] / 1e9,
            "bytes": int(received["bytes"]),
            "retransmits": end["sum_sent"].get("retransmits"),
            "cc": end.get("sender_tcp_congestion"),
        }
    except (KeyError, TypeError, ZeroDivisionError) as exc:
        return {"error": f"iperf3 JSON without {exc}"}


_RTT = re.compile(r"= ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms")
_LOSS = re.compile(r"([\d.]+)% packet loss")


def parse_ping(text: str) -> dict:
    m = _RTT.search(text)
    if not m:
        return {"error": "ping: no reply (" + " ".join(text.strip().splitlines()[-1:])[:120] + ")"}
    loss = _LOSS.search(text)
    return {
        "rtt_ms": float(m.group(2)),
        "rtt_min_ms": float(m.group(1)),
        "rtt_max_ms": float(m.group(3)),
        "rtt_mdev_ms": float(m.group(4)),
        "loss_pct": float(loss.group(1)) if loss else None,
    }


def combine(kind: str, results: list[dict]) -> dict:
    """The pairs of one measurement as one sample: throughputs add up, RTTs average."""
    errors = [r["error"] for r in results if r.get("error")]
    if errors:
        return {"error": "; ".join(errors)}
    if kind == "tcp":
        return {
            "gbps": sum(r["gbps"] for r in results),
            "bytes": sum(r["bytes"] for r in results),
            "retransmits": sum(r.get("retransmits") or 0 for r in results),
            "cc": results[0].get("cc"),
            "per_pair_gbps": [round(r["gbps"], 4) for r in results],
        }
    if kind == "udp":
        return {
            "rx_pps": sum(r["rx_pps"] for r in results),
            "tx_pps": sum(r["tx_pps"] for r in results),
            "loss_pct": sum(r["loss_pct"] for r in results) / len(results),
            "bytes": sum(r["bytes"] for r in results),
        }
    return {
        "rtt_ms": sum(r["rtt_ms"] for r in results) / len(results),
        "rtt_mdev_ms": max(r["rtt_mdev_ms"] for r in results),
        "loss_pct": max(r["loss_pct"] or 0 for r in results),
    }


# -- runners ----------------------------------------------------------------------------------


def _listening(ns: str, port: int) -> bool:
    out = subprocess.run(in_ns(ns, "ss", "-Hltn", f"sport = :{port}"), capture_output=True, text=True, timeout=10)
    return bool(out.stdout.strip())


def iperf_args(test: Test, pair: Pair, port: int) -> list[str]:
    args = ["iperf3", "-c", pair.dst_ip, "-p", str(port), "-J", "-t", str(test.seconds)]
    if test.kind == "udp":
        return args + ["-u", "-l", "64", "-b", "0"]
    args += ["-C", test.cc or "cubic"]
    if test.streams > 1:
        args += ["-P", str(test.streams)]
    if test.omit:
        args += ["-O", str(test.omit)]
    return args


def run_iperf(test: Test, pairs: list[Pair], around=None) -> tuple[list[dict], dict]:
    """Run `test` over every pair at once: (one result per pair, what `around.stop()` said).

    `around` (a `CpuWindow`) brackets exactly the clients' run.
    """
    servers = []
    try:
        for k, pair in enumerate(pairs):
            port = PORT_BASE + k
            servers.append(
                subprocess.Popen(in_ns(pair.dst_ns, "iperf3", "-s", "-1", "-p", str(port)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
        for k, pair in enumerate(pairs):
            deadline = time.monotonic() + 5
            while not _listening(pair.dst_ns, PORT_BASE + k):
                if time.monotonic() > deadline:
                    return [{"error": f"iperf3 server in {pair.dst_ns} did not listen"}], {}
                time.sleep(0.05)
        if around:
            around.start()
        clients = [
            subprocess.Popen(in_ns(p.src_ns, *iperf_args(test, p, PORT_BASE + k)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for k, p in enumerate(pairs)
        ]
        results = []
        limit = time.monotonic() + test.seconds + test.omit + 30
        for client in clients:
            try:
                out, err = client.communicate(timeout=max(1.0, limit - time.monotonic()))
                results.append(parse_iperf(out or err, udp=test.kind == "udp"))
            except subprocess.TimeoutExpired:
                client.kill()
                client.communicate()
                results.append({"error": "iperf3 client timed out"})
        return results, (around.stop() if around else {})
    finally:
        for srv in servers:
            try:
                srv.wait(timeout=3)
            except subprocess.TimeoutExpired:
                srv.kill()
                srv.wait()


def run_ping(test: Test, pairs: list[Pair], interval: float) -> list[dict]:
    procs = [
        subprocess.Popen(
            in_ns(p.src_ns, "ping", "-c", str(test.count), "-i", str(interval), "-W", "2", "-q", p.dst_ip),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for p in pairs
    ]
    results = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=test.count * interval + 15)
            results.append(parse_ping(out))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            results.append({"error": "ping timed out"})
    return results


def df_ping(pair: Pair, mtu: int) -> bool:
    """Does a full-size packet with DF set cross the path (the MTU is what it claims)?"""
    out = subprocess.run(
        in_ns(pair.src_ns, "ping", "-c", "2", "-i", "0.2", "-W", "2", "-M", "do", "-s", str(mtu - 28), "-q", pair.dst_ip),
        capture_output=True,
        timeout=20,
    )
    return out.returncode == 0


def wait_ping(pair: Pair, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if subprocess.run(in_ns(pair.src_ns, "ping", "-c", "1", "-W", "1", "-q", pair.dst_ip), capture_output=True).returncode == 0:
            return True
        time.sleep(0.2)
    return False
