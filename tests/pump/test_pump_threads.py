"""The compiled pump with two workers (threads), each on its own TAP queue and UDP
socket of a steered SO_REUSEPORT group (meshnet.kernel.steering), as the router runs it
with --pump-threads 2. Socketpairs stand in for the TAP queues; the group is real.

What must hold with threads, seen from outside: the kernel steers each datagram by its
flow hint, so every flow is received by one worker, in order; frames from any queue
reach the peer; two workers sealing at once never reuse a counter (nonce), and a
datagram replayed to the other worker is still refused; what one worker learns the
other forwards by; counts add up over the workers. The twin runs one thread only."""

from __future__ import annotations

import select
import socket
import struct
import threading
import time

import pytest

from meshnet.dataplane import sleeve_crypto
from meshnet.dataplane.layout import HINT_SHIFT, flow_hint
from meshnet.dataplane.pump import load_pump
from meshnet.kernel import offload, steering
from pump_harness import BROADCAST, frame, header, ipv4_tcp, mac

LOCAL, PEER = 100, 1
KEY_OUT, KEY_IN = b"\x05" * 32, b"\x06" * 32


def _compiled() -> type:
    cls, compiled = load_pump()
    if not compiled:
        pytest.skip("the compiled pump is not in use (MESHNET_PUREPYTHON=1)")
    return cls


def _drain(sock: socket.socket, want: int, timeout: float = 5.0) -> list[bytes]:
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        if select.select([sock], [], [], 0.05)[0]:
            try:
                while True:
                    got.append(sock.recv(1 << 17))
            except BlockingIOError:
                pass
    return got


def _drain_all(socks: list[socket.socket], want: int, timeout: float = 5.0) -> list[list[bytes]]:
    """What each socket received until `want` arrived in all (or the timeout)."""
    got: list[list[bytes]] = [[] for _ in socks]
    deadline = time.monotonic() + timeout
    while sum(map(len, got)) < want and time.monotonic() < deadline:
        for k, sock in enumerate(socks):
            got[k] += _drain(sock, 1, timeout=0.02)
    return got


def _flow(sport: int, payload: bytes = b"p" * 64) -> bytes:
    """An IPv4/TCP frame to mac(1) (full checksum: it is written to the TAP as it is)."""
    f = bytearray(ipv4_tcp(payload, partial=False, dst_mac=mac(1), src_mac=mac(50)))
    f[34:36] = sport.to_bytes(2, "big")
    return bytes(f)


class TwoQueues:
    """A two-worker pump: two fake TAP queues, a steered group of two sockets, one remote."""

    def __init__(self, *, crypto: bool = False) -> None:
        cls = _compiled()
        pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM) for _ in range(2)]
        self.apps = [a for a, _ in pairs]
        self.taps = [t for _, t in pairs]
        for app in self.apps:
            app.setblocking(False)
        self.udp = steering.udp_sockets("127.0.0.1", 0, 2, buffer_bytes=1 << 21)
        self.addr = self.udp[0].getsockname()
        self.remote = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.remote.bind(("127.0.0.1", 0))
        self.remote.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        self.remote.setblocking(False)
        found = offload.configure(self.taps[0].fileno(), self.udp[0].fileno())
        offload.configure(self.taps[1].fileno(), self.udp[1].fileno())
        self.pump = cls([t.fileno() for t in self.taps], [u.fileno() for u in self.udp], LOCAL,
                        crypto=crypto, offloads=found)
        self.pump.set_peer(PEER, self.remote.getsockname(), PEER)
        if crypto:
            self.pump.set_peer_keys(PEER, KEY_OUT, KEY_IN, epoch=0)
        self.threads = [threading.Thread(target=self.pump.run, args=(k,), daemon=True) for k in (0, 1)]
        for t in self.threads:
            t.start()

    def close(self) -> None:
        self.pump.stop()
        for t in self.threads:
            t.join(5)
        self.pump.close()
        for s in (*self.apps, *self.taps, *self.udp, self.remote):
            s.close()


@pytest.fixture
def plain():
    rig = TwoQueues()
    yield rig
    rig.close()


@pytest.fixture
def sealed():
    rig = TwoQueues(crypto=True)
    yield rig
    rig.close()


def test_the_group_steers_each_hint_to_one_socket():
    group = steering.udp_sockets("127.0.0.1", 0, 3, buffer_bytes=1 << 20)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for hint in range(32):
            for _ in range(3):
                tx.sendto(header(PEER, LOCAL, flags=hint << HINT_SHIFT) + bytes(20), group[0].getsockname())
        tx.sendto(b"\x02", group[0].getsockname())  # no flags byte: socket 0
        for s in group:
            s.setblocking(False)
        for k, s in enumerate(group):
            got = _drain(s, 33 if k == 0 else 30, timeout=2)
            hints = [d[2] >> HINT_SHIFT for d in got if len(d) > 2]
            assert hints == [h for h in range(32) if h % 3 == k for _ in range(3)]
            assert (b"\x02" in got) == (k == 0)
    finally:
        tx.close()
        for s in group:
            s.close()


