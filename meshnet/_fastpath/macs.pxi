# The MAC table and its policy: static (gossiped) and learned entries in one bounded
# table, learned ones aged, held to a quota per peer, and evicted for static ones. The
# rules are the twin's, word for word: meshnet/dataplane/_pump_py/macs.py. What only
# this part does is the ageing sweep: a bounded number of slots per batch (`mac_sweep`),
# so expired entries leave without a pause; the twin reclaims them all at once.
#
# A value is the peer id (bits 0-31), STATIC (bit 32), and for a learned entry the
# clock second it was last confirmed (bits 33-63).

cdef uint64_t STATIC = (<uint64_t>1) << 32  # set_mac, not learned
cdef int STAMP_SHIFT = 33
cdef uint64_t MAC_MASK = ((<uint64_t>1) << 48) - 1


cdef inline uint64_t mac_key(const uint8_t *p) noexcept nogil:
    return ((<uint64_t>p[0] << 40) | (<uint64_t>p[1] << 32) | (<uint64_t>p[2] << 24)
            | (<uint64_t>p[3] << 16) | (<uint64_t>p[4] << 8) | p[5])


cdef inline uint64_t learned_value(uint32_t pid, int64_t now) noexcept nogil:
    return pid | (<uint64_t>now << STAMP_SHIFT)


cdef inline bint mac_expired(const pump_t *pump, uint64_t v) noexcept nogil:
    return not (v & STATIC) and pump.now - <int64_t>(v >> STAMP_SHIFT) >= pump.macs.age


cdef inline peer_t *peer_by_id(pump_t *pump, uint32_t pid) noexcept nogil:
    cdef int64_t slot = table_find(&pump.peer_index, pid)
    return NULL if slot < 0 else &pump.peers[pump.peer_index.vals[slot]]


cdef int mac_init(mac_table_t *m, uint32_t capacity, uint32_t quota, int64_t age) noexcept nogil:
    """Slots: the smallest power of two >= 2 x capacity (the table stays half full)."""
    cdef unsigned int bits = 4
    while (<uint64_t>1 << bits) < 2 * <uint64_t>capacity:
        bits += 1
    m.capacity = capacity
    m.quota = quota
    m.age = age
    m.learned = 0
    m.cursor = 0
    m.reclaimed_at = -1
    return table_init(&m.t, bits)


cdef void mac_remove(pump_t *pump, uint32_t slot) noexcept nogil:
    """Delete the entry in slot, keeping the learned counts."""
    cdef uint64_t v = pump.macs.t.vals[slot]
    cdef peer_t *p
    if not (v & STATIC):
        p = peer_by_id(pump, <uint32_t>v)  # a learned entry's peer always exists
        if p != NULL and p.learned:
            p.learned -= 1
        pump.macs.learned -= 1
    table_delete(&pump.macs.t, slot)


@cython.boundscheck(False)
@cython.wraparound(False)
cdef int64_t mac_lookup(pump_t *pump, uint64_t mac) noexcept nogil:
    """The slot of mac's live entry, or -1; an expired one is removed (learned_aged)."""
    cdef int64_t slot = table_find(&pump.macs.t, mac)
    if slot >= 0 and mac_expired(pump, pump.macs.t.vals[slot]):
        mac_remove(pump, <uint32_t>slot)
        pump.counters[LEARNED_AGED] += 1
        return -1
    return slot


cdef void mac_reclaim(pump_t *pump) noexcept nogil:
    """Remove every expired entry; at most once per clock second (the twin's reclaim)."""
    cdef table_t *t = &pump.macs.t
    cdef uint32_t i = 0
    if pump.macs.reclaimed_at == pump.now:
        return
    pump.macs.reclaimed_at = pump.now
    while i <= t.mask and pump.macs.learned:
        if t.keys[i] != 0 and mac_expired(pump, t.vals[i]):
            # The backward shift may pull an unvisited entry into i: look again.
            mac_remove(pump, i)
            pump.counters[LEARNED_AGED] += 1
        else:
            i += 1


