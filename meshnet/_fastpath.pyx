# cython: language_level=3
"""The compiled sleeve pump: TAP frames <-> sleeve datagrams over UDP, without the GIL.

The behaviour is specified by the pure-Python twin `meshnet.dataplane._pump_py` (its
docstrings have the forwarding, crypto and drop rules; docs/sleeve.md the wire format);
this is the same algorithm on C data, plus the kernel offloads that only change how many
syscalls it takes. Which offloads the TAP and the socket have was settled before the
pump was made (`meshnet.kernel.offload`); the pump only uses them. It runs one worker
per TAP queue and UDP socket it was given (a thread each, docs/sleeve.md "Threads");
one iteration of a worker (`poll()`, or each turn of `run()`), all of it without the GIL:

    poll() on its TAP fd, its UDP fd and its wake eventfd
    hold the table lock to read
      TAP: read() up to `batch` frames, each into its own preallocated slot at HEADROOM
           bytes in (with IFF_VNET_HDR the virtio_net_hdr lands just in front of it).
           A TSO frame is cut into MSS segments in the segment arena (headers rewritten,
           TCP checksum left partial: the datagram says CSUM). A unicast copy gets its
           sleeve header (and counter) written in front of the frame and, when encrypted,
           is sealed in place (one iovec); plain flood copies share the frame and take a
           header each (two iovecs); sealed flood copies are sealed into the copy arena.
      UDP: recvmmsg() up to `batch` messages (with UDP_GRO each may hold many datagrams
           of one size); each is opened in place; a frame for us goes to the TAP with a
           virtio_net_hdr NEEDS_CSUM, consecutive TCP segments of one flow merged into one
           GSO_TCPV4/6 frame written with writev() straight from the receive buffers;
           a relay gets ttl - 1 (re-sealed in place for the next hop)
      the send queue (up to `batch` datagrams) leaves by sendmmsg() when full and at the
      end of each read batch; runs of same-size datagrams to one address leave as one
      UDP_SEGMENT (GSO) message
    unlock; apply the MAC table changes the batch saw (the lock held to write)

This file is the Python face: `Pump` checks arguments, sets up the workers, takes the
lock to write for table changes and releases the GIL once per `poll()`/`run()`. The C heart
is in the parts below (one concept each); `_fastpath.pxd` declares their shared state,
`pump_t`, with who may touch each field from which thread. Nothing is allocated per
frame: the AEAD contexts are made when keys are installed.
"""

cimport cython
from libc.errno cimport EAGAIN, EBADF, EINTR, EINVAL, EIO, ENOBUFS, errno
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcmp, memcpy, memset
from posix.fcntl cimport F_GETFL, F_SETFL, O_NONBLOCK, fcntl
from posix.uio cimport iovec
from posix.unistd cimport close, read, write

from meshnet.includes.linux cimport (
    AF_INET,
    CMSG_DATA,
    CMSG_FIRSTHDR,
    CMSG_LEN,
    CMSG_NXTHDR,
    CMSG_SPACE,
    EFD_CLOEXEC,
    EFD_NONBLOCK,
    IPPROTO_UDP,
    MSG_DONTWAIT,
    POLLIN,
    POLLNVAL,
    SO_DOMAIN,
    SO_TYPE,
    SOCK_DGRAM,
    SOL_SOCKET,
    UDP_GRO,
    UDP_SEGMENT,
    cmsghdr,
    eventfd,
    getsockopt,
    setsockopt,
    htons,
    mmsghdr,
    mn_fetch_add_u64,
    mn_load_flag,
    mn_load_u64,
    mn_rwlock_init,
    mn_spin_lock,
    mn_spin_unlock,
    mn_store_flag,
    mn_store_u64,
    poll,
    pollfd,
    pthread_rwlock_destroy,
    pthread_rwlock_rdlock,
    pthread_rwlock_unlock,
    pthread_rwlock_wrlock,
    recvmmsg,
    sendmmsg,
    sockaddr_in,
    socklen_t,
    writev,
)
from meshnet.includes.openssl cimport (
    EVP_CIPHER_CTX,
    EVP_CIPHER_CTX_ctrl,
    EVP_CIPHER_CTX_free,
    EVP_CIPHER_CTX_new,
    EVP_CTRL_GCM_GET_TAG,
    EVP_CTRL_GCM_SET_TAG,
    EVP_DecryptFinal_ex,
    EVP_DecryptInit_ex,
    EVP_DecryptUpdate,
    EVP_EncryptFinal_ex,
    EVP_EncryptInit_ex,
    EVP_EncryptUpdate,
    EVP_aes_256_gcm,
    EVP_chacha20_poly1305,
)

