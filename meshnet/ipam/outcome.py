"""What the allocator hands back: results, pending requests, outgoing messages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union


@dataclass(frozen=True, slots=True)
class Result:
    """An address held by `owner`, with the prefix length of the block it came from."""

    owner: str
    address: str
    prefixlen: int

    @property
    def cidr(self) -> str:
        return f"{self.address}/{self.prefixlen}"


@dataclass(frozen=True, slots=True)
class Pending:
    """A request that waits for space; its outcome appears in `Allocator.completed()`."""

    request_id: int
    reason: str  # why it waits, as status would say it


Broadcast = tuple[Literal["broadcast"], bytes]
Unicast = tuple[Literal["unicast"], bytes, bytes]  # ("unicast", destination peer, payload)
Outgoing = Union[Broadcast, Unicast]
