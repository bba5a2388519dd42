# Workers: one pump thread's state, its fds (a TAP queue and a UDP socket of the
# SO_REUSEPORT group, or the TAP and the socket when there is one worker), its buffers,
# all allocated here once, and its counts. The tables are the pump's, shared by all
# workers (pump_t, behind pump.lock). The twin has one thread and no worker_t.

cdef int worker_init(pump_t *pump, worker_t *w, unsigned int index, int tap_fd, int udp_fd,
                     bint gso) noexcept nogil:
    """Set up worker `index` on these fds: 0, or -1 (out of memory or eventfds)."""
    cdef unsigned int i
    cdef unsigned int batch = pump.batch
    w.index = index
    w.tap_fd = tap_fd
    w.udp_fd = udp_fd
    w.wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
    w.txq.gso = gso
    w.txq.gso_max = (pump.underlay_mtu if pump.underlay_mtu else 1500) - IP_UDP_HEADERS
    w.gro.tcp_ok = True
    w.gro.udp_ok = True
    w.pending = <mac_op_t *>calloc(PENDING_MAX, sizeof(mac_op_t))
    w.tap.slots = <uint8_t *>malloc(<size_t>batch * TAP_SLOT)
    w.udp.slots = <uint8_t *>malloc(<size_t>batch * UDP_SLOT)
    w.udp.msgs = <mmsghdr *>calloc(batch, sizeof(mmsghdr))
    w.udp.iov = <iovec *>calloc(batch, sizeof(iovec))
    w.udp.addr = <sockaddr_in *>calloc(batch, sizeof(sockaddr_in))
    w.udp.cmsg = <uint8_t *>calloc(batch, RX_CMSG)
    w.txq.iov = <iovec *>calloc(2 * batch, sizeof(iovec))
    w.txq.addr = <sockaddr_in *>calloc(batch, sizeof(sockaddr_in))
    w.txq.size = <uint32_t *>calloc(batch, sizeof(uint32_t))
    w.txq.hdr = <uint8_t *>calloc(batch, HEADER_LEN)
    w.txq.msgs = <mmsghdr *>calloc(batch, sizeof(mmsghdr))
    w.txq.first = <uint32_t *>calloc(batch + 1, sizeof(uint32_t))
    w.txq.cmsg = <uint8_t *>calloc(batch, TX_CMSG)
    w.tap.seg_arena = <uint8_t *>malloc(SEG_ARENA)
    w.txq.copy_arena = <uint8_t *>malloc(COPY_ARENA)
    w.gro.head = <uint8_t *>calloc(1, GRO_HEAD)
    w.gro.iov = <iovec *>calloc(GRO_MAX_SEGS + 1, sizeof(iovec))
    w.tap.scratch = <uint8_t *>calloc(1, SCRATCH)
    if (w.wake_fd < 0 or w.pending == NULL or w.tap.slots == NULL or w.udp.slots == NULL
            or w.udp.msgs == NULL or w.udp.iov == NULL or w.udp.addr == NULL
            or w.udp.cmsg == NULL or w.txq.iov == NULL or w.txq.addr == NULL
            or w.txq.size == NULL or w.txq.hdr == NULL or w.txq.msgs == NULL
            or w.txq.first == NULL or w.txq.cmsg == NULL
            or w.tap.seg_arena == NULL or w.txq.copy_arena == NULL
            or w.gro.head == NULL or w.gro.iov == NULL or w.tap.scratch == NULL):
        return -1
    for i in range(batch):
        w.udp.iov[i].iov_base = w.udp.slots + <size_t>i * UDP_SLOT
        w.udp.iov[i].iov_len = UDP_SLOT
        w.udp.msgs[i].msg_hdr.msg_iov = &w.udp.iov[i]
        w.udp.msgs[i].msg_hdr.msg_iovlen = 1
        w.udp.msgs[i].msg_hdr.msg_name = &w.udp.addr[i]
    return 0


cdef void worker_close(worker_t *w) noexcept nogil:
    """Release the worker's own fd (not the TAP's nor the socket)."""
    if w.wake_fd >= 0:
        close(w.wake_fd)
        w.wake_fd = -1


cdef void worker_free(worker_t *w) noexcept nogil:
    worker_close(w)
    free(w.pending)
    free(w.tap.slots)
    free(w.udp.slots)
    free(w.udp.msgs)
    free(w.udp.iov)
    free(w.udp.addr)
    free(w.udp.cmsg)
    free(w.txq.iov)
    free(w.txq.addr)
    free(w.txq.size)
    free(w.txq.hdr)
    free(w.txq.msgs)
    free(w.txq.first)
    free(w.txq.cmsg)
    free(w.tap.seg_arena)
    free(w.txq.copy_arena)
    free(w.gro.head)
    free(w.gro.iov)
    free(w.tap.scratch)


cdef void worker_wake(worker_t *w) noexcept nogil:
    """stop(): from any thread, make the worker's run() return."""
    cdef uint64_t one = 1
    cdef ssize_t written
    mn_store_flag(&w.stopping, 1)
    if w.wake_fd >= 0:
        written = write(w.wake_fd, &one, sizeof(one))