import os
import socket

from meshnet.dataplane import layout as _layout
from meshnet.dataplane import pxi as _pxi
from meshnet.dataplane.counters import COUNTERS
from meshnet.dataplane.offloads import Offloads

# The C constants were generated from layout.py and counters.py when this module was
# built; refuse to run if those changed since.
if _pxi.digest() != CONSTANTS_DIGEST:
    raise ImportError("meshnet._fastpath was built against another layout.py or counters.py; rebuild it")

include "_fastpath/wire.pxi"
include "_fastpath/tables.pxi"
include "_fastpath/macs.pxi"
include "_fastpath/checksums.pxi"
include "_fastpath/aead.pxi"
include "_fastpath/peers.pxi"
include "_fastpath/sendq.pxi"
include "_fastpath/tap.pxi"
include "_fastpath/udp.pxi"
include "_fastpath/gro.pxi"
include "_fastpath/workers.pxi"
include "_fastpath/loop.pxi"


# -- argument checks (same messages as the twin) ------------------------------------

def _check_id(value, what):
    if not isinstance(value, int) or not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"{what} must be a 32-bit unsigned int, got {value!r}")
    return value


def _check_mac(mac):
    mac = bytes(mac)
    if len(mac) != 6:
        raise ValueError(f"a MAC is 6 bytes, got {len(mac)}")
    return int.from_bytes(mac, "big")


def _check_addr(addr):
    host, port = addr
    try:
        packed = socket.inet_pton(socket.AF_INET, host)
    except (OSError, TypeError):
        raise ValueError(f"peer address must be an IPv4 literal, got {host!r}") from None
    if not isinstance(port, int) or not 0 < port <= 0xFFFF:
        raise ValueError(f"peer port must be 1..65535, got {port!r}")
    return packed, port


def _check_limits(mac_table_max, learn_quota, mac_age):
    """The MAC table's limits (the same checks as the twin's)."""
    if not isinstance(mac_table_max, int) or not MAC_TABLE_MIN <= mac_table_max <= MAC_TABLE_LIMIT:
        raise ValueError(f"mac_table_max must be {MAC_TABLE_MIN}..{MAC_TABLE_LIMIT}, got {mac_table_max!r}")
    if not isinstance(learn_quota, int) or not 0 <= learn_quota <= MAC_TABLE_LIMIT:
        raise ValueError(f"learn_quota must be 0..{MAC_TABLE_LIMIT}, got {learn_quota!r}")
    if not isinstance(mac_age, int) or not 1 <= mac_age <= MAC_AGE_LIMIT:
        raise ValueError(f"mac_age must be 1..{MAC_AGE_LIMIT} seconds, got {mac_age!r}")


def _fds(given, what):
    """An fd, or a sequence of them (one per worker): a list of ints."""
    fds = [given] if isinstance(given, int) else list(given)
    if not fds or not all(isinstance(fd, int) and fd >= 0 for fd in fds):
        raise ValueError(f"{what} must be an fd or a sequence of fds, got {given!r}")
    return fds


def _check_key(key, what):
    key = bytes(key)
    if len(key) != KEY_LEN:
        raise ValueError(f"{what} must be {KEY_LEN} bytes, got {len(key)}")
    return key


cdef int set_nonblocking(int fd) except -1:
    cdef int flags = fcntl(fd, F_GETFL)
    if flags < 0 or fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0:
        raise OSError(errno, os.strerror(errno))
    return 0


# -- the pump -------------------------------------------------------------------------

