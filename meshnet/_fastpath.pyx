# cython: language_level=3
"""The compiled sleeve pump: TAP frames <-> sleeve datagrams over UDP, without the GIL.

The behaviour is specified by the pure-Python twin `meshnet.dataplane._pump_py` (its
docstring has the forwarding rules); this is the same algorithm on C data. One
iteration (`poll()`, or each turn of `run()`), all of it without the GIL:

    poll() on the TAP fd, the UDP fd and the wake eventfd
    lock the table mutex
      TAP: read() up to `batch` frames, each into its own preallocated slot at
           HEADROOM bytes in. A unicast copy gets its sleeve header written into the
           headroom (one iovec, the frame is never copied); flood copies share the
           frame and take a header each from the tx header array (two iovecs)
      UDP: recvmmsg() up to `batch` datagrams; a frame for us is write()n to the TAP
           straight from the receive buffer, a relay gets ttl - 1 in place
      the send queue (up to `batch` datagrams) leaves by sendmmsg() when full and at
      the end of each read batch
    unlock

Tables: the MAC table and the peer-id and peer-address indexes are fixed-size
linear-probing hash tables of uint64 keys (backward-shift deletion, so no
tombstones); peers live in a dense array so a flood walks only live peers. The
Python-facing methods take the same mutex, so table changes land between batches.
Nothing is allocated per frame.
"""

cimport cython
from libc.errno cimport EAGAIN, EBADF, EINTR, ENOBUFS, errno
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, memset
from posix.fcntl cimport F_GETFL, F_SETFL, O_NONBLOCK, fcntl
from posix.uio cimport iovec
from posix.unistd cimport close, read, write

from meshnet.includes.linux cimport (
    AF_INET,
    EFD_CLOEXEC,
    EFD_NONBLOCK,
    MSG_DONTWAIT,
    POLLIN,
    POLLNVAL,
    SO_DOMAIN,
    SO_TYPE,
    SOCK_DGRAM,
    SOL_SOCKET,
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
    pthread_mutex_t,
    pthread_mutex_unlock,
    recvmmsg,
    sendmmsg,
    sockaddr_in,
    socklen_t,
)

import os
import socket

from meshnet.dataplane import layout as _layout

cdef enum:
    VERSION = 1
    TYPE_FRAME = 1
    HEADER_LEN = 12
    ETH_HEADER_LEN = 14
    MIN_DATAGRAM = 26
    DEFAULT_TTL = 8
    MAX_FRAME = 65535
    MAX_SLEEVE_FRAME = 65495
    MAC_TABLE_BITS = 14
    MAC_TABLE_MAX = 8192
    PEER_TABLE_MAX = 4096
    PEER_INDEX_BITS = 13  # twice PEER_TABLE_MAX slots: indexes stay at most half full
    MAX_BATCH = 1024  # the kernel's UIO_MAXIOV caps one sendmmsg/recvmmsg call
    # Room in front of every TAP frame for the sleeve header now, and for the AEAD
    # counter and a virtio-net header later, all written in place.
    HEADROOM = 64
    TAP_SLOT = HEADROOM + MAX_FRAME + 1  # + 1 so an oversize read is seen, not cut
    UDP_SLOT = MAX_FRAME + 1

# The constants above are C compile-time copies of layout.py: refuse a stale build.
if (
    _layout.VERSION, _layout.TYPE_FRAME, _layout.HEADER_LEN, _layout.ETH_HEADER_LEN,
    _layout.MIN_DATAGRAM, _layout.DEFAULT_TTL, _layout.MAX_FRAME, _layout.MAX_SLEEVE_FRAME,
    _layout.MAC_TABLE_SLOTS, _layout.MAC_TABLE_MAX, _layout.PEER_TABLE_MAX,
) != (
    VERSION, TYPE_FRAME, HEADER_LEN, ETH_HEADER_LEN, MIN_DATAGRAM, DEFAULT_TTL, MAX_FRAME,
    MAX_SLEEVE_FRAME, 1 << MAC_TABLE_BITS, MAC_TABLE_MAX, PEER_TABLE_MAX,
):
    raise ImportError("meshnet._fastpath was built against another layout.py; rebuild it")

