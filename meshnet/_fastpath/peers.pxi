# Peers: the dense peer array with its indexes (by id, by address), routes (next hops),
# link keys and their replay windows, and sealing and opening a datagram for a next hop.
# Floods walk the array in order; a removed peer is replaced by the last one. Several
# workers may seal for one peer at once (each with its own AEAD context; the send
# counter is taken atomically) and open its datagrams at once (the replay window is
# checked and updated under the peer's spin lock).
# The twin's counterpart: meshnet/dataplane/_pump_py/peers.py.

cdef void peer_free_keys(peer_t *peer) noexcept nogil:
    cdef int i
    for i in range(MAX_WORKERS):
        EVP_CIPHER_CTX_free(peer.tx_ctx[i])  # NULL is fine
        peer.tx_ctx[i] = NULL
    for i in range(2 * MAX_WORKERS):
        EVP_CIPHER_CTX_free(peer.rx_ctx[i])
        peer.rx_ctx[i] = NULL
    peer.has_tx = False
    peer.has_rx[0] = False
    peer.has_rx[1] = False
    free(peer.rx_seen)
    peer.rx_seen = NULL


cdef inline bint replay_ok(const peer_t *p, int k, uint64_t c) noexcept nogil:
    """k: the window, 2 * lane + KEY_ID."""
    cdef uint64_t bit
    if c >= p.rx_top[k]:
        return True
    if p.rx_top[k] - c > REPLAY_WINDOW:
        return False
    bit = c & (REPLAY_WINDOW - 1)
    return not ((p.rx_seen[k * REPLAY_WORDS + (bit >> 6)] >> (bit & 63)) & 1)


cdef inline void replay_accept(peer_t *p, int k, uint64_t c) noexcept nogil:
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


cdef bint peer_put(pump_t *pump, uint32_t pid, uint32_t via, bint has_addr, bint flood,
                   const sockaddr_in *sa) noexcept nogil:
    """Set a peer's route; True if it is new and the table is full."""
    cdef int64_t slot = table_find(&pump.peer_index, pid)
    cdef peer_t *p
    cdef sockaddr_in old
    cdef bint had_addr = False
    if slot >= 0:
        p = &pump.peers[pump.peer_index.vals[slot]]
        if p.has_addr:
            peer_release_addr(pump, &p.addr)
            had_addr = True
            old = p.addr
    elif pump.n_peers >= PEER_TABLE_MAX:
        return True
    else:
        table_put(&pump.peer_index, pid, pump.n_peers)
        p = &pump.peers[pump.n_peers]
        memset(p, 0, sizeof(peer_t))
        pump.n_peers += 1
        p.id = pid
    p.via = via
    p.flood = flood
    p.has_addr = has_addr
    p.addr = sa[0]
    if had_addr:
        peer_recompute_owner(pump, &old)
    if has_addr:
        slot = table_find(&pump.addr_refs, addr_key(sa))
        if slot >= 0:
            pump.addr_refs.vals[slot] += 1
        else:
            table_put(&pump.addr_refs, addr_key(sa), 1)
        peer_recompute_owner(pump, sa)
    return False


cdef void peer_release_addr(pump_t *pump, const sockaddr_in *sa) noexcept nogil:
    cdef int64_t slot = table_find(&pump.addr_refs, addr_key(sa))
    pump.addr_refs.vals[slot] -= 1
    if pump.addr_refs.vals[slot] == 0:
        table_delete(&pump.addr_refs, <uint32_t>slot)


cdef void peer_recompute_owner(pump_t *pump, const sockaddr_in *sa) noexcept nogil:
    """The owner of an address: the lowest peer id with that address and a receive key."""
    cdef uint64_t key = addr_key(sa)
    cdef uint32_t i
    cdef bint found = False
    cdef uint32_t best = 0
    cdef int64_t slot
    cdef peer_t *p
    for i in range(pump.n_peers):
        p = &pump.peers[i]
        if (p.has_addr and addr_key(&p.addr) == key and (p.has_rx[0] or p.has_rx[1])
                and (not found or p.id < best)):
            found = True
            best = p.id
    slot = table_find(&pump.addr_owner, key)
    if found:
        table_put(&pump.addr_owner, key, best)
    elif slot >= 0:
        table_delete(&pump.addr_owner, <uint32_t>slot)


cdef void peer_drop(pump_t *pump, uint32_t pid) noexcept nogil:
    """Forget a peer: its MACs, route, address and keys."""
    cdef int64_t slot
    cdef uint64_t idx
    cdef sockaddr_in old
    cdef bint had_addr
    mac_forget_peer(pump, pid)
    slot = table_find(&pump.peer_index, pid)
    if slot < 0:
        return
    idx = pump.peer_index.vals[slot]
    table_delete(&pump.peer_index, <uint32_t>slot)
    had_addr = pump.peers[idx].has_addr
    old = pump.peers[idx].addr
    if had_addr:
        peer_release_addr(pump, &old)
    peer_free_keys(&pump.peers[idx])
    pump.n_peers -= 1
    if idx != pump.n_peers:  # keep the array dense: move the last peer into the gap
        pump.peers[idx] = pump.peers[pump.n_peers]
        table_put(&pump.peer_index, pump.peers[idx].id, idx)
    if had_addr:
        peer_recompute_owner(pump, &old)


