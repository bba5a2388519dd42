"""The sleeve datagram format and the overhead arithmetic behind the overlay MTU.

One UDP datagram (sleeve, UDP 6783) carries one inner Ethernet frame::

     0        1        2        3
    +--------+--------+--------+--------+
    | ver=1  |  type  | flags  |  ttl   |
    +--------+--------+--------+--------+
    |        src peer id (u32, BE)      |
    +-----------------------------------+
    |        dst peer id (u32, BE)      |   0xFFFFFFFF never appears: floods are
    +-----------------------------------+   sent as one copy per destination
    | inner Ethernet frame (dst MAC, src MAC, ethertype, payload) ...
    +-----------------------------------------------------------

`src` is the peer whose TAP the frame entered, `dst` the peer whose TAP it must leave
by; a peer that is neither relays it towards `dst` (multi-hop) after decrementing `ttl`.
Peer ids are the low 32 bits of the 128-bit peer name (see docs/protocol.md).

Overlay MTU: both data paths must fit the same inner packet, so the MTU is derived from
the underlay MTU minus the largest overhead of any mode we may pick for a peer::

    outer IPv4 20 + UDP 8 + sleeve header 12 + AEAD (counter 8 + tag 16) + inner Ethernet 14
    = 78 bytes, against kernel VXLAN's 20 + 8 + 8 + 14 = 50.
"""

VERSION = 1

TYPE_FRAME = 1  # an Ethernet frame for the dst peer's TAP
TYPE_PROBE = 2  # reserved: data-path health probe (sleeve / fastdp checks)

HEADER_LEN = 12  # bytes of sleeve header before the inner frame
ETH_HEADER_LEN = 14  # dst MAC, src MAC, ethertype
MIN_DATAGRAM = HEADER_LEN + ETH_HEADER_LEN
DEFAULT_TTL = 8  # hops a relayed frame may take before it is dropped

IPV4_HEADER_LEN = 20
UDP_HEADER_LEN = 8
AEAD_OVERHEAD = 8 + 16  # explicit counter + authentication tag (sleeve encryption)
VXLAN_OVERHEAD = IPV4_HEADER_LEN + UDP_HEADER_LEN + 8 + ETH_HEADER_LEN  # RFC 7348 §5

SLEEVE_OVERHEAD = IPV4_HEADER_LEN + UDP_HEADER_LEN + HEADER_LEN + AEAD_OVERHEAD + ETH_HEADER_LEN
MAX_FRAME = 65535  # largest inner frame the pump buffers hold
MAX_DATAGRAM = 65535 - IPV4_HEADER_LEN - UDP_HEADER_LEN  # largest IPv4 UDP payload
MAX_SLEEVE_FRAME = MAX_DATAGRAM - HEADER_LEN  # largest inner frame one plain datagram carries

# Pump table capacities, the same in the compiled pump and its Python twin so that both
# refuse or skip the same entries. The compiled MAC table is open addressing with
# MAC_TABLE_SLOTS slots kept at most half full; the peer table is dense.
MAC_TABLE_SLOTS = 16384
MAC_TABLE_MAX = MAC_TABLE_SLOTS // 2
PEER_TABLE_MAX = 4096


def overlay_mtu(underlay_mtu: int) -> int:
    """Return the container MTU for an underlay MTU, valid in every data-path mode."""
    return underlay_mtu - max(SLEEVE_OVERHEAD, VXLAN_OVERHEAD)


def peer_id(peer_name: bytes) -> int:
    """Return the 32-bit data-path id of a 16-byte peer name."""
    return int.from_bytes(peer_name[-4:], "big")
