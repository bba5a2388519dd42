"""The twin's `Pump`: its API, the lock, the loop, and the read batches.

Flow of one `poll()`:

1. wait until the TAP fd, the UDP fd or the wake eventfd is readable;
2. read the clock (whole seconds; the MAC table's `now`) and reclaim aged MACs;
3. TAP: read up to `batch` frames, one per read, each handled by `TapSide.frame`;
4. UDP: receive up to `batch` datagrams, each handled by `UdpSide.datagram`;
5. after each read batch, flush the send queue (it also flushes when full).

The lock is held for one whole batch, so table updates from another thread land between
batches. The parts (tables, peers, send queue, the two sides) take no lock themselves.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import threading
import time
from collections.abc import Sequence

from meshnet.dataplane import sleeve_crypto
from meshnet.dataplane._pump_py.peers import PeerTable
from meshnet.dataplane._pump_py.sendq import SendQueue
from meshnet.dataplane._pump_py.macs import MacTable
from meshnet.dataplane._pump_py.tap_side import TapSide
from meshnet.dataplane._pump_py.udp_side import UdpSide
from meshnet.dataplane.counters import COUNTERS
from meshnet.dataplane.layout import (
    AEAD,
    LEARN_QUOTA_DEFAULT,
    MAC_AGE_DEFAULT,
    MAC_AGE_LIMIT,
    MAC_TABLE_DEFAULT,
    MAC_TABLE_LIMIT,
    MAC_TABLE_MIN,
    MAX_BATCH,
    MAX_FRAME,
    VNET_HDR_LEN,
)
from meshnet.dataplane.offloads import Offloads

IDLE_AGEING_MS = 1000  # run() wakes this often while learned MACs exist, to age them


def _check_id(value: int, what: str) -> int:
    if not isinstance(value, int) or not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"{what} must be a 32-bit unsigned int, got {value!r}")
    return value


def _check_mac(mac: bytes) -> bytes:
    mac = bytes(mac)
    if len(mac) != 6:
        raise ValueError(f"a MAC is 6 bytes, got {len(mac)}")
    return mac


def _check_limits(mac_table_max: int, learn_quota: int, mac_age: int) -> None:
    """The MAC table's limits (the same checks in the compiled pump)."""
    if not isinstance(mac_table_max, int) or not MAC_TABLE_MIN <= mac_table_max <= MAC_TABLE_LIMIT:
        raise ValueError(f"mac_table_max must be {MAC_TABLE_MIN}..{MAC_TABLE_LIMIT}, got {mac_table_max!r}")
    if not isinstance(learn_quota, int) or not 0 <= learn_quota <= MAC_TABLE_LIMIT:
        raise ValueError(f"learn_quota must be 0..{MAC_TABLE_LIMIT}, got {learn_quota!r}")
    if not isinstance(mac_age, int) or not 1 <= mac_age <= MAC_AGE_LIMIT:
        raise ValueError(f"mac_age must be 1..{MAC_AGE_LIMIT} seconds, got {mac_age!r}")


def _one_fd(given: int | Sequence[int], what: str) -> int:
    """An fd, or a sequence of one: the twin runs one thread (one TAP queue, one socket)."""
    fds = [given] if isinstance(given, int) else list(given)
    if len(fds) != 1 or not isinstance(fds[0], int) or fds[0] < 0:
        raise ValueError(f"{what}: the pure-Python pump takes one fd (one thread), got {given!r}")
    return fds[0]


def _check_addr(addr: tuple[str, int]) -> tuple[str, int]:
    """Return the canonical (dotted quad, port) that recvfrom will report for addr."""
    host, port = addr
    try:
        packed = socket.inet_pton(socket.AF_INET, host)
    except (OSError, TypeError):
        raise ValueError(f"peer address must be an IPv4 literal, got {host!r}") from None
    if not isinstance(port, int) or not 0 < port <= 0xFFFF:
        raise ValueError(f"peer port must be 1..65535, got {port!r}")
    return socket.inet_ntop(socket.AF_INET, packed), port


