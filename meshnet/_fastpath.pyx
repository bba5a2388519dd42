# cython: language_level=3
"""The compiled sleeve pump: TAP frames <-> sleeve datagrams over UDP, without the GIL.

The behaviour is specified by the pure-Python twin `meshnet.dataplane._pump_py` (its
docstring has the forwarding, crypto and drop rules; docs/sleeve.md the wire format);
this is the same algorithm on C data, plus the kernel offloads that only change how many
syscalls it takes. One iteration (`poll()`, or each turn of `run()`), all of it without
the GIL:

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

Tables: the MAC table and the peer-id and peer-address indexes are fixed-size
linear-probing hash tables of uint64 keys (backward-shift deletion, so no
tombstones); peers live in a dense array so a flood walks only live peers. The
Python-facing methods take the same mutex, so table changes land between batches.
Nothing is allocated per frame: the AEAD contexts are made when keys are installed.
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
    MN_IFF_VNET_HDR,
    MN_TUN_F_CSUM,
    MN_TUN_F_TSO4,
    MN_TUN_F_TSO6,
    MN_TUN_F_TSO_ECN,
    MN_TUNGETIFF,
    MN_TUNSETOFFLOAD,
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
    ioctl,
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
    setsockopt,
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

cdef enum:
    VERSION = 2
    TYPE_FRAME = 1
    HEADER_LEN = 12
    ETH_HEADER_LEN = 14
    MIN_DATAGRAM = 26
    DEFAULT_TTL = 8
    MAX_FRAME = 65535
    MAX_SLEEVE_FRAME = 65495
    MAX_SEALED_FRAME = 65471
    MAC_TABLE_BITS = 14
    MAC_TABLE_MAX = 8192
    PEER_TABLE_MAX = 4096
    PEER_INDEX_BITS = 13  # twice PEER_TABLE_MAX slots: indexes stay at most half full
    MAX_BATCH = 1024  # the kernel's UIO_MAXIOV caps one sendmmsg/recvmmsg call
    FLAG_SEALED = 0x01
    FLAG_KEY_ID = 0x02
    FLAG_CSUM = 0x04
    COUNTER_LEN = 8
    TAG_LEN = 16
    SEALED_HEADER_LEN = 20
    MIN_SEALED = 50
    AEAD_OVERHEAD = 24
    KEY_LEN = 32
    REPLAY_WINDOW = 1024
    REPLAY_WORDS = 16  # REPLAY_WINDOW / 64
    VNET_HDR_LEN = 10
    VNET_F_NEEDS_CSUM = 1
    VNET_GSO_NONE = 0
    VNET_GSO_TCPV4 = 1
    VNET_GSO_TCPV6 = 4
    VNET_GSO_UDP_L4 = 5
    VNET_GSO_ECN = 0x80
    IP_UDP_HEADERS = 28
    # Room in front of every TAP frame for the virtio_net_hdr it is read with, then for
    # the sleeve header and counter written over it.
    HEADROOM = 64
    TAP_SLOT = HEADROOM + VNET_HDR_LEN + MAX_FRAME + 1  # + 1 so an oversize read is seen
    UDP_SLOT = MAX_FRAME + 1
    RX_CMSG = 32  # room for one UDP_GRO control message
    TX_CMSG = 32  # room for one UDP_SEGMENT control message
    GSO_MAX_SEGMENTS = 64  # datagrams per UDP_SEGMENT send (the kernel allows 64 or more)
    GSO_MAX_BYTES = 65000  # their total: under the 65507-byte UDP payload limit
    SEG_ARENA = 1 << 19  # TSO segments being sent
    COPY_ARENA = 1 << 18  # sealed flood copies being sent
    GRO_MAX_SEGS = 64  # TCP segments merged into one TAP write
    GRO_HEAD = VNET_HDR_LEN + ETH_HEADER_LEN + 60 + 60
    SCRATCH = 2048  # ICMP errors written back into the TAP

cdef uint64_t REKEY_AFTER_MESSAGES = (<uint64_t>1) << 30
cdef uint64_t REJECT_AFTER_MESSAGES = (<uint64_t>1) << 34

# The constants above are C compile-time copies of layout.py: refuse a stale build.
if (
    _layout.VERSION, _layout.TYPE_FRAME, _layout.HEADER_LEN, _layout.ETH_HEADER_LEN,
    _layout.MIN_DATAGRAM, _layout.DEFAULT_TTL, _layout.MAX_FRAME, _layout.MAX_SLEEVE_FRAME,
    _layout.MAC_TABLE_SLOTS, _layout.MAC_TABLE_MAX, _layout.PEER_TABLE_MAX,
    _layout.MAX_SEALED_FRAME, _layout.FLAG_SEALED, _layout.FLAG_KEY_ID, _layout.FLAG_CSUM,
    _layout.COUNTER_LEN, _layout.TAG_LEN, _layout.SEALED_HEADER_LEN, _layout.MIN_SEALED,
    _layout.AEAD_OVERHEAD, _layout.KEY_LEN, _layout.REPLAY_WINDOW, _layout.VNET_HDR_LEN,
    _layout.REKEY_AFTER_MESSAGES, _layout.REJECT_AFTER_MESSAGES, _layout.AEAD,
) != (
    VERSION, TYPE_FRAME, HEADER_LEN, ETH_HEADER_LEN, MIN_DATAGRAM, DEFAULT_TTL, MAX_FRAME,
    MAX_SLEEVE_FRAME, 1 << MAC_TABLE_BITS, MAC_TABLE_MAX, PEER_TABLE_MAX,
    MAX_SEALED_FRAME, FLAG_SEALED, FLAG_KEY_ID, FLAG_CSUM, COUNTER_LEN, TAG_LEN,
    SEALED_HEADER_LEN, MIN_SEALED, AEAD_OVERHEAD, KEY_LEN, REPLAY_WINDOW, VNET_HDR_LEN,
    REKEY_AFTER_MESSAGES, REJECT_AFTER_MESSAGES, "AES-256-GCM",
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
    DROP_PLAINTEXT
    DROP_SEALED
    DROP_NO_KEY
    DROP_REPLAY
    DROP_AUTH
    DROP_TX_NO_KEY
    DROP_KEY_EXHAUSTED
    DROP_BAD_CSUM
    DROP_BAD_GSO
    GSO_SEGMENTS
    FRAG_NEEDED
    GRO_FRAMES
    GRO_SEGMENTS
    N_COUNTERS

COUNTERS = (
    "tap_rx", "tap_rx_bytes", "tap_tx", "tap_tx_bytes", "udp_rx", "udp_rx_bytes",
    "udp_tx", "udp_tx_bytes", "flood_tx", "unknown_unicast", "relayed", "learned",
    "unlearned", "learn_table_full", "drop_short_frame", "drop_oversize", "drop_no_route",
    "drop_unknown_sender", "drop_short", "drop_version", "drop_type", "drop_unknown_peer",
    "drop_ttl", "drop_send_error", "drop_tap_write", "drop_plaintext", "drop_sealed",
    "drop_no_key", "drop_replay", "drop_auth", "drop_tx_no_key", "drop_key_exhausted",
    "drop_bad_csum", "drop_bad_gso", "gso_segments", "frag_needed", "gro_frames",
    "gro_segments",
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

cdef inline uint16_t load_be16(const uint8_t *p) noexcept nogil:
    return <uint16_t>((p[0] << 8) | p[1])


cdef inline void store_be16(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = (v >> 8) & 0xFF
    p[1] = v & 0xFF


cdef inline void store_be32(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = v >> 24
    p[1] = (v >> 16) & 0xFF
    p[2] = (v >> 8) & 0xFF
    p[3] = v & 0xFF


cdef inline uint64_t load_be64(const uint8_t *p) noexcept nogil:
    return (<uint64_t>load_be32(p) << 32) | load_be32(p + 4)


cdef inline void store_be64(uint8_t *p, uint64_t v) noexcept nogil:
    store_be32(p, <uint32_t>(v >> 32))
    store_be32(p + 4, <uint32_t>v)


cdef inline uint16_t load_le16(const uint8_t *p) noexcept nogil:
    return <uint16_t>(p[0] | (p[1] << 8))


cdef inline void store_le16(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = v & 0xFF
    p[1] = (v >> 8) & 0xFF


cdef inline void put_header(uint8_t *p, uint8_t flags, uint8_t ttl, uint32_t src,
                            uint32_t dst) noexcept nogil:
    p[0] = VERSION
    p[1] = TYPE_FRAME
    p[2] = flags
    p[3] = ttl
    store_be32(p + 4, src)
    store_be32(p + 8, dst)


# -- inner packets: checksums, the CSUM rule, ICMP (same rules as the twin) ----------

@cython.boundscheck(False)
@cython.wraparound(False)
cdef uint64_t csum_add(const uint8_t *p, size_t n, uint64_t total) noexcept nogil:
    """Ones' complement sum (unfolded) of big-endian 16-bit words; an odd byte is padded."""
    while n >= 8:
        total += ((<uint64_t>p[0] << 8) | p[1]) + ((<uint64_t>p[2] << 8) | p[3]) \
            + ((<uint64_t>p[4] << 8) | p[5]) + ((<uint64_t>p[6] << 8) | p[7])
        p += 8
        n -= 8
    while n >= 2:
        total += (<uint64_t>p[0] << 8) | p[1]
        p += 2
        n -= 2
    if n:
        total += <uint64_t>p[0] << 8
    return total


