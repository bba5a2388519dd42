"""fastdp's kernel side: the VXLAN device, its FDB, the probe socket and the ESP probe.

Flow, as the router drives it (the decisions are in meshnet/dataplane/fastdp.py)::

    kernel = VxlanKernel(netns=None)            # or VxlanKernel(FakeNetlink()) in tests
    kernel.ensure_device(local)                 # VXLAN port on the bridge, isolated
    ops = kernel.converge(local, plan(...))     # dump -> diff -> apply, whenever the plan changes
    sock = ProbeSocket(local.vxlan, local.peer_id, probe_frame_size(local.mtu))

Only entries on our own ports are read or written: the VXLAN device's own table, and the
bridge's static entries on the VXLAN port and the TAP. Other ports and the ports' own
(permanent) addresses are never touched; learned entries are never deleted, though one for
a MAC the plan places is taken over (bridge entries are added with replace semantics).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import socket
import struct
from typing import Iterable

from meshnet.dataplane.fastdp import (
    PROBE_ETHERTYPE,
    PROBE_REPLY,
    PROBE_REQUEST,
    BridgeFdb,
    KernelState,
    LocalConfig,
    Op,
    Probe,
    ProbeError,
    VxlanFdb,
    decode_probe,
    diff,
    encode_probe,
    probe_mac,
)
from meshnet.kernel.errors import KernelError
from meshnet.kernel.fdb import NUD_NOARP, NUD_PERMANENT, Link, PyrouteRtnl, Rtnl
from meshnet.kernel.nlfdb import FdbReq
from meshnet.kernel.netns import in_netns

__all__ = ["VxlanKernel", "ProbeSocket", "probe_esp", "esp_available", "in_netns"]


class VxlanKernel:
    """Plan-diff-apply for fastdp's kernel state, over an `Rtnl` (real or fake)."""

    def __init__(self, nl: Rtnl | None = None, *, netns: str | None = None) -> None:
        self.nl = nl if nl is not None else PyrouteRtnl(netns)

    def close(self) -> None:
        self.nl.close()

    def _need(self, name: str) -> Link:
        link = self.nl.link(name)
        if link is None:
            raise KernelError(errno.ENODEV, f"link {name} does not exist")
        return link

    def ensure_device(self, local: LocalConfig) -> int:
        """Create or adopt the VXLAN device as a port of the bridge; return its ifindex.

        A device with the right name but other parameters (VNI, port, local address,
        learning, DF) is replaced: its FDB goes with it and the next converge refills it.
        The VXLAN port gets `isolated on` (no forwarding to/from the TAP: split horizon) and
        bridge learning *on*: gossiped endpoints have sticky static entries that learning
        cannot move, and a MAC nobody gossips (a host's own bridge address, say) must move
        to the VXLAN port once it is heard there; left where the sleeve phase put it, its
        traffic would keep riding the TAP. The TAP gets `isolated on`.

        Raises:
            KernelError: the bridge is missing or the kernel refused a step.
        """
        assert local.vxlan is not None, "fastdp is off: no VXLAN device"
        bridge = self._need(local.bridge)
        link = self.nl.link(local.vxlan)
        if link is not None and not _matches(link, local):
            self.nl.del_link(link.index)
            link = None
        if link is None:
            self.nl.add_vxlan(local.vxlan, vni=local.vni, port=local.port, local=local.local_ip, mtu=local.mtu)
            link = self._need(local.vxlan)
        if link.master != bridge.index or link.mtu != local.mtu or not link.up:
            self.nl.set_link(link.index, master=bridge.index, mtu=local.mtu, up=True)
        self.nl.set_brport(link.index, isolated=True, learning=True)
        tap = self.nl.link(local.tap)
        if tap is not None and tap.master == bridge.index:
            self.nl.set_brport(tap.index, isolated=True)
        return link.index

    def remove_device(self, name: str) -> bool:
        """Delete the VXLAN device (its FDB and bridge entries go with it); False if absent."""
        link = self.nl.link(name)
        if link is None:
            return False
        try:
            self.nl.del_link(link.index)
        except KernelError as exc:
            if exc.errno != errno.ENODEV:
                raise
        return True

    def dump(self, local: LocalConfig) -> KernelState:
        """What the kernel holds of the state `plan` describes (our ports only)."""
        bridge = self._need(local.bridge)
        vx = self.nl.link(local.vxlan) if local.vxlan else None
        ports = {}
        for link in (vx, self.nl.link(local.tap)):
            if link is not None and link.master == bridge.index:
                ports[link.index] = link.name
        vx_entries, br_entries = set(), set()
        for row in self.nl.fdb_dump():
            if vx is not None and row.ifindex == vx.index and row.master is None:
                if row.dst:  # the device's own table; rows without a remote are not ours
                    vx_entries.add(VxlanFdb(row.mac, row.dst))
            elif row.master == bridge.index and row.ifindex in ports:
                # static only: PERMANENT is the port's own address, others were learned
                if row.state & NUD_NOARP and not row.state & NUD_PERMANENT:
                    br_entries.add(BridgeFdb(row.mac, ports[row.ifindex]))
        return KernelState(frozenset(vx_entries), frozenset(br_entries))

    def apply(self, local: LocalConfig, ops: Iterable[Op]) -> None:
        """Carry out `ops` in order; adding what exists or deleting what is gone is fine.

        Every op is tried even after a failure, so one bad entry does not hold back the
        rest; the first failure is raised at the end.

        Raises:
            KernelError: an op failed for another reason (missing device, EINVAL...).
        """
        index: dict[str, int] = {}

        def ifindex(name: str | None) -> int:
            if name is None:
                raise KernelError(errno.ENODEV, "fastdp is off: no VXLAN device")
            if name not in index:
                index[name] = self._need(name).index
            return index[name]

        failures: list[KernelError] = []
        reqs: list[FdbReq] = []
        for op in ops:
            e = op.entry
            try:
                if isinstance(e, VxlanFdb):
                    reqs.append(FdbReq(op.action, ifindex(local.vxlan), e.mac, dst=e.dst))
                else:
                    reqs.append(FdbReq(op.action, ifindex(e.port), e.mac, master=True))
            except KernelError as exc:
                failures.append(exc)
        for req, exc in zip(reqs, self.nl.fdb_apply(reqs) if reqs else []):
            tolerated = errno.EEXIST if req.action == "add" else errno.ENOENT
            if exc is not None and exc.errno != tolerated:
                failures.append(exc)
        if failures:
            first = failures[0]
            raise KernelError(first.errno, f"{len(failures)} fdb op(s) failed; first: {first.strerror or first}")

    def converge(self, local: LocalConfig, want: KernelState) -> list[Op]:
        """Dump, diff against `want`, apply; return the ops that were needed."""
        ops = diff(want, self.dump(local))
        if ops:
            self.apply(local, ops)
        return ops


