"""fastdp: the kernel VXLAN data path, planned without I/O.

The kernel does the forwarding; this module only decides what the kernel should hold and
which peers may use it. Three sans-IO parts, each driven by the router:

1. **plan → diff** (kernel state as data)::

       want = plan(local, peers, endpoints)     # from the mesh state
       have = VxlanKernel.dump(local)           # meshnet/kernel/vxlan.py
       ops  = diff(want, have)                  # adds first, then stale deletes
       VxlanKernel.apply(ops)                   # idempotent; a restart converges

   That is the reference and the reconcile. Updates go by delta: `fdb_delta.FdbPlanner`
   keeps the wanted state and yields the ops of each change, O(changes) (no dump).

   Wanted state, with `local.vxlan` set (fastdp enabled):

   - VXLAN device FDB (self, permanent): `00:00:00:00:00:00 dst IP` for every fastdp peer
     (head-end replication of broadcast/unknown/multicast), `MAC dst IP` for every endpoint
     behind a fastdp peer, and `probe_mac(peer) dst IP` for *every* peer, so that sleeve
     peers keep being probed and can come back.
   - Bridge FDB (master, static, sticky): endpoint MAC → VXLAN port when its peer is fastdp,
     → TAP when it is sleeve; our own probe MAC → VXLAN port, which makes the bridge drop
     probes that arrive there instead of flooding them to containers (a frame is never sent
     back out of the port it came in by). Sticky: with learning on, a frame from the MAC
     arriving on the other port would otherwise move a static entry.

   Without `local.vxlan` (``--no-fastdp``) only the bridge entries to the TAP remain.

2. **PathHealth** (`path_health.py`): per-peer mode from probes sent over the VXLAN path
   itself. A peer starts on sleeve, moves to fastdp after `recover_after` consecutive
   replies and back to sleeve when no reply came for `fail_after` probe periods (3 s by
   default, longer in a mesh of more than 10 peers: probes are rate-bounded).

3. **Probe frames**: `encode_probe` / `decode_probe` for the Ethernet frames (ethertype
   0x88B5, IEEE local experimental) the router sends through its VXLAN device. A probe is as
   large as the overlay MTU allows and the VXLAN device sets DF on the outer packet, so an
   underlay that cannot carry full-size frames fails the check instead of fragmenting.

Probe frame (after the 14-byte Ethernet header, all big-endian)::

     0        1        2        3
    +--------+--------+--------+--------+
    |        magic "MNfp"               |
    +--------+--------+--------+--------+
    | ver=1  |  kind  |  size (u16)     |   kind 1 request, 2 reply; size = whole frame
    +--------+--------+-----------------+
    |        sender peer id (u32)       |
    +-----------------------------------+
    |        seq (u32)                  |   a reply echoes the request's seq and size
    +-----------------------------------+
    | zero padding up to size ...

Probes carry no secret: a reply only counts if its sender and seq match a probe we sent
to that peer less than one interval ago.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Literal

VNI = 0x4D5348  # "MSH": one fixed VNI, every meshnet router on an underlay uses it
VXLAN_PORT = 6784  # design.md: fastdp data, kernel VXLAN
PROBE_ETHERTYPE = 0x88B5  # IEEE 802 local experimental ethertype 1
ZERO_MAC = "00:00:00:00:00:00"
PROBE_MAC_PREFIX = b"\x4e\x50"  # locally administered unicast ("NP"), then the peer id

FASTDP = "fastdp"
SLEEVE = "sleeve"
Mode = Literal["fastdp", "sleeve"]

REASON_HEALTHY = "vxlan path healthy"
REASON_UNVERIFIED = "vxlan path not yet verified"
REASON_ADOPTED = "adopted from the kernel at restart"
REASON_NO_FASTDP = "--no-fastdp"
REASON_PEER_OFF = "peer has fastdp off"
REASON_NO_ESP = "mesh is encrypted and this kernel has no IPsec ESP"
REASON_ESP_UNUSED = "mesh is encrypted; fastdp encryption (ESP) is not implemented"


# -- plan / diff ------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalConfig:
    """This router's side of fastdp. `vxlan=None` means fastdp is off (sleeve only)."""

    peer_id: int
    bridge: str
    tap: str
    vxlan: str | None
    local_ip: str
    mtu: int  # overlay (container) MTU; also the VXLAN device's MTU
    vni: int = VNI
    port: int = VXLAN_PORT


@dataclass(frozen=True)
class PeerInfo:
    underlay_ip: str
    mode: Mode = SLEEVE