# Counter indexes; COUNTERS names them in the same order as the Python twin.
cdef enum:
    TAP_RX
    TAP_RX_BYTES
    TAP_TX
    TAP_TX_BYTES
    UDP_RX
    UDP_RX_BYTES
    UDP_TX
    UDP_TX_BYTES
    FLOOD_TX
    UNKNOWN_UNICAST
    RELAYED
    LEARNED
    UNLEARNED
    LEARN_TABLE_FULL
    DROP_SHORT_FRAME
    DROP_OVERSIZE
    DROP_NO_ROUTE
    DROP_UNKNOWN_SENDER
    DROP_SHORT
    DROP_VERSION
    DROP_TYPE
    DROP_UNKNOWN_PEER
    DROP_TTL
    DROP_SEND_ERROR
    DROP_TAP_WRITE
    N_COUNTERS

COUNTERS = (
    "tap_rx", "tap_rx_bytes", "tap_tx", "tap_tx_bytes", "udp_rx", "udp_rx_bytes",
    "udp_tx", "udp_tx_bytes", "flood_tx", "unknown_unicast", "relayed", "learned",
    "unlearned", "learn_table_full", "drop_short_frame", "drop_oversize", "drop_no_route",
    "drop_unknown_sender", "drop_short", "drop_version", "drop_type", "drop_unknown_peer",
    "drop_ttl", "drop_send_error", "drop_tap_write",
)
assert len(COUNTERS) == N_COUNTERS

cdef uint64_t OCCUPIED = (<uint64_t>1) << 63  # set in every stored key; 0 = empty slot
cdef uint64_t STATIC = (<uint64_t>1) << 32  # MAC table value flag: set_mac, not learned
cdef uint64_t MAC_MASK = ((<uint64_t>1) << 48) - 1


# -- fixed-size hash table: uint64 key -> uint64 value, linear probing -------------

cdef struct Table:
    uint64_t *keys
    uint64_t *vals
    uint32_t mask
    uint32_t shift
    uint32_t count


cdef int table_init(Table *t, unsigned int bits) noexcept nogil:
    t.keys = <uint64_t *>calloc(<size_t>1 << bits, sizeof(uint64_t))
    t.vals = <uint64_t *>calloc(<size_t>1 << bits, sizeof(uint64_t))
    t.mask = (1u << bits) - 1
    t.shift = 64 - bits
    t.count = 0
    return 0 if t.keys != NULL and t.vals != NULL else -1


cdef void table_free(Table *t) noexcept nogil:
    free(t.keys)
    free(t.vals)
    t.keys = NULL
    t.vals = NULL


cdef inline uint32_t table_home(const Table *t, uint64_t stored) noexcept nogil:
    return <uint32_t>((stored * <uint64_t>0x9E3779B97F4A7C15) >> t.shift)  # Fibonacci hashing


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline int64_t table_find(const Table *t, uint64_t key) noexcept nogil:
    # Callers keep every table at most half full, so an empty slot ends each probe.
    cdef uint64_t stored = key | OCCUPIED
    cdef uint32_t i = table_home(t, stored)
    while t.keys[i] != 0:
        if t.keys[i] == stored:
            return i
        i = (i + 1) & t.mask
    return -1


cdef void table_put(Table *t, uint64_t key, uint64_t val) noexcept nogil:
    cdef uint64_t stored = key | OCCUPIED
    cdef uint32_t i = table_home(t, stored)
    while t.keys[i] != 0:
        if t.keys[i] == stored:
            t.vals[i] = val
            return
        i = (i + 1) & t.mask
    t.keys[i] = stored
    t.vals[i] = val
    t.count += 1


cdef void table_delete(Table *t, uint32_t hole) noexcept nogil:
    # Backward shift: pull later members of the probe run into the hole when their
    # home slot lies cyclically at or before it, so lookups never need tombstones.
    cdef uint32_t j = hole
    cdef uint32_t home
    while True:
        j = (j + 1) & t.mask
        if t.keys[j] == 0:
            break
        home = table_home(t, t.keys[j])
        if ((j - home) & t.mask) >= ((j - hole) & t.mask):
            t.keys[hole] = t.keys[j]
            t.vals[hole] = t.vals[j]
            hole = j
    t.keys[hole] = 0
    t.count -= 1


