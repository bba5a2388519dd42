# The UDP side: receive a batch of messages (with UDP_GRO each may hold many datagrams of
# one size), check each datagram, open it in place on an encrypted pump, then deliver it
# to the TAP (teaching the MAC table where its source MAC lives) or relay it with
# ttl - 1. The twin's counterpart: meshnet/dataplane/_pump_py/udp_side.py.

cdef void gro_mixed(pump_t *pump, worker_t *w) noexcept nogil:
    """The kernel coalesced datagrams of a flow steered to another worker behind one of ours
    (a NIC's GRO merges by the outer addresses only, before the group's program picks a
    socket): that flow is now split between two threads and may be reordered. Turn UDP_GRO
    off on every socket of the group, for good: then each datagram is steered alone."""
    cdef int off = 0
    cdef unsigned int k
    w.counters[GRO_MIXED] += 1
    if mn_load_flag(&pump.gro_mixed):
        return
    mn_store_flag(&pump.gro_mixed, 1)
    for k in range(pump.n_workers):
        setsockopt(pump.workers[k].udp_fd, IPPROTO_UDP, UDP_GRO, &off, sizeof(off))


@cython.boundscheck(False)
@cython.wraparound(False)
cdef int udp_batch(pump_t *pump, worker_t *w) noexcept nogil:
    cdef udp_t *u = &w.udp
    cdef unsigned int i
    cdef int got
    cdef int handled = 0
    cdef size_t length, off, gso, part
    cdef uint8_t *buf
    cdef cmsghdr *cm
    for i in range(pump.batch):
        u.msgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_in)
        if pump.udp_gro:
            u.msgs[i].msg_hdr.msg_control = u.cmsg + <size_t>i * RX_CMSG
            u.msgs[i].msg_hdr.msg_controllen = RX_CMSG
    while True:
        got = recvmmsg(w.udp_fd, u.msgs, pump.batch, MSG_DONTWAIT, NULL)
        if got >= 0 or errno != EINTR:
            break
    if got <= 0:  # EAGAIN, or a transient socket error: next poll
        return 0
    for i in range(<unsigned int>got):
        buf = u.slots + <size_t>i * UDP_SLOT
        length = u.msgs[i].msg_len
        gso = 0
        if pump.udp_gro and u.msgs[i].msg_hdr.msg_controllen > 0:
            cm = CMSG_FIRSTHDR(&u.msgs[i].msg_hdr)
            while cm != NULL:
                if cm.cmsg_level == IPPROTO_UDP and cm.cmsg_type == UDP_GRO:
                    gso = (<int *>CMSG_DATA(cm))[0]
                cm = CMSG_NXTHDR(&u.msgs[i].msg_hdr, cm)
        if gso == 0 or gso >= length:
            udp_datagram(pump, w, buf, length, &u.addr[i])
            handled += 1
            continue
        off = 0
        while off < length:  # datagrams the kernel coalesced (UDP_GRO): all gso long
            part = length - off if length - off < gso else gso
            if pump.n_workers > 1 and part > 2 and (buf[off + 2] >> HINT_SHIFT) % pump.n_workers != w.index:
                gro_mixed(pump, w)
            udp_datagram(pump, w, buf + off, part, &u.addr[i])
            handled += 1
            off += part
    gro_flush(pump, w)
    txq_flush(pump, w)
    return handled


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void udp_datagram(pump_t *pump, worker_t *w, uint8_t *d, size_t n,
                       const sockaddr_in *sender) noexcept nogil:
    cdef uint32_t src, dst, owner
    cdef int64_t slot
    cdef int k, dropped
    cdef uint8_t flags
    cdef bint sealed
    cdef uint8_t *frame
    cdef size_t flen
    cdef uint32_t start, offset
    cdef peer_t *key_peer
    cdef peer_t *p
    cdef peer_t *hop
    if w.n_pending == PENDING_MAX:
        worker_sync(pump, w)
    w.counters[UDP_RX] += 1
    w.counters[UDP_RX_BYTES] += n
    if table_find(&pump.addr_refs, addr_key(sender)) < 0:
        w.counters[DROP_UNKNOWN_SENDER] += 1
        return
    if n < MIN_DATAGRAM:
        w.counters[DROP_SHORT] += 1
        return
    if d[0] != VERSION:
        w.counters[DROP_VERSION] += 1
        return
    if d[1] != TYPE_FRAME:
        w.counters[DROP_TYPE] += 1
        return
    flags = d[2]
    sealed = (flags & FLAG_SEALED) != 0
    if pump.crypto and not sealed:
        w.counters[DROP_PLAINTEXT] += 1
        return
    if sealed and not pump.crypto:
        w.counters[DROP_SEALED] += 1
        return
    if sealed:
        if n < MIN_SEALED:
            w.counters[DROP_SHORT] += 1
            return
        slot = table_find(&pump.addr_owner, addr_key(sender))
        k = 1 if flags & FLAG_KEY_ID else 0
        key_peer = NULL
        if slot >= 0:
            owner = <uint32_t>pump.addr_owner.vals[slot]
            slot = table_find(&pump.peer_index, owner)
            key_peer = &pump.peers[pump.peer_index.vals[slot]]
        if key_peer == NULL or not key_peer.has_rx[k]:
            w.counters[DROP_NO_KEY] += 1
            return
        dropped = peer_open(pump, w, key_peer, k, d, n)
        if dropped >= 0:
            w.counters[dropped] += 1
            return
        frame = d + SEALED_HEADER_LEN
        flen = n - SEALED_HEADER_LEN - TAG_LEN
    else:
        frame = d + HEADER_LEN
        flen = n - HEADER_LEN
    src = load_be32(d + 4)
    dst = load_be32(d + 8)
    if dst == pump.local_id:
        slot = table_find(&pump.peer_index, src)
        if slot < 0:
            w.counters[DROP_UNKNOWN_PEER] += 1
            return
        if flags & FLAG_CSUM and not l4_checksum_at(frame, flen, &start, &offset):
            w.counters[DROP_BAD_CSUM] += 1
            return
        if not (frame[6] & 1):
            mac_note_source(pump, w, mac_key(frame + 6), &pump.peers[pump.peer_index.vals[slot]])
        gro_deliver(pump, w, frame, flen, (flags & FLAG_CSUM) != 0,
                    <uint32_t>pump.peer_index.vals[slot])
        return
    if d[3] <= 1:
        w.counters[DROP_TTL] += 1
        return
    slot = table_find(&pump.peer_index, dst)
    p = NULL if slot < 0 else &pump.peers[pump.peer_index.vals[slot]]
    hop = NULL if p == NULL else peer_hop(pump, p)
    if hop == NULL:
        w.counters[DROP_NO_ROUTE] += 1
        return
    if sealed:
        if not peer_seal(pump, w, hop, d, frame, flen, flags, d[3] - 1, src, dst):
            return
    else:
        d[3] -= 1
    w.counters[RELAYED] += 1
    txq_make_room(pump, w, 0)
    txq_push(w, &hop.addr, d, n)
