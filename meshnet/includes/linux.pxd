"""Linux and pthread declarations the sleeve pump needs that Cython does not ship."""

from posix.time cimport timespec
from posix.uio cimport iovec
from libc.stdint cimport uint16_t, uint32_t


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

# The stop flag is written by one thread and read by the pump loop without the GIL.
cdef extern from *:
    """
    static inline int mn_load_flag(int *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline void mn_store_flag(int *p, int v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    """
    int mn_load_flag(int *p) noexcept nogil
    void mn_store_flag(int *p, int v) noexcept nogil