def _matches(link: Link, local: LocalConfig) -> bool:
    vx = link.vxlan
    return (
        link.kind == "vxlan"
        and vx is not None
        and vx.vni == local.vni
        and vx.port == local.port
        and vx.local == local.local_ip
        and not vx.learning
        and vx.df == 1
    )


# -- network namespaces -----------------------------------------------------------------

# -- probe socket -----------------------------------------------------------------------

_ETH_P_ALL = 0x0003
_SO_ATTACH_FILTER = 26
_PACKET_IGNORE_OUTGOING = 23
_SOL_PACKET = 263
# Classic BPF: accept only frames with our ethertype, so the socket does not copy every
# frame crossing the VXLAN device.
_FILTER = [
    (0x28, 0, 0, 12),  # ldh [12]          (ethertype)
    (0x15, 0, 1, PROBE_ETHERTYPE),  # jeq #0x88b5, accept, drop
    (0x06, 0, 0, 0x40000),  # ret #262144
    (0x06, 0, 0, 0),  # ret #0
]
_TRANSIENT = {errno.EAGAIN, errno.ENOBUFS, errno.ENETDOWN, errno.ENXIO, errno.EMSGSIZE}


class ProbeSocket:
    """AF_PACKET socket on the VXLAN device that sends and receives probe frames.

    It taps the device before the bridge sees the frame (packet taps run before the
    bridge's rx handler), so probes never need to reach the bridge, which drops them
    (see fastdp.plan). Sends go straight into the device's xmit: the VXLAN FDB entry
    `probe_mac(peer) dst IP` carries them to that peer over UDP 6784.

    Non-blocking: register `fileno()` with the event loop and call `recv()` until None.
    """

    def __init__(self, ifname: str, local_id: int, size: int, *, netns: str | None = None) -> None:
        self.local_id = local_id
        self.size = size
        self.my_mac = probe_mac(local_id)
        self.dropped = 0  # frames with our ethertype that were not valid probes for us
        self.send_errors = 0
        with in_netns(netns):
            # protocol 0 first: nothing is queued before the filter is in place
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC, 0)
        try:
            prog = b"".join(struct.pack("HBBI", *insn) for insn in _FILTER)
            buf = ctypes.create_string_buffer(prog)
            fprog = struct.pack("HL", len(_FILTER), ctypes.addressof(buf))
            sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)
            sock.setsockopt(_SOL_PACKET, _PACKET_IGNORE_OUTGOING, 1)
            sock.bind((ifname, _ETH_P_ALL))
        except OSError as exc:
            sock.close()
            raise KernelError(exc.errno, f"cannot open probe socket on {ifname}: {exc.strerror}") from None
        self._sock = sock

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()

    def _send(self, frame: bytes) -> bool:
        try:
            self._sock.send(frame)
            return True
        except OSError as exc:
            # EMSGSIZE: the frame is bigger than this device's MTU, i.e. an MTU mismatch;
            # like a full queue it means "probe lost", which is what the check measures.
            if exc.errno in _TRANSIENT:
                self.send_errors += 1
                return False
            raise KernelError(exc.errno, f"probe send failed: {exc.strerror}") from None

    def send_request(self, peer_id: int, seq: int) -> bool:
        """Send a full-size probe to `peer_id`; False if the kernel dropped it."""
        return self._send(encode_probe(PROBE_REQUEST, self.local_id, seq, self.size, probe_mac(peer_id)))

    def send_reply(self, request: Probe) -> bool:
        """Answer a request with a frame of the request's size, so both directions carry it."""
        return self._send(encode_probe(PROBE_REPLY, self.local_id, request.seq, request.size, request.src_mac))

    def recv(self) -> Probe | None:
        """The next valid probe addressed to us, or None when nothing is queued."""
        while True:
            try:
                frame = self._sock.recv(0x10000)
            except (BlockingIOError, InterruptedError):
                return None
            except OSError as exc:
                raise KernelError(exc.errno, f"probe receive failed: {exc.strerror}") from None
            try:
                probe = decode_probe(frame)
            except ProbeError:
                self.dropped += 1
                continue
            if probe.dst_mac != self.my_mac or probe.sender == self.local_id:
                self.dropped += 1
                continue
            return probe