cdef inline uint32_t csum_fold(uint64_t total) noexcept nogil:
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return <uint32_t>total


cdef inline uint32_t pseudo_sum(const uint8_t *frame, uint32_t l4_len, uint32_t proto) noexcept nogil:
    if frame[12] == 0x08 and frame[13] == 0x00:
        return csum_fold(csum_add(frame + 26, 8, proto + l4_len))
    return csum_fold(csum_add(frame + 22, 32, proto + l4_len))


cdef inline void ipv4_header_checksum(uint8_t *ip, uint32_t ihl) noexcept nogil:
    ip[10] = 0
    ip[11] = 0
    store_be16(ip + 10, (~csum_fold(csum_add(ip, ihl, 0))) & 0xFFFF)


cdef bint l4_checksum_at(const uint8_t *frame, size_t n, uint32_t *start,
                         uint32_t *offset) noexcept nogil:
    """Where a CSUM datagram's receiver finds the inner TCP/UDP checksum (see the twin)."""
    cdef uint32_t s, proto, off
    if n < ETH_HEADER_LEN + 20:
        return False
    if frame[12] == 0x08 and frame[13] == 0x00:
        if frame[14] >> 4 != 4 or (frame[14] & 0x0F) < 5:
            return False
        s = ETH_HEADER_LEN + (frame[14] & 0x0F) * 4
        proto = frame[23]
    elif frame[12] == 0x86 and frame[13] == 0xDD:
        if n < ETH_HEADER_LEN + 40 or frame[14] >> 4 != 6:
            return False
        s = ETH_HEADER_LEN + 40
        proto = frame[20]
    else:
        return False
    if proto == 6:
        off = 16
    elif proto == 17:
        off = 6
    else:
        return False
    if s + off + 2 > n:
        return False
    start[0] = s
    offset[0] = off
    return True


cdef inline void complete_checksum(uint8_t *frame, size_t n, uint32_t start,
                                   uint32_t offset) noexcept nogil:
    cdef uint32_t value = (~csum_fold(csum_add(frame + start, n - start, 0))) & 0xFFFF
    store_be16(frame + start + offset, value if value else 0xFFFF)


cdef size_t frag_needed(const uint8_t *frame, size_t n, uint32_t mtu, uint8_t *out) noexcept nogil:
    """Write into out the ICMP error telling frame's sender that `mtu` bytes of IP fit;
    return its length, or 0 if frame gets none (see the twin's frag_needed)."""
    cdef uint32_t ihl, q, icmp_len
    cdef uint64_t total
    memcpy(out, frame + 6, 6)
    memcpy(out + 6, frame, 6)
    out[12] = frame[12]
    out[13] = frame[13]
    if frame[12] == 0x08 and frame[13] == 0x00 and n >= 34 and frame[14] >> 4 == 4:
        ihl = (frame[14] & 0x0F) * 4
        if ihl < 20 or n < 14 + ihl or not (frame[20] & 0x40):
            return 0
        q = ihl + 8
        if 14 + q > n:
            q = <uint32_t>n - 14
        icmp_len = 8 + q
        memset(out + 14, 0, 20 + 8)
        out[34] = 3
        out[35] = 4
        store_be16(out + 40, mtu)
        memcpy(out + 42, frame + 14, q)
        store_be16(out + 36, (~csum_fold(csum_add(out + 34, icmp_len, 0))) & 0xFFFF)
        out[14] = 0x45
        store_be16(out + 16, 20 + icmp_len)
        out[22] = 64
        out[23] = 1
        memcpy(out + 26, frame + 30, 4)
        memcpy(out + 30, frame + 26, 4)
        ipv4_header_checksum(out + 14, 20)
        return 34 + icmp_len
    if frame[12] == 0x86 and frame[13] == 0xDD and n >= 54 and frame[14] >> 4 == 6:
        q = 1280 - 48
        if 14 + q > n:
            q = <uint32_t>n - 14
        icmp_len = 8 + q
        memset(out + 14, 0, 40 + 8)
        out[14] = 0x60
        store_be16(out + 18, icmp_len)
        out[20] = 0x3A
        out[21] = 0x40
        memcpy(out + 22, frame + 38, 16)
        memcpy(out + 38, frame + 22, 16)
        out[54] = 2
        store_be32(out + 58, mtu)
        memcpy(out + 62, frame + 14, q)
        total = csum_add(out + 22, 32, icmp_len + 58)
        store_be16(out + 56, (~csum_fold(csum_add(out + 54, icmp_len, total))) & 0xFFFF)
        return 54 + icmp_len
    return 0


# -- AEAD (AES-256-GCM, libcrypto EVP; contexts keep the expanded key) ----------------

cdef EVP_CIPHER_CTX *aead_new(const uint8_t *key, bint encrypt) noexcept nogil:
    cdef EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new()
    cdef int ok
    if ctx == NULL:
        return NULL
    if encrypt:
        ok = EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, NULL)
    else:
        ok = EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, NULL)
    if ok != 1:
        EVP_CIPHER_CTX_free(ctx)
        return NULL
    return ctx


cdef inline void make_nonce(uint8_t *nonce, const uint8_t *counter) noexcept nogil:
    nonce[0] = 0
    nonce[1] = 0
    nonce[2] = 0
    nonce[3] = 0
    memcpy(nonce + 4, counter, COUNTER_LEN)


cdef bint aead_seal(EVP_CIPHER_CTX *ctx, const uint8_t *ad, const uint8_t *src, size_t n,
                    uint8_t *dst) noexcept nogil:
    """dst[0:n] = ciphertext of src (may be the same memory), dst[n:n+16] = tag.
    ad: the 20 bytes of header and counter (the nonce is built from the counter)."""
    cdef uint8_t nonce[12]
    cdef int outl = 0, finl = 0
    make_nonce(nonce, ad + HEADER_LEN)
    if EVP_EncryptInit_ex(ctx, NULL, NULL, NULL, nonce) != 1:
        return False
    if EVP_EncryptUpdate(ctx, NULL, &outl, ad, SEALED_HEADER_LEN) != 1:
        return False
    if n and EVP_EncryptUpdate(ctx, dst, &outl, src, <int>n) != 1:
        return False
    if EVP_EncryptFinal_ex(ctx, dst + outl, &finl) != 1:
        return False
    return EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, TAG_LEN, dst + n) == 1


cdef bint aead_open(EVP_CIPHER_CTX *ctx, uint8_t *d, size_t n) noexcept nogil:
    """Open the sealed datagram d[0:n] in place (plaintext at d + 20); False if forged."""
    cdef uint8_t nonce[12]
    cdef int outl = 0, finl = 0
    cdef size_t body = n - SEALED_HEADER_LEN - TAG_LEN
    make_nonce(nonce, d + HEADER_LEN)
    if EVP_DecryptInit_ex(ctx, NULL, NULL, NULL, nonce) != 1:
        return False
    if EVP_DecryptUpdate(ctx, NULL, &outl, d, SEALED_HEADER_LEN) != 1:
        return False
    if body and EVP_DecryptUpdate(ctx, d + SEALED_HEADER_LEN, &outl, d + SEALED_HEADER_LEN,
                                  <int>body) != 1:
        return False
    if EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, TAG_LEN, d + n - TAG_LEN) != 1:
        return False
    return EVP_DecryptFinal_ex(ctx, d + SEALED_HEADER_LEN + outl, &finl) == 1


def _check_key(key, what):
    key = bytes(key)
    if len(key) != KEY_LEN:
        raise ValueError(f"{what} must be {KEY_LEN} bytes, got {len(key)}")
    return key


def _has_vnet_hdr(int fd):
    cdef uint8_t ifr[40]
    memset(ifr, 0, sizeof(ifr))
    if ioctl(fd, MN_TUNGETIFF, ifr) < 0:
        return False
    return bool((ifr[16] | (ifr[17] << 8)) & MN_IFF_VNET_HDR)


cdef extern from *:
    """
    #include <time.h>
    static inline long long mn_monotonic_ns(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
    }
    """
    long long monotonic_ns "mn_monotonic_ns" () noexcept nogil