@dataclass(frozen=True, order=True)
class VxlanFdb:
    """`bridge fdb append|replace MAC dev VXLAN dst DST self permanent` (append: all-zero MAC)."""

    mac: str
    dst: str


@dataclass(frozen=True, order=True)
class BridgeFdb:
    """`bridge fdb replace MAC dev PORT master static sticky`."""

    mac: str
    port: str


@dataclass(frozen=True)
class KernelState:
    vxlan_fdb: frozenset[VxlanFdb] = frozenset()
    bridge_fdb: frozenset[BridgeFdb] = frozenset()


@dataclass(frozen=True)
class Op:
    action: Literal["add", "del"]
    entry: VxlanFdb | BridgeFdb


def norm_mac(mac: str | bytes) -> str:
    """Return `aa:bb:cc:dd:ee:ff`; raise ValueError for anything else."""
    if isinstance(mac, bytes):
        if len(mac) != 6:
            raise ValueError(f"a MAC is 6 bytes, not {len(mac)}")
        return ":".join(f"{b:02x}" for b in mac)
    parts = mac.replace("-", ":").split(":")
    if len(parts) != 6 or not all(len(p) == 2 and p.isascii() and p.isalnum() for p in parts):
        raise ValueError(f"{mac!r} is not a MAC address")
    try:
        return norm_mac(bytes.fromhex("".join(parts)))
    except ValueError:
        raise ValueError(f"{mac!r} is not a MAC address") from None


def probe_mac(peer_id: int) -> str:
    """The MAC a peer's probes are addressed to: 4e:50 + its 32-bit id."""
    return norm_mac(PROBE_MAC_PREFIX + peer_id.to_bytes(4, "big"))


def _unicast_endpoint(mac: str) -> str | None:
    """Normalised MAC if it can be a container endpoint; gossip is not trusted blindly."""
    try:
        mac = norm_mac(mac)
    except ValueError:
        return None
    raw = bytes.fromhex(mac.replace(":", ""))
    if raw[0] & 1 or raw == bytes(6) or raw[:2] == PROBE_MAC_PREFIX:
        return None  # multicast/broadcast, zero, or one of our probe MACs
    return mac


def plan(local: LocalConfig, peers: dict[int, PeerInfo], endpoints: dict[str, int]) -> KernelState:
    """The FDB state the kernel should hold for this mesh state.

    Endpoints of unknown peers, of ourselves, or with unusable MACs are left out (the
    bridge learns local ones); peers whose underlay address is not of the local address's
    family are treated as having no VXLAN path.

    Raises:
        ValueError: a peer is in fastdp mode while fastdp is off (`local.vxlan` is None).
    """
    vx: set[VxlanFdb] = set()
    br: set[BridgeFdb] = set()
    local_ver = ipaddress.ip_address(local.local_ip).version
    via: dict[int, tuple[str, Mode]] = {}  # peer -> (underlay IP, mode)
    for pid, info in peers.items():
        if pid == local.peer_id:
            continue
        if info.mode == FASTDP and local.vxlan is None:
            raise ValueError(f"peer {pid:08x} is fastdp but fastdp is off")
        try:
            ip = ipaddress.ip_address(info.underlay_ip)
        except ValueError:
            ip = None
        if ip is None or ip.version != local_ver:
            via[pid] = ("", SLEEVE)
            continue
        via[pid] = (str(ip), info.mode)
        if local.vxlan is not None:
            vx.add(VxlanFdb(probe_mac(pid), str(ip)))
            if info.mode == FASTDP:
                vx.add(VxlanFdb(ZERO_MAC, str(ip)))
    if local.vxlan is not None:
        br.add(BridgeFdb(probe_mac(local.peer_id), local.vxlan))
    owner: dict[str, int] = {}
    for raw_mac, pid in sorted(endpoints.items()):
        mac = _unicast_endpoint(raw_mac)
        if mac is not None and pid in via:
            owner.setdefault(mac, pid)  # two spellings of one MAC: one port, chosen stably
    for mac, pid in owner.items():
        ip, mode = via[pid]
        if mode == FASTDP:
            vx.add(VxlanFdb(mac, ip))
            br.add(BridgeFdb(mac, local.vxlan))  # type: ignore[arg-type]  # checked above
        else:
            br.add(BridgeFdb(mac, local.tap))
    return KernelState(frozenset(vx), frozenset(br))


