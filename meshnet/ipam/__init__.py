"""IP address management: a sans-IO allocator over a gossiped ownership ring.

No I/O here at all: persistence goes through the `Store` protocol (`store.py`). The sqlite
store and the CNI release journal live in `meshnet/state/`; the runtime
(`meshnet/runtime/ipam_service.py`) opens them and feeds the journal in as plain values.

Modules, one job each:
  allocator  the facade the runtime drives (start reading here)
  engine     the allocator's state and its transitions: messages, progress, commits
  addr       parse/check the range, subnets and addresses (IPv4 as ints)
  ring       the ownership ring CRDT and its safety argument
  space      the addresses this peer handed out
  paxos      consensus bootstrap (single-decree Paxos over gossip)
  bootstrap  --ipalloc-init modes and the way to the first ring (Bootstrap)
  donation   choosing a donor, asking it (Seeker), carving space out of a range; hints
  reclaim    rmpeer: taking a dead peer's ranges, confirmed with every reachable peer;
             the peers removed with rmpeer (Removed)
  wire       the msgpack payload format (copy its docstring into docs/protocol.md)
  store      the Store protocol the allocator persists through (Snapshot, Changes)
  status     the frozen view of an allocator (IpamView) and the `status ipam` report
  outcome    Result, Pending, Outgoing; the queue of waiting requests (Requests)
  errors     the IpamError family
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
from meshnet.ipam.status import IpamView, RangeView
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
    "IpamView",
    "NoHeir",
    "NotHeld",
    "NotOwner",
    "Outgoing",
    "Pending",
    "PeerReachable",
    "RangeExhausted",
    "RangeView",
    "Result",
    "Snapshot",
    "Store",
]
