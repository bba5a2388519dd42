"""Explicit bounds on every value a peer sends, and the checks that apply them.

Each limit here is stated in docs/protocol.md ("Bounds"). A value outside its bound is a
`RemoteProtocolError` naming the field: the one connection that carried it closes, and
nothing from that message is stored or forwarded. The checks return the value (so a
decoder reads `nick = text(obj.get("k"), "entry nick", MAX_NICK)`), never a coerced one.
"""

from __future__ import annotations

from typing import Any

from meshnet.errors import RemoteProtocolError

MAX_FRAME = 256 * 1024  # bytes of one frame body
MAX_U63 = (1 << 63) - 1  # versions, incarnations, sequence numbers: a non-negative signed 64-bit int
MAX_JUMP = 1 << 40  # ms (35 years): how far an entry under our own name may outrank ours (an earlier life of ours)
NAME_LEN = 16  # bytes of a peer name
MAX_NICK = 64  # characters of a nickname (a hostname is at most 64)
MAX_PEERS = 8192  # entries in one TOPOLOGY, pairs in one DIGEST, names in one REQUEST
MAX_LINKS = 1024  # connections one entry lists (the ceiling of --conn-limit)
MAX_ENTRY_BYTES = MAX_FRAME - 1024  # one entry, msgpack-encoded: it must fit a frame with room to spare
MAX_ENDPOINTS = 4096  # endpoints in one entry (a peer's quota, --max-peer-endpoints, is at most this)
MAX_ADDRESSES = 8  # CIDRs of one endpoint
MAX_CIDR = 49  # characters of one CIDR ("ffff:...:ffff/128" is 43)
MAX_DNS_NAME = 253  # characters of an endpoint's DNS name
MAX_DNS_RECORDS = 1024  # records in an entry's `dns` (names added with meshnet dns-add)
MAX_DNS_ADDRESSES = 32  # addresses of one such record
MAX_LABEL = 63  # characters of a DNS label
MAX_IP = 45  # characters of an IP address in a link
MAX_DATA_KEYS = 16  # keys of an entry's per-feature data map
MAX_KEY = 32  # characters of a map key, a channel name or a refusal kind
MAX_DEPTH = 4  # nesting of a per-feature value meshnet does not know (kept and forwarded as is)
MAX_MAP = 16  # keys of HELLO and FEATURES
MAX_FEATURES = 32  # capabilities in FEATURES' "features" map
MAX_REASON = 512  # characters of a REFUSE reason


def fail(what: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"malformed {what}")


def uint(value: Any, what: str, hi: int = MAX_U63, lo: int = 0) -> int:
    """An int (not a bool) in lo..hi."""
    if type(value) is not int or not lo <= value <= hi:
        raise fail(f"{what}: not an integer in {lo}..{hi}")
    return value


def text(value: Any, what: str, max_len: int, *, min_len: int = 0) -> str:
    if type(value) is not str or not min_len <= len(value) <= max_len:
        raise fail(f"{what}: not a string of {min_len}..{max_len} characters")
    return value


def blob(value: Any, what: str, max_len: int = MAX_FRAME, *, exact: int | None = None) -> bytes:
    if type(value) is not bytes or (len(value) != exact if exact is not None else len(value) > max_len):
        size = f"{exact}" if exact is not None else f"at most {max_len}"
        raise fail(f"{what}: not {size} bytes")
    return value


def name(value: Any, what: str) -> bytes:
    """A 16-byte peer name."""
    return blob(value, what, exact=NAME_LEN)


def flag(value: Any, what: str) -> bool:
    if type(value) is not bool:
        raise fail(f"{what}: not a boolean")
    return value


def array(value: Any, what: str, max_len: int, *, length: int | None = None) -> list[Any]:
    if type(value) is not list or len(value) > max_len or (length is not None and len(value) != length):
        size = f"{length}" if length is not None else f"at most {max_len}"
        raise fail(f"{what}: not an array of {size} elements")
    return value


def mapping(value: Any, what: str, max_len: int) -> dict[Any, Any]:
    if type(value) is not dict or len(value) > max_len:
        raise fail(f"{what}: not a map of at most {max_len} keys")
    return value


def plain(value: Any, what: str, depth: int = MAX_DEPTH) -> None:
    """A value meshnet does not interpret: nil, bool, int, float, str, bin, and arrays and
    maps of those nested at most `depth` deep (msgpack's own extension types are refused)."""
    if value is None or type(value) in (bool, int, float, str, bytes):
        return
    if depth <= 0 or type(value) not in (list, dict):
        raise fail(f"{what}: nested deeper than {MAX_DEPTH} or of an unknown type")
    items = value if type(value) is list else [*value.keys(), *value.values()]
    for item in items:
        plain(item, what, depth - 1)