cdef void mac_sweep(pump_t *pump, uint32_t budget) noexcept nogil:
    """Look at `budget` slots from the cursor on, removing expired entries."""
    cdef table_t *t = &pump.macs.t
    while budget and pump.macs.learned:
        budget -= 1
        if t.keys[pump.macs.cursor] != 0 and mac_expired(pump, t.vals[pump.macs.cursor]):
            mac_remove(pump, pump.macs.cursor)  # look at the same slot again
            pump.counters[LEARNED_AGED] += 1
        else:
            pump.macs.cursor = (pump.macs.cursor + 1) & t.mask


cdef bint mac_evict_one(pump_t *pump) noexcept nogil:
    """Remove the learned entry confirmed longest ago (ties: the lowest MAC); False if
    there is none. A scan of the whole table: only a set_mac into a full table does it."""
    cdef table_t *t = &pump.macs.t
    cdef uint32_t i
    cdef int64_t best = -1
    cdef uint64_t best_stamp = 0, best_mac = 0, stamp, m
    for i in range(t.mask + 1):
        if t.keys[i] == 0 or t.vals[i] & STATIC:
            continue
        stamp = t.vals[i] >> STAMP_SHIFT
        m = t.keys[i] & MAC_MASK
        if best < 0 or stamp < best_stamp or (stamp == best_stamp and m < best_mac):
            best, best_stamp, best_mac = i, stamp, m
    if best < 0:
        return False
    mac_remove(pump, <uint32_t>best)
    pump.counters[LEARNED_EVICTED] += 1
    return True


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void mac_learn(pump_t *pump, uint64_t mac, peer_t *peer) noexcept nogil:
    """A datagram from `peer` (a known one) carries a frame from mac."""
    cdef int64_t slot = mac_lookup(pump, mac)
    cdef uint64_t v
    if slot >= 0:
        v = pump.macs.t.vals[slot]
        if v & STATIC:
            return
        if <uint32_t>v == peer.id:
            if v >> STAMP_SHIFT != <uint64_t>pump.now:  # one store per second at most
                pump.macs.t.vals[slot] = learned_value(peer.id, pump.now)
            return
        mac_remove(pump, <uint32_t>slot)  # it moved: the old entry is wrong anyway
    if peer.learned >= pump.macs.quota:
        mac_reclaim(pump)
        if peer.learned >= pump.macs.quota:
            pump.counters[LEARN_OVER_QUOTA] += 1
            return
    if pump.macs.t.count >= pump.macs.capacity:
        mac_reclaim(pump)
        if pump.macs.t.count >= pump.macs.capacity:
            pump.counters[LEARN_TABLE_FULL] += 1
            return
    table_put(&pump.macs.t, mac, learned_value(peer.id, pump.now))
    peer.learned += 1
    pump.macs.learned += 1
    pump.counters[LEARNED] += 1


cdef bint mac_set_static(pump_t *pump, uint64_t mac, uint32_t pid) noexcept nogil:
    """set_mac: False if the table is full of static entries."""
    cdef int64_t slot = mac_lookup(pump, mac)
    if slot >= 0:
        if not (pump.macs.t.vals[slot] & STATIC):
            mac_remove(pump, <uint32_t>slot)  # a learned entry becomes static
        else:
            pump.macs.t.vals[slot] = pid | STATIC
            return True
    elif pump.macs.t.count >= pump.macs.capacity:
        mac_reclaim(pump)
        if pump.macs.t.count >= pump.macs.capacity and not mac_evict_one(pump):
            return False
    table_put(&pump.macs.t, mac, pid | STATIC)
    return True


cdef void mac_forget(pump_t *pump, uint64_t mac) noexcept nogil:
    cdef int64_t slot = mac_lookup(pump, mac)
    if slot >= 0:
        mac_remove(pump, <uint32_t>slot)


cdef void mac_forget_peer(pump_t *pump, uint32_t pid) noexcept nogil:
    """Forget every MAC behind peer pid, learned or static (expired ones count as aged)."""
    cdef table_t *t = &pump.macs.t
    cdef uint32_t i = 0
    while i <= t.mask:
        if t.keys[i] != 0 and <uint32_t>t.vals[i] == pid:
            if mac_expired(pump, t.vals[i]):
                pump.counters[LEARNED_AGED] += 1
            mac_remove(pump, i)  # the backward shift may pull an unvisited entry into i
        else:
            i += 1