# -- ESP ------------------------------------------------------------------------------

_NETLINK_XFRM = 6
_XFRM_MSG_NEWSA = 0x10
_XFRM_MSG_DELSA = 0x11
_XFRMA_ALG_CRYPT = 2
_XFRMA_ALG_AEAD = 18
_NLMSG_ERROR = 2
_NLM_F_REQUEST, _NLM_F_ACK, _NLM_F_EXCL, _NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
_IPPROTO_ESP = 50
_XFRM_INF = 0xFFFFFFFFFFFFFFFF
_PROBE_SPI = 0x4D534801  # an SA key only for the instant of the probe
_LOOPBACK = socket.inet_aton("127.0.0.1") + bytes(12)  # xfrm_address_t (16 bytes)


def _usersa_info() -> bytes:
    """struct xfrm_usersa_info (224 bytes) for a transport-mode ESP SA 127.0.0.1→127.0.0.1."""
    sel = _LOOPBACK + _LOOPBACK + struct.pack("=4HHBBB3xiI", 0, 0, 0, 0, socket.AF_INET, 32, 32, 0, 0, 0)
    xid = _LOOPBACK + struct.pack("!I", _PROBE_SPI) + struct.pack("=B3x", _IPPROTO_ESP)
    lft = struct.pack("=8Q", *([_XFRM_INF] * 4), 0, 0, 0, 0)
    rest = bytes(32) + bytes(12) + struct.pack("=IIHBBB7x", 0, 0, socket.AF_INET, 0, 0, 0)
    info = sel + xid + _LOOPBACK + lft + rest
    assert len(info) == 224, len(info)
    return info


