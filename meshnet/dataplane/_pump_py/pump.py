"""The twin's `Pump`: its API, the lock, the loop, and the read batches.

Flow of one `poll()`:

1. wait until the TAP fd, the UDP fd or the wake eventfd is readable;
2. TAP: read up to `batch` frames, one per read, each handled by `TapSide.frame`;
3. UDP: receive up to `batch` datagrams, each handled by `UdpSide.datagram`;
4. after each read batch, flush the send queue (it also flushes when full).

The lock is held for one whole batch, so table updates from another thread land between
batches. The parts (tables, peers, send queue, the two sides) take no lock themselves.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import threading

from meshnet.dataplane import sleeve_crypto
from meshnet.dataplane._pump_py.peers import PeerTable
from meshnet.dataplane._pump_py.sendq import SendQueue
from meshnet.dataplane._pump_py.tables import MacTable
from meshnet.dataplane._pump_py.tap_side import TapSide
from meshnet.dataplane._pump_py.udp_side import UdpSide
from meshnet.dataplane.counters import COUNTERS
from meshnet.dataplane.layout import AEAD, MAX_BATCH, MAX_FRAME, VNET_HDR_LEN
from meshnet.dataplane.offloads import Offloads


def _check_id(value: int, what: str) -> int:
    if not isinstance(value, int) or not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"{what} must be a 32-bit unsigned int, got {value!r}")
    return value


def _check_mac(mac: bytes) -> bytes:
    mac = bytes(mac)
    if len(mac) != 6:
        raise ValueError(f"a MAC is 6 bytes, got {len(mac)}")
    return mac


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
        tap_fd: int,
        udp_fd: int,
        local_id: int,
        *,
        batch: int = 32,
        crypto: bool = False,
        offloads: Offloads | None = None,
        underlay_mtu: int = 0,
        spin_us: int = 0,
    ) -> None:
        local_id = _check_id(local_id, "local_id")
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
        self._macs = MacTable(self._count)
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
            self._macs.set_static(mac, peer_id)

    def forget_mac(self, mac: bytes) -> None:
        mac = _check_mac(mac)
        with self._lock:
            self._macs.forget(mac)

    def macs(self) -> dict[bytes, int]:
        with self._lock:
            return self._macs.snapshot()

    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self._count)

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
        }

    # -- loop ----------------------------------------------------------------

    def poll(self, timeout_ms: int) -> int:
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
            if self._tap in ready:
                handled += self._tap_batch()
            if self._udp_fd in ready:
                handled += self._udp_batch()
        return handled

    def run(self) -> None:
        try:
            while not self._stopping:
                self.poll(-1)
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
