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


cdef inline void fnv_bytes(const uint8_t *p, size_t n, uint32_t *h) noexcept nogil:
    cdef size_t i
    for i in range(n):
        h[0] = (h[0] ^ p[i]) * <uint32_t>0x01000193


cdef inline uint8_t endpoints_hint(const uint8_t *a, const uint8_t *b, size_t alen,
                                   const uint8_t *pa, const uint8_t *pb, uint8_t proto) noexcept nogil:
    """FNV-1a over the lower endpoint (address + port), the higher, the protocol; pa and pb
    NULL when there are no ports."""
    cdef uint32_t h = 0x811C9DC5
    cdef int order = memcmp(a, b, alen)
    if order == 0 and pa != NULL:
        order = memcmp(pa, pb, 2)
    if order > 0:
        a, b, pa, pb = b, a, pb, pa
    fnv_bytes(a, alen, &h)
    if pa != NULL:
        fnv_bytes(pa, 2, &h)
    fnv_bytes(b, alen, &h)
    if pb != NULL:
        fnv_bytes(pb, 2, &h)
    fnv_bytes(&proto, 1, &h)
    return <uint8_t>((h * <uint32_t>0x9E3779B1) >> 27)


cdef inline uint8_t flow_hint(const uint8_t *f, size_t n) noexcept nogil:
    """Flags bits 3-7 of every datagram of frame f (the rule: layout.flow_hint)."""
    cdef size_t l4
    if n >= 34 and f[12] == 0x08 and f[13] == 0x00 and f[14] >> 4 == 4 and (f[14] & 0x0F) >= 5:
        l4 = ETH_HEADER_LEN + (f[14] & 0x0F) * 4
        if (f[23] == 6 or f[23] == 17) and (f[20] & 0x3F) == 0 and f[21] == 0 and n >= l4 + 4:
            return endpoints_hint(f + 26, f + 30, 4, f + l4, f + l4 + 2, f[23])
        return endpoints_hint(f + 26, f + 30, 4, NULL, NULL, f[23])
    if n >= 54 and f[12] == 0x86 and f[13] == 0xDD and f[14] >> 4 == 6:
        if (f[20] == 6 or f[20] == 17) and n >= 58:
            return endpoints_hint(f + 22, f + 38, 16, f + 54, f + 56, f[20])
        return endpoints_hint(f + 22, f + 38, 16, NULL, NULL, f[20])
    return 0