def test_each_flow_is_received_by_one_worker_in_order(plain):
    flows = [40000 + i for i in range(16)]
    for seq in range(20):
        for sport in flows:
            f = _flow(sport, seq.to_bytes(4, "big") * 16)
            plain.remote.sendto(header(PEER, LOCAL, flags=flow_hint(f) << HINT_SHIFT) + f, plain.addr)
    got = _drain_all(plain.apps, 20 * 16)
    assert sum(map(len, got)) == 20 * len(flows)
    by_queue = [{} for _ in got]
    for k, frames in enumerate(got):
        for f in frames:
            by_queue[k].setdefault(int.from_bytes(f[34:36], "big"), []).append(f[54:58])
    for sport in flows:
        hint = flow_hint(_flow(sport))
        queue = by_queue[hint % 2]
        assert queue[sport] == [seq.to_bytes(4, "big") for seq in range(20)]  # all there, in order
        assert sport not in by_queue[1 - hint % 2]
    assert all(by_queue)  # both workers had flows
    assert plain.pump.features()["threads"] == 2


def test_frames_from_every_queue_reach_the_peer(plain):
    plain.pump.set_mac(mac(1), PEER)
    for k, app in enumerate(plain.apps):
        for i in range(50):
            app.send(_flow(1000 * k + i))
    got = _drain(plain.remote, 100)
    assert len(got) == 100
    ports = sorted(int.from_bytes(d[12 + 34 : 12 + 36], "big") for d in got)
    assert ports == sorted([i for i in range(50)] + [1000 + i for i in range(50)])
    stats = plain.pump.stats()
    assert (stats["tap_rx"], stats["udp_tx"]) == (100, 100)
    assert plain.pump.peer_stats()[PEER]["tx_frames"] == 100


def test_two_workers_sealing_at_once_never_reuse_a_counter(sealed):
    sealed.pump.set_mac(mac(1), PEER)
    n = 3000

    def pour(app: socket.socket, base: int) -> None:
        for i in range(n):
            while True:
                try:
                    app.send(_flow(base + i % 500))
                    break
                except BlockingIOError:
                    time.sleep(0.001)

    writers = [threading.Thread(target=pour, args=(app, 1000 * k)) for k, app in enumerate(sealed.apps)]
    for w in writers:
        w.start()
    got = _drain(sealed.remote, 2 * n, timeout=30)
    for w in writers:
        w.join()
    counters = [struct.unpack_from("!Q", d, 12)[0] for d in got]
    assert len(counters) == len(set(counters))  # no nonce twice, whatever the interleaving
    assert all(sleeve_crypto.open_(KEY_OUT, d) is not None for d in got[:200])
    assert len(got) + sealed.pump.stats()["drop_send_error"] == 2 * n


def test_a_datagram_replayed_to_the_other_worker_is_refused(sealed):
    datagrams = []
    for counter in range(400):
        f = _flow(40000 + counter % 8)
        hdr = header(PEER, LOCAL, flags=flow_hint(f) << HINT_SHIFT | sleeve_crypto.key_id_flags(0))
        datagrams.append(sleeve_crypto.seal(KEY_IN, hdr, counter, f))
    for d in datagrams:
        sealed.remote.sendto(d, sealed.addr)
    first = _drain_all(sealed.apps, 400)
    assert sum(map(len, first)) == 400 and all(first)
    for d in datagrams:  # the same again, and again with the hint that steers it to the other worker
        moved = bytearray(d)
        moved[2] ^= 1 << HINT_SHIFT
        sealed.remote.sendto(d, sealed.addr)
        sealed.remote.sendto(bytes(moved), sealed.addr)
    fresh = bytearray(datagrams[0][:12] + (500).to_bytes(8, "big") + datagrams[0][20:])
    fresh[2] ^= 1 << HINT_SHIFT  # a new counter but a changed hint: the header is authenticated
    sealed.remote.sendto(bytes(fresh), sealed.addr)
    time.sleep(0.5)
    assert [_drain(app, 1, timeout=0.2) for app in sealed.apps] == [[], []]
    stats = sealed.pump.stats()
    # The copies by their lane's window, before any AEAD work; those moved to the other
    # lane (whose window has not seen them) and the forgery by their tag: the hint is
    # authenticated, so no datagram is accepted twice.
    assert (stats["tap_tx"], stats["drop_replay"], stats["drop_auth"]) == (400, 400, 401)


