"""What the allocator hands back, and the queue of requests that wait for it.

`Result`, `Pending` and `Outgoing` are what the local API and the mesh see. `Requests`
holds the allocations and claims that could not be answered at once (no ring yet, a
donation in flight, an rmpeer being confirmed), oldest first, and the outcomes that ended
them until the runtime collects those (`Allocator.completed()`). A request ends exactly
once: with a `Result`, or with an `IpamError` (exhausted, cancelled, ...).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, Union

from meshnet.ipam.addr import Block
from meshnet.ipam.errors import IpamError


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


@dataclass
class Request:
    id: int
    owner: str
    block: Block  # the subnet to allocate in; for a claim, the universe
    address: int | None  # set for a claim
    reason: str  # why it waits; updated as that changes

    def pending(self) -> Pending:
        return Pending(self.id, self.reason)


class Requests:
    """The waiting requests, oldest first, and the outcomes not collected yet."""

    def __init__(self) -> None:
        self._waiting: dict[int, Request] = {}
        self._done: list[tuple[int, Result | IpamError]] = []

    def __len__(self) -> int:
        return len(self._waiting)

    def __iter__(self) -> Iterator[Request]:
        """Oldest first, over a copy: requests may be finished while iterating."""
        return iter(list(self._waiting.values()))

    def oldest(self) -> Request | None:
        return next(iter(self._waiting.values()), None)

    def allocation(self, owner: str, block: Block) -> Request | None:
        """The waiting allocation of `owner` in `block`, if any (asking again joins it)."""
        for req in self._waiting.values():
            if req.owner == owner and req.address is None and req.block == block:
                return req
        return None

    def claim(self, owner: str, address: int) -> Request | None:
        """The waiting claim of `address` by `owner`, if any."""
        for req in self._waiting.values():
            if req.owner == owner and req.address == address:
                return req
        return None

    def add(self, req: Request) -> None:
        self._waiting[req.id] = req

    def finish(self, req: Request, outcome: Result | IpamError) -> None:
        del self._waiting[req.id]
        self._done.append((req.id, outcome))

    def cancel(self, request_id: int) -> bool:
        """Forget a waiting request without an outcome (its caller gave up)."""
        return self._waiting.pop(request_id, None) is not None

    def completed(self) -> list[tuple[int, Result | IpamError]]:
        """The outcomes since the last call, in the order the requests ended; forgets them."""
        done, self._done = self._done, []
        return done
