"""Throughput of both pumps, no root needed: 1400-byte frames socketpair -> pump A ->
UDP over loopback -> pump B -> socketpair, for a bounded time per implementation.

    PYTHONPATH=. .venv/bin/python tests/pump/bench_pump.py [--seconds 3] [--batch 32]

A producer process writes frames into A's fake TAP as fast as it can, a consumer
process drains B's; the pumps run in threads of this process. On a 2-core machine the
four of them share the CPUs, so the rates say as much about the Python producer and
consumer as about the pumps; the CPU time each pump thread spends per frame (from
/proc, microseconds) is the figure that compares implementations. Frames delivered =
B's tap_tx.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import threading
import time

from meshnet.dataplane.pump import load_pump
from pump_harness import offloads_for

FRAME = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00" + b"\xab" * 1386


def _produce(fd: int, stop) -> None:
    while not stop.is_set():
        for _ in range(256):
            os.write(fd, FRAME)


def _consume(fd: int, stop) -> None:
    os.set_blocking(fd, False)
    while not stop.is_set():
        try:
            while True:
                os.read(fd, 2048)
        except BlockingIOError:
            time.sleep(0.0002)


def _udp() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)  # capped at net.core.rmem_max
    return s


def measure(cls: type, seconds: float, batch: int) -> dict[str, float]:
    app_a, tap_a = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    app_b, tap_b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    udp_a, udp_b = _udp(), _udp()
    a = cls(tap_a.fileno(), udp_a.fileno(), 1, batch=batch, offloads=offloads_for(cls, tap_a.fileno(), udp_a.fileno()))
    b = cls(tap_b.fileno(), udp_b.fileno(), 2, batch=batch, offloads=offloads_for(cls, tap_b.fileno(), udp_b.fileno()))
    a.set_peer(2, udp_b.getsockname(), 2)
    a.set_mac(FRAME[:6], 2)  # a known unicast MAC: the common case, no flood
    b.set_peer(1, udp_a.getsockname(), 1)
    tids: dict[str, int] = {}

    def run(name: str, pump) -> None:
        tids[name] = threading.get_native_id()
        pump.run()

    threads = [threading.Thread(target=run, args=(n, p)) for n, p in (("a", a), ("b", b))]
    ctx = multiprocessing.get_context("fork")
    stop = ctx.Event()
    procs = [ctx.Process(target=_produce, args=(app_a.fileno(), stop)),
             ctx.Process(target=_consume, args=(app_b.fileno(), stop))]
    try:
        for t in threads:
            t.start()
        for p in procs:
            p.start()
        time.sleep(0.5)  # warm up
        sa0, sb0, t0, cpu0 = a.stats(), b.stats(), time.monotonic(), _cpu(tids)
        time.sleep(seconds)
        sa1, sb1, t1, cpu1 = a.stats(), b.stats(), time.monotonic(), _cpu(tids)
    finally:
        stop.set()
        app_b.setblocking(False)
        for p in procs:
            p.join(5)
        for pump in (a, b):
            pump.stop()
        for t in threads:
            t.join(5)
        for pump in (a, b):
            pump.close()
        for s in (app_a, tap_a, app_b, tap_b, udp_a, udp_b):
            s.close()
    dt = t1 - t0
    rate = lambda s1, s0, k: (s1[k] - s0[k]) / dt  # noqa: E731
    return {
        "offered": rate(sa1, sa0, "tap_rx"),
        "sent": rate(sa1, sa0, "udp_tx"),
        "received": rate(sb1, sb0, "udp_rx"),
        "delivered": rate(sb1, sb0, "tap_tx"),
        "tap_write_drops": rate(sb1, sb0, "drop_tap_write"),
        # CPU seconds per frame of each pump thread: independent of the harness' speed
        "us_a": 1e6 * (cpu1["a"] - cpu0["a"]) / max(1, sa1["tap_rx"] - sa0["tap_rx"]),
        "us_b": 1e6 * (cpu1["b"] - cpu0["b"]) / max(1, sb1["udp_rx"] - sb0["udp_rx"]),
    }


def _cpu(tids: dict[str, int]) -> dict[str, float]:
    """user + system CPU seconds of the named threads of this process."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for name, tid in tids.items():
        with open(f"/proc/self/task/{tid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        out[name] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return out


def burst(cls: type, seconds: float, batch: int, n: int = 1000) -> tuple[float, float]:
    """Frames/s each half of the path drains from a full queue, driven by poll(0).

    The end-to-end run is bound by its Python producer; here the input is queued before
    the clock starts, so every batch is full and only the pump and the kernel are timed.
    Returns (TAP -> UDP, UDP -> TAP).
    """
    app, tap = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for s in (app, tap):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)  # room for n frames
    app.setblocking(False)
    udp, far = _udp(), _udp()
    far.setblocking(False)
    pump = cls(tap.fileno(), udp.fileno(), 1, batch=batch, offloads=offloads_for(cls, tap.fileno(), udp.fileno()))
    pump.set_peer(2, far.getsockname(), 2)
    pump.set_mac(FRAME[:6], 2)
    datagram = b"\x01\x01\x00\x08" + (2).to_bytes(4, "big") + (1).to_bytes(4, "big") + FRAME
    rates = []
    try:
        halves = (
            (lambda: app.send(FRAME), far),  # TAP -> UDP
            (lambda: far.sendto(datagram, udp.getsockname()), app),  # UDP -> TAP
        )
        for fill, drain in halves:
            frames = 0
            busy = 0.0
            deadline = time.monotonic() + seconds / 2
            while time.monotonic() < deadline:
                for _ in range(n):
                    fill()
                t0 = time.perf_counter()
                moved = 0
                while moved < n:
                    moved += pump.poll(0)
                busy += time.perf_counter() - t0
                frames += moved
                try:
                    while True:
                        drain.recv(2048)
                except BlockingIOError:
                    pass
            rates.append(frames / busy)
    finally:
        pump.close()
        for s in (app, tap, udp, far):
            s.close()
    return rates[0], rates[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    compiled_cls, compiled = load_pump()
    impls = [("python", load_pump(prefer_compiled=False)[0])]
    if compiled:
        impls.insert(0, ("compiled", compiled_cls))
    print(f"{'pump':9} {'offered/s':>10} {'sent/s':>10} {'recv/s':>10} {'delivered/s':>12} "
          f"{'Gbit/s':>7} {'tapdrop/s':>9} {'A us/fr':>8} {'B us/fr':>8}")
    for name, cls in impls:
        r = measure(cls, args.seconds, args.batch)
        gbit = r["delivered"] * len(FRAME) * 8 / 1e9
        print(f"{name:9} {r['offered']:10.0f} {r['sent']:10.0f} {r['received']:10.0f} "
              f"{r['delivered']:12.0f} {gbit:7.2f} {r['tap_write_drops']:9.0f} "
              f"{r['us_a']:8.2f} {r['us_b']:8.2f}")
    print("\nfrom a full queue (frames/s while draining, batch", args.batch, ")")
    for name, cls in impls:
        out, inn = burst(cls, args.seconds, args.batch)
        print(f"{name:9} TAP->UDP {out:10.0f}   UDP->TAP {inn:10.0f}")


if __name__ == "__main__":
    main()
