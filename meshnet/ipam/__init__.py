"""IP address management: a sans-IO allocator over a gossiped ownership ring.

Modules, one job each:
  addr       parse/check the range, subnets and addresses (IPv4 as ints)
  ring       the ownership ring CRDT and its safety argument
  space      the addresses this peer handed out
  paxos      consensus bootstrap (single-decree Paxos over gossip)
  bootstrap  --ipalloc-init modes and the first ring
  donation   choosing a donor; carving space out of a range
  reclaim    rmpeer: taking a dead peer's ranges, confirmed with every reachable peer
  wire       the msgpack payload format (copy its docstring into docs/protocol.md)
  store      persistence: sqlite (WAL) and an in-memory twin for simulations
  journal    releases recorded by the CNI plugin while the router is down
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
from meshnet.ipam.journal import Journal, Release
from meshnet.ipam.outcome import Outgoing, Pending, Result
from meshnet.ipam.store import MemoryStore, SqliteStore, Store

__all__ = [
    "AddressInUse",
    "Allocator",
    "Cancelled",
    "IpamBadRequest",
    "IpamConfigError",
    "IpamError",
    "IpamProtocolError",
    "Journal",
    "MemoryStore",
    "NoHeir",
    "NotHeld",
    "NotOwner",
    "Outgoing",
    "Pending",
    "PeerReachable",
    "RangeExhausted",
    "Release",
    "Result",
    "SqliteStore",
    "Store",
]
