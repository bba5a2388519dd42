# Writing frames to the TAP. With a virtio_net_hdr, consecutive segments of one TCP
# flow (or same-size datagrams of one UDP flow) from one peer are merged into one
# GSO_TCPV4/6 (GSO_UDP_L4) frame, written with writev() straight from the receive
# buffers; the receiving host's kernel cuts it back (docs/sleeve.md has the merge rules).
# The twin writes one frame per write(): this part is the compiled pump's alone.

cdef inline void gro_count_delivered(pump_t *pump, worker_t *w, uint32_t peer, uint64_t frames,
                                     uint64_t nbytes, bint ok) noexcept nogil:
    if ok:
        w.counters[TAP_TX] += frames
        w.counters[TAP_TX_BYTES] += nbytes
        pump.peers[peer].counts[w.index].rx_frames += frames
        pump.peers[peer].counts[w.index].rx_bytes += nbytes
    else:
        w.counters[DROP_TAP_WRITE] += frames


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void gro_deliver(pump_t *pump, worker_t *w, uint8_t *frame, size_t n, bint csum,
                      uint32_t peer) noexcept nogil:
    """Write a frame for us to the TAP (it has >= 12 bytes of headroom in front)."""
    cdef ssize_t written
    cdef uint32_t start = 0, offset = 0
    cdef uint8_t *vh
    if csum:
        l4_checksum_at(frame, n, &start, &offset)
    if not pump.vnet:
        if csum:
            complete_checksum(frame, n, start, offset)
        while True:
            written = write(w.tap_fd, frame, n)
            if written >= 0 or errno != EINTR:
                break
        gro_count_delivered(pump, w, peer, 1, n, written >= 0)
        return
    if csum and gro_add(pump, w, frame, n, peer, offset):
        return
    gro_flush(pump, w)
    vh = frame - VNET_HDR_LEN
    memset(vh, 0, VNET_HDR_LEN)
    if csum:
        vh[0] = VNET_F_NEEDS_CSUM
        store_le16(vh + 6, start)
        store_le16(vh + 8, offset)
    while True:
        written = write(w.tap_fd, vh, n + VNET_HDR_LEN)
        if written >= 0 or errno != EINTR:
            break
    gro_count_delivered(pump, w, peer, 1, n, written >= 0)


@cython.boundscheck(False)
@cython.wraparound(False)
cdef bint gro_add(pump_t *pump, worker_t *w, uint8_t *frame, size_t n, uint32_t peer,
                  uint32_t offset) noexcept nogil:
    """Take a TCP segment or UDP datagram (partial checksum at `offset`) into the
    pending GSO frame, flushing the pending one first when it does not continue it;
    False if it cannot be merged at all."""
    cdef gro_t *g = &w.gro
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
        if not g.udp_ok:
            return False
        thl = 8
    else:
        if not g.tcp_ok or n < l4 + 20:
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
    if g.active:
        h = g.head + VNET_HDR_LEN
        if (not g.closed and peer == g.peer and udp == g.udp
                and hl == g.hlen and v6 == g.v6 and plen <= g.mss
                and g.segs < GRO_MAX_SEGS
                and hl - ETH_HEADER_LEN + g.payload + plen <= 65535
                and (same_udp_flow(h, frame, l4, v6) if udp else
                     seq == g.next_seq and same_flow(h, frame, l4, thl, v6))):
            g.iov[1 + g.segs].iov_base = frame + hl
            g.iov[1 + g.segs].iov_len = plen
            g.segs += 1
            g.payload += plen
            g.next_seq = seq + plen
            g.last_flags = tflags
            if plen < g.mss or tflags & 0x09:
                g.closed = True
            return True
        gro_flush(pump, w)
    memcpy(g.head + VNET_HDR_LEN, frame, hl)
    g.active = True
    g.udp = udp
    g.v6 = v6
    g.hlen = hl
    g.l4 = l4
    g.mss = plen
    g.next_seq = seq + plen
    g.payload = plen
    g.segs = 1
    g.peer = peer
    g.last_flags = tflags
    g.closed = (tflags & 0x09) != 0
    g.iov[1].iov_base = frame + hl
    g.iov[1].iov_len = plen
    return True


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void gro_flush(pump_t *pump, worker_t *w) noexcept nogil:
    cdef gro_t *g = &w.gro
    cdef uint8_t *vh = g.head
    cdef uint8_t *h = g.head + VNET_HDR_LEN
    cdef uint32_t l4 = g.l4
    cdef uint32_t l4_len
    cdef ssize_t written
    if not g.active:
        return
    g.active = False
    memset(vh, 0, VNET_HDR_LEN)
    vh[0] = VNET_F_NEEDS_CSUM
    store_le16(vh + 6, l4)
    store_le16(vh + 8, 6 if g.udp else 16)
    if g.segs > 1:
        l4_len = g.hlen - l4 + g.payload
        if g.v6:
            store_be16(h + 18, l4_len)
        else:
            store_be16(h + 16, l4 - ETH_HEADER_LEN + l4_len)
            ipv4_header_checksum(h + ETH_HEADER_LEN, l4 - ETH_HEADER_LEN)
        if g.udp:
            store_be16(h + l4 + 4, l4_len)
            store_be16(h + l4 + 6, pseudo_sum(h, l4_len, 17))
            vh[1] = VNET_GSO_UDP_L4
        else:
            h[l4 + 13] |= g.last_flags & 0x09
            store_be16(h + l4 + 16, pseudo_sum(h, l4_len, 6))
            vh[1] = VNET_GSO_TCPV6 if g.v6 else VNET_GSO_TCPV4
        store_le16(vh + 2, g.hlen)
        store_le16(vh + 4, g.mss)
    g.iov[0].iov_base = vh
    g.iov[0].iov_len = VNET_HDR_LEN + g.hlen
    while True:
        written = writev(w.tap_fd, g.iov, <int>(1 + g.segs))
        if written >= 0 or errno != EINTR:
            break
    if written < 0 and errno == EINVAL and g.segs > 1:
        # this kernel's TAP refuses such GSO frames: stop merging that kind
        if g.udp:
            g.udp_ok = False
        else:
            g.tcp_ok = False
    gro_count_delivered(pump, w, g.peer, g.segs, <uint64_t>g.segs * g.hlen + g.payload,
                        written >= 0)
    if written >= 0 and g.segs > 1:
        w.counters[GRO_FRAMES] += 1
        w.counters[GRO_SEGMENTS] += g.segs


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
