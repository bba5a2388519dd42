# The loop: wait for the TAP fd, the UDP fd or the wake eventfd, then handle one batch
# per ready fd with the table mutex held, so table changes land between batches; read
# the clock first, and age a few MAC table slots after (an idle run() wakes up for that
# while learned MACs exist). Errors are ints here: -1 with pump.error set;
# Pump.poll()/run() raise them. The twin's counterpart is in _pump_py/pump.py.

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


cdef void pump_clock(pump_t *pump) noexcept nogil:
    """pump.now: whole seconds of CLOCK_MONOTONIC (or the value a test froze). [lock]"""
    pump.now = pump.frozen_clock if pump.frozen_clock >= 0 else monotonic_ns() // 1000000000


cdef int pump_poll_once(pump_t *pump, int timeout) noexcept nogil:
    """Wait, then handle one batch per ready fd; frames handled, or -1 and pump.error."""
    cdef pollfd fds[3]
    cdef uint64_t drained
    cdef ssize_t got
    cdef int i, ready, handled = 0
    fds[0].fd = pump.tap_fd
    fds[1].fd = pump.udp_fd
    fds[2].fd = pump.wake_fd
    for i in range(3):
        fds[i].events = POLLIN
        fds[i].revents = 0
    ready = poll(fds, 3, timeout)
    if ready < 0:
        if errno == EINTR:
            return 0
        pump.error = errno
        return -1
    if ready == 0:
        if pump.has_learned:  # idle: age a larger stretch of the MAC table
            pthread_mutex_lock(&pump.lock)
            pump_clock(pump)
            mac_sweep(pump, IDLE_SWEEP_SLOTS)
            pump.has_learned = pump.macs.learned != 0
            pthread_mutex_unlock(&pump.lock)
        return 0
    if (fds[0].revents | fds[1].revents | fds[2].revents) & POLLNVAL:
        pump.error = EBADF
        return -1
    if fds[2].revents:
        got = read(pump.wake_fd, &drained, sizeof(drained))
    pthread_mutex_lock(&pump.lock)
    pump_clock(pump)
    if fds[0].revents:
        handled = tap_batch(pump)
    if fds[1].revents and handled >= 0:
        handled += udp_batch(pump)
    mac_sweep(pump, SWEEP_SLOTS)
    pump.has_learned = pump.macs.learned != 0
    pthread_mutex_unlock(&pump.lock)
    return handled


cdef int pump_run(pump_t *pump) noexcept nogil:
    """Iterate until stop(); 0, or -1 and pump.error. Clears the stop flag on return."""
    cdef int handled = 0
    cdef int64_t now, spin_until = 0
    cdef int idle
    while not mn_load_flag(&pump.stopping):
        idle = IDLE_AGEING_MS if pump.has_learned else -1  # learned MACs must age
        # After traffic, look again without sleeping for spin_us: a reply or the next
        # burst is then picked up without a wake-up (latency), for that much CPU.
        if pump.spin_ns:
            now = monotonic_ns()
            handled = pump_poll_once(pump, 0 if now < spin_until else idle)
            if handled > 0:
                spin_until = monotonic_ns() + pump.spin_ns
        else:
            handled = pump_poll_once(pump, idle)
        if handled < 0:
            break
    mn_store_flag(&pump.stopping, 0)
    return -1 if handled < 0 else 0
