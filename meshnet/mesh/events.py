"""What the mesh core returns to the runtime (events) and keeps per connection (`Conn`).

Plain data, no behaviour: `core.py` makes them, `runtime/control.py` acts on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from meshnet.errors import Refusal
from meshnet.mesh.wire import Msg


@dataclass(frozen=True)
class Send:
    conn: int
    kind: Msg
    fields: tuple[Any, ...]


@dataclass(frozen=True)
class Close:
    conn: int
    reason: str
    refusal: Refusal = Refusal.CLOSING


@dataclass(frozen=True)
class Refused:
    """`add_connection` did not admit a connection: why (the enum) and a line for people."""

    refusal: Refusal
    reason: str


@dataclass(frozen=True)
class Deliver:
    channel: str
    src: bytes
    payload: bytes
    unicast: bool


@dataclass(frozen=True)
class Changed:
    """The topology changed (reachability, routes or someone's data)."""


Event = Send | Close | Deliver | Changed


@dataclass
class Conn:
    peer: bytes
    nick: str
    uid: int
    ip: str
    port: int
    udp_port: int
    outbound: bool
    since: float
    last_rx: float
    last_tx: float
    features: dict[str, Any]
    last_ack: float = float("-inf")  # the peer's kernel last acknowledged our data