cdef int set_udp_opt(int fd, int name, int value) noexcept:
    return setsockopt(fd, IPPROTO_UDP, name, &value, sizeof(int))



cdef bint same_udp_flow(const uint8_t *h, const uint8_t *f, uint32_t l4, bint v6) noexcept nogil:
    """Are two UDP datagrams of one flow (equal but for IP length, id, checksum and the UDP
    length and checksum)?"""
    if memcmp(h, f, ETH_HEADER_LEN) != 0 or memcmp(h + l4, f + l4, 4) != 0:
        return False
    if v6:
        return memcmp(h + 14, f + 14, 4) == 0 and memcmp(h + 20, f + 20, l4 - 20) == 0
    return (memcmp(h + 14, f + 14, 2) == 0 and memcmp(h + 20, f + 20, 4) == 0
            and memcmp(h + 26, f + 26, l4 - 26) == 0)


cdef bint same_flow(const uint8_t *h, const uint8_t *f, uint32_t l4, uint32_t thl,
                    bint v6) noexcept nogil:
    """Do two TCP segments differ only where consecutive segments of one flow may (IP
    length, id and checksum; TCP seq, checksum, and PSH/FIN)?"""
    if memcmp(h, f, ETH_HEADER_LEN) != 0:
        return False
    if v6:
        if memcmp(h + 14, f + 14, 4) != 0 or memcmp(h + 20, f + 20, l4 - 20) != 0:
            return False
    elif (memcmp(h + 14, f + 14, 2) != 0 or memcmp(h + 20, f + 20, 4) != 0
            or memcmp(h + 26, f + 26, l4 - 26) != 0):
        return False
    return (memcmp(h + l4, f + l4, 4) == 0 and memcmp(h + l4 + 8, f + l4 + 8, 5) == 0
            and (h[l4 + 13] | 0x09) == (f[l4 + 13] | 0x09)
            and memcmp(h + l4 + 14, f + l4 + 14, 2) == 0
            and memcmp(h + l4 + 18, f + l4 + 18, thl - 18) == 0)

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
    # link keys (hop by hop): one send key, a receive key per KEY_ID
    EVP_CIPHER_CTX *tx_ctx
    uint64_t tx_counter
    uint32_t tx_epoch
    uint8_t tx_key[KEY_LEN]
    EVP_CIPHER_CTX *rx_ctx[2]
    uint8_t rx_key[2 * KEY_LEN]
    uint64_t rx_top[2]  # highest counter opened + 1
    uint64_t rx_seen[2 * REPLAY_WORDS]  # ring of REPLAY_WINDOW bits per KEY_ID


cdef void peer_free_keys(Peer *p) noexcept nogil:
    cdef int k
    if p.tx_ctx != NULL:
        EVP_CIPHER_CTX_free(p.tx_ctx)
        p.tx_ctx = NULL
    for k in range(2):
        if p.rx_ctx[k] != NULL:
            EVP_CIPHER_CTX_free(p.rx_ctx[k])
            p.rx_ctx[k] = NULL


cdef inline bint replay_ok(const Peer *p, int k, uint64_t c) noexcept nogil:
    cdef uint64_t bit
    if c >= p.rx_top[k]:
        return True
    if p.rx_top[k] - c > REPLAY_WINDOW:
        return False
    bit = c & (REPLAY_WINDOW - 1)
    return not ((p.rx_seen[k * REPLAY_WORDS + (bit >> 6)] >> (bit & 63)) & 1)


cdef inline void replay_accept(Peer *p, int k, uint64_t c) noexcept nogil:
    cdef uint64_t x, bit
    cdef uint64_t *seen = &p.rx_seen[k * REPLAY_WORDS]
    if c >= p.rx_top[k]:
        if c + 1 - p.rx_top[k] >= REPLAY_WINDOW:
            memset(seen, 0, REPLAY_WORDS * sizeof(uint64_t))
        else:
            x = p.rx_top[k]
            while x <= c:
                bit = x & (REPLAY_WINDOW - 1)
                seen[bit >> 6] &= ~((<uint64_t>1) << (bit & 63))
                x += 1
        p.rx_top[k] = c + 1
    bit = c & (REPLAY_WINDOW - 1)
    seen[bit >> 6] |= (<uint64_t>1) << (bit & 63)


