"""Container to container across two `meshnet lab` hosts: sleeve plain, sleeve encrypted
and fastdp (kernel VXLAN), with iperf3 TCP x1/x4 (CUBIC and BBR), UDP 64 B and ping.

    sudo .venv/bin/python bench/sleeve_lab.py [--seconds 5] [--modes sleeve,sleeve-aes,fastdp]

Uses the lab's namespaces (prefix mnperf) only, bounds every test in time and removes
the lab afterwards. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from meshnet.cli.status import describe_pump  # noqa: E402
from meshnet.lab import Lab  # noqa: E402

MODES = {
    "sleeve": dict(password=None, extra_flags=["--no-fastdp"]),
    "sleeve-aes": dict(password="bench-not-secret", extra_flags=["--no-fastdp"]),
    "fastdp": dict(password=None, extra_flags=[]),
}


def iperf(client: str, server: str, ip: str, args: list[str], seconds: int) -> dict:
    srv = subprocess.Popen(["ip", "netns", "exec", server, "iperf3", "-s", "-1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.4)
        out = subprocess.run(["ip", "netns", "exec", client, "iperf3", "-c", ip, "-J", "-t", str(seconds), *args],
                             capture_output=True, text=True, timeout=seconds + 30)
        return json.loads(out.stdout)["end"]
    except (ValueError, KeyError, subprocess.TimeoutExpired):
        return {}
    finally:
        srv.kill()
        srv.wait()


def measure(mode: str, seconds: int) -> dict:
    lab = Lab(prefix="mnperf", hosts=2, **MODES[mode])
    lab.up()
    try:
        lab.wait_mesh()
        a, _ = lab.add_container(1, 1)
        b, bip = lab.add_container(2, 1)
        deadline = time.monotonic() + 20
        while not lab.ping(a, bip, wait=1) and time.monotonic() < deadline:
            pass
        res = {"mode": mode, "pump": describe_pump(lab.status(1)["dataplane"]["pump"])}
        for name, args in (("tcp1_cubic", ["-C", "cubic", "-O", "1"]), ("tcp4_cubic", ["-C", "cubic", "-P", "4"]),
                           ("tcp1_bbr", ["-C", "bbr", "-O", "1"])):
            end = iperf(a, b, bip, args, seconds)
            res[name] = end.get("sum_received", {}).get("bits_per_second", 0) / 1e9
        end = iperf(a, b, bip, ["-u", "-l", "64", "-b", "0"], max(2, seconds // 2))
        if end:
            r = end["sum_received"]
            res["udp64_rx_kpps"] = (r["packets"] - r["lost_packets"]) / r["seconds"] / 1e3 if r["seconds"] else 0
        out = subprocess.run(["ip", "netns", "exec", a, "ping", "-c", "20", "-i", "0.05", "-q", bip], capture_output=True, text=True, timeout=30)
        try:
            res["rtt_ms"] = float(out.stdout.rsplit("=", 1)[1].split("/")[1])
        except (IndexError, ValueError):
            res["rtt_ms"] = None
        return res
    finally:
        lab.down()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--modes", default="sleeve,sleeve-aes,fastdp")
    args = ap.parse_args()
    rows = [measure(m, args.seconds) for m in args.modes.split(",")]
    print("| mode | TCP x1 CUBIC Gbit/s | TCP x4 CUBIC | TCP x1 BBR | UDP 64 B rx kpps | RTT ms | pump |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['tcp1_cubic']:.2f} | {r['tcp4_cubic']:.2f} | {r['tcp1_bbr']:.2f} | "
              f"{r.get('udp64_rx_kpps', 0):.0f} | {r.get('rtt_ms')} | {r['pump']} |")


if __name__ == "__main__":
    main()
