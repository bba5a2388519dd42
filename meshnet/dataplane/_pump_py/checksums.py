"""Checksums of inner packets and the CSUM rule (docs/sleeve.md, "CSUM").

Pure functions on bytes; the compiled pump's `_fastpath/checksums.pxi` does the same
arithmetic on C buffers.
"""

from __future__ import annotations

import struct

from meshnet.dataplane.layout import ETH_HEADER_LEN


def csum_add(data: bytes, start: int = 0) -> int:
    """Ones' complement sum (not folded to 16 bits) of data, big-endian 16-bit words."""
    if len(data) & 1:
        data = data + b"\0"
    return start + sum(struct.unpack(f"!{len(data) // 2}H", data))


def csum_fold(total: int) -> int:
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def pseudo_sum(frame: bytes, l4_len: int, proto: int) -> int:
    """Folded pseudo-header sum of the IPv4/IPv6 packet in frame, for an L4 of l4_len."""
    if frame[12:14] == b"\x08\x00":
        total = csum_add(frame[26:34]) + proto + l4_len
    else:
        total = csum_add(frame[22:54]) + proto + l4_len
    return csum_fold(total)


def l4_checksum_at(frame: bytes) -> tuple[int, int] | None:
    """(csum_start, csum_offset) of the inner TCP/UDP checksum as the receiver of a CSUM
    datagram locates it: L4 right after an IPv4 header (ihl) or a fixed IPv6 header, next
    protocol TCP (offset 16) or UDP (offset 6), the field inside the frame. Else None."""
    if len(frame) < ETH_HEADER_LEN + 20:
        return None
    ethertype = frame[12:14]
    if ethertype == b"\x08\x00":
        ihl = (frame[14] & 0x0F) * 4
        if frame[14] >> 4 != 4 or ihl < 20:
            return None
        start, proto = ETH_HEADER_LEN + ihl, frame[23]
    elif ethertype == b"\x86\xdd":
        if len(frame) < ETH_HEADER_LEN + 40 or frame[14] >> 4 != 6:
            return None
        start, proto = ETH_HEADER_LEN + 40, frame[20]
    else:
        return None
    offset = {6: 16, 17: 6}.get(proto)
    if offset is None or start + offset + 2 > len(frame):
        return None
    return start, offset


def complete_checksum(frame: bytes, start: int, offset: int) -> bytes:
    """Finish a partial checksum the NEEDS_CSUM way: fold the sum of frame[start:] (whose
    checksum field holds the pseudo-header sum) and store its complement (0 -> 0xFFFF)."""
    value = (~csum_fold(csum_add(frame[start:]))) & 0xFFFF or 0xFFFF
    at = start + offset
    return frame[:at] + value.to_bytes(2, "big") + frame[at + 2 :]


def ipv4_header_checksum(header: bytearray) -> None:
    """Recompute the checksum of the IPv4 header in place."""
    header[10:12] = b"\0\0"
    header[10:12] = ((~csum_fold(csum_add(bytes(header)))) & 0xFFFF).to_bytes(2, "big")