cdef class Pump:
    """Moves frames between a TAP fd and a UDP socket; see the module docstring."""

    cdef int tap_fd
    cdef int udp_fd
    cdef int wake_fd
    cdef uint32_t local_id
    cdef unsigned int batch
    cdef int stopping
    cdef int error  # errno that ended the last iteration with -1
    cdef bint crypto
    cdef bint vnet  # the TAP's frames carry a virtio_net_hdr
    cdef int tap_offload  # TUN_F_* set with TUNSETOFFLOAD
    cdef bint udp_gso
    cdef bint udp_gro
    cdef int gso_failed  # errno that turned UDP_SEGMENT off, 0 if none
    cdef uint32_t underlay_mtu
    cdef uint32_t overhead  # IPv4 + UDP + sleeve header (+ AEAD)
    cdef uint32_t max_frame
    cdef uint32_t gso_max  # largest datagram grouped into a UDP_SEGMENT send
    cdef int64_t spin_ns  # run(): keep polling this long after traffic before sleeping
    cdef pthread_mutex_t lock
    cdef bint lock_ready
    cdef uint64_t counters[N_COUNTERS]
    cdef Table mac_table  # MAC -> peer id | STATIC
    cdef Table peer_index  # peer id -> index into peers
    cdef Table addr_refs  # addr_key -> number of peers with that address
    cdef Table addr_owner  # addr_key -> id of the peer whose receive keys open its datagrams
    cdef Peer *peers
    cdef uint32_t n_peers
    cdef uint8_t *tap_slots  # batch x TAP_SLOT
    cdef uint8_t *udp_slots  # batch x UDP_SLOT
    cdef mmsghdr *rx_msgs
    cdef iovec *rx_iov
    cdef sockaddr_in *rx_addr
    cdef uint8_t *rx_cmsg  # batch x RX_CMSG
    # send queue: up to `batch` datagrams of two iovecs each (the second may be empty)
    cdef iovec *tx_iov
    cdef sockaddr_in *tx_addr
    cdef uint32_t *tx_size
    cdef uint8_t *tx_hdr  # one header per entry, for plain flood copies
    cdef unsigned int tx_len
    cdef mmsghdr *send_msgs  # one per sendmmsg message (a datagram or a GSO run)
    cdef uint32_t *send_first
    cdef uint8_t *send_cmsg  # batch x TX_CMSG
    cdef uint8_t *seg_arena
    cdef size_t seg_used
    cdef bint in_segment  # a segment in the arena is being forwarded: keep the arena
    cdef uint8_t *copy_arena
    cdef size_t copy_used
    # TAP-side GRO: one TCP flow's segments waiting to leave as one GSO frame
    cdef bint gro_active
    cdef bint gro_closed
    cdef bint gro_v6
    cdef bint gro_udp  # the pending frame is UDP datagrams (GSO_UDP_L4), not TCP segments
    cdef bint gro_tcp_ok  # cleared if the TAP refuses a merged frame of that kind
    cdef bint gro_udp_ok
    cdef uint32_t gro_hlen
    cdef uint32_t gro_l4
    cdef uint32_t gro_mss
    cdef uint32_t gro_next_seq
    cdef uint32_t gro_payload
    cdef uint32_t gro_segs
    cdef uint32_t gro_peer  # index into peers of the sender
    cdef uint8_t gro_last_flags
    cdef uint8_t *gro_head  # virtio_net_hdr + the first segment's headers
    cdef iovec *gro_iov  # [head, payload 1, payload 2, ...]
    cdef uint8_t *scratch

    def __cinit__(self, int tap_fd, int udp_fd, local_id, *, int batch=32, crypto=False,
                  offload=True, vnet_hdr=None, int underlay_mtu=0, int spin_us=0):
        cdef int value = 0
        cdef socklen_t size = sizeof(int)
        cdef unsigned int i
        cdef int want
        self.wake_fd = -1
        self.local_id = _check_id(local_id, "local_id")
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
        self.tap_fd = tap_fd
        self.udp_fd = udp_fd
        self.batch = batch
        self.crypto = bool(crypto)
        self.underlay_mtu = underlay_mtu
        if not 0 <= spin_us <= 100000:
            raise ValueError(f"spin_us must be 0..100000, got {spin_us}")
        self.spin_ns = <int64_t>spin_us * 1000
        self.overhead = IP_UDP_HEADERS + HEADER_LEN + (AEAD_OVERHEAD if self.crypto else 0)
        self.max_frame = MAX_SEALED_FRAME if self.crypto else MAX_SLEEVE_FRAME
        self.gso_max = (underlay_mtu if underlay_mtu else 1500) - IP_UDP_HEADERS

        # Probe the offloads; each one missing just means more syscalls.
        self.vnet = _has_vnet_hdr(tap_fd) if vnet_hdr is None else bool(vnet_hdr)
        self.gro_tcp_ok = True
        self.gro_udp_ok = True
        if self.vnet and offload:
            for want in (MN_TUN_F_CSUM | MN_TUN_F_TSO4 | MN_TUN_F_TSO6 | MN_TUN_F_TSO_ECN,
                         MN_TUN_F_CSUM | MN_TUN_F_TSO4 | MN_TUN_F_TSO6, MN_TUN_F_CSUM):
                if ioctl(tap_fd, MN_TUNSETOFFLOAD, <unsigned long>want) == 0:
                    self.tap_offload = want
                    break
        elif self.vnet:
            ioctl(tap_fd, MN_TUNSETOFFLOAD, <unsigned long>0)
        if offload:
            self.udp_gso = set_udp_opt(udp_fd, UDP_SEGMENT, 0) == 0
            self.udp_gro = set_udp_opt(udp_fd, UDP_GRO, 1) == 0
        else:
            set_udp_opt(udp_fd, UDP_GRO, 0)

        if (table_init(&self.mac_table, MAC_TABLE_BITS) < 0
                or table_init(&self.peer_index, PEER_INDEX_BITS) < 0
                or table_init(&self.addr_refs, PEER_INDEX_BITS) < 0
                or table_init(&self.addr_owner, PEER_INDEX_BITS) < 0):
            raise MemoryError()
        self.peers = <Peer *>calloc(PEER_TABLE_MAX, sizeof(Peer))
        self.tap_slots = <uint8_t *>malloc(<size_t>batch * TAP_SLOT)
        self.udp_slots = <uint8_t *>malloc(<size_t>batch * UDP_SLOT)
        self.rx_msgs = <mmsghdr *>calloc(batch, sizeof(mmsghdr))
        self.rx_iov = <iovec *>calloc(batch, sizeof(iovec))
        self.rx_addr = <sockaddr_in *>calloc(batch, sizeof(sockaddr_in))
        self.rx_cmsg = <uint8_t *>calloc(batch, RX_CMSG)
        self.tx_iov = <iovec *>calloc(2 * batch, sizeof(iovec))
        self.tx_addr = <sockaddr_in *>calloc(batch, sizeof(sockaddr_in))
        self.tx_size = <uint32_t *>calloc(batch, sizeof(uint32_t))
        self.tx_hdr = <uint8_t *>calloc(batch, HEADER_LEN)
        self.send_msgs = <mmsghdr *>calloc(batch, sizeof(mmsghdr))
        self.send_first = <uint32_t *>calloc(batch + 1, sizeof(uint32_t))
        self.send_cmsg = <uint8_t *>calloc(batch, TX_CMSG)
        self.seg_arena = <uint8_t *>malloc(SEG_ARENA)
        self.copy_arena = <uint8_t *>malloc(COPY_ARENA)
        self.gro_head = <uint8_t *>calloc(1, GRO_HEAD)
        self.gro_iov = <iovec *>calloc(GRO_MAX_SEGS + 1, sizeof(iovec))
        self.scratch = <uint8_t *>calloc(1, SCRATCH)
        if (self.peers == NULL or self.tap_slots == NULL or self.udp_slots == NULL
                or self.rx_msgs == NULL or self.rx_iov == NULL or self.rx_addr == NULL
                or self.rx_cmsg == NULL or self.tx_iov == NULL or self.tx_addr == NULL
                or self.tx_size == NULL or self.tx_hdr == NULL or self.send_msgs == NULL
                or self.send_first == NULL or self.send_cmsg == NULL
                or self.seg_arena == NULL or self.copy_arena == NULL
                or self.gro_head == NULL or self.gro_iov == NULL or self.scratch == NULL):
            raise MemoryError()
        for i in range(self.batch):
            self.rx_iov[i].iov_base = self.udp_slots + <size_t>i * UDP_SLOT
            self.rx_iov[i].iov_len = UDP_SLOT
            self.rx_msgs[i].msg_hdr.msg_iov = &self.rx_iov[i]
            self.rx_msgs[i].msg_hdr.msg_iovlen = 1
            self.rx_msgs[i].msg_hdr.msg_name = &self.rx_addr[i]
        if pthread_mutex_init(&self.lock, NULL) != 0:
            raise MemoryError()
        self.lock_ready = True
        self.wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        if self.wake_fd < 0:
            raise OSError(errno, os.strerror(errno))

    def __dealloc__(self):
        cdef uint32_t i
        if self.wake_fd >= 0:
            close(self.wake_fd)
        if self.lock_ready:
            pthread_mutex_destroy(&self.lock)
        if self.peers != NULL:
            for i in range(self.n_peers):
                peer_free_keys(&self.peers[i])
        table_free(&self.mac_table)
        table_free(&self.peer_index)
        table_free(&self.addr_refs)
        table_free(&self.addr_owner)
        free(self.peers)
        free(self.tap_slots)
        free(self.udp_slots)
        free(self.rx_msgs)
        free(self.rx_iov)
        free(self.rx_addr)
        free(self.rx_cmsg)
        free(self.tx_iov)
        free(self.tx_addr)
        free(self.tx_size)
        free(self.tx_hdr)
        free(self.send_msgs)
        free(self.send_first)
        free(self.send_cmsg)
        free(self.seg_arena)
        free(self.copy_arena)
        free(self.gro_head)
        free(self.gro_iov)
        free(self.scratch)

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

    def set_peer_keys(self, peer_id, tx_key, rx_key, *, epoch):
        """Install the sleeve keys shared with a directly connected peer (see the twin)."""
        cdef uint32_t pid = _check_id(peer_id, "peer_id")
        cdef bytes tx = _check_key(tx_key, "tx_key")
        cdef bytes rx = _check_key(rx_key, "rx_key")
        cdef const uint8_t *txp
        cdef const uint8_t *rxp
        cdef int64_t slot
        cdef Peer *p
        cdef int k
        cdef int result = 0
        cdef EVP_CIPHER_CTX *tx_ctx = NULL
        cdef EVP_CIPHER_CTX *rx_ctx = NULL
        if not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
        k = epoch & 1
        cdef uint32_t ep = epoch & 0xFFFFFFFF
        txp = tx
        rxp = rx
        # Contexts are made outside the lock; unused ones are freed.
        tx_ctx = aead_new(txp, True)
        rx_ctx = aead_new(rxp, False)
        if tx_ctx == NULL or rx_ctx == NULL:
            EVP_CIPHER_CTX_free(tx_ctx)
            EVP_CIPHER_CTX_free(rx_ctx)
            raise MemoryError("libcrypto could not set up AES-256-GCM")
        with nogil:
            pthread_mutex_lock(&self.lock)
            slot = table_find(&self.peer_index, pid)
            if slot < 0:
                result = -1
            else:
                p = &self.peers[self.peer_index.vals[slot]]
                if not (p.tx_ctx != NULL and memcmp(p.tx_key, txp, KEY_LEN) == 0):
                    if p.tx_ctx != NULL:
                        EVP_CIPHER_CTX_free(p.tx_ctx)
                    p.tx_ctx = tx_ctx
                    tx_ctx = NULL
                    memcpy(p.tx_key, txp, KEY_LEN)
                    p.tx_counter = 0
                p.tx_epoch = ep
                if not (p.rx_ctx[k] != NULL and memcmp(p.rx_key + k * KEY_LEN, rxp, KEY_LEN) == 0):
                    if p.rx_ctx[k] != NULL:
                        EVP_CIPHER_CTX_free(p.rx_ctx[k])
                    p.rx_ctx[k] = rx_ctx
                    rx_ctx = NULL
                    memcpy(p.rx_key + k * KEY_LEN, rxp, KEY_LEN)
                    p.rx_top[k] = 0
                    memset(&p.rx_seen[k * REPLAY_WORDS], 0, REPLAY_WORDS * sizeof(uint64_t))
                if p.has_addr:
                    self.recompute_owner(&p.addr)
            pthread_mutex_unlock(&self.lock)
        EVP_CIPHER_CTX_free(tx_ctx)
        EVP_CIPHER_CTX_free(rx_ctx)
        if result < 0:
            raise ValueError(f"unknown peer {pid}: set_peer first")

    def rekey_due(self):
        """Peers whose send key has sealed REKEY_AFTER_MESSAGES datagrams: new keys needed."""
        cdef uint32_t i
        due = []
        with nogil:
            pthread_mutex_lock(&self.lock)
        try:
            for i in range(self.n_peers):
                if self.peers[i].tx_ctx != NULL and self.peers[i].tx_counter >= REKEY_AFTER_MESSAGES:
                    due.append(self.peers[i].id)
        finally:
            pthread_mutex_unlock(&self.lock)
        return sorted(due)

    def _set_tx_counter(self, peer_id, counter):
        """Tests only: jump a send key's counter (to reach the rekey and reject limits)."""
        cdef int64_t slot = table_find(&self.peer_index, _check_id(peer_id, "peer_id"))
        if slot < 0 or self.peers[self.peer_index.vals[slot]].tx_ctx == NULL:
            raise ValueError("no send key for that peer")
        self.peers[self.peer_index.vals[slot]].tx_counter = counter

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

    def features(self):
        """What this pump uses; the router shows it in `meshnet status`."""
        offloads = [name for bit, name in ((MN_TUN_F_CSUM, "csum"), (MN_TUN_F_TSO4, "tso4"),
                                           (MN_TUN_F_TSO6, "tso6"), (MN_TUN_F_TSO_ECN, "tso_ecn"))
                    if self.tap_offload & bit]
        return {
            "implementation": "compiled",
            "crypto": "AES-256-GCM" if self.crypto else None,
            "vnet_hdr": bool(self.vnet),
            "tap_offload": offloads,
            "udp_gso": bool(self.udp_gso),
            "udp_gso_error": os.strerror(self.gso_failed) if self.gso_failed else None,
            "udp_gro": bool(self.udp_gro),
            "gro_merge": bool(self.vnet and self.gro_tcp_ok),
            "gro_merge_udp": bool(self.vnet and self.gro_udp_ok),
            "batch": self.batch,
            "syscall_batching": True,
            "threads": 1,
            "spin_us": self.spin_ns // 1000,
            "underlay_mtu": self.underlay_mtu,
        }

    cdef bint put_peer(self, uint32_t pid, uint32_t via, bint has_addr, bint flood,
                       const sockaddr_in *sa) noexcept nogil:
        """Set a peer's route; True if it is new and the table is full."""
        cdef int64_t slot = table_find(&self.peer_index, pid)
        cdef Peer *p
        cdef sockaddr_in old
        cdef bint had_addr = False
        if slot >= 0:
            p = &self.peers[self.peer_index.vals[slot]]
            if p.has_addr:
                self.release_addr(&p.addr)
                had_addr = True
                old = p.addr
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
        if had_addr:
            self.recompute_owner(&old)
        if has_addr:
            slot = table_find(&self.addr_refs, addr_key(sa))
            if slot >= 0:
                self.addr_refs.vals[slot] += 1
            else:
                table_put(&self.addr_refs, addr_key(sa), 1)
            self.recompute_owner(sa)
        return False

    cdef void release_addr(self, const sockaddr_in *sa) noexcept nogil:
        cdef int64_t slot = table_find(&self.addr_refs, addr_key(sa))
        self.addr_refs.vals[slot] -= 1
        if self.addr_refs.vals[slot] == 0:
            table_delete(&self.addr_refs, <uint32_t>slot)

    cdef void recompute_owner(self, const sockaddr_in *sa) noexcept nogil:
        """The owner of an address: the lowest peer id with that address and a receive key."""
        cdef uint64_t key = addr_key(sa)
        cdef uint32_t i
        cdef bint found = False
        cdef uint32_t best = 0
        cdef int64_t slot
        cdef Peer *p
        for i in range(self.n_peers):
            p = &self.peers[i]
            if (p.has_addr and addr_key(&p.addr) == key
                    and (p.rx_ctx[0] != NULL or p.rx_ctx[1] != NULL)
                    and (not found or p.id < best)):
                found = True
                best = p.id
        slot = table_find(&self.addr_owner, key)
        if found:
            table_put(&self.addr_owner, key, best)
        elif slot >= 0:
            table_delete(&self.addr_owner, <uint32_t>slot)

    cdef void drop_peer(self, uint32_t pid) noexcept nogil:
        cdef uint32_t i = 0
        cdef int64_t slot
        cdef uint64_t idx
        cdef sockaddr_in old
        cdef bint had_addr
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
        had_addr = self.peers[idx].has_addr
        old = self.peers[idx].addr
        if had_addr:
            self.release_addr(&old)
        peer_free_keys(&self.peers[idx])
        self.n_peers -= 1
        if idx != self.n_peers:  # keep the array dense: move the last peer into the gap
            self.peers[idx] = self.peers[self.n_peers]
            table_put(&self.peer_index, self.peers[idx].id, idx)
        if had_addr:
            self.recompute_owner(&old)

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
        cdef int64_t now, spin_until = 0
        self.check_open()
        with nogil:
            while not mn_load_flag(&self.stopping):
                # After traffic, look again without sleeping for spin_us: a reply or the
                # next burst is then picked up without a wake-up (latency), for that much CPU.
                if self.spin_ns:
                    now = monotonic_ns()
                    handled = self.poll_once(0 if now < spin_until else -1)
                    if handled > 0:
                        spin_until = monotonic_ns() + self.spin_ns
                else:
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
        cdef size_t extra = VNET_HDR_LEN if self.vnet else 0
        self.seg_used = 0
        while n < self.batch:
            frame = self.tap_slots + <size_t>n * TAP_SLOT + HEADROOM
            got = read(self.tap_fd, frame - extra, MAX_FRAME + 1 + extra)
            if got < 0:
                if errno == EINTR:
                    continue
                if errno != EAGAIN:  # the TAP itself is broken: report it, after sending
                    self.error = errno
                    failed = True
                break
            n += 1
            if self.vnet:
                if got >= VNET_HDR_LEN:
                    self.tap_frame(frame, <size_t>got - VNET_HDR_LEN, frame - VNET_HDR_LEN)
                else:
                    self.tap_frame(frame, 0, NULL)
            else:
                self.tap_frame(frame, <size_t>got, NULL)
        self.flush()
        return -1 if failed else <int>n

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef int udp_batch(self) noexcept nogil:
        cdef unsigned int i
        cdef int got
        cdef int handled = 0
        cdef size_t length, off, gso, part
        cdef uint8_t *buf
        cdef cmsghdr *cm
        for i in range(self.batch):
            self.rx_msgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_in)
            if self.udp_gro:
                self.rx_msgs[i].msg_hdr.msg_control = self.rx_cmsg + <size_t>i * RX_CMSG
                self.rx_msgs[i].msg_hdr.msg_controllen = RX_CMSG
        while True:
            got = recvmmsg(self.udp_fd, self.rx_msgs, self.batch, MSG_DONTWAIT, NULL)
            if got >= 0 or errno != EINTR:
                break
        if got <= 0:  # EAGAIN, or a transient socket error: next poll
            return 0
        for i in range(<unsigned int>got):
            buf = self.udp_slots + <size_t>i * UDP_SLOT
            length = self.rx_msgs[i].msg_len
            gso = 0
            if self.udp_gro and self.rx_msgs[i].msg_hdr.msg_controllen > 0:
                cm = CMSG_FIRSTHDR(&self.rx_msgs[i].msg_hdr)
                while cm != NULL:
                    if cm.cmsg_level == IPPROTO_UDP and cm.cmsg_type == UDP_GRO:
                        gso = (<int *>CMSG_DATA(cm))[0]
                    cm = CMSG_NXTHDR(&self.rx_msgs[i].msg_hdr, cm)
            if gso == 0 or gso >= length:
                self.datagram(buf, length, &self.rx_addr[i])
                handled += 1
                continue
            off = 0
            while off < length:  # datagrams the kernel coalesced (UDP_GRO): all gso long
                part = length - off if length - off < gso else gso
                self.datagram(buf + off, part, &self.rx_addr[i])
                handled += 1
                off += part
        self.gro_flush()
        self.flush()
        return handled

    # -- the send queue -------------------------------------------------------------

    cdef inline void make_room(self, size_t copy_bytes) noexcept nogil:
        """Flush first if one more datagram (and copy_bytes of copy arena) would not fit."""
        if self.tx_len == self.batch or self.copy_used + copy_bytes > COPY_ARENA:
            self.flush()

    cdef inline void queue1(self, const sockaddr_in *to, uint8_t *data, size_t n) noexcept nogil:
        """Queue one datagram (room made before)."""
        cdef unsigned int slot = self.tx_len
        self.tx_len += 1
        self.tx_addr[slot] = to[0]
        self.tx_iov[2 * slot].iov_base = data
        self.tx_iov[2 * slot].iov_len = n
        self.tx_iov[2 * slot + 1].iov_base = NULL
        self.tx_iov[2 * slot + 1].iov_len = 0
        self.tx_size[slot] = <uint32_t>n

    cdef void flush(self) noexcept nogil:
        cdef unsigned int i = 0, j, g, n_msgs = 0, first, k
        cdef uint32_t size, total
        cdef int sent
        cdef cmsghdr *cm
        cdef mmsghdr *m
        # Group runs of same-size datagrams to one address (the last may be shorter).
        while i < self.tx_len:
            j = i + 1
            size = self.tx_size[i]
            if self.udp_gso and size <= self.gso_max:
                total = size
                while (j < self.tx_len and j - i < GSO_MAX_SEGMENTS
                        and self.tx_size[j] <= size and total + self.tx_size[j] <= GSO_MAX_BYTES
                        and self.tx_addr[j].sin_addr.s_addr == self.tx_addr[i].sin_addr.s_addr
                        and self.tx_addr[j].sin_port == self.tx_addr[i].sin_port):
                    total += self.tx_size[j]
                    j += 1
                    if self.tx_size[j - 1] < size:
                        break
            m = &self.send_msgs[n_msgs]
            m.msg_hdr.msg_name = &self.tx_addr[i]
            m.msg_hdr.msg_namelen = sizeof(sockaddr_in)
            m.msg_hdr.msg_iov = &self.tx_iov[2 * i]
            m.msg_hdr.msg_iovlen = 2 * (j - i)
            m.msg_hdr.msg_flags = 0
            if j - i > 1:
                m.msg_hdr.msg_control = self.send_cmsg + <size_t>n_msgs * TX_CMSG
                m.msg_hdr.msg_controllen = CMSG_SPACE(sizeof(uint16_t))
                cm = CMSG_FIRSTHDR(&m.msg_hdr)
                cm.cmsg_level = IPPROTO_UDP
                cm.cmsg_type = UDP_SEGMENT
                cm.cmsg_len = CMSG_LEN(sizeof(uint16_t))
                (<uint16_t *>CMSG_DATA(cm))[0] = <uint16_t>size
            else:
                m.msg_hdr.msg_control = NULL
                m.msg_hdr.msg_controllen = 0
            self.send_first[n_msgs] = i
            n_msgs += 1
            i = j
        self.send_first[n_msgs] = self.tx_len
        g = 0
        while g < n_msgs:
            sent = sendmmsg(self.udp_fd, self.send_msgs + g, n_msgs - g, MSG_DONTWAIT)
            if sent < 0:
                if errno == EINTR:
                    continue
                if errno == EAGAIN or errno == ENOBUFS:  # the rest would fail too
                    self.counters[DROP_SEND_ERROR] += self.tx_len - self.send_first[g]
                    break
                first = self.send_first[g]
                if self.send_first[g + 1] - first > 1 and (errno == EINVAL or errno == EIO):
                    self.udp_gso = False  # the path refuses GSO: stop using it
                    self.gso_failed = errno
                # this message only: skip it
                self.counters[DROP_SEND_ERROR] += self.send_first[g + 1] - first
                g += 1
                continue
            for k in range(self.send_first[g], self.send_first[g + <unsigned int>sent]):
                self.counters[UDP_TX] += 1
                self.counters[UDP_TX_BYTES] += self.tx_size[k]
            g += <unsigned int>sent
        self.tx_len = 0
        self.copy_used = 0
        if not self.in_segment:
            self.seg_used = 0

    # -- routing and sealing ----------------------------------------------------------

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef Peer *hop_of(self, Peer *p) noexcept nogil:
        """p's next hop (p itself when direct) if it has an address, else NULL."""
        cdef int64_t slot
        if p.via != p.id:
            slot = table_find(&self.peer_index, p.via)
            if slot < 0:
                return NULL
            p = &self.peers[self.peer_index.vals[slot]]
        return p if p.has_addr else NULL

    cdef bint seal_to(self, Peer *hop, uint8_t *out, const uint8_t *frame, size_t n,
                      uint8_t flags, uint8_t ttl, uint32_t src, uint32_t dst) noexcept nogil:
        """Write the sealed datagram (n + 36 bytes) at out; frame may sit at out + 20."""
        if hop.tx_ctx == NULL:
            self.counters[DROP_TX_NO_KEY] += 1
            return False
        if hop.tx_counter >= REJECT_AFTER_MESSAGES:
            self.counters[DROP_KEY_EXHAUSTED] += 1
            return False
        flags = (flags & ~(FLAG_KEY_ID | FLAG_SEALED)) | FLAG_SEALED
        if hop.tx_epoch & 1:
            flags |= FLAG_KEY_ID
        put_header(out, flags, ttl, src, dst)
        store_be64(out + HEADER_LEN, hop.tx_counter)
        hop.tx_counter += 1
        if not aead_seal(hop.tx_ctx, out, frame, n, out + SEALED_HEADER_LEN):
            self.counters[DROP_SEND_ERROR] += 1  # libcrypto failed (it does not, in practice)
            return False
        return True

    # -- per frame from the TAP ----------------------------------------------------------

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef void tap_frame(self, uint8_t *frame, size_t n, const uint8_t *vh) noexcept nogil:
        """frame has HEADROOM bytes in front and room for a tag behind; vh its vnet hdr."""
        cdef int64_t slot
        cdef bint csum = False
        cdef uint32_t start, offset, cs, co
        self.counters[TAP_RX] += 1
        self.counters[TAP_RX_BYTES] += n
        if n < ETH_HEADER_LEN:
            self.counters[DROP_SHORT_FRAME] += 1
            return
        slot = table_find(&self.mac_table, mac_key(frame + 6))
        if slot >= 0 and not (self.mac_table.vals[slot] & STATIC):  # the host moved here
            table_delete(&self.mac_table, <uint32_t>slot)
            self.counters[UNLEARNED] += 1
        if vh != NULL and vh[1] != VNET_GSO_NONE:
            self.segment(frame, n, vh[1], load_le16(vh + 4))
            return
        if vh != NULL and vh[0] & VNET_F_NEEDS_CSUM:
            cs = load_le16(vh + 6)
            co = load_le16(vh + 8)
            if l4_checksum_at(frame, n, &start, &offset) and start == cs and offset == co:
                csum = True
            elif ETH_HEADER_LEN <= cs and cs + co + 2 <= n:
                complete_checksum(frame, n, cs, co)
            else:
                self.counters[DROP_BAD_CSUM] += 1
                return
        self.forward(frame, n, csum)

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef void segment(self, const uint8_t *frame, size_t n, uint8_t gso_type,
                      uint32_t mss) noexcept nogil:
        """Cut a TSO frame into MSS segments (rules: the twin's segment_tso)."""
        cdef uint8_t kind = gso_type & ~VNET_GSO_ECN
        cdef uint32_t iphl, l4, thl, hl, seq0, ip_id, k = 0, chunk, nsegs
        cdef size_t off, need
        cdef uint8_t *seg
        cdef uint8_t flags
        if mss == 0 or n < ETH_HEADER_LEN + 20:
            self.counters[DROP_BAD_GSO] += 1
            return
        if kind == VNET_GSO_TCPV4:
            if (frame[12] != 0x08 or frame[13] != 0x00 or frame[14] >> 4 != 4
                    or frame[23] != 6 or (frame[14] & 0x0F) < 5):
                self.counters[DROP_BAD_GSO] += 1
                return
            iphl = (frame[14] & 0x0F) * 4
        elif kind == VNET_GSO_TCPV6:
            if (frame[12] != 0x86 or frame[13] != 0xDD or n < 54 or frame[14] >> 4 != 6
                    or frame[20] != 6):
                self.counters[DROP_BAD_GSO] += 1
                return
            iphl = 40
        else:
            self.counters[DROP_BAD_GSO] += 1
            return
        l4 = ETH_HEADER_LEN + iphl
        if n < l4 + 20:
            self.counters[DROP_BAD_GSO] += 1
            return
        thl = (frame[l4 + 12] >> 4) * 4
        hl = l4 + thl
        if thl < 20 or n <= hl:
            self.counters[DROP_BAD_GSO] += 1
            return
        nsegs = <uint32_t>((n - hl + mss - 1) / mss)
        self.counters[GSO_SEGMENTS] += nsegs
        seq0 = load_be32(frame + l4 + 4)
        ip_id = load_be16(frame + 18)
        off = 0
        while off < n - hl:
            chunk = mss if n - hl - off > mss else <uint32_t>(n - hl - off)
            need = SEALED_HEADER_LEN + hl + chunk + TAG_LEN
            if self.seg_used + need > SEG_ARENA:
                self.flush()  # between segments: nothing in the arena is needed any more
            seg = self.seg_arena + self.seg_used + SEALED_HEADER_LEN
            self.seg_used += need
            memcpy(seg, frame, hl)
            memcpy(seg + hl, frame + hl + off, chunk)
            if kind == VNET_GSO_TCPV4:
                store_be16(seg + 16, iphl + thl + chunk)
                store_be16(seg + 18, (ip_id + k) & 0xFFFF)
                ipv4_header_checksum(seg + ETH_HEADER_LEN, iphl)
            else:
                store_be16(seg + 18, thl + chunk)
            store_be32(seg + l4 + 4, seq0 + <uint32_t>off)
            flags = seg[l4 + 13]
            if off + mss < n - hl:
                flags &= ~0x09  # FIN, PSH only on the last
            if k:
                flags &= ~0x80  # CWR only on the first
            seg[l4 + 13] = flags
            store_be16(seg + l4 + 16, pseudo_sum(seg, thl + chunk, 6))
            self.in_segment = True
            self.forward(seg, hl + chunk, True)
            self.in_segment = False
            off += chunk
            k += 1

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef void forward(self, uint8_t *frame, size_t n, bint csum) noexcept nogil:
        """Send one frame (20 bytes of headroom, 16 of tailroom) to its peer(s)."""
        cdef int64_t slot
        cdef uint32_t pid
        cdef Peer *p
        cdef Peer *hop
        cdef size_t icmp
        cdef ssize_t written
        cdef uint8_t flags = FLAG_CSUM if csum else 0
        if n > self.max_frame:
            self.counters[DROP_OVERSIZE] += 1
            return
        if self.underlay_mtu and not (frame[0] & 1) and n + self.overhead > self.underlay_mtu:
            icmp = frag_needed(frame, n, self.underlay_mtu - self.overhead - ETH_HEADER_LEN,
                               self.scratch + VNET_HDR_LEN)
            if icmp:
                self.counters[FRAG_NEEDED] += 1
                if self.vnet:
                    memset(self.scratch, 0, VNET_HDR_LEN)
                    written = write(self.tap_fd, self.scratch, icmp + VNET_HDR_LEN)
                else:
                    written = write(self.tap_fd, self.scratch + VNET_HDR_LEN, icmp)
                return
        if frame[0] & 1:
            self.flood(frame, n, flags)
            return
        slot = table_find(&self.mac_table, mac_key(frame))
        if slot < 0:
            self.counters[UNKNOWN_UNICAST] += 1
            self.flood(frame, n, flags)
            return
        pid = <uint32_t>self.mac_table.vals[slot]
        slot = table_find(&self.peer_index, pid)
        p = NULL if slot < 0 else &self.peers[self.peer_index.vals[slot]]
        hop = NULL if p == NULL else self.hop_of(p)
        if hop == NULL:
            self.counters[DROP_NO_ROUTE] += 1
            return
        if self.crypto:
            if not self.seal_to(hop, frame - SEALED_HEADER_LEN, frame, n, flags, DEFAULT_TTL,
                                self.local_id, pid):
                return
            self.make_room(0)
            self.queue1(&hop.addr, frame - SEALED_HEADER_LEN, n + SEALED_HEADER_LEN + TAG_LEN)
        else:
            put_header(frame - HEADER_LEN, flags, DEFAULT_TTL, self.local_id, pid)
            self.make_room(0)
            self.queue1(&hop.addr, frame - HEADER_LEN, n + HEADER_LEN)
        p.tx_frames += 1
        p.tx_bytes += n

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef void flood(self, uint8_t *frame, size_t n, uint8_t flags) noexcept nogil:
        cdef uint32_t i
        cdef unsigned int tx
        cdef uint8_t *hdr
        cdef uint8_t *copy
        cdef Peer *p
        cdef Peer *hop
        cdef size_t need = n + SEALED_HEADER_LEN + TAG_LEN
        for i in range(self.n_peers):
            p = &self.peers[i]
            if not p.flood:
                continue
            hop = self.hop_of(p)
            if hop == NULL:
                continue
            if self.crypto:
                self.make_room(need)
                copy = self.copy_arena + self.copy_used
                if not self.seal_to(hop, copy, frame, n, flags, DEFAULT_TTL, self.local_id, p.id):
                    continue
                self.copy_used += need
                self.queue1(&hop.addr, copy, need)
            else:
                self.make_room(0)
                tx = self.tx_len
                hdr = self.tx_hdr + <size_t>tx * HEADER_LEN
                put_header(hdr, flags, DEFAULT_TTL, self.local_id, p.id)
                self.queue1(&hop.addr, hdr, HEADER_LEN)
                self.tx_iov[2 * tx + 1].iov_base = frame
                self.tx_iov[2 * tx + 1].iov_len = n
                self.tx_size[tx] = <uint32_t>(n + HEADER_LEN)
            self.counters[FLOOD_TX] += 1
            p.tx_frames += 1
            p.tx_bytes += n

    # -- per datagram from the UDP socket ----------------------------------------------

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef void datagram(self, uint8_t *d, size_t n, const sockaddr_in *sender) noexcept nogil:
        cdef uint32_t src, dst, owner
        cdef int64_t slot
        cdef int k
        cdef uint64_t counter
        cdef uint8_t flags
        cdef bint sealed
        cdef uint8_t *frame
        cdef size_t flen
        cdef uint32_t start, offset
        cdef Peer *key_peer
        cdef Peer *p
        cdef Peer *hop
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
        flags = d[2]
        sealed = (flags & FLAG_SEALED) != 0
        if self.crypto and not sealed:
            self.counters[DROP_PLAINTEXT] += 1
            return
        if sealed and not self.crypto:
            self.counters[DROP_SEALED] += 1
            return
        if sealed:
            if n < MIN_SEALED:
                self.counters[DROP_SHORT] += 1
                return
            slot = table_find(&self.addr_owner, addr_key(sender))
            k = 1 if flags & FLAG_KEY_ID else 0
            key_peer = NULL
            if slot >= 0:
                owner = <uint32_t>self.addr_owner.vals[slot]
                slot = table_find(&self.peer_index, owner)
                key_peer = &self.peers[self.peer_index.vals[slot]]
            if key_peer == NULL or key_peer.rx_ctx[k] == NULL:
                self.counters[DROP_NO_KEY] += 1
                return
            counter = load_be64(d + HEADER_LEN)
            if counter >= REJECT_AFTER_MESSAGES or not replay_ok(key_peer, k, counter):
                self.counters[DROP_REPLAY] += 1
                return
            if not aead_open(key_peer.rx_ctx[k], d, n):
                self.counters[DROP_AUTH] += 1
                return
            replay_accept(key_peer, k, counter)
            frame = d + SEALED_HEADER_LEN
            flen = n - SEALED_HEADER_LEN - TAG_LEN
        else:
            frame = d + HEADER_LEN
            flen = n - HEADER_LEN
        src = load_be32(d + 4)
        dst = load_be32(d + 8)
        if dst == self.local_id:
            slot = table_find(&self.peer_index, src)
            if slot < 0:
                self.counters[DROP_UNKNOWN_PEER] += 1
                return
            if flags & FLAG_CSUM and not l4_checksum_at(frame, flen, &start, &offset):
                self.counters[DROP_BAD_CSUM] += 1
                return
            if not (frame[6] & 1):
                self.learn(mac_key(frame + 6), src)
            self.deliver(frame, flen, (flags & FLAG_CSUM) != 0, <uint32_t>self.peer_index.vals[slot])
            return
        if d[3] <= 1:
            self.counters[DROP_TTL] += 1
            return
        slot = table_find(&self.peer_index, dst)
        p = NULL if slot < 0 else &self.peers[self.peer_index.vals[slot]]
        hop = NULL if p == NULL else self.hop_of(p)
        if hop == NULL:
            self.counters[DROP_NO_ROUTE] += 1
            return
        if sealed:
            if not self.seal_to(hop, d, frame, flen, flags, d[3] - 1, src, dst):
                return
        else:
            d[3] -= 1
        self.counters[RELAYED] += 1
        self.make_room(0)
        self.queue1(&hop.addr, d, n)

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

    # -- to the TAP ---------------------------------------------------------------------

    cdef inline void count_delivered(self, uint32_t peer, uint64_t frames, uint64_t nbytes,
                                     bint ok) noexcept nogil:
        if ok:
            self.counters[TAP_TX] += frames
            self.counters[TAP_TX_BYTES] += nbytes
            self.peers[peer].rx_frames += frames
            self.peers[peer].rx_bytes += nbytes
        else:
            self.counters[DROP_TAP_WRITE] += frames

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef void deliver(self, uint8_t *frame, size_t n, bint csum, uint32_t peer) noexcept nogil:
        """Write a frame for us to the TAP (it has >= 12 bytes of headroom in front)."""
        cdef ssize_t written
        cdef uint32_t start = 0, offset = 0
        cdef uint8_t *vh
        if csum:
            l4_checksum_at(frame, n, &start, &offset)
        if not self.vnet:
            if csum:
                complete_checksum(frame, n, start, offset)
            while True:
                written = write(self.tap_fd, frame, n)
                if written >= 0 or errno != EINTR:
                    break
            self.count_delivered(peer, 1, n, written >= 0)
            return
        if csum and self.gro_add(frame, n, peer, offset):
            return
        self.gro_flush()
        vh = frame - VNET_HDR_LEN
        memset(vh, 0, VNET_HDR_LEN)
        if csum:
            vh[0] = VNET_F_NEEDS_CSUM
            store_le16(vh + 6, start)
            store_le16(vh + 8, offset)
        while True:
            written = write(self.tap_fd, vh, n + VNET_HDR_LEN)
            if written >= 0 or errno != EINTR:
                break
        self.count_delivered(peer, 1, n, written >= 0)

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef bint gro_add(self, uint8_t *frame, size_t n, uint32_t peer, uint32_t offset) noexcept nogil:
        """Take a TCP segment or UDP datagram (partial checksum at `offset`) into the
        pending GSO frame, flushing the pending one first when it does not continue it;
        False if it cannot be merged at all."""
        cdef bint v6 = frame[12] == 0x86
        cdef bint udp = offset == 6
        cdef uint32_t l4 = ETH_HEADER_LEN + (40 if v6 else (frame[14] & 0x0F) * 4)
        cdef uint32_t thl, hl, plen, seq = 0
        cdef uint8_t tflags = 0
        cdef const uint8_t *h
        if v6:
            if n < 54 or load_be16(frame + 18) != n - 54:  # padded, or jumbo
                return False
        elif load_be16(frame + 16) != n - ETH_HEADER_LEN or frame[20] & 0x3F or frame[21]:
            return False  # padded, or an IPv4 fragment
        if udp:
            if not self.gro_udp_ok:
                return False
            thl = 8
        else:
            if not self.gro_tcp_ok or n < l4 + 20:
                return False
            thl = (frame[l4 + 12] >> 4) * 4
            if thl < 20:
                return False
            tflags = frame[l4 + 13]
            if tflags & 0xE6 or tflags & 0x40:  # CWR, ECE, URG, RST, SYN
                return False
            seq = load_be32(frame + l4 + 4)
        hl = l4 + thl
        if n <= hl or hl > GRO_HEAD - VNET_HDR_LEN:
            return False
        plen = <uint32_t>(n - hl)
        if self.gro_active:
            h = self.gro_head + VNET_HDR_LEN
            if (not self.gro_closed and peer == self.gro_peer and udp == self.gro_udp
                    and hl == self.gro_hlen and v6 == self.gro_v6 and plen <= self.gro_mss
                    and self.gro_segs < GRO_MAX_SEGS
                    and hl - ETH_HEADER_LEN + self.gro_payload + plen <= 65535
                    and (same_udp_flow(h, frame, l4, v6) if udp else
                         seq == self.gro_next_seq and same_flow(h, frame, l4, thl, v6))):
                self.gro_iov[1 + self.gro_segs].iov_base = frame + hl
                self.gro_iov[1 + self.gro_segs].iov_len = plen
                self.gro_segs += 1
                self.gro_payload += plen
                self.gro_next_seq = seq + plen
                self.gro_last_flags = tflags
                if plen < self.gro_mss or tflags & 0x09:
                    self.gro_closed = True
                return True
            self.gro_flush()
        memcpy(self.gro_head + VNET_HDR_LEN, frame, hl)
        self.gro_active = True
        self.gro_udp = udp
        self.gro_v6 = v6
        self.gro_hlen = hl
        self.gro_l4 = l4
        self.gro_mss = plen
        self.gro_next_seq = seq + plen
        self.gro_payload = plen
        self.gro_segs = 1
        self.gro_peer = peer
        self.gro_last_flags = tflags
        self.gro_closed = (tflags & 0x09) != 0
        self.gro_iov[1].iov_base = frame + hl
        self.gro_iov[1].iov_len = plen
        return True

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef void gro_flush(self) noexcept nogil:
        cdef uint8_t *vh = self.gro_head
        cdef uint8_t *h = self.gro_head + VNET_HDR_LEN
        cdef uint32_t l4 = self.gro_l4
        cdef uint32_t l4_len
        cdef ssize_t written
        if not self.gro_active:
            return
        self.gro_active = False
        memset(vh, 0, VNET_HDR_LEN)
        vh[0] = VNET_F_NEEDS_CSUM
        store_le16(vh + 6, l4)
        store_le16(vh + 8, 6 if self.gro_udp else 16)
        if self.gro_segs > 1:
            l4_len = self.gro_hlen - l4 + self.gro_payload
            if self.gro_v6:
                store_be16(h + 18, l4_len)
            else:
                store_be16(h + 16, l4 - ETH_HEADER_LEN + l4_len)
                ipv4_header_checksum(h + ETH_HEADER_LEN, l4 - ETH_HEADER_LEN)
            if self.gro_udp:
                store_be16(h + l4 + 4, l4_len)
                store_be16(h + l4 + 6, pseudo_sum(h, l4_len, 17))
                vh[1] = VNET_GSO_UDP_L4
            else:
                h[l4 + 13] |= self.gro_last_flags & 0x09
                store_be16(h + l4 + 16, pseudo_sum(h, l4_len, 6))
                vh[1] = VNET_GSO_TCPV6 if self.gro_v6 else VNET_GSO_TCPV4
            store_le16(vh + 2, self.gro_hlen)
            store_le16(vh + 4, self.gro_mss)
        self.gro_iov[0].iov_base = vh
        self.gro_iov[0].iov_len = VNET_HDR_LEN + self.gro_hlen
        while True:
            written = writev(self.tap_fd, self.gro_iov, <int>(1 + self.gro_segs))
            if written >= 0 or errno != EINTR:
                break
        if written < 0 and errno == EINVAL and self.gro_segs > 1:
            # this kernel's TAP refuses such GSO frames: stop merging that kind
            if self.gro_udp:
                self.gro_udp_ok = False
            else:
                self.gro_tcp_ok = False
        self.count_delivered(self.gro_peer, self.gro_segs,
                             <uint64_t>self.gro_segs * self.gro_hlen + self.gro_payload,
                             written >= 0)
        if written >= 0 and self.gro_segs > 1:
            self.counters[GRO_FRAMES] += 1
            self.counters[GRO_SEGMENTS] += self.gro_segs