cdef class Pump:
    """Moves frames between a TAP and a UDP socket (one of each per worker); see the
    module docstring."""

    def __cinit__(self, tap_fd, udp_fd, local_id, *, int batch=32, crypto=False,
                  offloads=None, int underlay_mtu=0, int spin_us=0,
                  mac_table_max=MAC_TABLE_DEFAULT, learn_quota=LEARN_QUOTA_DEFAULT,
                  mac_age=MAC_AGE_DEFAULT):
        cdef pump_t *pump = &self.pump
        cdef int value = 0
        cdef socklen_t size = sizeof(int)
        cdef unsigned int k
        pump.frozen_clock = -1
        pump.local_id = _check_id(local_id, "local_id")
        taps, udps = _fds(tap_fd, "tap_fd"), _fds(udp_fd, "udp_fd")
        if len(taps) != len(udps) or not 1 <= len(taps) <= MAX_WORKERS:
            raise ValueError(f"one UDP socket per TAP queue, 1..{MAX_WORKERS} of each")
        _check_limits(mac_table_max, learn_quota, mac_age)
        if not 1 <= batch <= MAX_BATCH:
            raise ValueError(f"batch must be 1..{MAX_BATCH}, got {batch}")
        if underlay_mtu and not 576 <= underlay_mtu <= 65535:
            raise ValueError(f"underlay_mtu must be 0 or 576..65535, got {underlay_mtu}")
        for fd in udps:
            if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &value, &size) < 0 or value != AF_INET
                    or getsockopt(fd, SOL_SOCKET, SO_TYPE, &value, &size) < 0
                    or value != SOCK_DGRAM):
                raise ValueError("udp_fd must be an IPv4 UDP socket")
        if not 0 <= spin_us <= 100000:
            raise ValueError(f"spin_us must be 0..100000, got {spin_us}")
        for fd in udps + taps:
            set_nonblocking(fd)
        pump.batch = batch
        pump.crypto = bool(crypto)
        pump.underlay_mtu = underlay_mtu
        pump.spin_ns = <int64_t>spin_us * 1000
        pump.overhead = IP_UDP_HEADERS + HEADER_LEN + (AEAD_OVERHEAD if pump.crypto else 0)
        pump.max_frame = MAX_SEALED_FRAME if pump.crypto else MAX_SLEEVE_FRAME

        # The offloads the fds were set up with; each one missing just means more syscalls.
        self.offloads = Offloads() if offloads is None else offloads
        pump.vnet = self.offloads.vnet_hdr
        pump.udp_gro = self.offloads.udp_gro

        if (mac_init(&pump.macs, mac_table_max, learn_quota, mac_age) < 0
                or table_init(&pump.peer_index, PEER_INDEX_BITS) < 0
                or table_init(&pump.addr_refs, PEER_INDEX_BITS) < 0
                or table_init(&pump.addr_owner, PEER_INDEX_BITS) < 0):
            raise MemoryError()
        pump.peers = <peer_t *>calloc(PEER_TABLE_MAX, sizeof(peer_t))
        pump.workers = <worker_t *>calloc(len(taps), sizeof(worker_t))
        if pump.peers == NULL or pump.workers == NULL:
            raise MemoryError()
        for k in range(len(taps)):
            pump.workers[k].wake_fd = -1
        pump.n_workers = len(taps)
        for k in range(pump.n_workers):
            if worker_init(pump, &pump.workers[k], k, taps[k], udps[k], self.offloads.udp_gso) < 0:
                raise MemoryError()
        if mn_rwlock_init(&pump.lock) != 0:
            raise MemoryError()
        self.lock_ready = True

    def __dealloc__(self):
        cdef pump_t *pump = &self.pump
        cdef uint32_t i
        if self.lock_ready:
            pthread_rwlock_destroy(&pump.lock)
        if pump.peers != NULL:
            for i in range(pump.n_peers):
                peer_free_keys(&pump.peers[i])
        if pump.workers != NULL:
            for i in range(pump.n_workers):
                worker_free(&pump.workers[i])
        table_free(&pump.macs.t)
        table_free(&pump.peer_index)
        table_free(&pump.addr_refs)
        table_free(&pump.addr_owner)
        free(pump.peers)
        free(pump.workers)

    # -- tables (any thread) -------------------------------------------------------

    def set_peer(self, peer_id, addr, via, *, flood=True):
        cdef uint32_t pid = _check_id(peer_id, "peer_id")
        cdef uint32_t hop = _check_id(via, "via")
        cdef sockaddr_in sa
        cdef bytes packed
        cdef bint has_addr = addr is not None
        cdef bint fl = bool(flood)
        cdef bint full
        if self.pump.local_id == pid or self.pump.local_id == hop:
            raise ValueError("the local peer has no route entry")
        memset(&sa, 0, sizeof(sa))
        if has_addr:
            packed, port = _check_addr(addr)
            sa.sin_family = AF_INET
            sa.sin_port = htons(port)
            memcpy(&sa.sin_addr.s_addr, <const char *>packed, 4)
        with nogil:
            pthread_rwlock_wrlock(&self.pump.lock)
            full = peer_put(&self.pump, pid, hop, has_addr, fl, &sa)
            pthread_rwlock_unlock(&self.pump.lock)
        if full:
            raise OverflowError(f"peer table full ({PEER_TABLE_MAX} peers)")

    def remove_peer(self, peer_id):
        cdef uint32_t pid = _check_id(peer_id, "peer_id")
        with nogil:
            pthread_rwlock_wrlock(&self.pump.lock)
            pump_clock(&self.pump)
            peer_drop(&self.pump, pid)
            pthread_rwlock_unlock(&self.pump.lock)

    def set_peer_keys(self, peer_id, tx_key, rx_key, *, epoch):
        """Install the sleeve keys shared with a directly connected peer (see the twin)."""
        cdef uint32_t pid = _check_id(peer_id, "peer_id")
        cdef bytes tx = _check_key(tx_key, "tx_key")
        cdef bytes rx = _check_key(rx_key, "rx_key")
        cdef const uint8_t *txp = tx
        cdef const uint8_t *rxp = rx
        cdef uint32_t ep
        cdef bint known
        cdef bint failed = False
        cdef unsigned int i, n = self.pump.n_workers
        cdef EVP_CIPHER_CTX *tx_ctx[MAX_WORKERS]
        cdef EVP_CIPHER_CTX *rx_ctx[MAX_WORKERS]
        cdef uint64_t *windows
        if not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
        ep = epoch & 0xFFFFFFFF
        # A context per worker and the replay bitmaps, made outside the lock; unused ones are freed.
        windows = <uint64_t *>calloc(2 * n * REPLAY_WORDS, sizeof(uint64_t))
        failed = windows == NULL
        for i in range(n):
            tx_ctx[i] = aead_new(txp, True)
            rx_ctx[i] = aead_new(rxp, False)
            failed = failed or tx_ctx[i] == NULL or rx_ctx[i] == NULL
        if not failed:
            with nogil:
                pthread_rwlock_wrlock(&self.pump.lock)
                known = peer_set_keys(&self.pump, pid, txp, rxp, ep, tx_ctx, rx_ctx, &windows)
                pthread_rwlock_unlock(&self.pump.lock)
        for i in range(n):
            EVP_CIPHER_CTX_free(tx_ctx[i])
            EVP_CIPHER_CTX_free(rx_ctx[i])
        free(windows)
        if failed:
            raise MemoryError("libcrypto could not set up AES-256-GCM")
        if not known:
            raise ValueError(f"unknown peer {pid}: set_peer first")

    def rekey_due(self):
        """Peers whose send key has sealed REKEY_AFTER_MESSAGES datagrams: new keys needed."""
        cdef uint32_t i
        due = []
        with nogil:
            pthread_rwlock_wrlock(&self.pump.lock)
        try:
            for i in range(self.pump.n_peers):
                if (self.pump.peers[i].has_tx
                        and mn_load_u64(&self.pump.peers[i].tx_counter) >= REKEY_AFTER_MESSAGES):
                    due.append(self.pump.peers[i].id)
        finally:
            pthread_rwlock_unlock(&self.pump.lock)
        return sorted(due)

    def _set_tx_counter(self, peer_id, counter):
        """Tests only: jump a send key's counter (to reach the rekey and reject limits).
        Takes no lock: call it while no thread is in poll()/run()."""
        cdef int64_t slot = table_find(&self.pump.peer_index, _check_id(peer_id, "peer_id"))
        if slot < 0 or not self.pump.peers[self.pump.peer_index.vals[slot]].has_tx:
            raise ValueError("no send key for that peer")
        mn_store_u64(&self.pump.peers[self.pump.peer_index.vals[slot]].tx_counter, counter)

    def set_mac(self, mac, peer_id):
        """A gossiped (static) entry; it may evict a learned one (rules: the twin's macs.py)."""
        cdef uint64_t key = _check_mac(mac)
        cdef uint32_t pid = _check_id(peer_id, "peer_id")
        cdef bint done
        if pid == self.pump.local_id:
            raise ValueError("local MACs are not in the pump's table")
        with nogil:
            pthread_rwlock_wrlock(&self.pump.lock)
            pump_clock(&self.pump)
            done = mac_set_static(&self.pump, key, pid)
            pthread_rwlock_unlock(&self.pump.lock)
        if not done:
            raise OverflowError(f"MAC table full ({self.pump.macs.capacity} gossiped entries)")

    def forget_mac(self, mac):
        cdef uint64_t key = _check_mac(mac)
        with nogil:
            pthread_rwlock_wrlock(&self.pump.lock)
            pump_clock(&self.pump)
            mac_forget(&self.pump, key)
            pthread_rwlock_unlock(&self.pump.lock)

    def macs(self):
        cdef uint32_t i
        cdef table_t *t = &self.pump.macs.t
        result = {}
        # The pump thread never takes the GIL, so holding the mutex while building
        # Python objects cannot deadlock.
        with nogil:
            pthread_rwlock_wrlock(&self.pump.lock)
            pump_clock(&self.pump)
            mac_reclaim(&self.pump)
        try:
            for i in range(t.mask + 1):
                if t.keys[i] != 0:
                    mac = int(t.keys[i] & MAC_MASK).to_bytes(6, "big")
                    result[mac] = <uint32_t>t.vals[i]
        finally:
            pthread_rwlock_unlock(&self.pump.lock)
        return result

    def table_sizes(self):
        """Entries the tables hold now: MACs (static and learned, expired ones the loop
        has not removed yet included), learned MACs, peers."""
        cdef uint32_t n_macs, learned, n_peers
        with nogil:
            pthread_rwlock_wrlock(&self.pump.lock)
            n_macs = self.pump.macs.t.count
            learned = self.pump.macs.learned
            n_peers = self.pump.n_peers
            pthread_rwlock_unlock(&self.pump.lock)
        return {"macs": n_macs, "learned": learned, "peers": n_peers}

    def _set_clock(self, seconds):
        """Tests only: freeze the pump's clock at `seconds` (None: CLOCK_MONOTONIC again)."""
        cdef int64_t value = -1
        if seconds is not None:
            if not isinstance(seconds, int) or not 0 <= seconds < (1 << 31):
                raise ValueError("the clock is 0..2**31-1 seconds")
            value = seconds
        with nogil:
            pthread_rwlock_wrlock(&self.pump.lock)
            self.pump.frozen_clock = value
            pthread_rwlock_unlock(&self.pump.lock)

    def stats(self):
        """The counters; learned MACs that have expired by now are counted as aged."""
        cdef uint64_t snap[N_COUNTERS]
        cdef unsigned int i, k
        with nogil:
            pthread_rwlock_wrlock(&self.pump.lock)  # no worker in a batch: counts are still
            pump_clock(&self.pump)
            mac_reclaim(&self.pump)
            memcpy(snap, self.pump.counters, sizeof(snap))
            for k in range(self.pump.n_workers):
                for i in range(N_COUNTERS):
                    snap[i] += self.pump.workers[k].counters[i]
            pthread_rwlock_unlock(&self.pump.lock)
        result = {}
        for i in range(N_COUNTERS):
            result[COUNTERS[i]] = snap[i]
        return result

    def peer_stats(self):
        """Per peer: frames/bytes sent to it from our TAP, and received from it to our TAP."""
        cdef uint32_t i
        cdef unsigned int k
        cdef peer_t *p
        result = {}
        with nogil:
            pthread_rwlock_wrlock(&self.pump.lock)
        try:
            for i in range(self.pump.n_peers):
                p = &self.pump.peers[i]
                row = {"tx_frames": 0, "tx_bytes": 0, "rx_frames": 0, "rx_bytes": 0}
                for k in range(self.pump.n_workers):
                    row["tx_frames"] += p.counts[k].tx_frames
                    row["tx_bytes"] += p.counts[k].tx_bytes
                    row["rx_frames"] += p.counts[k].rx_frames
                    row["rx_bytes"] += p.counts[k].rx_bytes
                result[p.id] = row
        finally:
            pthread_rwlock_unlock(&self.pump.lock)
        return result

    def features(self):
        """What this pump uses; the router shows it in `meshnet status`."""
        return {
            "implementation": "compiled",
            "crypto": _layout.AEAD if self.pump.crypto else None,
            "vnet_hdr": bool(self.pump.vnet),
            "tap_offload": list(self.offloads.tap),
            "udp_gso": all(self.pump.workers[k].txq.gso for k in range(self.pump.n_workers)),
            "udp_gso_error": next((os.strerror(self.pump.workers[k].txq.gso_failed)
                                   for k in range(self.pump.n_workers) if self.pump.workers[k].txq.gso_failed), None),
            "udp_gro": bool(self.pump.udp_gro) and not mn_load_flag(&self.pump.gro_mixed),
            "udp_gro_error": "turned off: the kernel coalesced two threads' flows" if mn_load_flag(&self.pump.gro_mixed) else None,
            "gro_merge": bool(self.pump.vnet) and all(self.pump.workers[k].gro.tcp_ok for k in range(self.pump.n_workers)),
            "gro_merge_udp": bool(self.pump.vnet) and all(self.pump.workers[k].gro.udp_ok for k in range(self.pump.n_workers)),
            "batch": self.pump.batch,
            "syscall_batching": True,
            "threads": self.pump.n_workers,
            "spin_us": self.pump.spin_ns // 1000,
            "underlay_mtu": self.pump.underlay_mtu,
            "mac_table_max": self.pump.macs.capacity,
            "learn_quota": self.pump.macs.quota,
            "mac_age": self.pump.macs.age,
        }

    # -- loop ----------------------------------------------------------------------

    def poll(self, int timeout_ms, int worker=0):
        """One iteration of worker `worker` (one thread at a time per worker)."""
        cdef int handled
        cdef worker_t *w = self.worker(worker)
        with nogil:
            handled = pump_poll_once(&self.pump, w, timeout_ms)
        if handled < 0:
            raise OSError(w.error, os.strerror(w.error))
        return handled

    def run(self, int worker=0):
        """Run worker `worker` until stop(); each worker wants a thread of its own."""
        cdef int result
        cdef worker_t *w = self.worker(worker)
        with nogil:
            result = pump_run(&self.pump, w)
        if result < 0:
            raise OSError(w.error, os.strerror(w.error))

    def stop(self):
        """Make every worker's run() return (any thread)."""
        cdef unsigned int k
        for k in range(self.pump.n_workers):
            worker_wake(&self.pump.workers[k])

    def close(self):
        """Release the pump's own fds (not the TAP's nor the sockets); after run() returned."""
        cdef unsigned int k
        for k in range(self.pump.n_workers):
            worker_close(&self.pump.workers[k])

    cdef worker_t *worker(self, int k) except NULL:
        if not 0 <= k < <int>self.pump.n_workers:
            raise ValueError(f"worker must be 0..{self.pump.n_workers - 1}, got {k}")
        if self.pump.workers[k].wake_fd < 0:
            raise ValueError("pump is closed")
        return &self.pump.workers[k]
