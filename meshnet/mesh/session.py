"""Keys and sealing for one control connection on a password-protected mesh.

Key schedule (HKDF-SHA256, RFC 5869)::

    shared = X25519(our ephemeral private key, their ephemeral public key)
    salt   = SHA-256("meshnet password v1" || password)
    prk    = HKDF-Extract(salt, shared)
    control keys (32 B each) = HKDF-Expand(prk, "meshnet/1 control" || pub_initiator || pub_acceptor, 64)
        first half: initiator -> acceptor, second half: acceptor -> initiator
    sleeve keys  (32 B each) = HKDF-Expand(prk, "meshnet/1 sleeve" || name_low || name_high, 64)
        first half: low-named peer -> high-named peer, second half: the reverse

The password is never sent; a peer with another password derives other keys, so its
first sealed message (FEATURES) fails to open and the handshake is refused. Fresh
ephemeral keys per connection give forward secrecy.

Control messages are sealed with AES-256-GCM (AES-NI on our machines beats ChaCha20).
Nonce: 4 zero bytes || 64-bit big-endian message counter, one counter per direction,
starting at 0. The counter is not sent: TCP delivers in order, so the receiver expects
exactly the next one, and a replayed, reordered, dropped or forged message fails to open
and closes the connection. A direction is closed before its counter could wrap.
"""

from __future__ import annotations

import hashlib

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from meshnet.errors import RemoteProtocolError

PUBLIC_KEY_LEN = 32
TAG_LEN = 16
MAX_MESSAGES = 2**63  # per direction; far beyond any connection's life, checked anyway


def _hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    import hmac

    return hmac.new(salt, ikm, hashlib.sha256).digest()


def _hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    return HKDFExpand(algorithm=hashes.SHA256(), length=length, info=info).derive(prk)


class Ephemeral:
    """A fresh X25519 key pair for one connection."""

    def __init__(self) -> None:
        self._private = X25519PrivateKey.generate()
        self.public = self._private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def exchange(self, their_public: bytes) -> bytes:
        if len(their_public) != PUBLIC_KEY_LEN:
            raise RemoteProtocolError("public key has the wrong length")
        try:
            return self._private.exchange(X25519PublicKey.from_public_bytes(their_public))
        except ValueError:  # all-zero shared secret: a low-order point
            raise RemoteProtocolError("invalid public key") from None


class Session:
    """The keys one connection derived; seals outgoing and opens incoming bodies."""

    def __init__(self, *, shared: bytes, password: bytes, initiator: bool, pub_initiator: bytes, pub_acceptor: bytes):
        salt = hashlib.sha256(b"meshnet password v1" + password).digest()
        self._prk = _hkdf_extract(salt, shared)
        keys = _hkdf_expand(self._prk, b"meshnet/1 control" + pub_initiator + pub_acceptor, 64)
        i2a, a2i = keys[:32], keys[32:]
        self._tx = AESGCM(i2a if initiator else a2i)
        self._rx = AESGCM(a2i if initiator else i2a)
        self._tx_count = 0
        self._rx_count = 0

    @staticmethod
    def _nonce(counter: int) -> bytes:
        return b"\0\0\0\0" + counter.to_bytes(8, "big")

    def seal(self, plaintext: bytes) -> bytes:
        if self._tx_count >= MAX_MESSAGES:
            raise RemoteProtocolError("message counter exhausted; reconnect to rekey")
        box = self._tx.encrypt(self._nonce(self._tx_count), plaintext, None)
        self._tx_count += 1
        return box

    def open(self, box: bytes) -> bytes:
        """Raises RemoteProtocolError for a forged, replayed, reordered or truncated box."""
        if len(box) < TAG_LEN:
            raise RemoteProtocolError("sealed message shorter than its tag")
        try:
            plaintext = self._rx.decrypt(self._nonce(self._rx_count), box, None)
        except InvalidTag:
            raise RemoteProtocolError("message failed authentication (forged, replayed or reordered)") from None
        self._rx_count += 1
        return plaintext

    def sleeve_keys(self, local_name: bytes, remote_name: bytes) -> tuple[bytes, bytes]:
        """Return (send key, receive key) for the sleeve data path with this peer."""
        low, high = sorted((local_name, remote_name))
        keys = _hkdf_expand(self._prk, b"meshnet/1 sleeve" + low + high, 64)
        low_to_high, high_to_low = keys[:32], keys[32:]
        return (low_to_high, high_to_low) if local_name == low else (high_to_low, low_to_high)
