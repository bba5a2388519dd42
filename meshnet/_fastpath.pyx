# cython: language_level=3
"""The compiled sleeve pump: TAP frames <-> sleeve datagrams over UDP, without the GIL.

The behaviour is specified by the pure-Python twin `meshnet.dataplane._pump_py` (its
docstrings have the forwarding, crypto and drop rules; docs/sleeve.md the wire format);
this is the same algorithm on C data, plus the kernel offloads that only change how many
syscalls it takes. Which offloads the TAP and the socket have was settled before the
pump was made (`meshnet.kernel.offload`); the pump only uses them. One iteration
(`poll()`, or each turn of `run()`), all of it without the GIL:

    poll() on the TAP fd, the UDP fd and the wake eventfd
    lock the table mutex
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
    unlock

This file is the Python face: `Pump` checks arguments, allocates everything once, takes
the mutex for table changes and releases the GIL once per `poll()`/`run()`. The C heart
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
    htons,
    mmsghdr,
    mn_load_flag,
    mn_store_flag,
    poll,
    pollfd,
    pthread_mutex_destroy,
    pthread_mutex_init,
    pthread_mutex_lock,
    pthread_mutex_unlock,
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
    """Moves frames between a TAP fd and a UDP socket; see the module docstring."""

    def __cinit__(self, int tap_fd, int udp_fd, local_id, *, int batch=32, crypto=False,
                  offloads=None, int underlay_mtu=0, int spin_us=0,
                  mac_table_max=MAC_TABLE_DEFAULT, learn_quota=LEARN_QUOTA_DEFAULT,
                  mac_age=MAC_AGE_DEFAULT):
        cdef pump_t *pump = &self.pump
        cdef int value = 0
        cdef socklen_t size = sizeof(int)
        cdef unsigned int i
        pump.wake_fd = -1
        pump.frozen_clock = -1
        pump.local_id = _check_id(local_id, "local_id")
        _check_limits(mac_table_max, learn_quota, mac_age)
        if not 1 <= batch <= MAX_BATCH:
            raise ValueError(f"batch must be 1..{MAX_BATCH}, got {batch}")
        if underlay_mtu and not 576 <= underlay_mtu <= 65535:
            raise ValueError(f"underlay_mtu must be 0 or 576..65535, got {underlay_mtu}")
        if (getsockopt(udp_fd, SOL_SOCKET, SO_DOMAIN, &value, &size) < 0 or value != AF_INET
                or getsockopt(udp_fd, SOL_SOCKET, SO_TYPE, &value, &size) < 0
                or value != SOCK_DGRAM):
            raise ValueError("udp_fd must be an IPv4 UDP socket")
        set_nonblocking(udp_fd)
        set_nonblocking(tap_fd)
        pump.tap_fd = tap_fd
        pump.udp_fd = udp_fd
        pump.batch = batch
        pump.crypto = bool(crypto)
        pump.underlay_mtu = underlay_mtu
        if not 0 <= spin_us <= 100000:
            raise ValueError(f"spin_us must be 0..100000, got {spin_us}")
        pump.spin_ns = <int64_t>spin_us * 1000
        pump.overhead = IP_UDP_HEADERS + HEADER_LEN + (AEAD_OVERHEAD if pump.crypto else 0)
        pump.max_frame = MAX_SEALED_FRAME if pump.crypto else MAX_SLEEVE_FRAME
        pump.txq.gso_max = (underlay_mtu if underlay_mtu else 1500) - IP_UDP_HEADERS

        # The offloads the fds were set up with; each one missing just means more syscalls.
        self.offloads = Offloads() if offloads is None else offloads
        pump.vnet = self.offloads.vnet_hdr
        pump.udp_gro = self.offloads.udp_gro
        pump.txq.gso = self.offloads.udp_gso
        pump.gro.tcp_ok = True
        pump.gro.udp_ok = True

        if (mac_init(&pump.macs, mac_table_max, learn_quota, mac_age) < 0
                or table_init(&pump.peer_index, PEER_INDEX_BITS) < 0
                or table_init(&pump.addr_refs, PEER_INDEX_BITS) < 0
                or table_init(&pump.addr_owner, PEER_INDEX_BITS) < 0):
            raise MemoryError()
        pump.peers = <peer_t *>calloc(PEER_TABLE_MAX, sizeof(peer_t))
        pump.tap.slots = <uint8_t *>malloc(<size_t>batch * TAP_SLOT)
        pump.udp.slots = <uint8_t *>malloc(<size_t>batch * UDP_SLOT)
        pump.udp.msgs = <mmsghdr *>calloc(batch, sizeof(mmsghdr))
        pump.udp.iov = <iovec *>calloc(batch, sizeof(iovec))
        pump.udp.addr = <sockaddr_in *>calloc(batch, sizeof(sockaddr_in))
        pump.udp.cmsg = <uint8_t *>calloc(batch, RX_CMSG)
        pump.txq.iov = <iovec *>calloc(2 * batch, sizeof(iovec))
        pump.txq.addr = <sockaddr_in *>calloc(batch, sizeof(sockaddr_in))
        pump.txq.size = <uint32_t *>calloc(batch, sizeof(uint32_t))
        pump.txq.hdr = <uint8_t *>calloc(batch, HEADER_LEN)
        pump.txq.msgs = <mmsghdr *>calloc(batch, sizeof(mmsghdr))
        pump.txq.first = <uint32_t *>calloc(batch + 1, sizeof(uint32_t))
        pump.txq.cmsg = <uint8_t *>calloc(batch, TX_CMSG)
        pump.tap.seg_arena = <uint8_t *>malloc(SEG_ARENA)
        pump.txq.copy_arena = <uint8_t *>malloc(COPY_ARENA)
        pump.gro.head = <uint8_t *>calloc(1, GRO_HEAD)
        pump.gro.iov = <iovec *>calloc(GRO_MAX_SEGS + 1, sizeof(iovec))
        pump.tap.scratch = <uint8_t *>calloc(1, SCRATCH)
        if (pump.peers == NULL or pump.tap.slots == NULL or pump.udp.slots == NULL
                or pump.udp.msgs == NULL or pump.udp.iov == NULL or pump.udp.addr == NULL
                or pump.udp.cmsg == NULL or pump.txq.iov == NULL or pump.txq.addr == NULL
                or pump.txq.size == NULL or pump.txq.hdr == NULL or pump.txq.msgs == NULL
                or pump.txq.first == NULL or pump.txq.cmsg == NULL
                or pump.tap.seg_arena == NULL or pump.txq.copy_arena == NULL
                or pump.gro.head == NULL or pump.gro.iov == NULL or pump.tap.scratch == NULL):
            raise MemoryError()
        for i in range(pump.batch):
            pump.udp.iov[i].iov_base = pump.udp.slots + <size_t>i * UDP_SLOT
            pump.udp.iov[i].iov_len = UDP_SLOT
            pump.udp.msgs[i].msg_hdr.msg_iov = &pump.udp.iov[i]
            pump.udp.msgs[i].msg_hdr.msg_iovlen = 1
            pump.udp.msgs[i].msg_hdr.msg_name = &pump.udp.addr[i]
        if pthread_mutex_init(&pump.lock, NULL) != 0:
            raise MemoryError()
        self.lock_ready = True
        pump.wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        if pump.wake_fd < 0:
            raise OSError(errno, os.strerror(errno))

    def __dealloc__(self):
        cdef pump_t *pump = &self.pump
        cdef uint32_t i
        if pump.wake_fd >= 0:
            close(pump.wake_fd)
        if self.lock_ready:
            pthread_mutex_destroy(&pump.lock)
        if pump.peers != NULL:
            for i in range(pump.n_peers):
                peer_free_keys(&pump.peers[i])
        table_free(&pump.macs.t)
        table_free(&pump.peer_index)
        table_free(&pump.addr_refs)
        table_free(&pump.addr_owner)
        free(pump.peers)
        free(pump.tap.slots)
        free(pump.udp.slots)
        free(pump.udp.msgs)
        free(pump.udp.iov)
        free(pump.udp.addr)
        free(pump.udp.cmsg)
        free(pump.txq.iov)
        free(pump.txq.addr)
        free(pump.txq.size)
        free(pump.txq.hdr)
        free(pump.txq.msgs)
        free(pump.txq.first)
        free(pump.txq.cmsg)
        free(pump.tap.seg_arena)
        free(pump.txq.copy_arena)
        free(pump.gro.head)
        free(pump.gro.iov)
        free(pump.tap.scratch)

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
            pthread_mutex_lock(&self.pump.lock)
            full = peer_put(&self.pump, pid, hop, has_addr, fl, &sa)
            pthread_mutex_unlock(&self.pump.lock)
        if full:
            raise OverflowError(f"peer table full ({PEER_TABLE_MAX} peers)")

    def remove_peer(self, peer_id):
        cdef uint32_t pid = _check_id(peer_id, "peer_id")
        with nogil:
            pthread_mutex_lock(&self.pump.lock)
            pump_clock(&self.pump)
            peer_drop(&self.pump, pid)
            pthread_mutex_unlock(&self.pump.lock)

    def set_peer_keys(self, peer_id, tx_key, rx_key, *, epoch):
        """Install the sleeve keys shared with a directly connected peer (see the twin)."""
        cdef uint32_t pid = _check_id(peer_id, "peer_id")
        cdef bytes tx = _check_key(tx_key, "tx_key")
        cdef bytes rx = _check_key(rx_key, "rx_key")
        cdef const uint8_t *txp = tx
        cdef const uint8_t *rxp = rx
        cdef uint32_t ep
        cdef bint known
        cdef EVP_CIPHER_CTX *tx_ctx = NULL
        cdef EVP_CIPHER_CTX *rx_ctx = NULL
        if not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
        ep = epoch & 0xFFFFFFFF
        # Contexts are made outside the lock; unused ones are freed.
        tx_ctx = aead_new(txp, True)
        rx_ctx = aead_new(rxp, False)
        if tx_ctx == NULL or rx_ctx == NULL:
            EVP_CIPHER_CTX_free(tx_ctx)
            EVP_CIPHER_CTX_free(rx_ctx)
            raise MemoryError("libcrypto could not set up AES-256-GCM")
        with nogil:
            pthread_mutex_lock(&self.pump.lock)
            known = peer_set_keys(&self.pump, pid, txp, rxp, ep, &tx_ctx, &rx_ctx)
            pthread_mutex_unlock(&self.pump.lock)
        EVP_CIPHER_CTX_free(tx_ctx)
        EVP_CIPHER_CTX_free(rx_ctx)
        if not known:
            raise ValueError(f"unknown peer {pid}: set_peer first")

    def rekey_due(self):
        """Peers whose send key has sealed REKEY_AFTER_MESSAGES datagrams: new keys needed."""
        cdef uint32_t i
        due = []
        with nogil:
            pthread_mutex_lock(&self.pump.lock)
        try:
            for i in range(self.pump.n_peers):
                if (self.pump.peers[i].tx_ctx != NULL
                        and self.pump.peers[i].tx_counter >= REKEY_AFTER_MESSAGES):
                    due.append(self.pump.peers[i].id)
        finally:
            pthread_mutex_unlock(&self.pump.lock)
        return sorted(due)

    def _set_tx_counter(self, peer_id, counter):
        """Tests only: jump a send key's counter (to reach the rekey and reject limits).
        Takes no lock: call it while no thread is in poll()/run()."""
        cdef int64_t slot = table_find(&self.pump.peer_index, _check_id(peer_id, "peer_id"))
        if slot < 0 or self.pump.peers[self.pump.peer_index.vals[slot]].tx_ctx == NULL:
            raise ValueError("no send key for that peer")
        self.pump.peers[self.pump.peer_index.vals[slot]].tx_counter = counter

    def set_mac(self, mac, peer_id):
        """A gossiped (static) entry; it may evict a learned one (rules: the twin's macs.py)."""
        cdef uint64_t key = _check_mac(mac)
        cdef uint32_t pid = _check_id(peer_id, "peer_id")
        cdef bint done
        if pid == self.pump.local_id:
            raise ValueError("local MACs are not in the pump's table")
        with nogil:
            pthread_mutex_lock(&self.pump.lock)
            pump_clock(&self.pump)
            done = mac_set_static(&self.pump, key, pid)
            pthread_mutex_unlock(&self.pump.lock)
        if not done:
            raise OverflowError(f"MAC table full ({self.pump.macs.capacity} gossiped entries)")

    def forget_mac(self, mac):
        cdef uint64_t key = _check_mac(mac)
        with nogil:
            pthread_mutex_lock(&self.pump.lock)
            pump_clock(&self.pump)
            mac_forget(&self.pump, key)
            pthread_mutex_unlock(&self.pump.lock)

    def macs(self):
        cdef uint32_t i
        cdef table_t *t = &self.pump.macs.t
        result = {}
        # The pump thread never takes the GIL, so holding the mutex while building
        # Python objects cannot deadlock.
        with nogil:
            pthread_mutex_lock(&self.pump.lock)
            pump_clock(&self.pump)
            mac_reclaim(&self.pump)
        try:
            for i in range(t.mask + 1):
                if t.keys[i] != 0:
                    mac = int(t.keys[i] & MAC_MASK).to_bytes(6, "big")
                    result[mac] = <uint32_t>t.vals[i]
        finally:
            pthread_mutex_unlock(&self.pump.lock)
        return result

    def table_sizes(self):
        """Entries the tables hold now: MACs (static and learned, expired ones the loop
        has not removed yet included), learned MACs, peers."""
        cdef uint32_t n_macs, learned, n_peers
        with nogil:
            pthread_mutex_lock(&self.pump.lock)
            n_macs = self.pump.macs.t.count
            learned = self.pump.macs.learned
            n_peers = self.pump.n_peers
            pthread_mutex_unlock(&self.pump.lock)
        return {"macs": n_macs, "learned": learned, "peers": n_peers}

    def _set_clock(self, seconds):
        """Tests only: freeze the pump's clock at `seconds` (None: CLOCK_MONOTONIC again)."""
        cdef int64_t value = -1
        if seconds is not None:
            if not isinstance(seconds, int) or not 0 <= seconds < (1 << 31):
                raise ValueError("the clock is 0..2**31-1 seconds")
            value = seconds
        with nogil:
            pthread_mutex_lock(&self.pump.lock)
            self.pump.frozen_clock = value
            pthread_mutex_unlock(&self.pump.lock)

    def stats(self):
        """The counters; learned MACs that have expired by now are counted as aged."""
        cdef uint64_t snap[N_COUNTERS]
        cdef int i
        with nogil:
            pthread_mutex_lock(&self.pump.lock)
            pump_clock(&self.pump)
            mac_reclaim(&self.pump)
            memcpy(snap, self.pump.counters, sizeof(snap))
            pthread_mutex_unlock(&self.pump.lock)
        result = {}
        for i in range(N_COUNTERS):
            result[COUNTERS[i]] = snap[i]
        return result

    def peer_stats(self):
        """Per peer: frames/bytes sent to it from our TAP, and received from it to our TAP."""
        cdef uint32_t i
        cdef peer_t *p
        result = {}
        with nogil:
            pthread_mutex_lock(&self.pump.lock)
        try:
            for i in range(self.pump.n_peers):
                p = &self.pump.peers[i]
                result[p.id] = {"tx_frames": p.tx_frames, "tx_bytes": p.tx_bytes,
                                "rx_frames": p.rx_frames, "rx_bytes": p.rx_bytes}
        finally:
            pthread_mutex_unlock(&self.pump.lock)
        return result

    def features(self):
        """What this pump uses; the router shows it in `meshnet status`."""
        return {
            "implementation": "compiled",
            "crypto": _layout.AEAD if self.pump.crypto else None,
            "vnet_hdr": bool(self.pump.vnet),
            "tap_offload": list(self.offloads.tap),
            "udp_gso": bool(self.pump.txq.gso),
            "udp_gso_error": os.strerror(self.pump.txq.gso_failed) if self.pump.txq.gso_failed else None,
            "udp_gro": bool(self.pump.udp_gro),
            "gro_merge": bool(self.pump.vnet and self.pump.gro.tcp_ok),
            "gro_merge_udp": bool(self.pump.vnet and self.pump.gro.udp_ok),
            "batch": self.pump.batch,
            "syscall_batching": True,
            "threads": 1,
            "spin_us": self.pump.spin_ns // 1000,
            "underlay_mtu": self.pump.underlay_mtu,
            "mac_table_max": self.pump.macs.capacity,
            "learn_quota": self.pump.macs.quota,
            "mac_age": self.pump.macs.age,
        }

    # -- loop ----------------------------------------------------------------------

    def poll(self, int timeout_ms):
        cdef int handled
        self.check_open()
        with nogil:
            handled = pump_poll_once(&self.pump, timeout_ms)
        if handled < 0:
            raise OSError(self.pump.error, os.strerror(self.pump.error))
        return handled

    def run(self):
        cdef int result
        self.check_open()
        with nogil:
            result = pump_run(&self.pump)
        if result < 0:
            raise OSError(self.pump.error, os.strerror(self.pump.error))

    def stop(self):
        cdef uint64_t one = 1
        cdef ssize_t written
        mn_store_flag(&self.pump.stopping, 1)
        if self.pump.wake_fd >= 0:
            written = write(self.pump.wake_fd, &one, sizeof(one))

    def close(self):
        """Release the pump's own fd (not tap_fd/udp_fd); call after run() returned."""
        if self.pump.wake_fd >= 0:
            close(self.pump.wake_fd)
            self.pump.wake_fd = -1

    cdef check_open(self):
        if self.pump.wake_fd < 0:
            raise ValueError("pump is closed")
