"""pytest-benchmark micro-benchmarks of the sleeve: seal/open per datagram, and encap
(TAP -> UDP) / decap (UDP -> TAP) per frame through each pump, without root.

    .venv/bin/python -m pytest bench/test_micro.py --benchmark-columns=min,median,mean,ops

Each benchmarked call handles BATCH datagrams (frames): divide the times by BATCH (the
`per_frame_ns` in extra_info does). The encap/decap rigs are tests/pump's: a socketpair
stands in for the TAP, so kernel TAP costs are not included; UDP goes over loopback.
"""

from __future__ import annotations

import socket
import sys
import pathlib

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent.parent / "tests" / "pump"))

from meshnet.dataplane import sleeve_crypto  # noqa: E402
from meshnet.dataplane.pump import load_pump  # noqa: E402
from pump_harness import frame, header, mac, offloads_for  # noqa: E402

BATCH = 256
COMPILED, HAVE_COMPILED = load_pump()
PYTHON, _ = load_pump(prefer_compiled=False)
IMPLS = [("compiled", COMPILED)] if HAVE_COMPILED else []
IMPLS.append(("python", PYTHON))
KEY_TX, KEY_RX = b"\x01" * 32, b"\x02" * 32


def per_frame(benchmark) -> None:
    if benchmark.stats is not None:
        benchmark.extra_info["per_frame_ns"] = round(benchmark.stats.stats.median / BATCH * 1e9, 1)


@pytest.mark.skipif(not HAVE_COMPILED, reason="compiled pump not built")
@pytest.mark.parametrize("cipher", ["aes-256-gcm", "chacha20-poly1305"])
@pytest.mark.parametrize("size", [64, 1422, 8000])
def test_compiled_seal_and_open(benchmark, cipher, size):
    from meshnet._fastpath import _aead_bench

    benchmark.group = f"AEAD seal+open, {size}-byte frame (x{BATCH})"
    assert benchmark(_aead_bench, cipher, size, BATCH, True) == BATCH
    per_frame(benchmark)


@pytest.mark.parametrize("size", [64, 1422])
def test_reference_seal_and_open(benchmark, size):
    f = bytes(size)
    hdr = header(1, 2, flags=sleeve_crypto.key_id_flags(0))

    def run():
        for i in range(BATCH):
            sleeve_crypto.open_(KEY_TX, sleeve_crypto.seal(KEY_TX, hdr, i, f))

    benchmark.group = f"AEAD seal+open, {size}-byte frame (x{BATCH})"
    benchmark(run)
    per_frame(benchmark)


class _Rig:
    def __init__(self, cls, crypto: bool):
        self.app, self.tap = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        for s in (self.app, self.tap):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.app.setblocking(False)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.far = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.far.bind(("127.0.0.1", 0))
        self.far.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.far.setblocking(False)
        offloads = offloads_for(cls, self.tap.fileno(), self.udp.fileno())
        self.pump = cls(self.tap.fileno(), self.udp.fileno(), 1, batch=64, crypto=crypto, offloads=offloads)
        self.pump.set_peer(2, self.far.getsockname(), 2)
        self.pump.set_mac(mac(2), 2)
        if crypto:
            self.pump.set_peer_keys(2, KEY_TX, KEY_RX, epoch=0)

    def drain(self, sock):
        try:
            while True:
                sock.recv(1 << 16)
        except BlockingIOError:
            pass

    def close(self):
        self.pump.close()
        for s in (self.app, self.tap, self.udp, self.far):
            s.close()


def _moved(pump, n):
    moved = 0
    while moved < n:
        moved += pump.poll(0)


@pytest.mark.parametrize("crypto", [False, True], ids=["plain", "sealed"])
@pytest.mark.parametrize("name, cls", IMPLS, ids=[n for n, _ in IMPLS])
@pytest.mark.parametrize("size", [64, 1422])
def test_encap_per_frame(benchmark, name, cls, crypto, size):
    rig = _Rig(cls, crypto)
    f = frame(mac(2), mac(1), bytes(size - 14))
    try:
        def setup():
            rig.drain(rig.far)
            for _ in range(BATCH):
                rig.app.send(f)

        benchmark.group = f"encap TAP->UDP, {size}-byte frames (x{BATCH})"
        benchmark.pedantic(_moved, args=(rig.pump, BATCH), setup=setup, rounds=40 if name == "compiled" else 8)
        per_frame(benchmark)
    finally:
        rig.close()


@pytest.mark.parametrize("crypto", [False, True], ids=["plain", "sealed"])
@pytest.mark.parametrize("name, cls", IMPLS, ids=[n for n, _ in IMPLS])
@pytest.mark.parametrize("size", [64, 1422])
def test_decap_per_frame(benchmark, name, cls, crypto, size):
    rig = _Rig(cls, crypto)
    f = frame(mac(1), mac(2), bytes(size - 14))
    to = rig.udp.getsockname()
    counter = iter(range(10**9))
    plain = header(2, 1) + f
    try:
        def setup():
            rig.drain(rig.app)
            for _ in range(BATCH):
                if crypto:
                    rig.far.sendto(sleeve_crypto.seal(KEY_RX, header(2, 1, flags=1), next(counter), f), to)
                else:
                    rig.far.sendto(plain, to)

        benchmark.group = f"decap UDP->TAP, {size}-byte frames (x{BATCH})"
        benchmark.pedantic(_moved, args=(rig.pump, BATCH), setup=setup, rounds=40 if name == "compiled" else 8)
        per_frame(benchmark)
        assert rig.pump.stats()["tap_tx"] > 0
    finally:
        rig.close()
