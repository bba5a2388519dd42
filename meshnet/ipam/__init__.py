"""IP address management: a sans-IO allocator over a gossiped ownership ring.

No I/O here at all: persistence goes through the `Store` protocol (`store.py`). The sqlite
store and the CNI release journal live in `meshnet/state/`; the runtime
(`meshnet/runtime/ipam_service.py`) opens them and feeds the journal in as plain values.

Modules, one job each:
  addr       parse/check the range, subnets and addresses (IPv4 as ints)
  ring       the ownership ring CRDT and its safety argument
  space      the addresses this peer handed out
  paxos      consensus bootstrap (single-decree Paxos over gossip)
  bootstrap  --ipalloc-init modes and the first ring
  donation   choosing a donor; carving space out of a range
  reclaim    rmpeer: taking a dead peer's ranges, confirmed with every reachable peer
  wire       the msgpack payload format (copy its docstring into docs/protocol.md)
  store      the Store protocol the allocator persists through (Snapshot, Changes)
  status     the `status ipam` report
  outcome    Result, Pending, Outgoing
  errors     the IpamError family
  allocator  the facade the runtime drives (start reading here)
"""

from meshnet.ipam.allocator import Allocator
from meshnet.ipam.errors import (
    AddressInUse,
    Cancelled,
    IpamBadRequest,
    IpamConfigError,
    IpamError,
    IpamProtocolError,
    NoHeir,
    NotHeld,
    NotOwner,
    PeerReachable,
    RangeExhausted,
)
from meshnet.ipam.outcome import Outgoing, Pending, Result
from meshnet.ipam.store import Changes, Snapshot, Store

__all__ = [
    "AddressInUse",
    "Allocator",
    "Cancelled",
    "Changes",
    "IpamBadRequest",
    "IpamConfigError",
    "IpamError",
    "IpamProtocolError",
    "NoHeir",
    "NotHeld",
    "NotOwner",
    "Outgoing",
    "Pending",
    "PeerReachable",
    "RangeExhausted",
    "Result",
    "Snapshot",
    "Store",
]