def _xfrm_request(sock: socket.socket, msg_type: int, flags: int, payload: bytes) -> int:
    """Send one xfrm netlink request; return the kernel's errno (0 for success)."""
    header = struct.pack("=IHHII", 16 + len(payload), msg_type, _NLM_F_REQUEST | _NLM_F_ACK | flags, 1, 0)
    sock.send(header + payload)
    reply = sock.recv(65536)
    _, kind = struct.unpack_from("=IH", reply)
    if kind != _NLMSG_ERROR:
        return errno.EPROTO
    (err,) = struct.unpack_from("=i", reply, 16)
    return -err


def _try_sa(sock: socket.socket, attr_type: int, alg: bytes) -> int:
    """Ask for an ESP state with one algorithm attribute; delete it again; return errno."""
    attr = struct.pack("=HH", 4 + len(alg), attr_type) + alg
    attr += bytes(-len(attr) % 4)
    err = _xfrm_request(sock, _XFRM_MSG_NEWSA, _NLM_F_CREATE | _NLM_F_EXCL, _usersa_info() + attr)
    if err == 0:
        said = _LOOPBACK + struct.pack("!I", _PROBE_SPI) + struct.pack("=HBx", socket.AF_INET, _IPPROTO_ESP)
        with contextlib.suppress(OSError):
            _xfrm_request(sock, _XFRM_MSG_DELSA, 0, said)
    return err


def probe_esp() -> tuple[bool, str]:
    """Can this kernel do IPsec ESP with AES-GCM? Returns (available, why).

    The only reliable test is asking xfrm for an ESP state: /proc/net/xfrm_stat exists as
    soon as xfrm is built, ESP or not. The state uses loopback addresses and is deleted at
    once (no policy points at it, so no traffic can use it meanwhile). xfrm checks the
    algorithm before the protocol, so when GCM is refused a second try with cbc(aes) tells
    "no ESP at all" from "ESP without GCM".
    """
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, _NETLINK_XFRM)
    except OSError as exc:
        return False, f"kernel has no xfrm netlink (NETLINK_XFRM: {exc.strerror})"
    with sock:
        sock.settimeout(2.0)
        # keys are fixed dummies: the state exists only for the instant of the probe
        gcm = struct.pack("=64sII", b"rfc4106(gcm(aes))", 160, 128) + bytes(range(20))
        cbc = struct.pack("=64sI", b"cbc(aes)", 128) + bytes(range(16))
        try:
            err = _try_sa(sock, _XFRMA_ALG_AEAD, gcm)
            if err in (0, errno.EEXIST):
                return True, "kernel accepts ESP states with rfc4106(gcm(aes))"
            if err == errno.ENOSYS:
                err = _try_sa(sock, _XFRMA_ALG_CRYPT, cbc)
                if err in (0, errno.EEXIST):
                    return False, "kernel has ESP but no rfc4106(gcm(aes)) AEAD"
        except OSError as exc:
            return False, f"cannot probe xfrm: {exc.strerror or exc}"
        if err == errno.EPROTONOSUPPORT:
            return False, "kernel has no IPsec ESP (xfrm has no ESP type: CONFIG_INET_ESP is off)"
        if err == errno.EPERM:
            return False, "cannot probe ESP: no CAP_NET_ADMIN"
        return False, f"kernel refused an ESP state: {os.strerror(err)}"


def esp_available() -> bool:
    return probe_esp()[0]
