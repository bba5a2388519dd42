# Byte order, the sleeve header and the flow hint: small inline helpers every part uses.
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


cdef inline uint8_t fnv_bytes(const uint8_t *p, size_t n, uint32_t *h) noexcept nogil:
    cdef size_t i
    for i in range(n):
        h[0] = (h[0] ^ p[i]) * <uint32_t>0x01000193
    return 0


cdef inline uint8_t flow_hint(const uint8_t *f, size_t n) noexcept nogil:
    """Flags bits 3-7 of every datagram of frame f (the rule: layout.flow_hint)."""
    cdef uint32_t h = 0x811C9DC5
    cdef size_t l4
    if n >= 34 and f[12] == 0x08 and f[13] == 0x00 and f[14] >> 4 == 4 and (f[14] & 0x0F) >= 5:
        l4 = ETH_HEADER_LEN + (f[14] & 0x0F) * 4
        fnv_bytes(f + 26, 8, &h)
        fnv_bytes(f + 23, 1, &h)
        if (f[23] == 6 or f[23] == 17) and (f[20] & 0x3F) == 0 and f[21] == 0 and n >= l4 + 4:
            fnv_bytes(f + l4, 4, &h)
    elif n >= 54 and f[12] == 0x86 and f[13] == 0xDD and f[14] >> 4 == 6:
        fnv_bytes(f + 22, 32, &h)
        fnv_bytes(f + 20, 1, &h)
        if (f[20] == 6 or f[20] == 17) and n >= 58:
            fnv_bytes(f + 54, 4, &h)
    else:
        return 0
    return <uint8_t>((h * <uint32_t>0x9E3779B1) >> 27)
