"""Bridge, TAP and container veths: the links the router owns on its host.

Everything here is idempotent where it can be (a restarted router adopts the bridge it
left behind) and all-or-nothing where it must be (`attach` removes what it created if
any step fails). pyroute2's exceptions never leave this module: they become KernelError.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import ipaddress
import os
import struct
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from meshnet.kernel.errors import KernelError

TUNSETIFF = 0x400454CA  # include/uapi/linux/if_tun.h
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFNAMSIZ = 16


@dataclass(frozen=True)
class Attachment:
    netns: str  # path of the network namespace
    host_if: str  # our end, on the bridge
    ifname: str  # its end, inside the namespace
    mac: str
    cidrs: tuple[str, ...]


def netns_path(netns: str) -> str:
    """Resolve a namespace name (ip netns) or path to a path that exists.

    Raises:
        KernelError: no such namespace.
    """
    path = netns if "/" in netns else f"/run/netns/{netns}"
    if not os.path.exists(path):
        raise KernelError(errno.ENOENT, f"network namespace {netns!r} does not exist ({path})")
    return path


def veth_name(netns: str) -> str:
    """Our end of a namespace's veth: stable per namespace, so detach finds it again."""
    return "mnv" + hashlib.sha1(netns.encode()).hexdigest()[:10]


def parse_cidrs(cidrs: list[str]) -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
    """Raises ValueError with a clear message for anything that is not ADDRESS/PREFIX."""
    out = []
    for cidr in cidrs:
        if "/" not in cidr:
            raise ValueError(f"{cidr!r} is not ADDRESS/PREFIX (e.g. 10.32.1.5/12)")
        try:
            out.append(ipaddress.ip_interface(cidr))
        except ValueError:
            raise ValueError(f"{cidr!r} is not a valid IP/CIDR") from None
    return out


class Links:
    """Link operations in the network namespace the router runs in."""

    def __init__(self) -> None:
        self.ipr = IPRoute()

    def close(self) -> None:
        self.ipr.close()

    def _index(self, ifname: str) -> int | None:
        found = self.ipr.link_lookup(ifname=ifname)
        return found[0] if found else None

    def ensure_bridge(self, name: str, mtu: int) -> int:
        try:
            index = self._index(name)
            if index is None:
                self.ipr.link("add", ifname=name, kind="bridge")
                index = self._index(name)
            self.ipr.link("set", index=index, mtu=mtu, state="up")
            return index
        except NetlinkError as exc:
            raise KernelError(exc.code, f"cannot set up bridge {name}: {exc}") from None

    def open_tap(self, name: str, bridge: str, mtu: int) -> int:
        """Create (or take over) TAP `name` on the bridge; return its non-blocking fd."""
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            ifr = struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI)
            fcntl.ioctl(fd, TUNSETIFF, ifr)
            index = self._index(name)
            self.ipr.link("set", index=index, master=self._index(bridge), mtu=mtu, state="up")
            self._isolate(index)
            return fd
        except (OSError, NetlinkError) as exc:
            os.close(fd)
            raise KernelError(getattr(exc, "errno", None) or getattr(exc, "code", 0), f"cannot open TAP {name}: {exc}")

    def _isolate(self, index: int) -> None:
        """Bridge port isolation: the TAP and the VXLAN port never forward to each other."""
        try:
            self.ipr.brport("set", index=index, isolated=1)
        except NetlinkError:
            pass  # older kernels: no split horizon, sleeve-only meshes still work

    def mtu_of(self, ifname: str) -> int | None:
        index = self._index(ifname)
        if index is None:
            return None
        return self.ipr.get_links(index)[0].get("mtu")

    def underlay_mtu(self) -> int:
        """MTU of the interface holding the default route, else the largest non-loopback one."""
        try:
            for route in self.ipr.get_default_routes(family=2):
                oif = route.get("oif")
                if oif:
                    return self.ipr.get_links(oif)[0].get("mtu")
            mtus = [
                link.get("mtu")
                for link in self.ipr.get_links()
                if link.get("ifname") != "lo" and link.get("kind") not in ("bridge", "tun", "vxlan", "veth")
            ]
            mtus += [link.get("mtu") for link in self.ipr.get_links() if link.get("kind") == "veth"]
        except NetlinkError as exc:
            raise KernelError(exc.code, f"cannot read links: {exc}") from None
        return max(mtus) if mtus else 1500

    def attach(self, netns: str, *, bridge: str, cidrs: list[str], mtu: int, ifname: str = "mesh0") -> Attachment:
        """Put a namespace on the bridge through a veth, with addresses; all or nothing.

        Raises:
            ValueError: a CIDR is malformed.
            KernelError: no such namespace, or the kernel refused a step (nothing is left behind).
        """
        addresses = parse_cidrs(cidrs)
        path = netns_path(netns)
        host = veth_name(path)
        if self._index(host) is not None:
            raise KernelError(errno.EEXIST, f"namespace {netns!r} is already attached (veth {host})")
        temp = "mnc" + host[3:]
        try:
            self.ipr.link("add", ifname=host, kind="veth", peer={"ifname": temp})
            self.ipr.link("set", index=self._index(host), master=self._index(bridge), mtu=mtu, state="up")
            nsfd = os.open(path, os.O_RDONLY)
            try:
                self.ipr.link("set", index=self._index(temp), net_ns_fd=nsfd, mtu=mtu)
            finally:
                os.close(nsfd)
            with IPRoute(netns=path) as inner:
                found = inner.link_lookup(ifname=temp)
                if not found:
                    raise KernelError(errno.ENODEV, f"veth end vanished while moving into {netns!r}")
                index = found[0]
                if inner.link_lookup(ifname=ifname):
                    raise KernelError(errno.EEXIST, f"{netns!r} already has an interface named {ifname}")
                inner.link("set", index=index, ifname=ifname)
                for addr in addresses:
                    inner.addr("add", index=index, address=str(addr.ip), prefixlen=addr.network.prefixlen)
                inner.link("set", index=index, state="up")
                for lo in inner.link_lookup(ifname="lo"):
                    inner.link("set", index=lo, state="up")
                mac = inner.get_links(index)[0].get("address")
        except (NetlinkError, OSError) as exc:
            self._delete(host)
            if isinstance(exc, KernelError):
                raise
            code = getattr(exc, "code", None) or getattr(exc, "errno", 0)
            raise KernelError(code, f"cannot attach {netns!r}: {exc}") from None
        return Attachment(path, host, ifname, mac, tuple(str(a) for a in addresses))

    def detach(self, netns: str) -> bool:
        """Remove a namespace's veth (both ends go); False if it was not attached."""
        path = netns if "/" in netns else f"/run/netns/{netns}"
        return self._delete(veth_name(path))

    def _delete(self, ifname: str) -> bool:
        index = self._index(ifname)
        if index is None:
            return False
        try:
            self.ipr.link("del", index=index)
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:
                raise KernelError(exc.code, f"cannot delete {ifname}: {exc}") from None
        return True

    def delete_link(self, ifname: str) -> bool:
        return self._delete(ifname)

    def ports(self, bridge: str) -> list[str]:
        index = self._index(bridge)
        if index is None:
            return []
        return [link.get("ifname") for link in self.ipr.get_links() if link.get("master") == index]
