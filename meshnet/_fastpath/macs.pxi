# The MAC table and its policy: static (gossiped) and learned entries in one bounded
# table, learned ones aged, held to a quota per peer, and evicted for static ones. The
# rules are the twin's, word for word: meshnet/dataplane/_pump_py/macs.py.
#
# Two sides. Workers read the table during a batch, with the lock held to read (other
# workers may be reading too): `mac_find` for lookups, and `mac_note_*` for what a frame
# or datagram teaches, which only refreshes a learned entry's stamp in place (one atomic
# store, at most once a second per MAC) and otherwise notes the change in the worker's
# `pending` list. `mac_apply` makes the noted changes, in order, with the lock held to
# write, at the end of each read batch: the result is what the twin gets by changing
# the table at once, because a worker's lookups see its own pending changes (a MAC it
# noted as local is absent) and nothing else in a batch reads what it noted. Everything
# below `mac_apply` runs with the lock held to write and counts into `pump.counters`.
#
# What only this part does is the ageing sweep: a bounded number of slots at a time
# (`mac_sweep`), so expired entries leave without a pause; the twin reclaims them all at
# once. A value is the peer id (bits 0-31), STATIC (bit 32), and for a learned entry the
# clock second it was last confirmed (bits 33-63).

cdef uint64_t STATIC = (<uint64_t>1) << 32  # set_mac, not learned
cdef int STAMP_SHIFT = 33
cdef uint64_t MAC_MASK = ((<uint64_t>1) << 48) - 1
cdef enum:
    MAC_OP_LEARN = 1
    MAC_OP_UNLEARN = 2


cdef inline uint64_t mac_key(const uint8_t *p) noexcept nogil:
    return ((<uint64_t>p[0] << 40) | (<uint64_t>p[1] << 32) | (<uint64_t>p[2] << 24)
            | (<uint64_t>p[3] << 16) | (<uint64_t>p[4] << 8) | p[5])


cdef inline uint64_t learned_value(uint32_t pid, int64_t now) noexcept nogil:
    return pid | (<uint64_t>now << STAMP_SHIFT)


cdef inline bint expired_at(const pump_t *pump, uint64_t v, int64_t now) noexcept nogil:
    return not (v & STATIC) and now - <int64_t>(v >> STAMP_SHIFT) >= pump.macs.age


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


# -- reading (a worker's batch) ---------------------------------------------------------

cdef inline bint mac_pending(worker_t *w, uint64_t mac) noexcept nogil:
    cdef unsigned int i
    for i in range(w.n_pending):
        if w.pending[i].mac == mac:
            return True
    return False


cdef bint mac_pending_unlearn(worker_t *w, uint64_t mac) noexcept nogil:
    """Did this batch note mac as local (so it is gone, for this worker)?"""
    cdef unsigned int i = w.n_pending
    while i:
        i -= 1
        if w.pending[i].mac == mac:
            return w.pending[i].kind == MAC_OP_UNLEARN
    return False


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline int64_t mac_find(pump_t *pump, worker_t *w, uint64_t mac) noexcept nogil:
    """The slot of mac's live entry for a lookup in w's batch, or -1."""
    cdef int64_t slot = table_find(&pump.macs.t, mac)
    if slot < 0 or expired_at(pump, mn_load_u64(&pump.macs.t.vals[slot]), w.now):
        return -1
    if w.n_pending and mac_pending_unlearn(w, mac):
        return -1
    return slot


cdef inline void mac_note(worker_t *w, uint64_t mac, uint32_t peer, uint8_t kind) noexcept nogil:
    # callers make room first (worker_sync when the list is full)
    w.pending[w.n_pending].mac = mac
    w.pending[w.n_pending].peer = peer
    w.pending[w.n_pending].kind = kind
    w.n_pending += 1


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline void mac_note_source(pump_t *pump, worker_t *w, uint64_t mac, peer_t *peer) noexcept nogil:
    """A datagram from `peer` (a known one) carries a frame from mac (the twin's learn)."""
    cdef int64_t slot
    cdef uint64_t v
    if not (w.n_pending and mac_pending(w, mac)):
        slot = table_find(&pump.macs.t, mac)
        if slot >= 0:
            v = mn_load_u64(&pump.macs.t.vals[slot])
            if v & STATIC:
                return
            if <uint32_t>v == peer.id and not expired_at(pump, v, w.now):
                if v >> STAMP_SHIFT != <uint64_t>w.now:  # one store per second at most
                    mn_store_u64(&pump.macs.t.vals[slot], learned_value(peer.id, w.now))
                return
    mac_note(w, mac, peer.id, MAC_OP_LEARN)


cdef inline void mac_note_local(pump_t *pump, worker_t *w, uint64_t mac) noexcept nogil:
    """A frame from our TAP comes from mac (the twin's unlearn)."""
    cdef int64_t slot
    if not (w.n_pending and mac_pending(w, mac)):
        slot = mac_find(pump, w, mac)
        if slot < 0 or pump.macs.t.vals[slot] & STATIC:
            return  # nothing learned to forget (an expired entry goes with the reclaim)
    mac_note(w, mac, 0, MAC_OP_UNLEARN)


# -- writing ---------------------------------------------------------------------------

cdef void mac_apply(pump_t *pump, worker_t *w) noexcept nogil:
    """Make the changes w noted, in order (lock held to write)."""
    cdef unsigned int i
    cdef peer_t *p
    pump.now = w.now
    for i in range(w.n_pending):
        if w.pending[i].kind == MAC_OP_UNLEARN:
            mac_unlearn(pump, w.pending[i].mac)
        else:
            p = peer_by_id(pump, w.pending[i].peer)
            if p != NULL:  # gone if a control method ran in between (worker_sync)
                mac_learn(pump, w.pending[i].mac, p)
    w.n_pending = 0


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


cdef int64_t mac_lookup(pump_t *pump, uint64_t mac) noexcept nogil:
    """The slot of mac's live entry, or -1; an expired one is removed (learned_aged)."""
    cdef int64_t slot = table_find(&pump.macs.t, mac)
    if slot >= 0 and expired_at(pump, pump.macs.t.vals[slot], pump.now):
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
        if t.keys[i] != 0 and expired_at(pump, t.vals[i], pump.now):
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
        if t.keys[pump.macs.cursor] != 0 and expired_at(pump, t.vals[pump.macs.cursor], pump.now):
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


cdef void mac_learn(pump_t *pump, uint64_t mac, peer_t *peer) noexcept nogil:
    """The twin's learn: a datagram from `peer` (a known one) carried a frame from mac."""
    cdef int64_t slot = mac_lookup(pump, mac)
    cdef uint64_t v
    if slot >= 0:
        v = pump.macs.t.vals[slot]
        if v & STATIC:
            return
        if <uint32_t>v == peer.id:
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


cdef void mac_unlearn(pump_t *pump, uint64_t mac) noexcept nogil:
    """The twin's unlearn: a frame from our TAP came from mac."""
    cdef int64_t slot = mac_lookup(pump, mac)
    if slot >= 0 and not (pump.macs.t.vals[slot] & STATIC):  # the host moved here
        mac_remove(pump, <uint32_t>slot)
        pump.counters[UNLEARNED] += 1


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
            if expired_at(pump, t.vals[i], pump.now):
                pump.counters[LEARNED_AGED] += 1
            mac_remove(pump, i)  # the backward shift may pull an unvisited entry into i
        else:
            i += 1
