# Byte order and the sleeve header: small inline helpers every part uses.
# Big-endian (network order) for the datagram, little-endian for the virtio_net_hdr.

cdef inline uint16_t load_be16(const uint8_t *p) noexcept nogil:
    return <uint16_t>((p[0] << 8) | p[1])


cdef inline void store_be16(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = (v >> 8) & 0xFF
    p[1] = v & 0xFF


cdef inline uint32_t load_be32(const uint8_t *p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline void store_be32(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = v >> 24
    p[1] = (v >> 16) & 0xFF
    p[2] = (v >> 8) & 0xFF
    p[3] = v & 0xFF


cdef inline uint64_t load_be64(const uint8_t *p) noexcept nogil:
    return (<uint64_t>load_be32(p) << 32) | load_be32(p + 4)


cdef inline void store_be64(uint8_t *p, uint64_t v) noexcept nogil:
    store_be32(p, <uint32_t>(v >> 32))
    store_be32(p + 4, <uint32_t>v)


cdef inline uint16_t load_le16(const uint8_t *p) noexcept nogil:
    return <uint16_t>(p[0] | (p[1] << 8))


cdef inline void store_le16(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = v & 0xFF
    p[1] = (v >> 8) & 0xFF


cdef inline void put_header(uint8_t *p, uint8_t flags, uint8_t ttl, uint32_t src,
                            uint32_t dst) noexcept nogil:
    p[0] = VERSION
    p[1] = TYPE_FRAME
    p[2] = flags
    p[3] = ttl
    store_be32(p + 4, src)
    store_be32(p + 8, dst)