def diff(want: KernelState, have: KernelState) -> list[Op]:
    """Ops that turn `have` into `want`; empty when they are equal.

    Adds come first (VXLAN entries before the bridge entries that send traffic to them),
    then deletes (bridge before VXLAN). A MAC that moves port or peer is added with replace
    semantics by the kernel layer, so it is never missing in between; deleting the old
    entry afterwards then finds nothing, which apply tolerates.
    """
    ops = [Op("add", e) for e in sorted(want.vxlan_fdb - have.vxlan_fdb)]
    ops += [Op("add", e) for e in sorted(want.bridge_fdb - have.bridge_fdb)]
    ops += [Op("del", e) for e in sorted(have.bridge_fdb - want.bridge_fdb)]
    ops += [Op("del", e) for e in sorted(have.vxlan_fdb - want.vxlan_fdb)]
    return ops


# -- mode selection ---------------------------------------------------------------------


def fastdp_disabled_reason(*, no_fastdp: bool, encrypted: bool, esp_available: bool) -> str | None:
    """Why no peer may use fastdp at all, or None if probing decides per peer."""
    if no_fastdp:
        return REASON_NO_FASTDP
    if encrypted:
        # Even with ESP in the kernel we do not program it yet: plain VXLAN would leak.
        return REASON_ESP_UNUSED if esp_available else REASON_NO_ESP
    return None


# -- probe frames -----------------------------------------------------------------------

PROBE_MAGIC = b"MNfp"
PROBE_VERSION = 1
PROBE_REQUEST = 1
PROBE_REPLY = 2
_PROBE = struct.Struct("!6s6sH4sBBHII")
PROBE_HEADER_LEN = _PROBE.size  # 30: Ethernet header + probe header


class ProbeError(ValueError):
    """A frame is not a valid meshnet probe; the only error decode_probe raises."""


@dataclass(frozen=True)
class Probe:
    kind: int  # PROBE_REQUEST or PROBE_REPLY
    sender: int  # peer id of the router that sent this frame
    seq: int
    size: int  # whole frame length the sender meant
    dst_mac: str
    src_mac: str


def probe_frame_size(overlay_mtu: int) -> int:
    """A full-size frame: the largest a container may send, Ethernet header included."""
    return overlay_mtu + 14


def encode_probe(kind: int, sender: int, seq: int, size: int, dst_mac: str) -> bytes:
    """A probe frame of exactly `size` bytes from `sender`'s probe MAC to `dst_mac`."""
    if kind not in (PROBE_REQUEST, PROBE_REPLY):
        raise ValueError(f"bad probe kind {kind}")
    if not PROBE_HEADER_LEN <= size <= 0xFFFF:
        raise ValueError(f"probe size {size} outside {PROBE_HEADER_LEN}..65535")
    header = _PROBE.pack(
        bytes.fromhex(norm_mac(dst_mac).replace(":", "")),
        bytes.fromhex(probe_mac(sender).replace(":", "")),
        PROBE_ETHERTYPE,
        PROBE_MAGIC,
        PROBE_VERSION,
        kind,
        size,
        sender,
        seq,
    )
    return header + bytes(size - PROBE_HEADER_LEN)


def decode_probe(frame: bytes) -> Probe:
    """Parse a received Ethernet frame.

    Raises:
        ProbeError: the frame is truncated, not a probe, of another version or kind, or its
            source MAC is not the probe MAC of the sender id it claims.
    """
    if len(frame) < PROBE_HEADER_LEN:
        raise ProbeError(f"frame of {len(frame)} bytes is shorter than a probe")
    dst, src, ethertype, magic, version, kind, size, sender, seq = _PROBE.unpack_from(frame)
    if ethertype != PROBE_ETHERTYPE or magic != PROBE_MAGIC:
        raise ProbeError("not a meshnet probe")
    if version != PROBE_VERSION:
        raise ProbeError(f"probe version {version} not understood")
    if kind not in (PROBE_REQUEST, PROBE_REPLY):
        raise ProbeError(f"bad probe kind {kind}")
    if size < PROBE_HEADER_LEN or size > len(frame):
        raise ProbeError(f"probe claims {size} bytes, {len(frame)} arrived")
    if src != PROBE_MAC_PREFIX + sender.to_bytes(4, "big"):
        raise ProbeError("source MAC does not match the sender id")
    return Probe(kind, sender, seq, size, norm_mac(dst), norm_mac(src))


def __getattr__(name: str) -> object:
    """`PathHealth` lives in path_health.py now; imports of it from here keep working."""
    if name == "PathHealth":
        from meshnet.dataplane.path_health import PathHealth

        return PathHealth
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
