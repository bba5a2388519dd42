"""One control connection as a sans-IO state machine: bytes in, messages and bytes out.

Theory of operation. Both sides speak at once; nobody waits for the other to go first::

    state        we have sent                  we wait for          then
    PREAMBLE     preamble + HELLO              their preamble       negotiate the version
    HELLO        (same)                        their HELLO          derive keys; send FEATURES
    FEATURES     + FEATURES                    their FEATURES       established
    ESTABLISHED  any message                   any message          ...
    CLOSED       nothing more                  nothing more

HELLO is always plaintext; on a password-protected mesh it carries our ephemeral X25519
key and every later body is sealed (session.py). FEATURES carries who we are
(name, nickname, incarnation, ports, feature map); a wrong password shows up as a
FEATURES box that will not open.

Errors: anything malformed, out of its bounds (`wire.decode_message` checks every field)
or forged raises `RemoteProtocolError` from `receive_data` and moves the connection to
CLOSED; the runtime then closes the socket.
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, Any

from meshnet.errors import HandshakeRefused, LocalProtocolError, Refusal, RemoteProtocolError
from meshnet.mesh import wire
if TYPE_CHECKING:  # session.py loads `cryptography` (7 MiB): only an encrypted mesh needs it
    from meshnet.mesh.session import Session
from meshnet.mesh.wire import Message, Msg


class State(Enum):
    PREAMBLE = "preamble"
    HELLO = "hello"
    FEATURES = "features"
    ESTABLISHED = "established"
    CLOSED = "closed"


class ControlConnection:
    def __init__(self, *, initiator: bool, password: bytes | None, features: dict[str, Any]):
        self.initiator = initiator
        self.state = State.PREAMBLE
        self.version: int | None = None
        self.remote: dict[str, Any] = {}  # their FEATURES once established
        self.session: Session | None = None
        self._password = password
        self._features = features
        self._ephemeral = None
        if password is not None:
            from meshnet.mesh.session import Ephemeral

            self._ephemeral = Ephemeral()
        self._preamble = bytearray()
        self._reader = wire.FrameReader()
        hello = {"encrypt": password is not None, "pub": self._ephemeral.public if self._ephemeral else None}
        self._out = bytearray(wire.encode_preamble() + wire.frame(wire.encode_message(Msg.HELLO, hello)))

    @property
    def encrypted(self) -> bool:
        return self.session is not None

    def data_to_send(self) -> bytes:
        data = bytes(self._out)
        self._out.clear()
        return data

    def send(self, kind: Msg, *fields: Any) -> None:
        if self.state is not State.ESTABLISHED:
            raise LocalProtocolError(f"cannot send {kind.name} in state {self.state.value}")
        self._send_body(wire.encode_message(kind, *fields))

    def refuse(self, refusal: Refusal, reason: str) -> None:
        """Queue a REFUSE for the peer (if it can read one) and close."""
        if self.state in (State.FEATURES, State.ESTABLISHED):
            self._send_body(wire.encode_message(Msg.REFUSE, reason, refusal.retry, refusal.value))
        self.state = State.CLOSED

    def receive_data(self, data: bytes) -> list[Message]:
        """Feed bytes from the socket; return the messages they completed (after the handshake).

        Raises:
            RemoteProtocolError: the peer misbehaved; the connection is now CLOSED.
            HandshakeRefused: the handshake cannot succeed (reason says why).
        """
        try:
            return self._receive(data)
        except RemoteProtocolError:
            self.state = State.CLOSED
            raise

    def _receive(self, data: bytes) -> list[Message]:
        if self.state is State.CLOSED:
            return []
        if self.state is State.PREAMBLE:
            need = wire.PREAMBLE_LEN - len(self._preamble)
            self._preamble += data[:need]
            data = data[need:]
            if len(self._preamble) < wire.PREAMBLE_LEN:
                return []
            self.version = wire.negotiate(bytes(self._preamble))
            self.state = State.HELLO
        messages = []
        for body in self._reader.feed(data):
            if self.state is State.HELLO:
                self._on_hello(wire.decode_message(body))
            elif self.state is State.FEATURES:
                self._on_features(self._open(body))
            elif self.state is State.ESTABLISHED:
                message = wire.decode_message(self._open_body(body))
                if message.kind is Msg.REFUSE:
                    self.state = State.CLOSED
                    raise _refused_by_peer(message)
                messages.append(message)
            else:
                break
        return messages

    def _on_hello(self, message: Message) -> None:
        if message.kind is not Msg.HELLO:
            raise RemoteProtocolError(f"expected HELLO, got {message.kind.name}")
        hello = message.fields[0]
        theirs_encrypted = hello.get("encrypt") is True
        if self._ephemeral is not None and not theirs_encrypted:
            raise HandshakeRefused(Refusal.PASSWORD_MISMATCH, "we have a password but the peer has none (unencrypted)")
        if self._ephemeral is None and theirs_encrypted:
            raise HandshakeRefused(Refusal.PASSWORD_MISMATCH, "the peer requires a password but we have none")
        if self._ephemeral is not None:
            their_pub = hello.get("pub")
            if not isinstance(their_pub, bytes):
                raise RemoteProtocolError("HELLO lacks the public key")
            shared = self._ephemeral.exchange(their_pub)
            ours = self._ephemeral.public
            from meshnet.mesh.session import Session

            self.session = Session(
                shared=shared,
                password=self._password or b"",
                initiator=self.initiator,
                pub_initiator=ours if self.initiator else their_pub,
                pub_acceptor=their_pub if self.initiator else ours,
            )
        self.state = State.FEATURES
        self._send_body(wire.encode_message(Msg.FEATURES, self._features))

    def _open(self, body: bytes) -> Message:
        try:
            plain = self._open_body(body)
        except RemoteProtocolError:
            raise HandshakeRefused(Refusal.WRONG_PASSWORD, "wrong password: the peer's first sealed message did not authenticate")
        return wire.decode_message(plain)

    def _on_features(self, message: Message) -> None:
        if message.kind is Msg.REFUSE:
            raise _refused_by_peer(message)
        if message.kind is not Msg.FEATURES:
            raise RemoteProtocolError(f"expected FEATURES, got {message.kind.name}")
        self.remote = message.fields[0]  # name, nick, uid, ports: checked by the decoder
        self.state = State.ESTABLISHED

    def _send_body(self, body: bytes) -> None:
        if self.session is not None:
            body = self.session.seal(body)
        self._out += wire.frame(body)

    def _open_body(self, body: bytes) -> bytes:
        return self.session.open(body) if self.session is not None else body


def _refused_by_peer(message: Message) -> HandshakeRefused:
    """The peer's REFUSE: its reason as prose, its kind (a peer without one: OTHER), its retry."""
    reason, retry, *kind = message.fields
    refusal = Refusal.from_wire(kind[0]) if kind else Refusal.OTHER
    return HandshakeRefused(refusal, f"peer refused: {reason}", retry=retry)
