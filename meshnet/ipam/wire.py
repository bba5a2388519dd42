"""IPAM payloads on the mesh's app-gossip channel: msgpack maps, version 1.

Every payload is a msgpack map with `"v": 1` (format version), `"t"` (type) and `"u"` (the
sender's allocation range, e.g. "10.32.0.0/12"; peers with another range are ignored and
reported). Addresses are IPv4 addresses as unsigned ints; peer names are 16-byte bins.
Unknown keys are ignored so later versions can add fields.

    state   {"v":1, "t":"state", "u":CIDR,
             "ring": RING,          # absent while no ring exists yet
             "px":   PAXOS,         # present while the sender is still in consensus bootstrap
             "gone": [bin(16), ...],# optional: peers removed with rmpeer (no longer waited for)
             "ask":  int,           # optional: reply to me (unicast) with your state, "re": ask
             "re":   int}           # optional: this answers your "ask" or "want" with that id
        RING  = {"g": bin(16),                   # genesis: how the ring was born
                 "o": [bin(16), ...],            # owner table
                 "e": [[token, owner_index, version, free, reclaim], ...]}
                 # tokens strictly ascending, the first is the range's first address;
                 # version >= 1; free = hint of allocatable addresses; reclaim = 0 | 1
        PAXOS = {"n": N, "a": [[name, p_round, p_name, a_round, a_name, [name, ...]], ...]}
                 # per acceptor: promised ballot, accepted ballot, accepted value;
                 # a ballot is (round, proposer name), (0, b"") meaning none
    want    {"v":1, "t":"want", "u":CIDR, "id":int, "lo":int, "hi":int}
             # unicast: please donate free space inside [lo, hi)
    deny    {"v":1, "t":"deny", "u":CIDR, "id":int}
             # unicast: I have no free space inside the range you asked for
    sum     {"v":1, "t":"sum", "u":CIDR, "h":bin(16)}
             # unicast to a neighbour, periodically: a hash of my ring and gone list;
             # a receiver whose hash differs sends its state with "ask" (both merge)

`state` is both the full state (anti-entropy, `Allocator.full_state`) and every update: the
whole ring travels each time, which is what keeps ring merges safe (see `ring.py`).

`decode` is the only entry point for untrusted bytes: it returns a message or raises
`IpamProtocolError`, nothing else. Bounds (docs/ipam.md, "Wire format"): every int within
its range below (at most 2^63 - 1), the range string at most MAX_CIDR characters, maps at
most MAX_KEYS keys, at most MAX_RING_ENTRIES ring entries, MAX_NAMES owners, acceptors and
names in a consensus value, MAX_GONE removed peers; unknown keys are ignored, never kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from meshnet.ipam.addr import Block, parse_universe
from meshnet.ipam.errors import IpamError, IpamProtocolError
from meshnet.ipam.paxos import NO_BALLOT, Acceptor, Ballot
from meshnet.ipam.ring import MAX_VERSION, NAME_LEN, Entry

VERSION = 1
MAX_GONE = 1024  # names in a "gone" list
MAX_INT = MAX_VERSION  # versions, ids and hints must fit a signed 64-bit integer
MAX_CIDR = 18  # characters of the range ("255.255.255.255/32")
MAX_KEYS = 16  # keys of a payload, a ring or a consensus map
MAX_RING_ENTRIES = 32768  # ranges in one ring
MAX_NAMES = 8192  # owners in a ring, acceptors and names in a consensus (the mesh's peer bound)


@dataclass(frozen=True, slots=True)
class RingData:
    genesis: bytes
    entries: dict[int, Entry]


@dataclass(frozen=True, slots=True)
class PaxosData:
    n: int
    states: dict[bytes, Acceptor]


@dataclass(frozen=True, slots=True)
class State:
    universe: str
    ring: RingData | None = None
    paxos: PaxosData | None = None
    ask: int | None = None
    re: int | None = None
    gone: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class Want:
    universe: str
    id: int
    lo: int
    hi: int


@dataclass(frozen=True, slots=True)
class Deny:
    universe: str
    id: int


@dataclass(frozen=True, slots=True)
class Summary:
    universe: str
    hash: bytes


SUMMARY_LEN = 16

Message = State | Want | Deny | Summary


def _pack(body: dict[str, Any]) -> bytes:
    return msgpack.packb({"v": VERSION, **body}, use_bin_type=True)


def encode_state(msg: State) -> bytes:
    body: dict[str, Any] = {"t": "state", "u": msg.universe}
    if msg.ring is not None:
        owners: dict[bytes, int] = {}
        rows = []
        for token in sorted(msg.ring.entries):
            e = msg.ring.entries[token]
            rows.append([token, owners.setdefault(e.owner, len(owners)), e.version, e.free, int(e.reclaim)])
        body["ring"] = {"g": msg.ring.genesis, "o": list(owners), "e": rows}
    if msg.paxos is not None:
        body["px"] = {
            "n": msg.paxos.n,
            "a": [
                [name, s.promised[0], s.promised[1], s.accepted[0], s.accepted[1], list(s.value)]
                for name, s in sorted(msg.paxos.states.items())
            ],
        }
    if msg.gone:
        body["gone"] = list(msg.gone)
    if msg.ask is not None:
        body["ask"] = msg.ask
    if msg.re is not None:
        body["re"] = msg.re
    return _pack(body)


def encode_want(msg: Want) -> bytes:
    return _pack({"t": "want", "u": msg.universe, "id": msg.id, "lo": msg.lo, "hi": msg.hi})


def encode_deny(msg: Deny) -> bytes:
    return _pack({"t": "deny", "u": msg.universe, "id": msg.id})


def encode_summary(msg: Summary) -> bytes:
    return _pack({"t": "sum", "u": msg.universe, "h": msg.hash})


def decode(payload: bytes) -> Message:
    """Parse one payload. Raises IpamProtocolError for anything malformed."""
    try:
        obj = msgpack.unpackb(payload, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises a zoo of types for garbage; all mean the same
        raise IpamProtocolError(f"undecodable IPAM payload: {exc.__class__.__name__}") from None
    try:
        return _message(obj)
    except IpamProtocolError:
        raise
    except IpamError as exc:  # e.g. an invalid range string
        raise IpamProtocolError(str(exc)) from None


def _fail(why: str) -> IpamProtocolError:
    return IpamProtocolError(f"malformed IPAM payload: {why}")


def _int(obj: Any, what: str, lo: int = 0, hi: int = MAX_INT) -> int:
    if type(obj) is not int or not lo <= obj <= hi:
        raise _fail(f"{what} must be an integer in [{lo}, {hi}]")
    return obj


def _name(obj: Any, what: str) -> bytes:
    if type(obj) is not bytes or len(obj) != NAME_LEN:
        raise _fail(f"{what} must be a {NAME_LEN}-byte peer name")
    return obj


def _list(obj: Any, what: str, most: int = MAX_NAMES) -> list[Any]:
    if type(obj) is not list or len(obj) > most:
        raise _fail(f"{what} must be an array of at most {most} elements")
    return obj


def _map(obj: Any, what: str) -> dict[Any, Any]:
    if type(obj) is not dict or len(obj) > MAX_KEYS:
        raise _fail(f"{what} is not a map of at most {MAX_KEYS} keys")
    return obj


def _message(obj: Any) -> Message:
    obj = _map(obj, "a payload")
    if type(obj.get("v")) is not int or obj["v"] != VERSION:
        raise _fail("unsupported version")
    if type(obj.get("u")) is not str or len(obj["u"]) > MAX_CIDR:
        raise _fail(f"the range must be a CIDR string of at most {MAX_CIDR} characters")
    universe = parse_universe(obj["u"])
    kind = obj.get("t")
    if kind == "state":
        return State(
            universe=universe.cidr,
            ring=_ring(obj["ring"], universe) if "ring" in obj else None,
            paxos=_paxos(obj["px"]) if "px" in obj else None,
            ask=_int(obj["ask"], "ask") if "ask" in obj else None,
            re=_int(obj["re"], "re") if "re" in obj else None,
            gone=_gone(obj["gone"]) if "gone" in obj else (),
        )
    if kind == "want":
        lo = _int(obj.get("lo"), "lo", universe.start, universe.end - 1)
        hi = _int(obj.get("hi"), "hi", lo + 1, universe.end)
        return Want(universe.cidr, _int(obj.get("id"), "id"), lo, hi)
    if kind == "deny":
        return Deny(universe.cidr, _int(obj.get("id"), "id"))
    if kind == "sum":
        digest = obj.get("h")
        if type(digest) is not bytes or len(digest) != SUMMARY_LEN:
            raise _fail(f"summary hash must be {SUMMARY_LEN} bytes")
        return Summary(universe.cidr, digest)
    raise _fail("unknown type")


def _ring(obj: Any, universe: Block) -> RingData:
    obj = _map(obj, "ring")
    genesis = obj.get("g")
    if type(genesis) is not bytes or len(genesis) != 16:
        raise _fail("ring genesis must be 16 bytes")
    owners = [_name(o, "ring owner") for o in _list(obj.get("o"), "ring owners")]
    entries: dict[int, Entry] = {}
    last = universe.start - 1
    for row in _list(obj.get("e"), "ring entries", MAX_RING_ENTRIES):
        row = _list(row, "ring entry", 5)
        if len(row) != 5:
            raise _fail("ring entry must have 5 fields")
        token = _int(row[0], "token", last + 1, universe.end - 1)
        entries[token] = Entry(
            owner=owners[_int(row[1], "owner index", 0, len(owners) - 1)],
            version=_int(row[2], "version", 1),
            free=_int(row[3], "free", 0, universe.end - universe.start),
            reclaim=bool(_int(row[4], "reclaim", 0, 1)),
        )
        last = token
    if universe.start not in entries:
        raise _fail("ring does not start at the range's first address")
    return RingData(genesis, entries)


def _gone(obj: Any) -> tuple[bytes, ...]:
    names = _list(obj, "gone", MAX_GONE)
    return tuple(_name(n, "gone peer") for n in names)


def _ballot(round_: Any, name: Any) -> Ballot:
    r = _int(round_, "ballot round")
    if r == 0:
        if name != b"":
            raise _fail("the empty ballot has no proposer")
        return NO_BALLOT
    return (r, _name(name, "ballot proposer"))


def _paxos(obj: Any) -> PaxosData:
    obj = _map(obj, "px")
    n = _int(obj.get("n"), "consensus N", 1, 1 << 20)
    states: dict[bytes, Acceptor] = {}
    for row in _list(obj.get("a"), "acceptors"):
        row = _list(row, "acceptor", 6)
        if len(row) != 6:
            raise _fail("acceptor must have 6 fields")
        value = tuple(_name(x, "consensus value") for x in _list(row[5], "consensus value"))
        promised, accepted = _ballot(row[1], row[2]), _ballot(row[3], row[4])
        if accepted > promised or (accepted == NO_BALLOT) != (not value):
            raise _fail("acceptor state is inconsistent")
        states[_name(row[0], "acceptor name")] = Acceptor(promised, accepted, value)
    return PaxosData(n, states)