class Pump:
    """Moves frames between a TAP fd and a UDP socket; see the package docstring."""

    def __init__(
        self,
        tap_fd: int | Sequence[int],
        udp_fd: int | Sequence[int],
        local_id: int,
        *,
        batch: int = 32,
        crypto: bool = False,
        offloads: Offloads | None = None,
        underlay_mtu: int = 0,
        spin_us: int = 0,
        mac_table_max: int = MAC_TABLE_DEFAULT,
        learn_quota: int = LEARN_QUOTA_DEFAULT,
        mac_age: int = MAC_AGE_DEFAULT,
    ) -> None:
        local_id = _check_id(local_id, "local_id")
        tap_fd, udp_fd = _one_fd(tap_fd, "tap_fd"), _one_fd(udp_fd, "udp_fd")
        _check_limits(mac_table_max, learn_quota, mac_age)
        if not 1 <= batch <= MAX_BATCH:
            raise ValueError(f"batch must be 1..{MAX_BATCH}, got {batch}")
        if underlay_mtu and not 576 <= underlay_mtu <= 65535:
            raise ValueError(f"underlay_mtu must be 0 or 576..65535, got {underlay_mtu}")
        # spin_us is accepted for API parity; the twin always sleeps in poll()
        if not 0 <= spin_us <= 100000:
            raise ValueError(f"spin_us must be 0..100000, got {spin_us}")
        offloads = Offloads() if offloads is None else offloads
        if offloads.udp_gro:  # recvfrom() would return many datagrams as one
            raise ValueError("the pure-Python pump reads one datagram per receive: UDP_GRO must be off")
        dup = os.dup(udp_fd)  # the pump's own socket object; the caller keeps udp_fd
        try:
            udp = socket.socket(fileno=dup)
        except OSError:
            os.close(dup)
            raise ValueError("udp_fd must be an IPv4 UDP socket") from None
        if udp.family != socket.AF_INET or udp.type != socket.SOCK_DGRAM:
            udp.close()
            raise ValueError("udp_fd must be an IPv4 UDP socket")
        try:
            udp.setblocking(False)
            os.set_blocking(tap_fd, False)
        except OSError:
            udp.close()
            raise
        self._local = local_id
        self._tap = tap_fd
        self._udp = udp
        self._udp_fd = udp_fd
        self._batch = batch
        self._crypto = bool(crypto)
        self._offloads = offloads
        self._underlay_mtu = underlay_mtu
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._poller = select.poll()
        for fd in (tap_fd, udp_fd, self._wake):
            self._poller.register(fd, select.POLLIN)
        self._stopping = False
        self._lock = threading.Lock()
        self._count = dict.fromkeys(COUNTERS, 0)
        self._peers = PeerTable()
        self._frozen_clock: int | None = None
        self._macs = MacTable(self._count, capacity=mac_table_max, quota=learn_quota, age=mac_age)
        self._sendq = SendQueue(udp, batch, self._count)
        # both sides share the tables, the send queue and the counters
        sides = dict(tap_fd=tap_fd, local_id=local_id, crypto=self._crypto, vnet=bool(offloads.vnet_hdr),
                     macs=self._macs, peers=self._peers, sendq=self._sendq, counters=self._count)
        self._tap_side = TapSide(underlay_mtu=underlay_mtu, **sides)
        self._udp_side = UdpSide(**sides)

    # -- tables (any thread) -------------------------------------------------

    def set_peer(self, peer_id: int, addr: tuple[str, int] | None, via: int, *, flood: bool = True) -> None:
        _check_id(peer_id, "peer_id")
        _check_id(via, "via")
        if self._local in (peer_id, via):
            raise ValueError("the local peer has no route entry")
        if addr is not None:
            addr = _check_addr(addr)
        with self._lock:
            self._peers.set(peer_id, addr, via, bool(flood))

    def remove_peer(self, peer_id: int) -> None:
        _check_id(peer_id, "peer_id")
        with self._lock:
            self._peers.remove(peer_id)
            self._macs.now = self._clock()
            self._macs.forget_peer(peer_id)

    def set_peer_keys(self, peer_id: int, tx_key: bytes, rx_key: bytes, *, epoch: int) -> None:
        """Install the sleeve keys shared with a directly connected peer.

        Datagrams to it are sealed with tx_key from now on (header KEY_ID = epoch & 1);
        rx_key opens its datagrams carrying that KEY_ID, while the key of the other KEY_ID
        stays for datagrams of the previous epoch still in flight. Installing the same key
        again keeps its counter and replay window (a nonce is never reused)."""
        _check_id(peer_id, "peer_id")
        tx_key = sleeve_crypto.check_key(tx_key, "tx_key")
        rx_key = sleeve_crypto.check_key(rx_key, "rx_key")
        if not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
        with self._lock:
            self._peers.set_keys(peer_id, tx_key, rx_key, epoch)

    def rekey_due(self) -> list[int]:
        """Peers whose send key has sealed REKEY_AFTER_MESSAGES datagrams: new keys needed."""
        with self._lock:
            return self._peers.rekey_due()

    def _set_tx_counter(self, peer_id: int, counter: int) -> None:
        """Tests only: jump a send key's counter (to reach the rekey and reject limits)."""
        self._peers.set_tx_counter(peer_id, counter)

    def set_mac(self, mac: bytes, peer_id: int) -> None:
        mac = _check_mac(mac)
        _check_id(peer_id, "peer_id")
        if peer_id == self._local:
            raise ValueError("local MACs are not in the pump's table")
        with self._lock:
            self._macs.now = self._clock()
            self._macs.set_static(mac, peer_id)

    def forget_mac(self, mac: bytes) -> None:
        mac = _check_mac(mac)
        with self._lock:
            self._macs.now = self._clock()
            self._macs.forget(mac)

    def macs(self) -> dict[bytes, int]:
        with self._lock:
            self._macs.now = self._clock()
            return self._macs.snapshot()

    def stats(self) -> dict[str, int]:
        """The counters; learned MACs that have expired by now are counted as aged."""
        with self._lock:
            self._macs.now = self._clock()
            self._macs.reclaim()
            return dict(self._count)

    def table_sizes(self) -> dict[str, int]:
        """Entries the tables hold now: MACs (static and learned, expired ones the loop
        has not removed yet included), learned MACs, peers."""
        with self._lock:
            return {**self._macs.sizes(), "peers": self._peers.size()}

    def _set_clock(self, seconds: int | None) -> None:
        """Tests only: freeze the pump's clock at `seconds` (None: CLOCK_MONOTONIC again)."""
        if seconds is not None and not (isinstance(seconds, int) and 0 <= seconds < 1 << 31):
            raise ValueError("the clock is 0..2**31-1 seconds")
        with self._lock:
            self._frozen_clock = seconds

    def _clock(self) -> int:
        """The pump's clock: whole seconds of CLOCK_MONOTONIC, unless a test froze it."""
        return int(time.monotonic()) if self._frozen_clock is None else self._frozen_clock

    def peer_stats(self) -> dict[int, dict[str, int]]:
        """Per peer: frames/bytes sent to it from our TAP, and received from it to our TAP."""
        with self._lock:
            return self._peers.stats()

    def features(self) -> dict[str, object]:
        """What this pump uses; the router shows it in `meshnet status`."""
        return {
            "implementation": "python",
            "crypto": AEAD if self._crypto else None,
            "vnet_hdr": bool(self._offloads.vnet_hdr),
            "tap_offload": list(self._offloads.tap),
            "udp_gso": False,
            "udp_gro": False,
            "gro_merge": False,
            "gro_merge_udp": False,
            "batch": self._batch,
            "syscall_batching": False,
            "threads": 1,
            "spin_us": 0,
            "underlay_mtu": self._underlay_mtu,
            "mac_table_max": self._macs.capacity,
            "learn_quota": self._macs.quota,
            "mac_age": self._macs.age,
        }

    # -- loop ----------------------------------------------------------------

    def poll(self, timeout_ms: int, worker: int = 0) -> int:
        if worker != 0:
            raise ValueError(f"worker must be 0..0, got {worker}")
        if self._wake < 0:
            raise ValueError("pump is closed")
        ready = dict(self._poller.poll(timeout_ms))
        if any(ev & select.POLLNVAL for ev in ready.values()):
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        if self._wake in ready:
            try:
                os.eventfd_read(self._wake)
            except BlockingIOError:
                pass  # another poll() drained it first
        handled = 0
        with self._lock:
            self._macs.now = self._clock()
            self._macs.reclaim()  # ageing: at most once per clock second
            if self._tap in ready:
                handled += self._tap_batch()
            if self._udp_fd in ready:
                handled += self._udp_batch()
        return handled

    def run(self, worker: int = 0) -> None:
        if worker != 0:
            raise ValueError(f"worker must be 0..0, got {worker}")
        try:
            while not self._stopping:
                # learned MACs must age even when no traffic comes
                self.poll(IDLE_AGEING_MS if self._macs.has_learned() else -1)
        finally:
            self._stopping = False

    def stop(self) -> None:
        self._stopping = True
        if self._wake >= 0:
            os.eventfd_write(self._wake, 1)

    def close(self) -> None:
        """Release the pump's own fds (not tap_fd/udp_fd); call after run() returned."""
        if self._wake >= 0:
            os.close(self._wake)
            self._wake = -1
            self._udp.close()

    def __del__(self) -> None:
        if getattr(self, "_wake", -1) >= 0:
            self.close()

    # -- per batch, lock held ------------------------------------------------

    def _tap_batch(self) -> int:
        n = 0
        failure = None
        extra = VNET_HDR_LEN if self._offloads.vnet_hdr else 0
        while n < self._batch:
            try:
                data = os.read(self._tap, MAX_FRAME + 1 + extra)
            except BlockingIOError:
                break
            except OSError as e:  # the TAP itself is broken: report it, after sending
                failure = e
                break
            n += 1
            self._tap_side.frame(data)
        self._sendq.flush()
        if failure is not None:
            raise failure
        return n

    def _udp_batch(self) -> int:
        n = 0
        while n < self._batch:
            try:
                data, addr = self._udp.recvfrom(MAX_FRAME + 1)
            except OSError:  # EAGAIN, or a transient socket error: next poll
                break
            n += 1
            self._udp_side.datagram(data, addr)
        self._sendq.flush()
        return n
