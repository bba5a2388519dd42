# Tables: fixed-size linear-probing hash tables of uint64 keys (backward-shift deletion,
# so no tombstones). The MAC table (macs.pxi) and the peer indexes (peers.pxi) are built
# on them; the twin uses dicts.

cdef uint64_t OCCUPIED = (<uint64_t>1) << 63  # set in every stored key; 0 = empty slot

# The peer indexes have 2**PEER_INDEX_BITS slots and must stay at most half full.
if (1 << PEER_INDEX_BITS) < 2 * PEER_TABLE_MAX:
    raise ImportError("PEER_INDEX_BITS is too small for layout.PEER_TABLE_MAX; raise it")


cdef int table_init(table_t *t, unsigned int bits) noexcept nogil:
    t.keys = <uint64_t *>calloc(<size_t>1 << bits, sizeof(uint64_t))
    t.vals = <uint64_t *>calloc(<size_t>1 << bits, sizeof(uint64_t))
    t.mask = (1u << bits) - 1
    t.shift = 64 - bits
    t.count = 0
    return 0 if t.keys != NULL and t.vals != NULL else -1


cdef void table_free(table_t *t) noexcept nogil:
    free(t.keys)
    free(t.vals)
    t.keys = NULL
    t.vals = NULL


cdef inline uint32_t table_home(const table_t *t, uint64_t stored) noexcept nogil:
    return <uint32_t>((stored * <uint64_t>0x9E3779B97F4A7C15) >> t.shift)  # Fibonacci hashing


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline int64_t table_find(const table_t *t, uint64_t key) noexcept nogil:
    # Callers keep every table at most half full, so an empty slot ends each probe.
    cdef uint64_t stored = key | OCCUPIED
    cdef uint32_t i = table_home(t, stored)
    while t.keys[i] != 0:
        if t.keys[i] == stored:
            return i
        i = (i + 1) & t.mask
    return -1


cdef void table_put(table_t *t, uint64_t key, uint64_t val) noexcept nogil:
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


cdef void table_delete(table_t *t, uint32_t hole) noexcept nogil:
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


cdef inline uint64_t addr_key(const sockaddr_in *a) noexcept nogil:
    return (<uint64_t>a.sin_addr.s_addr << 16) | a.sin_port  # both in network order
