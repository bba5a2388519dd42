"""Peers that do not exist answer fastdp probes, so routers reach them over kernel VXLAN.

A scripted peer (`scripted_peer.py`) and the fake peers it announces have no router, so
a real router probes them, hears nothing and keeps them on the sleeve: their endpoints
are bridge entries to the TAP, not the VXLAN entries a mesh of real routers gets. Here
the scripted peer's namespace gets what a router's kernel would have: a VXLAN device on
the mesh's VNI and port, and the router's own kernel responder (`kernel/responder.py`),
one rule per peer id, so every probe is answered in the kernel by the id it was sent to.
Replies go back by the probing routers' probe MACs (`routers`: {peer id: underlay IP}).

    answer_probes("mnes-h3", "192.168.90.13", [peer_id(p) for p in names], {h1_id: h1_ip}, mtu=1410)

Nothing else arrives there: frames to the fake peers' endpoints are dropped by the device
(no bridge behind it). Everything goes with the namespace.
"""

from __future__ import annotations

import subprocess

from meshnet.dataplane.fastdp import VNI, VXLAN_PORT, probe_mac
from meshnet.kernel import responder

DEVICE = "vxmesh"
TABLE = "meshnet_scripted_probe"
TIMEOUT = 20.0  # seconds per command


def _run(cmd: list[str], *, stdin: str | None = None) -> None:
    result = subprocess.run(cmd, input=stdin, text=True, capture_output=True, timeout=TIMEOUT)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {result.stderr.strip()}")


def answer_probes(netns: str, local_ip: str, peer_ids: list[int], routers: dict[int, str], *, mtu: int) -> None:
    """Make probes to each of `peer_ids` arriving at `local_ip` in `netns` answered.

    Raises:
        RuntimeError: a command failed (no VXLAN, or nft without netdev `fwd`).
    """
    ns = ["ip", "-n", netns]
    _run([*ns, "link", "add", DEVICE, "type", "vxlan", "id", str(VNI), "dstport", str(VXLAN_PORT), "local", local_ip, "nolearning"])
    _run([*ns, "link", "set", DEVICE, "mtu", str(mtu), "up"])
    for rid, rip in routers.items():
        _run(["bridge", "-n", netns, "fdb", "add", probe_mac(rid), "dev", DEVICE, "dst", rip, "self", "permanent"])
    _run(["ip", "netns", "exec", netns, "nft", "-f", "-"], stdin=responder.script(DEVICE, list(peer_ids), TABLE))
