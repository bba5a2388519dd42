"""The sleeve datagram format and the overhead arithmetic behind the overlay MTU.

docs/sleeve.md describes it byte by byte, with the rules both pumps follow and the golden
vectors in tests/data/ that freeze it. In short, one UDP datagram (sleeve, UDP 6783)
carries one inner Ethernet frame::

     0        1        2        3
    +--------+--------+--------+--------+
    | ver=2  |  type  | flags  |  ttl   |      flags: 0x01 SEALED, 0x02 KEY_ID,
    +--------+--------+--------+--------+             0x04 CSUM; bits 3-7 the flow hint
    |        src peer id (u32, BE)      |             (for steering; kept by relays)
    +-----------------------------------+
    |        dst peer id (u32, BE)      |   0xFFFFFFFF never appears: floods are
    +-----------------------------------+   sent as one copy per destination
    | SEALED only: counter (u64, BE)    |   AEAD nonce = 4 zero bytes || counter
    +-----------------------------------+
    | inner Ethernet frame (dst MAC, src MAC, ethertype, payload) ...
    |   (SEALED: encrypted; bytes 0..20 above are the associated data)
    +-----------------------------------+
    | SEALED only: tag (16 bytes)       |
    +-----------------------------------+

`src` is the peer whose TAP the frame entered, `dst` the peer whose TAP it must leave
by; a peer that is neither relays it towards `dst` (multi-hop) after decrementing `ttl`.
Encryption is hop by hop: a datagram is sealed with the key of the link it crosses (the
sender's send key for the next hop) and a relay opens and re-seals it. KEY_ID is the low
bit of the epoch of the key that sealed it. CSUM says the inner TCP/UDP checksum field
holds only the pseudo-header sum (virtio_net_hdr NEEDS_CSUM semantics); the receiver
locates the field from the inner IPv4/IPv6 header and completes it (or lets its TAP do it).
Peer ids are the low 32 bits of the 128-bit peer name (see docs/protocol.md).
Version 1 (no counter, no tag, flags ignored) is not accepted any more.

Overlay MTU: both data paths must fit the same inner packet, so the MTU is derived from
the underlay MTU minus the largest overhead of any mode we may pick for a peer::

    outer IPv4 20 + UDP 8 + sleeve header 12 + AEAD (counter 8 + tag 16) + inner Ethernet 14
    = 78 bytes, against kernel VXLAN's 20 + 8 + 8 + 14 = 50.

Every integer constant here is also a C constant of the compiled pump: the build
generates them from this file (`meshnet/dataplane/pxi.py`), so this is their only copy.
"""

VERSION = 2

TYPE_FRAME = 1  # an Ethernet frame for the dst peer's TAP
TYPE_PROBE = 2  # reserved: data-path health probe (sleeve / fastdp checks)

HEADER_LEN = 12  # bytes of sleeve header before the inner frame
ETH_HEADER_LEN = 14  # dst MAC, src MAC, ethertype
MIN_DATAGRAM = HEADER_LEN + ETH_HEADER_LEN
DEFAULT_TTL = 8  # hops a relayed frame may take before it is dropped

FLAG_SEALED = 0x01  # counter after the header, frame encrypted, tag at the end
FLAG_KEY_ID = 0x02  # epoch & 1 of the key that sealed the datagram
FLAG_CSUM = 0x04  # the inner L4 checksum is partial (pseudo-header sum only)
HINT_SHIFT = 3  # bits 3-7: the flow hint (`flow_hint`), for receivers that steer by it
HINT_MASK = 0x1F
COUNTER_LEN = 8
TAG_LEN = 16
SEALED_HEADER_LEN = HEADER_LEN + COUNTER_LEN  # the associated data
MIN_SEALED = SEALED_HEADER_LEN + ETH_HEADER_LEN + TAG_LEN
KEY_LEN = 32
AEAD = "AES-256-GCM"  # picked by measurement: docs/benchmarks.md (AEAD choice)
# Counters this far below the highest seen are still accepted once. Wide, because a
# receiver's pump threads open one peer's datagrams in parallel (each flow on one
# thread): one thread can be a few batches of up to 64 x 64 coalesced datagrams ahead
# of another.
REPLAY_WINDOW = 1 << 14
# Usage limits of one send key (AES-GCM bounds for datagrams of <= ~1500 bytes, about 2^6.5
# blocks each; advantage ~ (blocks sealed)^2 / 2^129): from REKEY_AFTER_MESSAGES on
# (2^36.5 blocks, ~2^-56) `rekey_due()` names the peer and the router must make new keys;
# at REJECT_AFTER_MESSAGES (2^40.5 blocks, ~2^-48) the pump stops sending with that key.
REKEY_AFTER_MESSAGES = 1 << 30
REJECT_AFTER_MESSAGES = 1 << 34

# virtio_net_hdr (TAP opened with IFF_VNET_HDR), host byte order
VNET_HDR_LEN = 10
VNET_F_NEEDS_CSUM = 0x01
VNET_F_DATA_VALID = 0x02
VNET_GSO_NONE = 0
VNET_GSO_TCPV4 = 1
VNET_GSO_UDP = 3
VNET_GSO_TCPV6 = 4
VNET_GSO_UDP_L4 = 5
VNET_GSO_ECN = 0x80

