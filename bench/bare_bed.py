"""The bare bed: two lab hosts without meshnet, for the baselines and the peers.

Baselines: `raw` (the underlay), kernel VXLAN configured by hand host to host
(`kvxlan-host`) and between containers (`kvxlan-ctr`: veth -> bridge -> VXLAN, the very
shape meshnet's fastdp builds, with the container MTU meshnet would give it). The peers
(tinc, nebula, fastd, wireguard-go) are in `bench.peers`; each is measured when its
programs are installed and skipped with the reason otherwise.
"""

from __future__ import annotations

import subprocess

from bench import peers
from bench.bed import Bed
from bench.catalog import Path, Skip
from bench.tools import Pair, wait_ping
from meshnet.dataplane.layout import overlay_mtu

UNDERLAY_MTU = 1500  # the lab's veths


def ip(ns: str, *args: str) -> None:
    out = subprocess.run(["ip", "-n", ns, *args], capture_output=True, text=True, timeout=20)
    if out.returncode != 0:
        raise Skip(f"ip -n {ns} {' '.join(args)}: {out.stderr.strip()}")


def _vxlan(bed: Bed, i: int, dev: str, vni: int, port: int) -> None:
    """A VXLAN device in host i towards the other host: no learning, one static FDB entry."""
    other = 2 if i == 1 else 1
    ns = bed.ns(i)
    ip(ns, "link", "add", dev, "type", "vxlan", "id", str(vni), "dstport", str(port), "local", bed.ip(i), "dev", "eth0", "nolearning")
    out = subprocess.run(["bridge", "-n", ns, "fdb", "append", "00:00:00:00:00:00", "dev", dev, "dst", bed.ip(other)], capture_output=True, text=True)
    if out.returncode != 0:
        raise Skip(f"bridge fdb on {dev}: {out.stderr.strip()}")


def raw(bed: Bed) -> Path:
    return Path("raw", [Pair(bed.ns(1), bed.ns(2), bed.ip(2))], {}, UNDERLAY_MTU, "lab underlay: veth -> bridge (in its own namespace) -> veth, MTU 1500")


def kvxlan_host(bed: Bed) -> Path:
    for i in (1, 2):
        _vxlan(bed, i, "kvx", 42, 4789)
        ip(bed.ns(i), "link", "set", "kvx", "mtu", str(UNDERLAY_MTU - 50), "up")
        ip(bed.ns(i), "addr", "add", f"10.99.2.{i}/24", "dev", "kvx")
    note = "VXLAN id 42, UDP 4789, nolearning + static all-zero FDB entry, MTU 1450"
    return Path("kvxlan-host", [Pair(bed.ns(1), bed.ns(2), "10.99.2.2")], {}, UNDERLAY_MTU - 50, note)


def kvxlan_ctr(bed: Bed) -> Path:
    """A container on each host: veth into a bridge that holds the VXLAN device."""
    mtu = overlay_mtu(UNDERLAY_MTU)
    ctrs = []
    for i in (1, 2):
        ns = bed.ns(i)
        ip(ns, "link", "add", "kvbr", "type", "bridge")
        _vxlan(bed, i, "kvxc", 43, 4790)
        ip(ns, "link", "set", "kvxc", "mtu", str(UNDERLAY_MTU - 50), "master", "kvbr", "up")
        ip(ns, "link", "set", "kvbr", "mtu", str(mtu), "up")
        ctr = bed.add_netns(f"{ns}-kv")
        ip(ns, "link", "add", "kvh", "mtu", str(mtu), "type", "veth", "peer", "name", "eth0", "mtu", str(mtu), "netns", ctr)
        ip(ns, "link", "set", "kvh", "master", "kvbr", "up")
        ip(ctr, "addr", "add", f"10.99.3.{i}/24", "dev", "eth0")
        ip(ctr, "link", "set", "eth0", "up")
        ctrs.append(ctr)
    return Path(
        "kvxlan-ctr",
        [Pair(ctrs[0], ctrs[1], "10.99.3.2")],
        {},
        mtu,
        f"container veth (MTU {mtu}, as meshnet gives its containers) -> bridge -> VXLAN id 43, UDP 4790, static FDB",
    )


SETUPS = {
    "raw": raw,
    "kvxlan-host": kvxlan_host,
    "kvxlan-ctr": kvxlan_ctr,
    "tinc-null": lambda bed: peers.tinc(bed, "tinc-null"),
    "tinc-aes": lambda bed: peers.tinc(bed, "tinc-aes"),
    "nebula": peers.nebula,
    "fastd-null": lambda bed: peers.fastd(bed, "fastd-null"),
    "fastd-salsa": lambda bed: peers.fastd(bed, "fastd-salsa"),
    "wggo": lambda bed: peers.wireguard_go(bed, "wggo"),
    "wggo-bin": lambda bed: peers.wireguard_go(bed, "wggo-bin"),
}


def build_bare(bed: Bed, wanted: list[str], on_skip) -> dict[str, Path]:
    """Set up each wanted path; a path that cannot be set up is reported to on_skip(name, why)."""
    bed.up(start_routers=False)
    out: dict[str, Path] = {}
    for name in wanted:
        try:
            path = SETUPS[name](bed)
            if not all(wait_ping(p, 20) for p in path.pairs):
                raise Skip(f"no ping over {name} from {path.pairs[0].src_ns} to {path.pairs[0].dst_ip}")
            out[name] = path
        except Skip as why:
            on_skip(name, str(why))
        except Exception as exc:  # one peer's surprise costs that path, not the bed
            on_skip(name, f"{type(exc).__name__}: {exc}")
    return out
