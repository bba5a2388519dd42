"""The shape and bounds of every control message's fields (docs/protocol.md, "Bounds").

`check(kind, fields)` is called by `wire.decode_message` on every message, before anything
reads it: it returns the fields as the core uses them (TOPOLOGY's entries as `PeerEntry`s)
or raises `RemoteProtocolError` naming the field. So a message the decoder accepts holds
only values within the bounds of `bounds.py`, and nothing downstream has to check again.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
from typing import Any, Callable

from meshnet.mesh import bounds as b
from meshnet.mesh.topology import Link, PeerEntry

MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
PUBLIC_KEY_LEN = 32


def _hello(fields: tuple[Any, ...]) -> tuple[Any, ...]:
    hello = b.mapping(fields[0], "HELLO", b.MAX_MAP)
    if "encrypt" in hello:
        b.flag(hello["encrypt"], "HELLO encrypt")
    if hello.get("pub") is not None:
        b.blob(hello["pub"], "HELLO pub", exact=PUBLIC_KEY_LEN)
    return fields


def _features(fields: tuple[Any, ...]) -> tuple[Any, ...]:
    f = b.mapping(fields[0], "FEATURES", b.MAX_MAP)
    b.name(f.get("name"), "FEATURES name")
    b.text(f.get("nick"), "FEATURES nick", b.MAX_NICK)
    b.uint(f.get("uid"), "FEATURES uid")
    b.uint(f.get("port"), "FEATURES port", 65535, 1)
    b.uint(f.get("udp_port"), "FEATURES udp_port", 65535, 1)
    caps = b.mapping(f.get("features", {}), "FEATURES features", b.MAX_FEATURES)
    for key, value in caps.items():
        b.text(key, "FEATURES feature name", b.MAX_KEY)
        b.uint(value, f"FEATURES feature {key}")
    return fields


def _topology(fields: tuple[Any, ...]) -> tuple[Any, ...]:
    return ([decode_entry(obj) for obj in b.array(fields[0], "TOPOLOGY", b.MAX_PEERS)],)


def _digest(fields: tuple[Any, ...]) -> tuple[Any, ...]:
    for pair in b.array(fields[0], "DIGEST", b.MAX_PEERS):
        b.array(pair, "DIGEST pair", 2, length=2)
        b.name(pair[0], "DIGEST name")
        b.uint(pair[1], "DIGEST version")
    return fields


def _request(fields: tuple[Any, ...]) -> tuple[Any, ...]:
    for n in b.array(fields[0], "REQUEST", b.MAX_PEERS):
        b.name(n, "REQUEST name")
    return fields


def _broadcast(fields: tuple[Any, ...]) -> tuple[Any, ...]:
    channel, src, seq, payload = fields
    b.text(channel, "BROADCAST channel", b.MAX_KEY, min_len=1)
    b.name(src, "BROADCAST src")
    b.uint(seq, "BROADCAST seq")
    b.blob(payload, "BROADCAST payload")
    return fields


def _unicast(fields: tuple[Any, ...]) -> tuple[Any, ...]:
    channel, src, dst, payload = fields
    b.text(channel, "UNICAST channel", b.MAX_KEY, min_len=1)
    b.name(src, "UNICAST src")
    b.name(dst, "UNICAST dst")
    b.blob(payload, "UNICAST payload")
    return fields


def _refuse(fields: tuple[Any, ...]) -> tuple[Any, ...]:
    b.text(fields[0], "REFUSE reason", b.MAX_REASON)
    b.flag(fields[1], "REFUSE retry")
    if len(fields) > 2:
        b.text(fields[2], "REFUSE kind", b.MAX_KEY)
    return fields


def _summary(fields: tuple[Any, ...]) -> tuple[Any, ...]:
    b.blob(fields[0], "SUMMARY", exact=16)
    return fields


def _none(fields: tuple[Any, ...]) -> tuple[Any, ...]:
    return fields


# Per message type (by its number): the field check. wire.py checks the field count first.
CHECKS: dict[int, Callable[[tuple[Any, ...]], tuple[Any, ...]]] = {
    0: _hello,
    1: _features,
    2: _none,
    3: _topology,
    4: _digest,
    5: _request,
    6: _broadcast,
    7: _unicast,
    8: _refuse,
    9: _summary,
}


# -- peer entries ----------------------------------------------------------------------------


def decode_entry(obj: Any) -> PeerEntry:
    """A gossiped peer entry (docs/protocol.md 1.6), every field within its bound."""
    e = b.mapping(obj, "entry", b.MAX_MAP)
    name = b.name(e.get("n"), "entry name")
    nick = b.text(e.get("k"), "entry nick", b.MAX_NICK)
    uid = b.uint(e.get("u"), "entry uid")
    version = b.uint(e.get("v"), "entry version")
    port = b.uint(e.get("p"), "entry port", 65535, 1)
    udp_port = b.uint(e.get("d"), "entry udp_port", 65535, 1)
    links = tuple(_link(raw) for raw in b.array(e.get("c"), "entry links", b.MAX_LINKS))
    data = b.mapping(e.get("x"), "entry data", b.MAX_DATA_KEYS)
    for key, value in data.items():
        b.text(key, "entry data key", b.MAX_KEY)
        if key == "eps":
            check_endpoints(value)
            data[key] = [tuple_endpoint(ep) for ep in value]
        elif key == "dns":
            check_records(value)
        else:
            b.plain(value, f"entry data {key!r}")
    entry = PeerEntry(name, nick, uid, version, port, udp_port, links, data)
    if entry.wire_size > b.MAX_ENTRY_BYTES:
        raise b.fail(f"entry: over {b.MAX_ENTRY_BYTES} bytes")
    return entry


def _link(raw: Any) -> Link:
    peer, ip, outbound = b.array(raw, "link", 3, length=3)
    b.name(peer, "link peer")
    b.text(ip, "link ip", b.MAX_IP)
    if not _is_ip(ip):
        raise b.fail(f"link ip: {ip!r} is not an IP address")
    return Link(peer, ip, b.flag(outbound, "link outbound"))


@functools.lru_cache(maxsize=4096)  # bounded; the same few addresses come in every entry
def _is_ip(text: str) -> bool:
    """Parsing with ipaddress took about a sixth of a router's CPU while a mesh formed."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _is_cidr(text: str) -> bool:
    """What `ipaddress.ip_interface` accepts, fast for the usual canonical "a.b.c.d/n".
    An entry holds up to 4,096 endpoints, checked on the loop, and `ip_interface` (about
    6 us each when idle, more on a busy router) was most of what such a message cost. The
    fast path (under 1 us) accepts only text that round-trips through inet_pton/inet_ntop
    unchanged, with a plain decimal prefix: a subset of what `ip_interface` accepts.
    Anything else gets the full parse."""
    address, slash, prefix = text.partition("/")
    if slash and prefix.isdigit() and prefix.isascii() and str(int(prefix)) == prefix and int(prefix) <= 32:
        try:
            if socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, address)) == address:
                return True
        except OSError:
            pass
    try:
        ipaddress.ip_interface(text)
    except ValueError:
        return False
    return True


