"""The kernel answers fastdp probes, so a peer's VXLAN path stays verified while no router runs.

Probes (meshnet/dataplane/fastdp.py) used to be answered by the router process; when it
stopped, crashed or was being upgraded, its peers saw no replies, dropped it to sleeve, and
the sleeve died with the process. Here one nftables rule on the VXLAN device's ingress
(family `netdev`) turns a probe request addressed to our probe MAC into the reply and sends
it back out of the same device, all in the kernel:

    ether type 0x88b5, dst = our probe MAC, src = a probe MAC, magic "MNfp", version 1, kind 1
      -> dst := src, src := our probe MAC, kind := 2 (reply), sender := our id, out via VXLAN

The reply is byte for byte what `ProbeSocket.send_reply` would send (same size, seq echoed),
so peers of any version accept it. The rule is kernel state like the FDB: it survives the
process, a restarted router replaces it (one nft transaction: never absent in between),
and `remove` takes it away when this router leaves for good (`reset`) or turns fastdp off.

nft runs as a subprocess, like the NAT table in `links.py`. Raises `KernelError` when nft
is missing or the kernel lacks netdev tables or `fwd` (then the router answers probes
itself, and its peers drop it to sleeve while it restarts).
"""

from __future__ import annotations

import errno
import subprocess

from meshnet.dataplane.fastdp import PROBE_ETHERTYPE, PROBE_MAGIC, PROBE_REPLY, PROBE_REQUEST, PROBE_VERSION, probe_mac
from meshnet.kernel.errors import KernelError

TABLE = "meshnet_probe"
NFT_TIMEOUT = 10.0  # seconds


def rule(device: str, peer_id: int) -> str:
    """The nft rule that answers probes to `peer_id` arriving on `device`, in the kernel."""
    me = probe_mac(peer_id)
    header = int.from_bytes(PROBE_MAGIC + bytes([PROBE_VERSION, PROBE_REQUEST]), "big")
    # Offsets in bits from the Ethernet header: src MAC 48, magic 112 (6 bytes with version
    # and kind), kind 152, sender id 176 (meshnet/dataplane/fastdp.py, "Probe frame").
    return (
        f"ether type {PROBE_ETHERTYPE:#06x} ether daddr {me} @ll,48,16 0x4e50 @ll,112,48 {header:#014x} "
        f"ether daddr set ether saddr ether saddr set {me} @ll,152,8 set {PROBE_REPLY} @ll,176,32 set {peer_id:#x} "
        f'fwd to "{device}"'
    )


def script(device: str, peer_ids: list[int] | int, table: str = TABLE) -> str:
    """The nft transaction that (re)defines the responder for `device` and our peer id (a
    scripted peer in a test, meshnet/testing/probe_answer.py, answers for several)."""
    ids = [peer_ids] if isinstance(peer_ids, int) else peer_ids
    rules = "".join(f"    {rule(device, pid)}\n" for pid in ids)
    return (
        f"table netdev {table}\ndelete table netdev {table}\n"
        f"table netdev {table} {{\n  chain probe {{\n"
        f'    type filter hook ingress device "{device}" priority 0; policy accept;\n'
        f"{rules}  }}\n}}\n"
    )


def _nft(text: str) -> None:
    try:
        result = subprocess.run(["nft", "-f", "-"], input=text, text=True, capture_output=True, timeout=NFT_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KernelError(errno.ENOENT, f"cannot run nft (install nftables): {exc}") from None
    if result.returncode != 0:
        raise KernelError(errno.EINVAL, f"nft failed: {result.stderr.strip()}")


def install(device: str, peer_id: int) -> None:
    """Answer probes to `peer_id` arriving on `device` in the kernel; replaces an older rule."""
    _nft(script(device, peer_id))


def remove() -> None:
    """Stop answering probes in the kernel (absent already is fine)."""
    _nft(f"table netdev {TABLE}\ndelete table netdev {TABLE}\n")
