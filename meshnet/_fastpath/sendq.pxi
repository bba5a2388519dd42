# The send queue: up to `batch` datagrams, sent by one sendmmsg() when full and at the
# end of each read batch. Runs of same-size datagrams to one address and of one flow
# hint leave as one UDP_SEGMENT (GSO) message: a receiver steers a whole GSO message by
# its first datagram, so a run must not carry two flows' datagrams to two of its threads.
# A full socket (EAGAIN/ENOBUFS) drops the rest of a flush; any other error drops just
# that message. The twin's counterpart: _pump_py/sendq.py.

cdef inline void txq_make_room(pump_t *pump, worker_t *w, size_t copy_bytes) noexcept nogil:
    """Flush first if one more datagram (and copy_bytes of copy arena) would not fit."""
    if w.txq.len == pump.batch or w.txq.copy_used + copy_bytes > COPY_ARENA:
        txq_flush(pump, w)


cdef inline void txq_push(worker_t *w, const sockaddr_in *to, uint8_t *data,
                          size_t n) noexcept nogil:
    """Queue one datagram (room made before)."""
    cdef txq_t *q = &w.txq
    cdef unsigned int slot = q.len
    q.len += 1
    q.addr[slot] = to[0]
    q.iov[2 * slot].iov_base = data
    q.iov[2 * slot].iov_len = n
    q.iov[2 * slot + 1].iov_base = NULL
    q.iov[2 * slot + 1].iov_len = 0
    q.size[slot] = <uint32_t>n


cdef inline uint8_t datagram_hint(const txq_t *q, unsigned int k) noexcept nogil:
    """Entry k's flow hint (its header starts its first iovec)."""
    return (<const uint8_t *>q.iov[2 * k].iov_base)[2] >> HINT_SHIFT


cdef void txq_flush(pump_t *pump, worker_t *w) noexcept nogil:
    cdef txq_t *q = &w.txq
    cdef unsigned int i = 0, j, g, n_msgs = 0, first, k
    cdef uint32_t size, total
    cdef int sent
    cdef cmsghdr *cm
    cdef mmsghdr *m
    # Group runs of same-size datagrams to one address (the last may be shorter).
    while i < q.len:
        j = i + 1
        size = q.size[i]
        if q.gso and size <= q.gso_max:
            total = size
            while (j < q.len and j - i < GSO_MAX_SEGMENTS
                    and q.size[j] <= size and total + q.size[j] <= GSO_MAX_BYTES
                    and q.addr[j].sin_addr.s_addr == q.addr[i].sin_addr.s_addr
                    and q.addr[j].sin_port == q.addr[i].sin_port
                    and datagram_hint(q, j) == datagram_hint(q, i)):
                total += q.size[j]
                j += 1
                if q.size[j - 1] < size:
                    break
        m = &q.msgs[n_msgs]
        m.msg_hdr.msg_name = &q.addr[i]
        m.msg_hdr.msg_namelen = sizeof(sockaddr_in)
        m.msg_hdr.msg_iov = &q.iov[2 * i]
        m.msg_hdr.msg_iovlen = 2 * (j - i)
        m.msg_hdr.msg_flags = 0
        if j - i > 1:
            m.msg_hdr.msg_control = q.cmsg + <size_t>n_msgs * TX_CMSG
            m.msg_hdr.msg_controllen = CMSG_SPACE(sizeof(uint16_t))
            cm = CMSG_FIRSTHDR(&m.msg_hdr)
            cm.cmsg_level = IPPROTO_UDP
            cm.cmsg_type = UDP_SEGMENT
            cm.cmsg_len = CMSG_LEN(sizeof(uint16_t))
            (<uint16_t *>CMSG_DATA(cm))[0] = <uint16_t>size
        else:
            m.msg_hdr.msg_control = NULL
            m.msg_hdr.msg_controllen = 0
        q.first[n_msgs] = i
        n_msgs += 1
        i = j
    q.first[n_msgs] = q.len
    g = 0
    while g < n_msgs:
        sent = sendmmsg(w.udp_fd, q.msgs + g, n_msgs - g, MSG_DONTWAIT)
        if sent < 0:
            if errno == EINTR:
                continue
            if errno == EAGAIN or errno == ENOBUFS:  # the rest would fail too
                w.counters[DROP_SEND_ERROR] += q.len - q.first[g]
                break
            first = q.first[g]
            if q.first[g + 1] - first > 1 and (errno == EINVAL or errno == EIO):
                q.gso = False  # the path refuses GSO: stop using it
                q.gso_failed = errno
            # this message only: skip it
            w.counters[DROP_SEND_ERROR] += q.first[g + 1] - first
            g += 1
            continue
        for k in range(q.first[g], q.first[g + <unsigned int>sent]):
            w.counters[UDP_TX] += 1
            w.counters[UDP_TX_BYTES] += q.size[k]
        g += <unsigned int>sent
    q.len = 0
    q.copy_used = 0
    if not w.tap.in_segment:
        w.tap.seg_used = 0
