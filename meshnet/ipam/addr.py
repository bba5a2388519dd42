"""Addresses as integers: parsing and checking of the allocation range, subnets and addresses.

The core works on IPv4 addresses as plain ints; a range is a half-open interval
`[start, end)`. The universe (`--ipalloc-range`) reserves its own first and last address
(network and broadcast); a subnet allocation also skips the subnet's first and last.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from meshnet.ipam.errors import IpamBadRequest, IpamConfigError

MAX_PREFIX = 30  # a /31 or /32 has no host address once network and broadcast are reserved


@dataclass(frozen=True, slots=True)
class Block:
    """A CIDR block as ints: `[start, end)` and its prefix length."""

    start: int
    end: int
    prefixlen: int

    @property
    def cidr(self) -> str:
        return f"{fmt(self.start)}/{self.prefixlen}"

    @property
    def usable(self) -> tuple[int, int]:
        """The host addresses: everything but the network and broadcast address."""
        return self.start + 1, self.end - 1

    def __contains__(self, address: int) -> bool:
        return self.start <= address < self.end


def fmt(address: int) -> str:
    return str(ipaddress.IPv4Address(address))


def _network(text: object, error: type[Exception]) -> Block:
    if not isinstance(text, str):
        raise error(f"expected a CIDR string such as 10.32.0.0/12, got {text!r}")
    try:
        net = ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        raise error(f"invalid CIDR {text!r}: {exc}") from None
    if net.version != 4:
        raise error(f"{text!r}: only IPv4 ranges are supported")
    if net.prefixlen > MAX_PREFIX:
        raise error(f"{text!r} is too small: the prefix must be /{MAX_PREFIX} or shorter")
    return Block(int(net.network_address), int(net.network_address) + net.num_addresses, net.prefixlen)


def parse_universe(text: object) -> Block:
    """Parse `--ipalloc-range`. Raises IpamConfigError."""
    return _network(text, IpamConfigError)


def parse_subnet(text: object, universe: Block) -> Block:
    """Parse a subnet that must lie inside the universe. Raises IpamBadRequest."""
    block = _network(text, IpamBadRequest)
    if block.start < universe.start or block.end > universe.end:
        raise IpamBadRequest(f"subnet {block.cidr} is outside the allocation range {universe.cidr}")
    return block


def parse_address(text: object, universe: Block) -> int:
    """Parse a host address inside the universe, not its network or broadcast address.

    Raises:
        IpamBadRequest: not an IPv4 address, outside the range, or reserved.
    """
    if not isinstance(text, str):
        raise IpamBadRequest(f"expected an IPv4 address, got {text!r}")
    try:
        address = int(ipaddress.IPv4Address(text.strip()))
    except ValueError:
        raise IpamBadRequest(f"invalid IPv4 address {text!r}") from None
    if address not in universe:
        raise IpamBadRequest(f"address {fmt(address)} is outside the allocation range {universe.cidr}")
    lo, hi = universe.usable
    if not lo <= address < hi:
        raise IpamBadRequest(f"address {fmt(address)} is the network or broadcast address of {universe.cidr}")
    return address