IPV4_HEADER_LEN = 20
UDP_HEADER_LEN = 8
AEAD_OVERHEAD = 8 + 16  # explicit counter + authentication tag (sleeve encryption)
VXLAN_OVERHEAD = IPV4_HEADER_LEN + UDP_HEADER_LEN + 8 + ETH_HEADER_LEN  # RFC 7348 §5

SLEEVE_OVERHEAD = IPV4_HEADER_LEN + UDP_HEADER_LEN + HEADER_LEN + AEAD_OVERHEAD + ETH_HEADER_LEN
MAX_FRAME = 65535  # largest inner frame the pump buffers hold
MAX_DATAGRAM = 65535 - IPV4_HEADER_LEN - UDP_HEADER_LEN  # largest IPv4 UDP payload
MAX_SLEEVE_FRAME = MAX_DATAGRAM - HEADER_LEN  # largest inner frame one plain datagram carries
MAX_SEALED_FRAME = MAX_DATAGRAM - HEADER_LEN - AEAD_OVERHEAD  # ... and one sealed datagram


def wire_overhead(crypto: bool) -> int:
    """Bytes of IPv4 + UDP + sleeve header (+ AEAD) around an inner frame."""
    return IPV4_HEADER_LEN + UDP_HEADER_LEN + HEADER_LEN + (AEAD_OVERHEAD if crypto else 0)

# Pump table capacities. The MAC table's are construction parameters of both pumps (the
# router's --mac-table-max, --mac-learn-quota and --mac-age; docs/sleeve.md "The MAC
# table"), these are their defaults and bounds: room for 100,000 gossiped endpoints
# mesh-wide and some learned ones. The compiled MAC table is open addressing with the
# next power of two >= 2 x its capacity of slots (at most half full). The peer table is
# dense and fixed, the same in both pumps so that both refuse the same entries.
MAC_TABLE_DEFAULT = 131072  # entries, gossiped (static) and learned together
MAC_TABLE_LIMIT = 1 << 22  # largest capacity a pump accepts (2**23 slots, 128 MiB)
MAC_TABLE_MIN = 1
LEARN_QUOTA_DEFAULT = 4096  # learned entries per peer: one peer's containers cannot fill the table
MAC_AGE_DEFAULT = 300  # seconds a learned entry lives without traffic (the bridge's own default)
MAC_AGE_LIMIT = 1 << 20
PEER_TABLE_MAX = 4096
MAX_BATCH = 1024  # frames per read batch; the kernel's UIO_MAXIOV caps one sendmmsg/recvmmsg


def overlay_mtu(underlay_mtu: int) -> int:
    """Return the container MTU for an underlay MTU, valid in every data-path mode."""
    return underlay_mtu - max(SLEEVE_OVERHEAD, VXLAN_OVERHEAD)


def peer_id(peer_name: bytes) -> int:
    """Return the 32-bit data-path id of a 16-byte peer name."""
    return int.from_bytes(peer_name[-4:], "big")


def flow_hint(frame: bytes) -> int:
    """The flow hint of an inner frame (0..31), sent in flags bits 3-7.

    Frames of one flow get one hint, and so do its replies: a receiver with several pump
    threads steers each datagram to one of them by looking at the (unencrypted,
    authenticated) header alone, and every connection, both ways, stays on one thread, in
    order (docs/sleeve.md, "Threads"). The key is the two endpoints, each an address and
    (TCP/UDP, not a fragment) a port, lower one first, then the protocol: for IPv4 source
    and destination address, protocol 23, ports; for IPv6 the same with the next header.
    FNV-1a over lower endpoint, higher endpoint, protocol; the hint is the top 5 bits of
    that times 0x9E3779B1. Other frames (ARP, ...) hint 0."""
    n = len(frame)
    if n >= 34 and frame[12:14] == b"\x08\x00" and frame[14] >> 4 == 4 and frame[14] & 0x0F >= 5:
        l4 = ETH_HEADER_LEN + (frame[14] & 0x0F) * 4
        src, dst, proto = frame[26:30], frame[30:34], frame[23]
        whole = frame[20] & 0x3F == 0 and frame[21] == 0  # not a fragment (MF clear, offset 0)
        ports = proto in (6, 17) and whole and n >= l4 + 4
    elif n >= 54 and frame[12:14] == b"\x86\xdd" and frame[14] >> 4 == 6:
        l4, src, dst, proto = 54, frame[22:38], frame[38:54], frame[20]
        ports = proto in (6, 17) and n >= 58
    else:
        return 0
    if ports:
        src, dst = src + frame[l4 : l4 + 2], dst + frame[l4 + 2 : l4 + 4]
    h = 0x811C9DC5
    for byte in min(src, dst) + max(src, dst) + bytes((proto,)):
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return ((h * 0x9E3779B1) & 0xFFFFFFFF) >> 27
