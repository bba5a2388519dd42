"""meshnet's exception hierarchy.

`LocalProtocolError`: we were asked to do something the protocol forbids (a bug or misuse).
`RemoteProtocolError`: the peer sent something malformed, forged or out of order; the
connection that carried it is closed, the router carries on.
Decoders raise only `RemoteProtocolError` for hostile input; anything else escaping a
decoder is a bug (the fuzz tests hold us to that).
"""


class MeshnetError(Exception):
    """Base of every error meshnet raises on purpose."""


class UsageError(MeshnetError):
    """Bad input from a user or API caller: a clear message, nothing changed."""


class ProtocolError(MeshnetError):
    """A control-plane protocol violation."""


class LocalProtocolError(ProtocolError):
    """We misused the protocol."""


class RemoteProtocolError(ProtocolError):
    """The peer misbehaved: malformed, forged, replayed or unexpected input."""


class HandshakeRefused(RemoteProtocolError):
    """The handshake ended on purpose: wrong password, duplicate name, version mismatch."""

    def __init__(self, reason: str, *, retry: bool = True):
        super().__init__(reason)
        self.reason = reason
        self.retry = retry  # False: dialling again cannot succeed (e.g. connecting to ourselves)
