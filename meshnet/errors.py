"""meshnet's exception hierarchy: one family for the whole program.

Domain code raises these; it never speaks HTTP or exit codes. Exactly two places turn
them into something else: the API transport (`meshnet/api/server.py`, HTTP status, with
the class's `kind` in the reply so the client can raise the same class again) and the
CLI (`meshnet/cli/main.py`, one line on stderr and an exit code).

    MeshnetError                 something failed                       HTTP 500, exit 1
      UsageError (ValueError)    bad input, nothing changed             HTTP 400, exit 2
      NotFound                   no such peer, endpoint, container      HTTP 404, exit 1
      Conflict                   already exists / held by someone else  HTTP 409, exit 1
      Unavailable                not now: no space yet, peer gone       HTTP 503, exit 1
      RouterUnavailable          no router answers on the socket        (client side), exit 1
        RouterLost               it went away after the request was sent: done or not, unknown
      ProtocolError              a control-plane protocol violation
        LocalProtocolError       we misused the protocol
        RemoteProtocolError      the peer sent garbage: its connection closes, nothing else
          HandshakeRefused       ended on purpose; `refusal` says why (an enum, never prose)

Kernel failures stay `OSError`s carrying their errno (`meshnet/kernel/errors.py`); the
transport maps those too, in the same place.
"""

from __future__ import annotations

import enum


class MeshnetError(Exception):
    """Base of every error meshnet raises on purpose."""

    kind = "error"  # stable name on the API wire; a subclass overrides it

    def __init__(self, message: str = ""):
        super().__init__(message)
        self.message = message


class UsageError(MeshnetError, ValueError):
    """Bad input from a user or API caller: a clear message, nothing changed."""

    kind = "usage"


class NotFound(MeshnetError):
    """The thing named does not exist (peer, endpoint, address, container)."""

    kind = "not_found"


class Conflict(MeshnetError):
    """The request collides with what exists: already attached, address held elsewhere."""

    kind = "conflict"


class Unavailable(MeshnetError):
    """Cannot be done now, may work later: no address yet, no peer to hand over to."""

    kind = "unavailable"


class RouterUnavailable(MeshnetError, ConnectionError):
    """No meshnet router answers on the API socket."""

    kind = "router_unavailable"


class RouterLost(RouterUnavailable):
    """The router went away after the request was sent: it may or may not have been carried out."""

    kind = "router_lost"


class ProtocolError(MeshnetError):
    """A control-plane protocol violation."""

    kind = "protocol"


class LocalProtocolError(ProtocolError):
    """We misused the protocol."""


class RemoteProtocolError(ProtocolError):
    """The peer misbehaved: malformed, forged, replayed or unexpected input."""


class Refusal(enum.Enum):
    """Why a connection was refused. The value is its name on the wire (REFUSE's third field)."""

    DUPLICATE_CONNECTION = "duplicate_connection"  # both sides dialled at once; the other one stays
    SELF = "self"  # we dialled our own address
    DUPLICATE_NAME = "duplicate_name"  # another router uses this peer name
    CONN_LIMIT = "conn_limit"  # the refusing side is full
    WRONG_PASSWORD = "wrong_password"  # a sealed handshake message did not authenticate
    PASSWORD_MISMATCH = "password_mismatch"  # one side has a password, the other none
    CLOSING = "closing"  # an established connection closed on purpose (timeout, rekey, shutdown)
    PROTOCOL_ERROR = "protocol_error"  # the peer sent a message out of its bounds or out of place
    OTHER = "other"  # a peer's reason we do not know (a newer or older peer)

    @property
    def retry(self) -> bool:
        """False when dialling the same address again cannot succeed."""
        return self not in (Refusal.SELF, Refusal.DUPLICATE_NAME)

    @property
    def benign(self) -> bool:
        """Nothing went wrong: nothing to count, report or retry."""
        return self is Refusal.DUPLICATE_CONNECTION

    @classmethod
    def from_wire(cls, value: object) -> Refusal:
        try:
            return cls(value)
        except ValueError:
            return cls.OTHER


class HandshakeRefused(RemoteProtocolError):
    """The handshake ended on purpose: wrong password, duplicate name, connection limit."""

    def __init__(self, refusal: Refusal, reason: str, *, retry: bool | None = None):
        super().__init__(reason)
        self.refusal = refusal
        self.reason = reason
        self.retry = refusal.retry if retry is None else retry


# HTTP status per error kind: the API transport answers with it, the client raises back.
_BY_KIND: dict[str, type[MeshnetError]] = {
    cls.kind: cls for cls in (MeshnetError, UsageError, NotFound, Conflict, Unavailable, ProtocolError)
}


def error_class(kind: object) -> type[MeshnetError]:
    """The class an API error reply names (`MeshnetError` for one we do not know)."""
    return _BY_KIND.get(kind if isinstance(kind, str) else "", MeshnetError)
