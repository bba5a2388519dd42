# The TAP side: read a batch of frames, forget source MACs that moved here, cut TSO
# frames into segments, answer frames too big for the underlay with ICMP, and queue one
# datagram per destination (a unicast peer, or each flood peer). The twin's
# counterpart: meshnet/dataplane/_pump_py/tap_side.py.

cdef int tap_batch(pump_t *pump, worker_t *w) noexcept nogil:
    cdef unsigned int n = 0
    cdef ssize_t got
    cdef uint8_t *frame
    cdef bint failed = False
    cdef size_t extra = VNET_HDR_LEN if pump.vnet else 0
    w.tap.seg_used = 0
    while n < pump.batch:
        frame = w.tap.slots + <size_t>n * TAP_SLOT + HEADROOM
        got = read(w.tap_fd, frame - extra, MAX_FRAME + 1 + extra)
        if got < 0:
            if errno == EINTR:
                continue
            if errno != EAGAIN:  # the TAP itself is broken: report it, after sending
                w.error = errno
                failed = True
            break
        n += 1
        if w.n_pending == PENDING_MAX:
            worker_sync(pump, w)
        if pump.vnet:
            if got >= VNET_HDR_LEN:
                tap_frame(pump, w, frame, <size_t>got - VNET_HDR_LEN, frame - VNET_HDR_LEN)
            else:
                tap_frame(pump, w, frame, 0, NULL)
        else:
            tap_frame(pump, w, frame, <size_t>got, NULL)
    txq_flush(pump, w)
    return -1 if failed else <int>n


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void tap_frame(pump_t *pump, worker_t *w, uint8_t *frame, size_t n, const uint8_t *vh) noexcept nogil:
    """frame has HEADROOM bytes in front and room for a tag behind; vh its vnet hdr."""
    cdef uint8_t flags
    cdef uint32_t start, offset, cs, co
    w.counters[TAP_RX] += 1
    w.counters[TAP_RX_BYTES] += n
    if n < ETH_HEADER_LEN:
        w.counters[DROP_SHORT_FRAME] += 1
        return
    mac_note_local(pump, w, mac_key(frame + 6))  # learned as remote? the host moved here
    flags = flow_hint(frame, n) << HINT_SHIFT
    if vh != NULL and vh[1] != VNET_GSO_NONE:
        tap_segment(pump, w, frame, n, vh[1], load_le16(vh + 4), flags | FLAG_CSUM)
        return
    if vh != NULL and vh[0] & VNET_F_NEEDS_CSUM:
        cs = load_le16(vh + 6)
        co = load_le16(vh + 8)
        if l4_checksum_at(frame, n, &start, &offset) and start == cs and offset == co:
            flags |= FLAG_CSUM
        elif ETH_HEADER_LEN <= cs and cs + co + 2 <= n:
            complete_checksum(frame, n, cs, co)
        else:
            w.counters[DROP_BAD_CSUM] += 1
            return
    tap_forward(pump, w, frame, n, flags)


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void tap_segment(pump_t *pump, worker_t *w, const uint8_t *frame, size_t n, uint8_t gso_type,
                      uint32_t mss, uint8_t seg_flags) noexcept nogil:
    """Cut a TSO frame into MSS segments (rules: the twin's segment_tso); each goes with
    seg_flags (CSUM and the frame's flow hint)."""
    cdef uint8_t kind = gso_type & ~VNET_GSO_ECN
    cdef uint32_t iphl, l4, thl, hl, seq0, ip_id, k = 0, chunk, nsegs
    cdef size_t off, need
    cdef uint8_t *seg
    cdef uint8_t flags
    if mss == 0 or n < ETH_HEADER_LEN + 20:
        w.counters[DROP_BAD_GSO] += 1
        return
    if kind == VNET_GSO_TCPV4:
        if (frame[12] != 0x08 or frame[13] != 0x00 or frame[14] >> 4 != 4
                or frame[23] != 6 or (frame[14] & 0x0F) < 5):
            w.counters[DROP_BAD_GSO] += 1
            return
        iphl = (frame[14] & 0x0F) * 4
    elif kind == VNET_GSO_TCPV6:
        if (frame[12] != 0x86 or frame[13] != 0xDD or n < 54 or frame[14] >> 4 != 6
                or frame[20] != 6):
            w.counters[DROP_BAD_GSO] += 1
            return
        iphl = 40
    else:
        w.counters[DROP_BAD_GSO] += 1
        return
    l4 = ETH_HEADER_LEN + iphl
    if n < l4 + 20:
        w.counters[DROP_BAD_GSO] += 1
        return
    thl = (frame[l4 + 12] >> 4) * 4
    hl = l4 + thl
    if thl < 20 or n <= hl:
        w.counters[DROP_BAD_GSO] += 1
        return
    nsegs = <uint32_t>((n - hl + mss - 1) / mss)
    w.counters[GSO_SEGMENTS] += nsegs
    seq0 = load_be32(frame + l4 + 4)
    ip_id = load_be16(frame + 18)
    off = 0
    while off < n - hl:
        chunk = mss if n - hl - off > mss else <uint32_t>(n - hl - off)
        need = SEALED_HEADER_LEN + hl + chunk + TAG_LEN
        if w.tap.seg_used + need > SEG_ARENA:
            txq_flush(pump, w)  # between segments: nothing in the arena is needed any more
        seg = w.tap.seg_arena + w.tap.seg_used + SEALED_HEADER_LEN
        w.tap.seg_used += need
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
        w.tap.in_segment = True
        tap_forward(pump, w, seg, hl + chunk, seg_flags)
        w.tap.in_segment = False
        off += chunk
        k += 1


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void tap_forward(pump_t *pump, worker_t *w, uint8_t *frame, size_t n, uint8_t flags) noexcept nogil:
    """Send one frame (20 bytes of headroom, 16 of tailroom) to its peer(s); flags: its
    CSUM and flow hint."""
    cdef int64_t slot
    cdef uint32_t pid
    cdef peer_t *p
    cdef peer_t *hop
    cdef size_t icmp
    cdef ssize_t written
    if n > pump.max_frame:
        w.counters[DROP_OVERSIZE] += 1
        return
    if pump.underlay_mtu and not (frame[0] & 1) and n + pump.overhead > pump.underlay_mtu:
        icmp = frag_needed(frame, n, pump.underlay_mtu - pump.overhead - ETH_HEADER_LEN,
                           w.tap.scratch + VNET_HDR_LEN)
        if icmp:
            w.counters[FRAG_NEEDED] += 1
            if pump.vnet:
                memset(w.tap.scratch, 0, VNET_HDR_LEN)
                written = write(w.tap_fd, w.tap.scratch, icmp + VNET_HDR_LEN)
            else:
                written = write(w.tap_fd, w.tap.scratch + VNET_HDR_LEN, icmp)
            return
    if frame[0] & 1:
        tap_flood(pump, w, frame, n, flags)
        return
    slot = mac_find(pump, w, mac_key(frame))
    if slot < 0:
        w.counters[UNKNOWN_UNICAST] += 1
        tap_flood(pump, w, frame, n, flags)
        return
    pid = <uint32_t>pump.macs.t.vals[slot]
    slot = table_find(&pump.peer_index, pid)
    p = NULL if slot < 0 else &pump.peers[pump.peer_index.vals[slot]]
    hop = NULL if p == NULL else peer_hop(pump, p)
    if hop == NULL:
        w.counters[DROP_NO_ROUTE] += 1
        return
    if pump.crypto:
        if not peer_seal(pump, w, hop, frame - SEALED_HEADER_LEN, frame, n, flags, DEFAULT_TTL,
                         pump.local_id, pid):
            return
        txq_make_room(pump, w, 0)
        txq_push(w, &hop.addr, frame - SEALED_HEADER_LEN, n + SEALED_HEADER_LEN + TAG_LEN)
    else:
        put_header(frame - HEADER_LEN, flags, DEFAULT_TTL, pump.local_id, pid)
        txq_make_room(pump, w, 0)
        txq_push(w, &hop.addr, frame - HEADER_LEN, n + HEADER_LEN)
    p.counts[w.index].tx_frames += 1
    p.counts[w.index].tx_bytes += n


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void tap_flood(pump_t *pump, worker_t *w, uint8_t *frame, size_t n, uint8_t flags) noexcept nogil:
    """One copy per routable peer with flood set, in peer-array order. Plain copies share
    the frame and take a header each (two iovecs); sealed copies go to the copy arena."""
    cdef uint32_t i
    cdef unsigned int tx
    cdef uint8_t *hdr
    cdef uint8_t *copy
    cdef peer_t *p
    cdef peer_t *hop
    cdef size_t need = n + SEALED_HEADER_LEN + TAG_LEN
    for i in range(pump.n_peers):
        p = &pump.peers[i]
        if not p.flood:
            continue
        hop = peer_hop(pump, p)
        if hop == NULL:
            continue
        if pump.crypto:
            txq_make_room(pump, w, need)
            copy = w.txq.copy_arena + w.txq.copy_used
            if not peer_seal(pump, w, hop, copy, frame, n, flags, DEFAULT_TTL, pump.local_id, p.id):
                continue
            w.txq.copy_used += need
            txq_push(w, &hop.addr, copy, need)
        else:
            txq_make_room(pump, w, 0)
            tx = w.txq.len
            hdr = w.txq.hdr + <size_t>tx * HEADER_LEN
            put_header(hdr, flags, DEFAULT_TTL, pump.local_id, p.id)
            txq_push(w, &hop.addr, hdr, HEADER_LEN)
            w.txq.iov[2 * tx + 1].iov_base = frame
            w.txq.iov[2 * tx + 1].iov_len = n
            w.txq.size[tx] = <uint32_t>(n + HEADER_LEN)
        w.counters[FLOOD_TX] += 1
        p.counts[w.index].tx_frames += 1
        p.counts[w.index].tx_bytes += n


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