# -- benchmarks only ------------------------------------------------------------------

def _aead_bench(cipher, int size, int count, bint open_too=False):
    """Seal (and open, if open_too) `count` sleeve datagrams carrying `size`-byte frames in
    place with libcrypto, without the GIL; returns the datagrams that verified. For
    bench/test_micro.py and the AEAD choice (cipher: "aes-256-gcm" or "chacha20-poly1305")."""
    cdef uint8_t key[KEY_LEN]
    cdef uint8_t *buf = <uint8_t *>calloc(1, <size_t>size + SEALED_HEADER_LEN + TAG_LEN)
    cdef EVP_CIPHER_CTX *tx
    cdef EVP_CIPHER_CTX *rx
    cdef int i, ok = 0
    if buf == NULL:
        raise MemoryError()
    memset(key, 7, KEY_LEN)
    tx = EVP_CIPHER_CTX_new()
    rx = EVP_CIPHER_CTX_new()
    if cipher == "aes-256-gcm":
        EVP_EncryptInit_ex(tx, EVP_aes_256_gcm(), NULL, key, NULL)
        EVP_DecryptInit_ex(rx, EVP_aes_256_gcm(), NULL, key, NULL)
    elif cipher == "chacha20-poly1305":
        EVP_EncryptInit_ex(tx, EVP_chacha20_poly1305(), NULL, key, NULL)
        EVP_DecryptInit_ex(rx, EVP_chacha20_poly1305(), NULL, key, NULL)
    else:
        EVP_CIPHER_CTX_free(tx)
        EVP_CIPHER_CTX_free(rx)
        free(buf)
        raise ValueError(cipher)
    with nogil:
        for i in range(count):
            put_header(buf, FLAG_SEALED, DEFAULT_TTL, 1, 2)
            store_be64(buf + HEADER_LEN, <uint64_t>i)
            aead_seal(tx, buf, buf + SEALED_HEADER_LEN, <size_t>size, buf + SEALED_HEADER_LEN)
            if open_too and aead_open(rx, buf, <size_t>size + SEALED_HEADER_LEN + TAG_LEN):
                ok += 1
    EVP_CIPHER_CTX_free(tx)
    EVP_CIPHER_CTX_free(rx)
    free(buf)
    return ok
