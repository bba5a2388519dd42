"""The sleeve datagram AEAD, in Python: the reference the compiled pump must match.

One AEAD per datagram (docs/sleeve.md has the byte layout)::

    nonce      = 4 zero bytes || counter (u64, big endian)       12 bytes
    associated = header (12 bytes, flags has SEALED) || counter   20 bytes
    datagram   = associated || AES-256-GCM(key, nonce, frame, associated)   (ciphertext || 16-byte tag)

Keys: 32 bytes per peer pair and direction (`Session.sleeve_keys`), installed with an
epoch; the header's KEY_ID bit is the epoch's low bit, so a receiver holds the keys of two
epochs and in-flight datagrams of the old one still open during a rekey. A send key's
counter starts at 0 and never repeats (it stops at REJECT_AFTER_MESSAGES; from
REKEY_AFTER_MESSAGES on the router must install new keys); a receive key
has a replay window of REPLAY_WINDOW counters below the highest counter opened so far.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from meshnet.dataplane.layout import (
    COUNTER_LEN,
    FLAG_KEY_ID,
    FLAG_SEALED,
    HEADER_LEN,
    KEY_LEN,
    REJECT_AFTER_MESSAGES,
    REPLAY_WINDOW,
    SEALED_HEADER_LEN,
    TAG_LEN,
)


def nonce(counter: int) -> bytes:
    return b"\0\0\0\0" + counter.to_bytes(COUNTER_LEN, "big")


def check_key(key: bytes, what: str) -> bytes:
    key = bytes(key)
    if len(key) != KEY_LEN:
        raise ValueError(f"{what} must be {KEY_LEN} bytes, got {len(key)}")
    return key


def seal(key: bytes, header: bytes, counter: int, frame: bytes) -> bytes:
    """The sealed datagram for `frame`; header is the 12-byte sleeve header (SEALED set)."""
    ad = header + counter.to_bytes(COUNTER_LEN, "big")
    return ad + AESGCM(key).encrypt(nonce(counter), frame, ad)


def open_(key: bytes, datagram: bytes) -> bytes | None:
    """The frame in a sealed datagram, or None if it does not authenticate."""
    ad = datagram[:SEALED_HEADER_LEN]
    counter = int.from_bytes(datagram[HEADER_LEN:SEALED_HEADER_LEN], "big")
    try:
        return AESGCM(key).decrypt(nonce(counter), datagram[SEALED_HEADER_LEN:], ad)
    except InvalidTag:
        return None


def key_id_flags(epoch: int) -> int:
    return FLAG_SEALED | (FLAG_KEY_ID if epoch & 1 else 0)


class ReplayWindow:
    """Accepts each counter once: anything above the highest seen, or within REPLAY_WINDOW
    below it and not seen before; never one at or above REJECT_AFTER_MESSAGES. `check`
    before opening, `accept` after it authenticated."""

    def __init__(self) -> None:
        self.top = 0  # highest accepted counter + 1 (0: none yet)
        self.seen: set[int] = set()  # accepted counters (those below top - REPLAY_WINDOW are moot)

    def check(self, counter: int) -> bool:
        if counter >= REJECT_AFTER_MESSAGES:  # no sender ever uses it: never valid
            return False
        if counter >= self.top:
            return True
        return self.top - counter <= REPLAY_WINDOW and counter not in self.seen

    def accept(self, counter: int) -> None:
        if counter >= self.top:
            self.top = counter + 1
            if len(self.seen) > 2 * REPLAY_WINDOW:  # forget what fell below the window
                floor = self.top - REPLAY_WINDOW
                self.seen = {c for c in self.seen if c >= floor}
        self.seen.add(counter)


class TxKey:
    def __init__(self, key: bytes, epoch: int) -> None:
        self.key = key
        self.epoch = epoch
        self.aead = AESGCM(key)
        self.counter = 0

    def seal(self, header: bytes, frame: bytes) -> bytes | None:
        """header: the 12-byte header with SEALED/KEY_ID set. None once the key is used up."""
        if self.counter >= REJECT_AFTER_MESSAGES:
            return None
        ad = header + self.counter.to_bytes(COUNTER_LEN, "big")
        box = self.aead.encrypt(nonce(self.counter), frame, ad)
        self.counter += 1
        return ad + box


class RxKey:
    def __init__(self, key: bytes, epoch: int) -> None:
        self.key = key
        self.epoch = epoch
        self.aead = AESGCM(key)
        self.window = ReplayWindow()

    def open(self, datagram: bytes) -> tuple[str, bytes | None]:
        """("ok", frame), ("replay", None) or ("auth", None)."""
        counter = int.from_bytes(datagram[HEADER_LEN:SEALED_HEADER_LEN], "big")
        if not self.window.check(counter):
            return "replay", None
        try:
            frame = self.aead.decrypt(nonce(counter), datagram[SEALED_HEADER_LEN:], datagram[:SEALED_HEADER_LEN])
        except InvalidTag:
            return "auth", None
        self.window.accept(counter)
        return "ok", frame


__all__ = ["TAG_LEN", "ReplayWindow", "RxKey", "TxKey", "check_key", "key_id_flags", "nonce", "open_", "seal"]
