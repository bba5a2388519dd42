"""Regenerate tests/data/sleeve_vectors.json (only when the datagram format changes on
purpose, with docs/sleeve.md and layout.VERSION): PYTHONPATH=. .venv/bin/python tests/data/make_sleeve_vectors.py

Every vector is built by the Python reference (layout + sleeve_crypto) from its fields;
tests/pump/test_pump_vectors.py checks that the reference still builds the same bytes and
that both pumps send exactly these datagrams and accept them."""

from __future__ import annotations

import json
import pathlib
import struct

from meshnet.dataplane import sleeve_crypto
from meshnet.dataplane.layout import DEFAULT_TTL, FLAG_CSUM, HINT_SHIFT, TYPE_FRAME, VERSION, flow_hint

HERE = pathlib.Path(__file__).parent
KEY = bytes(range(0x40, 0x60))  # 32 bytes
ARP = bytes.fromhex("ffffffffffff" "02000a0b0c0d" "0806" "0001080006040001" "02000a0b0c0d" "0a200101" "000000000000" "0a200201") + bytes(18)
# an IPv4/TCP segment with a partial checksum (pseudo-header sum 0x4f35 in the checksum field)
TCP = bytes.fromhex(
    "020001020304" "02000a0b0c0d" "0800"
    "4500003c00074000400626b00a2001010a200201"
    "9c40145100000001000000635018020000000000"
) + b"meshnet sleeve v2"[:20].ljust(20, b".")


def _fix_tcp(frame: bytes) -> bytes:
    from meshnet.dataplane._pump_py.checksums import ipv4_header_checksum, pseudo_sum

    f = bytearray(frame)
    f[16:18] = (len(f) - 14).to_bytes(2, "big")
    ip = f[14:34]
    ipv4_header_checksum(ip)
    f[14:34] = ip
    f[50:52] = pseudo_sum(bytes(f), len(f) - 34, 6).to_bytes(2, "big")
    return bytes(f)


def vector(name, frame, *, src=0x0A0B0C0D, dst=0x01020304, ttl=DEFAULT_TTL, flags=0, key=None, epoch=0, counter=0):
    if key is None:
        datagram = struct.pack("!BBBBII", VERSION, TYPE_FRAME, flags, ttl, src, dst) + frame
    else:
        flags |= sleeve_crypto.key_id_flags(epoch)
        datagram = sleeve_crypto.seal(key, struct.pack("!BBBBII", VERSION, TYPE_FRAME, flags, ttl, src, dst), counter, frame)
    return {
        "name": name, "src": src, "dst": dst, "ttl": ttl, "flags": flags, "key": key.hex() if key else None,
        "epoch": epoch, "counter": counter, "frame": frame.hex(), "datagram": datagram.hex(),
    }


def main() -> None:
    tcp = _fix_tcp(TCP)
    tcp_flags = FLAG_CSUM | flow_hint(tcp) << HINT_SHIFT  # a TCP frame's datagrams carry its flow hint
    vectors = [
        vector("plain broadcast ARP", ARP),
        vector("plain TCP segment, partial checksum (CSUM), flow hint", tcp, flags=tcp_flags),
        vector("sealed ARP, epoch 0, counter 0", ARP, key=KEY),
        vector("sealed TCP segment, CSUM, flow hint, epoch 1, counter 2^30 + 5", tcp, flags=tcp_flags, key=KEY, epoch=1,
               counter=(1 << 30) + 5),
        vector("sealed, relayed once (ttl 7), epoch 2", ARP, ttl=7, key=KEY, epoch=2, counter=9),
    ]
    doc = {
        "format": f"meshnet sleeve datagram v{VERSION}, AEAD AES-256-GCM; see docs/sleeve.md",
        "nist_aes256gcm": [  # McGrew & Viega, GCM spec test cases 13 and 14 (key 0, IV 0)
            {"key": "00" * 32, "nonce": "00" * 12, "plaintext": "", "sealed": "530f8afbc74536b9a963b4f1c4cb738b"},
            {"key": "00" * 32, "nonce": "00" * 12, "plaintext": "00" * 16,
             "sealed": "cea7403d4d606b6e074ec5d3baf39d18d0d1c8a799996bf0265b98b5d48ab919"},
        ],
        "vectors": vectors,
    }
    (HERE / "sleeve_vectors.json").write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
