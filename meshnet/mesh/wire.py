"""Control-connection framing and message codec (TCP 6783); see docs/protocol.md.

A connection starts with a 9-byte preamble from each side::

    b"MESHNET" | min_version (u8) | max_version (u8)

then carries frames: a 4-byte big-endian length followed by that many bytes of body.
Before keys exist (and on an unencrypted mesh) the body is a msgpack array; on an
encrypted mesh every body after the HELLO is an AEAD box (see `session.py`) whose
plaintext is that msgpack array. The first element of the array is the message type.

`FrameReader` and `decode_message` are the only entry points for untrusted bytes; they
either return a value or raise `RemoteProtocolError`. Every field of every message is
checked against its bound (`bounds.py`, `schema.py`; docs/protocol.md "Bounds") here, so a
message that decodes holds nothing out of range.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import msgpack

from meshnet.errors import RemoteProtocolError
from meshnet.mesh import schema
from meshnet.mesh.bounds import MAX_FRAME

MAGIC = b"MESHNET"
PREAMBLE_LEN = len(MAGIC) + 2
MIN_VERSION = 1
MAX_VERSION = 1
LENGTH = struct.Struct(">I")


class Msg(IntEnum):
    HELLO = 0  # [0, {"pub": bytes|None, "encrypt": bool}]  always plaintext
    FEATURES = 1  # [1, {...}] first message after HELLO (sealed on an encrypted mesh)
    HEARTBEAT = 2  # [2]
    TOPOLOGY = 3  # [3, [entry, ...]] peer entries newer than the receiver may have
    DIGEST = 4  # [4, [[name, version], ...]] anti-entropy: what the sender holds
    REQUEST = 5  # [5, [name, ...]] please send these entries
    BROADCAST = 6  # [6, channel, src, seq, payload] relayed along src's spanning tree
    UNICAST = 7  # [7, channel, src, dst, payload] relayed along shortest paths
    REFUSE = 8  # [8, reason, retry, kind] the sender is closing on purpose; kind is optional
    SUMMARY = 9  # [9, hash] anti-entropy: a hash of the sender's digest; a mismatch asks for DIGEST


def encode_preamble(min_version: int = MIN_VERSION, max_version: int = MAX_VERSION) -> bytes:
    return MAGIC + bytes([min_version, max_version])


def negotiate(preamble: bytes, *, ours: tuple[int, int] = (MIN_VERSION, MAX_VERSION)) -> int:
    """Return the protocol version both sides speak, the highest in common.

    Raises:
        RemoteProtocolError: not a meshnet peer, or no version in common.
    """
    if len(preamble) != PREAMBLE_LEN or not preamble.startswith(MAGIC):
        raise RemoteProtocolError("not a meshnet peer (bad preamble)")
    their_min, their_max = preamble[-2], preamble[-1]
    version = min(ours[1], their_max)
    if version < max(ours[0], their_min) or their_min > their_max:
        raise RemoteProtocolError(
            f"no protocol version in common: ours {ours[0]}..{ours[1]}, theirs {their_min}..{their_max}"
        )
    return version


def frame(body: bytes) -> bytes:
    if len(body) > MAX_FRAME:
        raise ValueError(f"frame of {len(body)} bytes exceeds {MAX_FRAME}")
    return LENGTH.pack(len(body)) + body


class FrameReader:
    """Split a byte stream into frame bodies."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        bodies = []
        while len(self._buf) >= LENGTH.size:
            (length,) = LENGTH.unpack_from(self._buf)
            if length > MAX_FRAME:
                raise RemoteProtocolError(f"frame of {length} bytes exceeds {MAX_FRAME}")
            end = LENGTH.size + length
            if len(self._buf) < end:
                break
            bodies.append(bytes(self._buf[LENGTH.size : end]))
            del self._buf[:end]
        return bodies


def encode_message(kind: Msg, *fields: Any) -> bytes:
    return msgpack.packb([int(kind), *fields], use_bin_type=True)


@dataclass(frozen=True)
class Message:
    kind: Msg
    fields: tuple[Any, ...]


# Number of fields after the type: (fewest, most). REFUSE's kind came after version 1 shipped.
_ARITY: dict[Msg, tuple[int, int]] = {
    Msg.HELLO: (1, 1),
    Msg.FEATURES: (1, 1),
    Msg.HEARTBEAT: (0, 0),
    Msg.TOPOLOGY: (1, 1),
    Msg.DIGEST: (1, 1),
    Msg.REQUEST: (1, 1),
    Msg.BROADCAST: (4, 4),
    Msg.UNICAST: (4, 4),
    Msg.REFUSE: (2, 3),
    Msg.SUMMARY: (1, 1),
}


def decode_message(body: bytes) -> Message:
    """Decode one frame body (already opened if sealed); TOPOLOGY's entries come back as
    `PeerEntry`s.

    Raises:
        RemoteProtocolError: anything that is not a well-formed message of a known type
            with every field within its bound.
    """
    try:
        obj = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        raise RemoteProtocolError(f"undecodable message: {exc.__class__.__name__}") from None
    if not isinstance(obj, list) or not obj or type(obj[0]) is not int:
        raise RemoteProtocolError("message is not an array starting with its type")
    try:
        kind = Msg(obj[0])
    except ValueError:
        raise RemoteProtocolError(f"unknown message type {obj[0]}") from None
    fields = tuple(obj[1:])
    fewest, most = _ARITY[kind]
    if not fewest <= len(fields) <= most:
        raise RemoteProtocolError(f"malformed {kind.name} message: {len(fields)} fields")
    return Message(kind, schema.CHECKS[kind](fields))