def test_what_one_worker_learns_the_other_forwards_by(plain):
    learn = frame(BROADCAST, mac(7))
    for hint in (1, 3):  # odd hints: worker 1 receives them
        plain.remote.sendto(header(PEER, LOCAL, flags=hint << HINT_SHIFT) + learn, plain.addr)
    assert len(_drain(plain.apps[1], 2)) == 2
    deadline = time.monotonic() + 5
    while mac(7) not in plain.pump.macs() and time.monotonic() < deadline:
        time.sleep(0.01)
    plain.apps[0].send(frame(mac(7), mac(50)))  # worker 0 reads it
    got = _drain(plain.remote, 1)
    assert len(got) == 1 and plain.pump.stats()["unknown_unicast"] == 0


def test_worker_counts_and_arguments():
    cls = _compiled()
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM) for _ in range(9)]
    udp = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(9)]
    try:
        taps, udps = [t.fileno() for _, t in pairs], [u.fileno() for u in udp]
        for bad_taps, bad_udps in ((taps[:2], udps[:1]), (taps, udps), ([], [])):
            with pytest.raises(ValueError):
                cls(bad_taps, bad_udps, LOCAL)
        pump = cls(taps[:3], udps[:3], LOCAL)
        with pytest.raises(ValueError):
            pump.poll(0, 3)
        assert pump.poll(0, 2) == 0 and pump.features()["threads"] == 3
        twin, compiled = load_pump(prefer_compiled=False)
        with pytest.raises(ValueError):
            twin(taps[:2], udps[:2], LOCAL)
        twin(taps[:1], udps[:1], LOCAL).close()
    finally:
        for a, b in pairs:
            a.close()
            b.close()
        for u in udp:
            u.close()


def test_a_coalesced_message_mixing_two_workers_flows_turns_udp_gro_off(plain):
    """A NIC's GRO merges datagrams by outer addresses alone; the pump must notice when
    that put another worker's flow behind one of its own, and stop the kernel merging."""
    assert plain.pump.features()["udp_gro"]
    ours, theirs = (header(PEER, LOCAL, flags=h << HINT_SHIFT) + frame(mac(1), mac(60 + h)) for h in (0, 1))
    segment = [(socket.IPPROTO_UDP, offload.UDP_SEGMENT, struct.pack("H", len(ours)))]
    # from the peer, one UDP_SEGMENT send of two same-size datagrams: one coalesced message
    plain.remote.sendmsg([ours + theirs], segment, 0, plain.addr)
    got = _drain(plain.apps[0], 2)  # worker 0 took both: the second flow's too
    assert len(got) == 2
    deadline = time.monotonic() + 5
    while plain.pump.features()["udp_gro"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert plain.pump.stats()["gro_mixed"] == 1
    assert plain.pump.features()["udp_gro"] is False and plain.pump.features()["udp_gro_error"]
    for d in (ours, theirs):  # as they would cross a NIC (our senders never mix hints in one send)
        plain.remote.sendto(d, plain.addr)
    assert [len(x) for x in _drain_all(plain.apps, 2)] == [1, 1]  # each steered alone, none merged
    assert plain.pump.stats()["gro_mixed"] == 1


def test_a_gso_send_never_carries_two_flows():
    """Frames of two flows, interleaved, one size: the sender's UDP_SEGMENT messages split
    where the hint changes (a receiver steers a whole message by its first datagram)."""
    from pump_harness import Rig

    rig = Rig(_compiled(), LOCAL)
    watcher = rig.remote(PEER)
    watcher.setsockopt(socket.IPPROTO_UDP, offload.UDP_GRO, 1)  # see the senders' messages whole
    try:
        assert rig.pump.features()["udp_gso"]
        rig.connect(PEER)
        rig.pump.set_mac(mac(1), PEER)
        a, b = _flow(40001), _flow(40002)
        assert flow_hint(a) != flow_hint(b)
        for f in [a, a, a, b, b, a, b, b, b, a] * 3:
            rig.app.send(f)
        while rig.pump.poll(50):  # one read batch: the 30 frames (the rig would drain the peer)
            pass
        runs = []
        deadline = time.monotonic() + 5
        while sum(runs) < 30 and time.monotonic() < deadline:
            if not select.select([watcher], [], [], 0.1)[0]:
                continue
            data, anc, _, _ = watcher.recvmsg(1 << 17, 64)
            size = next((struct.unpack("H", v[:2])[0] for lvl, typ, v in anc if typ == offload.UDP_GRO), len(data))
            parts = [data[i : i + size] for i in range(0, len(data), size)]
            assert len({p[2] >> HINT_SHIFT for p in parts}) == 1, [p[2] >> HINT_SHIFT for p in parts]
            runs.append(len(parts))
        assert sum(runs) == 30 and max(runs) > 1  # merged where it may, split where it must
    finally:
        rig.close()
