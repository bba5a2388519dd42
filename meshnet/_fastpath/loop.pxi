# The loop of one worker (one pump thread): wait for its TAP fd, its UDP fd or its wake
# eventfd, then handle one batch per ready fd with the table lock held to read, so table
# changes land between batches; read the clock first; after each batch, apply the MAC
# table changes it noted (lock held to write), and let worker 0 age a stretch of the
# MAC table now and then (an idle worker 0 wakes up for that while learned MACs exist).
# Errors are ints here: -1 with w.error set; Pump.poll()/run() raise them.
# The twin's counterpart is in _pump_py/pump.py.

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


cdef int64_t clock_now(pump_t *pump) noexcept nogil:
    """Whole seconds of CLOCK_MONOTONIC, or the value a test froze (any lock held)."""
    return pump.frozen_clock if pump.frozen_clock >= 0 else monotonic_ns() // 1000000000


cdef void pump_clock(pump_t *pump) noexcept nogil:
    """pump.now, for a control method (lock held to write)."""
    pump.now = clock_now(pump)


cdef void worker_sync(pump_t *pump, worker_t *w) noexcept nogil:
    """Apply w's noted MAC changes in the middle of its batch (its list is full, or the
    TAP batch is over): between two frames, holding no table pointer, its merged frame
    written out first."""
    gro_flush(pump, w)
    pthread_rwlock_unlock(&pump.lock)
    pthread_rwlock_wrlock(&pump.lock)
    mac_apply(pump, w)
    pthread_rwlock_unlock(&pump.lock)
    pthread_rwlock_rdlock(&pump.lock)


cdef int pump_poll_once(pump_t *pump, worker_t *w, int timeout) noexcept nogil:
    """Wait, then handle one batch per ready fd; frames handled, or -1 and w.error."""
    cdef pollfd fds[3]
    cdef uint64_t drained
    cdef ssize_t got
    cdef int i, ready, handled = 0
    cdef bint sweep
    fds[0].fd = w.tap_fd
    fds[1].fd = w.udp_fd
    fds[2].fd = w.wake_fd
    for i in range(3):
        fds[i].events = POLLIN
        fds[i].revents = 0
    ready = poll(fds, 3, timeout)
    if ready < 0:
        if errno == EINTR:
            return 0
        w.error = errno
        return -1
    if ready == 0:
        if w.index == 0 and w.has_learned:  # idle: age a larger stretch of the MAC table
            pthread_rwlock_wrlock(&pump.lock)
            pump_clock(pump)
            mac_sweep(pump, IDLE_SWEEP_SLOTS)
            w.has_learned = pump.macs.learned != 0
            pthread_rwlock_unlock(&pump.lock)
        return 0
    if (fds[0].revents | fds[1].revents | fds[2].revents) & POLLNVAL:
        w.error = EBADF
        return -1
    if fds[2].revents:
        got = read(w.wake_fd, &drained, sizeof(drained))
    pthread_rwlock_rdlock(&pump.lock)
    w.now = clock_now(pump)
    if fds[0].revents:
        handled = tap_batch(pump, w)
        if w.n_pending:  # what the TAP side saw, before the UDP side reads the table
            worker_sync(pump, w)
    if fds[1].revents and handled >= 0:
        handled += udp_batch(pump, w)
    sweep = (w.index == 0 and pump.macs.learned != 0
             and monotonic_ns() - w.swept_at >= SWEEP_EVERY_NS)
    w.has_learned = pump.macs.learned != 0
    pthread_rwlock_unlock(&pump.lock)
    if w.n_pending or sweep:
        pthread_rwlock_wrlock(&pump.lock)
        mac_apply(pump, w)
        if sweep:
            mac_sweep(pump, SWEEP_SLOTS)
            w.swept_at = monotonic_ns()
        w.has_learned = pump.macs.learned != 0
        pthread_rwlock_unlock(&pump.lock)
    return handled


cdef int pump_run(pump_t *pump, worker_t *w) noexcept nogil:
    """Iterate until stop(); 0, or -1 and w.error. Clears w's stop flag on return."""
    cdef int handled = 0
    cdef int64_t now, spin_until = 0
    cdef int idle
    while not mn_load_flag(&w.stopping):
        idle = IDLE_AGEING_MS if w.index == 0 and w.has_learned else -1  # learned MACs age
        # After traffic, look again without sleeping for spin_us: a reply or the next
        # burst is then picked up without a wake-up (latency), for that much CPU.
        if pump.spin_ns:
            now = monotonic_ns()
            handled = pump_poll_once(pump, w, 0 if now < spin_until else idle)
            if handled > 0:
                spin_until = monotonic_ns() + pump.spin_ns
        else:
            handled = pump_poll_once(pump, w, idle)
        if handled < 0:
            break
    mn_store_flag(&w.stopping, 0)
    return -1 if handled < 0 else 0
