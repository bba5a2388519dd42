"""IPAM errors: every failure the allocator raises on purpose is an `IpamError`.

Each also derives from the kind in `meshnet.errors` it is (usage, conflict, unavailable), so the
API transport maps the whole family to HTTP status in its one place. Every one of them is
raised before anything is changed. Hostile or malformed gossip raises `IpamProtocolError`
(a `RemoteProtocolError`) and nothing else.
"""

from __future__ import annotations

from meshnet.errors import Conflict, MeshnetError, RemoteProtocolError, Unavailable, UsageError


class IpamError(MeshnetError):
    """Base of every error the IPAM core raises on purpose."""


class IpamConfigError(IpamError, UsageError, ValueError):
    """Bad `--ipalloc-range` / `--ipalloc-init`, or a state dir that does not match them."""


class IpamProtocolError(IpamError, RemoteProtocolError):
    """A peer sent an IPAM payload we cannot decode or that breaks the format's rules."""


class IpamBadRequest(IpamError, UsageError, ValueError):
    """Malformed request: invalid CIDR or address, outside the range, empty owner."""


class AddressInUse(IpamError, Conflict):
    """The address is held by another owner."""


class NotHeld(IpamError, UsageError):
    """Release named an address that this owner does not hold."""


class NotOwner(IpamError, Conflict):
    """The address lies in a range owned by another peer; claim it there."""


class RangeExhausted(IpamError, Unavailable):
    """No free address is left in the requested subnet on any reachable peer."""


class PeerReachable(IpamError, Conflict):
    """rmpeer refused: the peer is reachable, so it is not gone."""


class Tombstoned(IpamError, Conflict):
    """This peer was removed with rmpeer (its space is someone else's): it must reset first."""


class NoHeir(IpamError, Unavailable):
    """reset refused: no reachable peer can take this peer's ranges."""


class Cancelled(IpamError, Unavailable):
    """A pending request ended without an address (released, reset, or cancelled)."""