# -- wire helpers -----------------------------------------------------------------

cdef inline uint64_t mac_key(const uint8_t *p) noexcept nogil:
    return ((<uint64_t>p[0] << 40) | (<uint64_t>p[1] << 32) | (<uint64_t>p[2] << 24)
            | (<uint64_t>p[3] << 16) | (<uint64_t>p[4] << 8) | p[5])


cdef inline uint64_t addr_key(const sockaddr_in *a) noexcept nogil:
    return (<uint64_t>a.sin_addr.s_addr << 16) | a.sin_port  # both in network order


cdef inline uint32_t load_be32(const uint8_t *p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline void put_header(uint8_t *p, uint32_t src, uint32_t dst) noexcept nogil:
    p[0] = VERSION
    p[1] = TYPE_FRAME
    p[2] = 0
    p[3] = DEFAULT_TTL
    p[4] = src >> 24
    p[5] = (src >> 16) & 0xFF
    p[6] = (src >> 8) & 0xFF
    p[7] = src & 0xFF
    p[8] = dst >> 24
    p[9] = (dst >> 16) & 0xFF
    p[10] = (dst >> 8) & 0xFF
    p[11] = dst & 0xFF


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


cdef int set_nonblocking(int fd) except -1:
    cdef int flags = fcntl(fd, F_GETFL)
    if flags < 0 or fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0:
        raise OSError(errno, os.strerror(errno))
    return 0


# -- the pump -------------------------------------------------------------------------

cdef struct Peer:
    uint32_t id
    uint32_t via  # next hop for frames to this peer (== id when direct)
    bint has_addr
    bint flood  # floods from the TAP go to this peer (False: kernel VXLAN carries them)
    sockaddr_in addr  # its sleeve address when directly connected
    uint64_t tx_frames  # frames from our TAP sent towards it
    uint64_t tx_bytes
    uint64_t rx_frames  # frames from it written to our TAP
    uint64_t rx_bytes


cdef class Pump:
    """Moves frames between a TAP fd and a UDP socket; see the module docstring."""

    cdef int tap_fd
    cdef int udp_fd
    cdef int wake_fd
    cdef uint32_t local_id
    cdef unsigned int batch
    cdef int stopping
    cdef int error  # errno that ended the last iteration with -1
    cdef pthread_mutex_t lock
    cdef bint lock_ready
    cdef uint64_t counters[N_COUNTERS]
    cdef Table mac_table  # MAC -> peer id | STATIC
    cdef Table peer_index  # peer id -> index into peers
    cdef Table addr_refs  # addr_key -> number of peers with that address
    cdef Peer *peers
    cdef uint32_t n_peers
    cdef uint8_t *tap_slots  # batch x TAP_SLOT
    cdef uint8_t *udp_slots  # batch x UDP_SLOT
    cdef mmsghdr *rx_msgs
    cdef iovec *rx_iov
    cdef sockaddr_in *rx_addr
    cdef mmsghdr *tx_msgs
    cdef iovec *tx_iov  # two per message: header (or whole datagram), frame
    cdef sockaddr_in *tx_addr
    cdef uint8_t *tx_hdr  # one header per message, for flood copies
    cdef unsigned int tx_len

    def __cinit__(self, int tap_fd, int udp_fd, local_id, *, int batch=32):
        cdef int value = 0
        cdef socklen_t size = sizeof(int)
        cdef unsigned int i
        self.wake_fd = -1
        self.local_id = _check_id(local_id, "local_id")
        if not 1 <= batch <= MAX_BATCH:
            raise ValueError(f"batch must be 1..{MAX_BATCH}, got {batch}")
        if (getsockopt(udp_fd, SOL_SOCKET, SO_DOMAIN, &value, &size) < 0 or value != AF_INET
                or getsockopt(udp_fd, SOL_SOCKET, SO_TYPE, &value, &size) < 0
                or value != SOCK_DGRAM):
            raise ValueError("udp_fd must be an IPv4 UDP socket")
        set_nonblocking(udp_fd)
        set_nonblocking(tap_fd)
        self.tap_fd = tap_fd
        self.udp_fd = udp_fd
        self.batch = batch

        if (table_init(&self.mac_table, MAC_TABLE_BITS) < 0
                or table_init(&self.peer_index, PEER_INDEX_BITS) < 0
                or table_init(&self.addr_refs, PEER_INDEX_BITS) < 0):
            raise MemoryError()
        self.peers = <Peer *>calloc(PEER_TABLE_MAX, sizeof(Peer))
        self.tap_slots = <uint8_t *>malloc(<size_t>batch * TAP_SLOT)
        self.udp_slots = <uint8_t *>malloc(<size_t>batch * UDP_SLOT)
        self.rx_msgs = <mmsghdr *>calloc(batch, sizeof(mmsghdr))
        self.rx_iov = <iovec *>calloc(batch, sizeof(iovec))
        self.rx_addr = <sockaddr_in *>calloc(batch, sizeof(sockaddr_in))
        self.tx_msgs = <mmsghdr *>calloc(batch, sizeof(mmsghdr))
        self.tx_iov = <iovec *>calloc(2 * batch, sizeof(iovec))
        self.tx_addr = <sockaddr_in *>calloc(batch, sizeof(sockaddr_in))
        self.tx_hdr = <uint8_t *>calloc(batch, HEADER_LEN)
        if (self.peers == NULL or self.tap_slots == NULL or self.udp_slots == NULL
                or self.rx_msgs == NULL or self.rx_iov == NULL or self.rx_addr == NULL
                or self.tx_msgs == NULL or self.tx_iov == NULL or self.tx_addr == NULL
                or self.tx_hdr == NULL):
            raise MemoryError()
        for i in range(self.batch):
            self.rx_iov[i].iov_base = self.udp_slots + <size_t>i * UDP_SLOT
            self.rx_iov[i].iov_len = UDP_SLOT
            self.rx_msgs[i].msg_hdr.msg_iov = &self.rx_iov[i]
            self.rx_msgs[i].msg_hdr.msg_iovlen = 1
            self.rx_msgs[i].msg_hdr.msg_name = &self.rx_addr[i]
            self.tx_msgs[i].msg_hdr.msg_iov = &self.tx_iov[2 * i]
            self.tx_msgs[i].msg_hdr.msg_name = &self.tx_addr[i]
            self.tx_msgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_in)

        if pthread_mutex_init(&self.lock, NULL) != 0:
            raise MemoryError()
        self.lock_ready = True
        self.wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        if self.wake_fd < 0:
            raise OSError(errno, os.strerror(errno))

    def __dealloc__(self):
        if self.wake_fd >= 0:
            close(self.wake_fd)
        if self.lock_ready:
            pthread_mutex_destroy(&self.lock)
        table_free(&self.mac_table)
        table_free(&self.peer_index)
        table_free(&self.addr_refs)
        free(self.peers)
        free(self.tap_slots)
        free(self.udp_slots)
        free(self.rx_msgs)
        free(self.rx_iov)
        free(self.rx_addr)
        free(self.tx_msgs)
        free(self.tx_iov)
        free(self.tx_addr)
        free(self.tx_hdr)

    # -- tables (any thread) -------------------------------------------------------

    def set_peer(self, peer_id, addr, via, *, flood=True):
        cdef uint32_t pid = _check_id(peer_id, "peer_id")
        cdef uint32_t hop = _check_id(via, "via")
        cdef sockaddr_in sa
        cdef bytes packed
        cdef bint has_addr = addr is not None
        cdef bint fl = bool(flood)
        cdef bint full
        if self.local_id == pid or self.local_id == hop:
            raise ValueError("the local peer has no route entry")
        memset(&sa, 0, sizeof(sa))
        if has_addr:
            packed, port = _check_addr(addr)
            sa.sin_family = AF_INET
            sa.sin_port = htons(port)
            memcpy(&sa.sin_addr.s_addr, <const char *>packed, 4)
        with nogil:
            pthread_mutex_lock(&self.lock)
            full = self.put_peer(pid, hop, has_addr, fl, &sa)
            pthread_mutex_unlock(&self.lock)
        if full:
            raise OverflowError(f"peer table full ({PEER_TABLE_MAX} peers)")

    def remove_peer(self, peer_id):
        cdef uint32_t pid = _check_id(peer_id, "peer_id")
        with nogil:
            pthread_mutex_lock(&self.lock)
            self.drop_peer(pid)
            pthread_mutex_unlock(&self.lock)

    def set_mac(self, mac, peer_id):
        cdef uint64_t key = _check_mac(mac)
        cdef uint32_t pid = _check_id(peer_id, "peer_id")
        cdef bint full
        if pid == self.local_id:
            raise ValueError("local MACs are not in the pump's table")
        with nogil:
            pthread_mutex_lock(&self.lock)
            full = table_find(&self.mac_table, key) < 0 and self.mac_table.count >= MAC_TABLE_MAX
            if not full:
                table_put(&self.mac_table, key, pid | STATIC)
            pthread_mutex_unlock(&self.lock)
        if full:
            raise OverflowError(f"MAC table full ({MAC_TABLE_MAX} entries)")

    def forget_mac(self, mac):
        cdef uint64_t key = _check_mac(mac)
        cdef int64_t slot
        with nogil:
            pthread_mutex_lock(&self.lock)
            slot = table_find(&self.mac_table, key)
            if slot >= 0:
                table_delete(&self.mac_table, <uint32_t>slot)
            pthread_mutex_unlock(&self.lock)

    def macs(self):
        cdef uint32_t i
        result = {}
        # The pump thread never takes the GIL, so holding the mutex while building
        # Python objects cannot deadlock.
        with nogil:
            pthread_mutex_lock(&self.lock)
        try:
            for i in range(self.mac_table.mask + 1):
                if self.mac_table.keys[i] != 0:
                    mac = int(self.mac_table.keys[i] & MAC_MASK).to_bytes(6, "big")
                    result[mac] = <uint32_t>self.mac_table.vals[i]
        finally:
            pthread_mutex_unlock(&self.lock)
        return result

    def stats(self):
        cdef uint64_t snap[N_COUNTERS]
        cdef int i
        with nogil:
            pthread_mutex_lock(&self.lock)
            memcpy(snap, self.counters, sizeof(snap))
            pthread_mutex_unlock(&self.lock)
        result = {}
        for i in range(N_COUNTERS):
            result[COUNTERS[i]] = snap[i]
        return result

    def peer_stats(self):
        """Per peer: frames/bytes sent to it from our TAP, and received from it to our TAP."""
        cdef uint32_t i
        cdef Peer *p
        result = {}
        with nogil:
            pthread_mutex_lock(&self.lock)
        try:
            for i in range(self.n_peers):
                p = &self.peers[i]
                result[p.id] = {"tx_frames": p.tx_frames, "tx_bytes": p.tx_bytes,
                                "rx_frames": p.rx_frames, "rx_bytes": p.rx_bytes}
        finally:
            pthread_mutex_unlock(&self.lock)
        return result

    cdef bint put_peer(self, uint32_t pid, uint32_t via, bint has_addr, bint flood,
                       const sockaddr_in *sa) noexcept nogil:
        """Set a peer's route; True if it is new and the table is full."""
        cdef int64_t slot = table_find(&self.peer_index, pid)
        cdef Peer *p
        if slot >= 0:
            p = &self.peers[self.peer_index.vals[slot]]
            if p.has_addr:
                self.release_addr(&p.addr)
        elif self.n_peers >= PEER_TABLE_MAX:
            return True
        else:
            table_put(&self.peer_index, pid, self.n_peers)
            p = &self.peers[self.n_peers]
            memset(p, 0, sizeof(Peer))
            self.n_peers += 1
            p.id = pid
        p.via = via
        p.flood = flood
        p.has_addr = has_addr
        p.addr = sa[0]
        if has_addr:
            slot = table_find(&self.addr_refs, addr_key(sa))
            if slot >= 0:
                self.addr_refs.vals[slot] += 1
            else:
                table_put(&self.addr_refs, addr_key(sa), 1)
        return False

    cdef void release_addr(self, const sockaddr_in *sa) noexcept nogil:
        cdef int64_t slot = table_find(&self.addr_refs, addr_key(sa))
        self.addr_refs.vals[slot] -= 1
        if self.addr_refs.vals[slot] == 0:
            table_delete(&self.addr_refs, <uint32_t>slot)

    cdef void drop_peer(self, uint32_t pid) noexcept nogil:
        cdef uint32_t i = 0
        cdef int64_t slot
        cdef uint64_t idx
        while i <= self.mac_table.mask:
            if self.mac_table.keys[i] != 0 and <uint32_t>self.mac_table.vals[i] == pid:
                # The backward shift may pull an unvisited entry into i: look again.
                table_delete(&self.mac_table, i)
            else:
                i += 1
        slot = table_find(&self.peer_index, pid)
        if slot < 0:
            return
        idx = self.peer_index.vals[slot]
        table_delete(&self.peer_index, <uint32_t>slot)
        if self.peers[idx].has_addr:
            self.release_addr(&self.peers[idx].addr)
        self.n_peers -= 1
        if idx != self.n_peers:  # keep the array dense: move the last peer into the gap
            self.peers[idx] = self.peers[self.n_peers]
            table_put(&self.peer_index, self.peers[idx].id, idx)

    # -- loop ----------------------------------------------------------------------

    def poll(self, int timeout_ms):
        cdef int handled
        self.check_open()
        with nogil:
            handled = self.poll_once(timeout_ms)
        if handled < 0:
            raise OSError(self.error, os.strerror(self.error))
        return handled

    def run(self):
        cdef int handled = 0
        self.check_open()
        with nogil:
            while not mn_load_flag(&self.stopping):
                handled = self.poll_once(-1)
                if handled < 0:
                    break
        mn_store_flag(&self.stopping, 0)
        if handled < 0:
            raise OSError(self.error, os.strerror(self.error))

    def stop(self):
        cdef uint64_t one = 1
        cdef ssize_t written
        mn_store_flag(&self.stopping, 1)
        if self.wake_fd >= 0:
            written = write(self.wake_fd, &one, sizeof(one))

    def close(self):
        """Release the pump's own fd (not tap_fd/udp_fd); call after run() returned."""
        if self.wake_fd >= 0:
            close(self.wake_fd)
            self.wake_fd = -1

    cdef check_open(self):
        if self.wake_fd < 0:
            raise ValueError("pump is closed")

    cdef int poll_once(self, int timeout) noexcept nogil:
        """Wait, then handle one batch per ready fd; frames handled, or -1 and self.error."""
        cdef pollfd fds[3]
        cdef uint64_t drained
        cdef ssize_t got
        cdef int i, ready, handled = 0
        fds[0].fd = self.tap_fd
        fds[1].fd = self.udp_fd
        fds[2].fd = self.wake_fd
        for i in range(3):
            fds[i].events = POLLIN
            fds[i].revents = 0
        ready = poll(fds, 3, timeout)
        if ready < 0:
            if errno == EINTR:
                return 0
            self.error = errno
            return -1
        if ready == 0:
            return 0
        if (fds[0].revents | fds[1].revents | fds[2].revents) & POLLNVAL:
            self.error = EBADF
            return -1
        if fds[2].revents:
            got = read(self.wake_fd, &drained, sizeof(drained))
        pthread_mutex_lock(&self.lock)
        if fds[0].revents:
            handled = self.tap_batch()
        if fds[1].revents and handled >= 0:
            handled += self.udp_batch()
        pthread_mutex_unlock(&self.lock)
        return handled

    # -- per batch, mutex held -----------------------------------------------------

    cdef int tap_batch(self) noexcept nogil:
        cdef unsigned int n = 0
        cdef ssize_t got
        cdef uint8_t *frame
        cdef bint failed = False
        while n < self.batch:
            frame = self.tap_slots + <size_t>n * TAP_SLOT + HEADROOM
            got = read(self.tap_fd, frame, MAX_FRAME + 1)
            if got < 0:
                if errno == EINTR:
                    continue
                if errno != EAGAIN:  # the TAP itself is broken: report it, after sending
                    self.error = errno
                    failed = True
                break
            n += 1
            self.tap_frame(frame, <size_t>got)
        self.flush()
        return -1 if failed else <int>n

    cdef int udp_batch(self) noexcept nogil:
        cdef unsigned int i
        cdef int got
        for i in range(self.batch):
            self.rx_msgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_in)
        while True:
            got = recvmmsg(self.udp_fd, self.rx_msgs, self.batch, MSG_DONTWAIT, NULL)
            if got >= 0 or errno != EINTR:
                break
        if got <= 0:  # EAGAIN, or a transient socket error: next poll
            return 0
        for i in range(<unsigned int>got):
            self.datagram(self.udp_slots + <size_t>i * UDP_SLOT, self.rx_msgs[i].msg_len,
                          &self.rx_addr[i])
        self.flush()
        return got

    cdef unsigned int tx_reserve(self, const sockaddr_in *to) noexcept nogil:
        """Take the next send slot (flushing a full queue first), addressed to `to`."""
        cdef unsigned int slot
        if self.tx_len == self.batch:
            self.flush()
        slot = self.tx_len
        self.tx_len += 1
        self.tx_addr[slot] = to[0]
        return slot

    cdef void flush(self) noexcept nogil:
        cdef unsigned int i = 0, j
        cdef int sent
        while i < self.tx_len:
            sent = sendmmsg(self.udp_fd, self.tx_msgs + i, self.tx_len - i, MSG_DONTWAIT)
            if sent < 0:
                if errno == EINTR:
                    continue
                if errno == EAGAIN or errno == ENOBUFS:  # the rest would fail too
                    self.counters[DROP_SEND_ERROR] += self.tx_len - i
                    break
                self.counters[DROP_SEND_ERROR] += 1  # this datagram only: skip it
                i += 1
                continue
            for j in range(i, i + <unsigned int>sent):
                self.counters[UDP_TX] += 1
                self.counters[UDP_TX_BYTES] += self.tx_msgs[j].msg_len
            i += <unsigned int>sent
        self.tx_len = 0

    # -- per frame -------------------------------------------------------------------

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef const sockaddr_in *route(self, const Peer *p) noexcept nogil:
        """The address of p's next hop, or NULL if p has no route."""
        cdef int64_t slot
        if p.via != p.id:
            slot = table_find(&self.peer_index, p.via)
            if slot < 0:
                return NULL
            p = &self.peers[self.peer_index.vals[slot]]
        return &p.addr if p.has_addr else NULL

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef const sockaddr_in *next_hop(self, uint32_t pid) noexcept nogil:
        cdef int64_t slot = table_find(&self.peer_index, pid)
        if slot < 0:
            return NULL
        return self.route(&self.peers[self.peer_index.vals[slot]])

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef void tap_frame(self, uint8_t *frame, size_t n) noexcept nogil:
        cdef int64_t slot
        cdef uint32_t pid
        cdef unsigned int tx
        cdef const sockaddr_in *to
        self.counters[TAP_RX] += 1
        self.counters[TAP_RX_BYTES] += n
        if n < ETH_HEADER_LEN:
            self.counters[DROP_SHORT_FRAME] += 1
            return
        slot = table_find(&self.mac_table, mac_key(frame + 6))
        if slot >= 0 and not (self.mac_table.vals[slot] & STATIC):  # the host moved here
            table_delete(&self.mac_table, <uint32_t>slot)
            self.counters[UNLEARNED] += 1
        if n > MAX_SLEEVE_FRAME:
            self.counters[DROP_OVERSIZE] += 1
            return
        if frame[0] & 1:
            self.flood(frame, n)
            return
        slot = table_find(&self.mac_table, mac_key(frame))
        if slot < 0:
            self.counters[UNKNOWN_UNICAST] += 1
            self.flood(frame, n)
            return
        pid = <uint32_t>self.mac_table.vals[slot]
        slot = table_find(&self.peer_index, pid)
        to = NULL if slot < 0 else self.route(&self.peers[self.peer_index.vals[slot]])
        if to == NULL:
            self.counters[DROP_NO_ROUTE] += 1
            return
        self.peers[self.peer_index.vals[slot]].tx_frames += 1
        self.peers[self.peer_index.vals[slot]].tx_bytes += n
        put_header(frame - HEADER_LEN, self.local_id, pid)
        tx = self.tx_reserve(to)
        self.tx_iov[2 * tx].iov_base = frame - HEADER_LEN
        self.tx_iov[2 * tx].iov_len = n + HEADER_LEN
        self.tx_msgs[tx].msg_hdr.msg_iovlen = 1

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef void flood(self, uint8_t *frame, size_t n) noexcept nogil:
        cdef uint32_t i
        cdef unsigned int tx
        cdef uint8_t *hdr
        cdef const sockaddr_in *to
        for i in range(self.n_peers):
            if not self.peers[i].flood:
                continue
            to = self.route(&self.peers[i])
            if to == NULL:
                continue
            self.counters[FLOOD_TX] += 1
            self.peers[i].tx_frames += 1
            self.peers[i].tx_bytes += n
            tx = self.tx_reserve(to)
            hdr = self.tx_hdr + <size_t>tx * HEADER_LEN
            put_header(hdr, self.local_id, self.peers[i].id)
            self.tx_iov[2 * tx].iov_base = hdr
            self.tx_iov[2 * tx].iov_len = HEADER_LEN
            self.tx_iov[2 * tx + 1].iov_base = frame
            self.tx_iov[2 * tx + 1].iov_len = n
            self.tx_msgs[tx].msg_hdr.msg_iovlen = 2

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef void datagram(self, uint8_t *d, size_t n, const sockaddr_in *sender) noexcept nogil:
        cdef uint32_t src, dst
        cdef int64_t slot
        cdef ssize_t written
        cdef unsigned int tx
        cdef const sockaddr_in *to
        self.counters[UDP_RX] += 1
        self.counters[UDP_RX_BYTES] += n
        if table_find(&self.addr_refs, addr_key(sender)) < 0:
            self.counters[DROP_UNKNOWN_SENDER] += 1
            return
        if n < MIN_DATAGRAM:
            self.counters[DROP_SHORT] += 1
            return
        if d[0] != VERSION:
            self.counters[DROP_VERSION] += 1
            return
        if d[1] != TYPE_FRAME:
            self.counters[DROP_TYPE] += 1
            return
        src = load_be32(d + 4)
        dst = load_be32(d + 8)
        if dst == self.local_id:
            slot = table_find(&self.peer_index, src)
            if slot < 0:
                self.counters[DROP_UNKNOWN_PEER] += 1
                return
            if not (d[HEADER_LEN + 6] & 1):
                self.learn(mac_key(d + HEADER_LEN + 6), src)
            while True:
                written = write(self.tap_fd, d + HEADER_LEN, n - HEADER_LEN)
                if written >= 0 or errno != EINTR:
                    break
            if written < 0:
                self.counters[DROP_TAP_WRITE] += 1
                return
            self.counters[TAP_TX] += 1
            self.counters[TAP_TX_BYTES] += n - HEADER_LEN
            self.peers[self.peer_index.vals[slot]].rx_frames += 1
            self.peers[self.peer_index.vals[slot]].rx_bytes += n - HEADER_LEN
            return
        if d[3] <= 1:
            self.counters[DROP_TTL] += 1
            return
        to = self.next_hop(dst)
        if to == NULL:
            self.counters[DROP_NO_ROUTE] += 1
            return
        self.counters[RELAYED] += 1
        d[3] -= 1
        tx = self.tx_reserve(to)
        self.tx_iov[2 * tx].iov_base = d
        self.tx_iov[2 * tx].iov_len = n
        self.tx_msgs[tx].msg_hdr.msg_iovlen = 1

    cdef void learn(self, uint64_t mac, uint32_t pid) noexcept nogil:
        cdef int64_t slot = table_find(&self.mac_table, mac)
        if slot >= 0:
            if (self.mac_table.vals[slot] & STATIC) or <uint32_t>self.mac_table.vals[slot] == pid:
                return
            self.mac_table.vals[slot] = pid
        elif self.mac_table.count >= MAC_TABLE_MAX:
            self.counters[LEARN_TABLE_FULL] += 1
            return
        else:
            table_put(&self.mac_table, mac, pid)
        self.counters[LEARNED] += 1