def tuple_endpoint(ep: list[Any]) -> tuple[Any, ...]:
    """A checked endpoint as tuples of strings: Python's cycle collector stops walking such a
    tuple after its first look, where it walks a list on every full collection. With
    100,000 gossiped endpoints, their two lists each were a fifth of what every full
    collection walked (docs/scaling.md). Packed, a tuple is the same msgpack array."""
    return (ep[0], tuple(ep[1]), *ep[2:])


def check_endpoints(eps: Any) -> None:
    """`eps` = [[mac, [cidr, ...], dns-name], ...] (a fourth element onwards is ignored)."""
    for ep in b.array(eps, "endpoints", b.MAX_ENDPOINTS):
        if type(ep) is not list or len(ep) < 3:
            raise b.fail("endpoint: not an array [mac, cidrs, name]")
        mac, cidrs, dns = ep[0], ep[1], ep[2]
        if type(mac) is not str or not MAC_RE.match(mac):
            raise b.fail(f"endpoint mac: {mac!r} is not like aa:bb:cc:dd:ee:ff")
        for cidr in b.array(cidrs, "endpoint cidrs", b.MAX_ADDRESSES):
            b.text(cidr, "endpoint cidr", b.MAX_CIDR)
            if not _is_cidr(cidr):
                raise b.fail(f"endpoint cidr: {cidr!r} is not IP/prefix")
        b.text(dns, "endpoint name", b.MAX_DNS_NAME)
        for extra in ep[3:8]:
            b.plain(extra, "endpoint extra field", 1)
        if len(ep) > 8:
            raise b.fail("endpoint: more than 8 fields")


def check_records(records: Any) -> None:
    """`dns` = [[label, [address, ...]], ...]: names added by hand (`meshnet dns-add`).
    Shapes and sizes here; the resolver checks that the addresses are IPv4."""
    for record in b.array(records, "dns records", b.MAX_DNS_RECORDS):
        label, addresses = b.array(record, "dns record", 2, length=2)
        b.text(label, "dns label", b.MAX_LABEL)
        for address in b.array(addresses, "dns addresses", b.MAX_DNS_ADDRESSES):
            b.text(address, "dns address", b.MAX_IP)
