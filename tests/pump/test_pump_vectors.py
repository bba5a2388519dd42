"""Golden vectors (tests/data/sleeve_vectors.json) freeze the datagram format: the Python
reference still builds them, both pumps send exactly them and accept them; NIST vectors
pin the AEAD to AES-256-GCM."""

from __future__ import annotations

import json
import pathlib
import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from meshnet.dataplane import sleeve_crypto
from meshnet.dataplane.layout import FLAG_CSUM, TYPE_FRAME, VERSION
from pump_harness import Rig

DATA = json.loads((pathlib.Path(__file__).parent.parent / "data" / "sleeve_vectors.json").read_text())
VECTORS = DATA["vectors"]
OTHER_KEY = b"\x77" * 32


def test_the_format_version_is_the_one_frozen():
    assert DATA["format"].startswith(f"meshnet sleeve datagram v{VERSION},")


@pytest.mark.parametrize("case", DATA["nist_aes256gcm"])
def test_nist_aes_256_gcm(case):
    aead = AESGCM(bytes.fromhex(case["key"]))
    assert aead.encrypt(bytes.fromhex(case["nonce"]), bytes.fromhex(case["plaintext"]), None).hex() == case["sealed"]
    assert sleeve_crypto.nonce(0) == bytes(12)


@pytest.mark.parametrize("v", VECTORS, ids=[v["name"] for v in VECTORS])
def test_the_reference_builds_the_vector(v):
    header = struct.pack("!BBBBII", VERSION, TYPE_FRAME, v["flags"], v["ttl"], v["src"], v["dst"])
    frame = bytes.fromhex(v["frame"])
    if v["key"] is None:
        assert (header + frame).hex() == v["datagram"]
    else:
        key = bytes.fromhex(v["key"])
        assert sleeve_crypto.seal(key, header, v["counter"], frame).hex() == v["datagram"]
        assert sleeve_crypto.open_(key, bytes.fromhex(v["datagram"])) == frame


@pytest.mark.parametrize("v", VECTORS, ids=[v["name"] for v in VECTORS])
def test_both_pumps_send_and_accept_the_vector(impl, v):
    if v["ttl"] != 8:
        pytest.skip("a relayed datagram: accepted only (below)")
    crypto = v["key"] is not None
    frame = bytes.fromhex(v["frame"])
    datagram = bytes.fromhex(v["datagram"])
    tx = Rig(impl, v["src"], crypto=crypto, vnet_hdr=True)
    rx = Rig(impl, v["dst"], crypto=crypto)
    try:
        tx.connect(v["dst"])
        tx.pump.set_mac(frame[:6], v["dst"]) if not frame[0] & 1 else None
        rx.pump.set_peer(v["src"], tx.remote(v["dst"]).getsockname(), v["src"])
        rx.remotes[v["src"]] = tx.remote(v["dst"])  # rx hears the vector from that socket
        if crypto:
            key = bytes.fromhex(v["key"])
            tx.pump.set_peer_keys(v["dst"], key, OTHER_KEY, epoch=v["epoch"])
            tx.pump._set_tx_counter(v["dst"], v["counter"])
            rx.pump.set_peer_keys(v["src"], OTHER_KEY, key, epoch=v["epoch"])
        csum = v["flags"] & FLAG_CSUM
        vh = struct.pack("<BBHHHH", 1, 0, 0, 0, 34, 16) if csum else bytes(10)
        tx.to_tap(vh + frame)
        tx.run_until_idle()
        assert [d.hex() for d in tx.received(v["dst"])] == [v["datagram"]]
        rx.remotes[v["src"]].sendto(datagram, rx.addr)
        while rx.stats()["udp_rx"] < 1:
            rx.pump.poll(100)
        out = rx.from_tap()
        if csum:
            from meshnet.dataplane._pump_py.checksums import complete_checksum

            frame = complete_checksum(frame, 34, 16)
        assert out == [frame]
    finally:
        tx.close()
        rx.close()


def test_both_pumps_accept_the_relayed_vector(impl):
    v = next(v for v in VECTORS if v["ttl"] != 8)
    rx = Rig(impl, v["dst"], crypto=True)
    try:
        rx.connect(0x0A0B0C00)  # the relay that sent it; the origin is known, not direct
        rx.pump.set_peer(v["src"], None, 0x0A0B0C00)
        rx.pump.set_peer_keys(0x0A0B0C00, OTHER_KEY, bytes.fromhex(v["key"]), epoch=v["epoch"])
        rx.send_from(0x0A0B0C00, bytes.fromhex(v["datagram"]))
        rx.run_until_idle()
        assert rx.from_tap() == [bytes.fromhex(v["frame"])]
        assert rx.pump.macs() == {bytes.fromhex(v["frame"])[6:12]: v["src"]}  # learned behind the origin
    finally:
        rx.close()
