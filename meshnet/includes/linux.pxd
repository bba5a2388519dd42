"""Linux and pthread declarations the sleeve pump needs that Cython does not ship."""

from posix.time cimport timespec
from posix.uio cimport iovec
from libc.stdint cimport uint16_t, uint32_t, uint64_t


cdef extern from "<poll.h>" nogil:
    ctypedef unsigned long nfds_t
    struct pollfd:
        int fd
        short events
        short revents
    enum:
        POLLIN
        POLLNVAL
    int poll(pollfd *fds, nfds_t nfds, int timeout)

cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    ctypedef unsigned short sa_family_t
    struct msghdr:
        void *msg_name
        socklen_t msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags
    struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len
    struct cmsghdr:
        size_t cmsg_len
        int cmsg_level
        int cmsg_type
    cmsghdr *CMSG_FIRSTHDR(msghdr *msg)
    cmsghdr *CMSG_NXTHDR(msghdr *msg, cmsghdr *cmsg)
    unsigned char *CMSG_DATA(cmsghdr *cmsg)
    size_t CMSG_SPACE(size_t length)
    size_t CMSG_LEN(size_t length)
    enum:
        AF_INET
        SOCK_DGRAM
        SOL_SOCKET
        SO_DOMAIN
        SO_TYPE
        MSG_DONTWAIT
    int getsockopt(int fd, int level, int name, void *value, socklen_t *length)
    int setsockopt(int fd, int level, int name, const void *value, socklen_t length)
    int recvmmsg(int fd, mmsghdr *msgs, unsigned int vlen, int flags, timespec *timeout)
    int sendmmsg(int fd, mmsghdr *msgs, unsigned int vlen, int flags)

cdef extern from "<netinet/in.h>" nogil:
    struct in_addr:
        uint32_t s_addr
    struct sockaddr_in:
        sa_family_t sin_family
        uint16_t sin_port
        in_addr sin_addr
    uint16_t htons(uint16_t)
    enum:
        IPPROTO_UDP

cdef extern from "<sys/uio.h>" nogil:
    ssize_t writev(int fd, const iovec *iov, int iovcnt)

# The UDP GSO/GRO socket options, with their kernel values where the libc headers are
# older than the kernel (control messages only: meshnet.kernel.offload turns them on).
cdef extern from *:
    """
    #include <netinet/udp.h>
    #ifndef UDP_SEGMENT
    #define UDP_SEGMENT 103
    #endif
    #ifndef UDP_GRO
    #define UDP_GRO 104
    #endif
    """
    enum:
        UDP_SEGMENT
        UDP_GRO

cdef extern from "<sys/eventfd.h>" nogil:
    enum:
        EFD_NONBLOCK
        EFD_CLOEXEC
    int eventfd(unsigned int initval, int flags)

cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    int pthread_mutex_init(pthread_mutex_t *mutex, const void *attr)
    int pthread_mutex_destroy(pthread_mutex_t *mutex)
    int pthread_mutex_lock(pthread_mutex_t *mutex)
    int pthread_mutex_unlock(pthread_mutex_t *mutex)
    ctypedef struct pthread_rwlock_t:
        pass
    int pthread_rwlock_destroy(pthread_rwlock_t *lock)
    int pthread_rwlock_rdlock(pthread_rwlock_t *lock)
    int pthread_rwlock_wrlock(pthread_rwlock_t *lock)
    int pthread_rwlock_unlock(pthread_rwlock_t *lock)

# A reader/writer lock that lets a waiting writer in before new readers (glibc's
# PREFER_WRITER_NONRECURSIVE): pump threads hold it to read for a batch each, so a
# control method waits one batch at most instead of for a pause in the traffic.
cdef extern from *:
    """
    #include <pthread.h>
    static int mn_rwlock_init(pthread_rwlock_t *lock) {
        pthread_rwlockattr_t attr;
        int err = pthread_rwlockattr_init(&attr);
        if (err) return err;
        pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
        err = pthread_rwlock_init(lock, &attr);
        pthread_rwlockattr_destroy(&attr);
        return err;
    }
    """
    int mn_rwlock_init(pthread_rwlock_t *lock) noexcept nogil

# The stop flag is written by one thread and read by the pump loop without the GIL.
cdef extern from *:
    """
    static inline int mn_load_flag(int *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline void mn_store_flag(int *p, int v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    """
    int mn_load_flag(int *p) noexcept nogil
    void mn_store_flag(int *p, int v) noexcept nogil

# Values several pump threads share: a MAC entry's stamp, a send key's counter, a
# replay window's lock. Relaxed where only atomicity matters, acquire/release for the lock.
cdef extern from *:
    """
    static inline uint64_t mn_load_u64(uint64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
    static inline void mn_store_u64(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
    static inline uint64_t mn_fetch_add_u64(uint64_t *p, uint64_t v) {
        return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
    }
    static inline void mn_spin_lock(int *p) {
        while (__atomic_exchange_n(p, 1, __ATOMIC_ACQUIRE))
            while (__atomic_load_n(p, __ATOMIC_RELAXED)) {
    #if defined(__x86_64__) || defined(__i386__)
                __builtin_ia32_pause();
    #endif
            }
    }
    static inline void mn_spin_unlock(int *p) { __atomic_store_n(p, 0, __ATOMIC_RELEASE); }
    """
    uint64_t mn_load_u64(uint64_t *p) noexcept nogil
    void mn_store_u64(uint64_t *p, uint64_t v) noexcept nogil
    uint64_t mn_fetch_add_u64(uint64_t *p, uint64_t v) noexcept nogil
    void mn_spin_lock(int *p) noexcept nogil
    void mn_spin_unlock(int *p) noexcept nogil
