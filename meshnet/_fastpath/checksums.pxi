# Checksums of inner packets and the CSUM rule (docs/sleeve.md, "CSUM"): the same
# arithmetic as the twin's meshnet/dataplane/_pump_py/checksums.py.

@cython.boundscheck(False)
@cython.wraparound(False)
cdef uint64_t csum_add(const uint8_t *p, size_t n, uint64_t total) noexcept nogil:
    """Ones' complement sum (unfolded) of big-endian 16-bit words; an odd byte is padded."""
    while n >= 8:
        total += ((<uint64_t>p[0] << 8) | p[1]) + ((<uint64_t>p[2] << 8) | p[3]) \
            + ((<uint64_t>p[4] << 8) | p[5]) + ((<uint64_t>p[6] << 8) | p[7])
        p += 8
        n -= 8
    while n >= 2:
        total += (<uint64_t>p[0] << 8) | p[1]
        p += 2
        n -= 2
    if n:
        total += <uint64_t>p[0] << 8
    return total


cdef inline uint32_t csum_fold(uint64_t total) noexcept nogil:
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return <uint32_t>total


cdef inline uint32_t pseudo_sum(const uint8_t *frame, uint32_t l4_len, uint32_t proto) noexcept nogil:
    if frame[12] == 0x08 and frame[13] == 0x00:
        return csum_fold(csum_add(frame + 26, 8, proto + l4_len))
    return csum_fold(csum_add(frame + 22, 32, proto + l4_len))


cdef inline void ipv4_header_checksum(uint8_t *ip, uint32_t ihl) noexcept nogil:
    ip[10] = 0
    ip[11] = 0
    store_be16(ip + 10, (~csum_fold(csum_add(ip, ihl, 0))) & 0xFFFF)


cdef bint l4_checksum_at(const uint8_t *frame, size_t n, uint32_t *start,
                         uint32_t *offset) noexcept nogil:
    """Where a CSUM datagram's receiver finds the inner TCP/UDP checksum (see the twin)."""
    cdef uint32_t s, proto, off
    if n < ETH_HEADER_LEN + 20:
        return False
    if frame[12] == 0x08 and frame[13] == 0x00:
        if frame[14] >> 4 != 4 or (frame[14] & 0x0F) < 5:
            return False
        s = ETH_HEADER_LEN + (frame[14] & 0x0F) * 4
        proto = frame[23]
    elif frame[12] == 0x86 and frame[13] == 0xDD:
        if n < ETH_HEADER_LEN + 40 or frame[14] >> 4 != 6:
            return False
        s = ETH_HEADER_LEN + 40
        proto = frame[20]
    else:
        return False
    if proto == 6:
        off = 16
    elif proto == 17:
        off = 6
    else:
        return False
    if s + off + 2 > n:
        return False
    start[0] = s
    offset[0] = off
    return True


cdef inline void complete_checksum(uint8_t *frame, size_t n, uint32_t start,
                                   uint32_t offset) noexcept nogil:
    cdef uint32_t value = (~csum_fold(csum_add(frame + start, n - start, 0))) & 0xFFFF
    store_be16(frame + start + offset, value if value else 0xFFFF)