cdef bint peer_set_keys(pump_t *pump, uint32_t pid, const uint8_t *tx, const uint8_t *rx,
                        uint32_t epoch, EVP_CIPHER_CTX **tx_ctx,
                        EVP_CIPHER_CTX **rx_ctx, uint64_t **windows) noexcept nogil:
    """Install a peer's link keys (rules: the twin's set_peer_keys); False if the peer is
    unknown. tx_ctx and rx_ctx hold a context per worker, windows zeroed replay bitmaps
    for all lanes; it takes what it uses (sets it to NULL), the caller frees the rest."""
    cdef int64_t slot = table_find(&pump.peer_index, pid)
    cdef int k = epoch & 1
    cdef unsigned int i
    cdef peer_t *p
    if slot < 0:
        return False
    p = &pump.peers[pump.peer_index.vals[slot]]
    if not (p.has_tx and memcmp(p.tx_key, tx, KEY_LEN) == 0):
        for i in range(pump.n_workers):
            EVP_CIPHER_CTX_free(p.tx_ctx[i])
            p.tx_ctx[i] = tx_ctx[i]
            tx_ctx[i] = NULL
        memcpy(p.tx_key, tx, KEY_LEN)
        p.has_tx = True
        mn_store_u64(&p.tx_counter, 0)
    p.tx_epoch = epoch
    if not (p.has_rx[k] and memcmp(p.rx_key + k * KEY_LEN, rx, KEY_LEN) == 0):
        for i in range(pump.n_workers):
            EVP_CIPHER_CTX_free(p.rx_ctx[2 * i + k])
            p.rx_ctx[2 * i + k] = rx_ctx[i]
            rx_ctx[i] = NULL
        memcpy(p.rx_key + k * KEY_LEN, rx, KEY_LEN)
        p.has_rx[k] = True
        if p.rx_seen == NULL:
            p.rx_seen = windows[0]
            windows[0] = NULL
        for i in range(pump.n_workers):  # lanes beyond n_workers are never used
            p.rx_top[2 * i + k] = 0
            memset(&p.rx_seen[(2 * i + k) * REPLAY_WORDS], 0, REPLAY_WORDS * sizeof(uint64_t))
    if p.has_addr:
        peer_recompute_owner(pump, &p.addr)
    return True


@cython.boundscheck(False)
@cython.wraparound(False)
cdef peer_t *peer_hop(pump_t *pump, peer_t *peer) noexcept nogil:
    """peer's next hop (peer itself when direct) if it has an address, else NULL."""
    cdef int64_t slot
    if peer.via != peer.id:
        slot = table_find(&pump.peer_index, peer.via)
        if slot < 0:
            return NULL
        peer = &pump.peers[pump.peer_index.vals[slot]]
    return peer if peer.has_addr else NULL


cdef bint peer_seal(pump_t *pump, worker_t *w, peer_t *hop, uint8_t *out, const uint8_t *frame,
                    size_t n, uint8_t flags, uint8_t ttl, uint32_t src, uint32_t dst) noexcept nogil:
    """Write the datagram sealed for hop (n + 36 bytes) at out; frame may sit at out + 20.
    False (counted) if hop has no usable send key."""
    cdef uint64_t counter
    if not hop.has_tx:
        w.counters[DROP_TX_NO_KEY] += 1
        return False
    if mn_load_u64(&hop.tx_counter) >= REJECT_AFTER_MESSAGES:
        w.counters[DROP_KEY_EXHAUSTED] += 1
        return False
    counter = mn_fetch_add_u64(&hop.tx_counter, 1)  # unique even with workers racing
    if counter >= REJECT_AFTER_MESSAGES:
        w.counters[DROP_KEY_EXHAUSTED] += 1
        return False
    flags = (flags & ~(FLAG_KEY_ID | FLAG_SEALED)) | FLAG_SEALED
    if hop.tx_epoch & 1:
        flags |= FLAG_KEY_ID
    put_header(out, flags, ttl, src, dst)
    store_be64(out + HEADER_LEN, counter)
    if not aead_seal(hop.tx_ctx[w.index], out, frame, n, out + SEALED_HEADER_LEN):
        w.counters[DROP_SEND_ERROR] += 1  # libcrypto failed (it does not, in practice)
        return False
    return True


cdef int peer_open(pump_t *pump, worker_t *w, peer_t *p, int k, uint8_t *d, size_t n) noexcept nogil:
    """Open a sealed datagram from p with its KEY_ID k receive key (the caller checked
    it exists): -1, or the counter of the reason it is dropped. The replay window (of the
    datagram's lane) is checked before opening (a replayed datagram costs no AEAD) and
    updated only once the tag verified, both under the peer's lock: of two copies opened
    at once, one passes."""
    cdef uint64_t counter = load_be64(d + HEADER_LEN)
    cdef int window = 2 * (((d[2] >> HINT_SHIFT) & HINT_MASK) % pump.n_workers) + k
    cdef bint fresh
    if counter >= REJECT_AFTER_MESSAGES:
        return DROP_REPLAY
    mn_spin_lock(&p.replay_lock)
    fresh = replay_ok(p, window, counter)
    mn_spin_unlock(&p.replay_lock)
    if not fresh:
        return DROP_REPLAY
    if not aead_open(p.rx_ctx[2 * w.index + k], d, n):
        return DROP_AUTH
    mn_spin_lock(&p.replay_lock)
    fresh = replay_ok(p, window, counter)
    if fresh:
        replay_accept(p, window, counter)
    mn_spin_unlock(&p.replay_lock)
    return -1 if fresh else DROP_REPLAY
