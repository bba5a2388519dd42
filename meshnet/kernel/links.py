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

from meshnet.kernel.errors import KernelError
from meshnet.kernel.offload import IFF_VNET_HDR
from meshnet.kernel.pyroute import IPRoute, NetlinkError
from meshnet.kernel.pyroute import config as pyroute2_config

# IPRoute(netns=...) forks a helper child and SIGTERMs it afterwards. In a process that leads
# its own session with an asyncio SIGTERM handler (the router), that SIGTERM also reached the
# router's loop now and then (within ~10-400 calls), and the router stopped itself. With this
# set the child resets SIGTERM to the default action first; no spurious SIGTERM since
# (tests/netns/test_docker_kernel_signals.py).
pyroute2_config.disable_mp_signal = True
from meshnet.kernel.netns import in_netns

TUNSETIFF = 0x400454CA  # include/uapi/linux/if_tun.h
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_MULTI_QUEUE = 0x0100  # each open of the TAP is one more queue (one per pump thread)
TUNSETPERSIST = 0x400454CB  # the TAP outlives our fd: its bridge port and FDB entries stay
IFNAMSIZ = 16
IFA_F_NOPREFIXROUTE = 0x200  # include/uapi/linux/if_addr.h


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


def _tun_queue(name: str, flags: int) -> int:
    """Open /dev/net/tun as (a queue of) TAP `name`; the fd, non-blocking."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), flags))
    except OSError:
        os.close(fd)
        raise
    return fd


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
        return self.open_tap_queues(name, bridge, mtu, 1)[0]

    def open_tap_queues(self, name: str, bridge: str, mtu: int, queues: int) -> list[int]:
        """Create (or take over) TAP `name` on the bridge with `queues` queues
        (IFF_MULTI_QUEUE when more than one: the kernel hashes each flow to one queue);
        return a non-blocking fd per queue. A kernel that refuses several queues gives one,
        one without IFF_VNET_HDR plain frames (no offloads).

        The TAP is persistent: when the router stops or dies it stays a port of the bridge
        with its FDB entries, and the next router reopens it (hitless restarts). One left
        with other flags (another --pump-threads) cannot be reopened; it is made again."""
        fds: list[int] = []
        base = IFF_TAP | IFF_NO_PI
        try:
            wanted = [base | IFF_VNET_HDR | IFF_MULTI_QUEUE] if queues > 1 else []
            for attempt in (1, 2):
                for flags in wanted + [base | IFF_VNET_HDR, base]:
                    try:
                        fds.append(_tun_queue(name, flags))
                        break
                    except OSError:
                        pass
                if fds:
                    break
                index = self._index(name)
                if attempt == 2 or index is None:
                    raise OSError(errno.EBUSY, f"cannot open TAP {name}")
                self.ipr.link("del", index=index)  # ours, persisted by a run with other flags
            while flags & IFF_MULTI_QUEUE and len(fds) < queues:
                try:
                    fds.append(_tun_queue(name, flags))
                except OSError:
                    break  # the queues so far are what there is
            fcntl.ioctl(fds[0], TUNSETPERSIST, 1)
            index = self._index(name)
            self.ipr.link("set", index=index, master=self._index(bridge), mtu=mtu, state="up")
            self._isolate(index)
            return fds
        except (OSError, NetlinkError) as exc:
            for fd in fds:
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

    def underlay_ip(self) -> str | None:
        """Our IPv4 underlay address: the default route's source, else the first global one."""
        try:
            for route in self.ipr.get_default_routes(family=2):
                if route.get("prefsrc"):
                    return route.get("prefsrc")
            for addr in self.ipr.get_addr(family=2):
                if addr.get("scope") == 0:
                    link = self.ipr.get_links(addr.get("index"))[0]
                    if link.get("kind") not in ("bridge", "tun", "vxlan"):
                        return addr.get("address")
        except NetlinkError as exc:
            raise KernelError(exc.code, f"cannot read addresses: {exc}") from None
        return None

    def attach(self, netns: str, *, bridge: str, cidrs: list[str], mtu: int, ifname: str = "mesh0") -> Attachment:
        """Put a namespace on the bridge through a veth, with addresses; all or nothing.

        Raises:
            ValueError: a CIDR is malformed.
            KernelError: no such namespace, or the kernel refused a step (nothing is left behind).
        """
        path = netns_path(netns)
        host = veth_name(path)
        if self._index(host) is not None:
            raise KernelError(errno.EEXIST, f"namespace {netns!r} is already attached (veth {host})")
        return self.add_pod_veth(path, host_if=host, ifname=ifname, bridge=bridge, cidrs=cidrs, mtu=mtu)

    def attachment(self, netns: str, *, bridge: str, ifname: str) -> Attachment | None:
        """The attachment `attach` made for this namespace, if both ends are still there
        (an attach cut short after its veth was made is found again this way)."""
        path = netns_path(netns)
        host = veth_name(path)
        if self.master_of(host) != bridge:
            return None
        inner = self.pod_interface(path, ifname)
        if inner is None:
            return None
        return Attachment(path, host, ifname, inner["mac"], tuple(inner["cidrs"]))

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

    def add_pod_veth(
        self,
        netns: str,
        *,
        host_if: str,
        ifname: str,
        bridge: str,
        cidrs: list[str],
        mtu: int,
        mac: str | None = None,
        routes: tuple[tuple[str, str | None], ...] = (),
    ) -> Attachment:
        """The CNI plugin's attach: a veth named by the caller (`host_if` on the bridge,
        `ifname` made directly inside `netns`), addresses, then `(dst, gateway|None)` routes;
        all or nothing (both ends go if any step fails; a stale `host_if` is replaced).

        Raises:
            ValueError: a CIDR or route is malformed.
            KernelError: no such namespace or bridge, or the kernel refused a step.
        """
        addresses = parse_cidrs(cidrs)
        wanted = [(ipaddress.ip_network(dst, strict=False), gw) for dst, gw in routes]
        path = netns_path(netns)
        bridge_index = self._index(bridge)
        if bridge_index is None:
            raise KernelError(errno.ENODEV, f"bridge {bridge!r} does not exist (is the meshnet router running?)")
        self._delete(host_if)
        created = False
        try:
            peer: dict = {"ifname": ifname, "mtu": mtu}
            if mac:
                peer["address"] = mac
            nsfd = os.open(path, os.O_RDONLY)
            try:
                peer["net_ns_fd"] = nsfd
                self.ipr.link("add", ifname=host_if, kind="veth", mtu=mtu, peer=peer)
                created = True
            finally:
                os.close(nsfd)
            self.ipr.link("set", index=self._index(host_if), master=bridge_index, state="up")
            with in_netns(path):
                inner = IPRoute()
            with inner:
                found = inner.link_lookup(ifname=ifname)
                if not found:
                    raise KernelError(errno.ENODEV, f"{ifname} did not appear in {netns!r}")
                index = found[0]
                for addr in addresses:
                    inner.addr("add", index=index, address=str(addr.ip), prefixlen=addr.network.prefixlen)
                inner.link("set", index=index, state="up")
                for lo in inner.link_lookup(ifname="lo"):
                    inner.link("set", index=lo, state="up")
                for dst, gw in wanted:
                    spec = {"dst": str(dst.network_address), "dst_len": dst.prefixlen, "oif": index}
                    if gw:
                        spec["gateway"] = gw
                    inner.route("add", **spec)
                mac = inner.get_links(index)[0].get("address")
        except (NetlinkError, OSError) as exc:
            if created:
                self._delete(host_if)
            if isinstance(exc, KernelError):
                raise
            code = getattr(exc, "code", None) or getattr(exc, "errno", 0)
            if code == errno.EEXIST and not created:
                raise KernelError(code, f"{netns!r} already has an interface named {ifname}") from None
            raise KernelError(code, f"cannot attach {ifname} in {netns!r}: {exc}") from None
        return Attachment(path, host_if, ifname, mac, tuple(str(a) for a in addresses))

    def set_up(self, ifname: str, up: bool) -> bool:
        """Set a link up or down (a refused endpoint's veth goes down); False if it is absent."""
        index = self._index(ifname)
        if index is None:
            return False
        try:
            self.ipr.link("set", index=index, state="up" if up else "down")
        except NetlinkError as exc:
            raise KernelError(exc.code, f"cannot set {ifname} {'up' if up else 'down'}: {exc}") from None
        return True

    def pod_interface(self, netns: str, ifname: str) -> dict | None:
        """`{"mac", "mtu", "cidrs", "routes": [(dst, gw)]}` of `ifname` inside `netns`, None if absent.

        Raises:
            KernelError: no such namespace.
        """
        path = netns_path(netns)
        try:
            with in_netns(path):
                inner = IPRoute()
            with inner:
                found = inner.link_lookup(ifname=ifname)
                if not found:
                    return None
                link = inner.get_links(found[0])[0]
                cidrs = [
                    f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}" for a in inner.get_addr(index=found[0]) if a["family"] == 2
                ]
                routes = [
                    (f"{r.get_attr('RTA_DST') or '0.0.0.0'}/{r['dst_len']}", r.get_attr("RTA_GATEWAY"))
                    for r in inner.get_routes(family=2, oif=found[0], table=254)
                ]
                return {"mac": link.get("address"), "mtu": link.get("mtu"), "up": link["flags"] & 1 == 1, "cidrs": cidrs, "routes": routes}
        except NetlinkError as exc:
            raise KernelError(exc.code, f"cannot inspect {ifname} in {netns!r}: {exc}") from None

    def mac_of(self, ifname: str) -> str | None:
        index = self._index(ifname)
        return self.ipr.get_links(index)[0].get("address") if index is not None else None

    def master_of(self, ifname: str) -> str | None:
        """Name of the bridge `ifname` is enslaved to; None if it is absent or has none."""
        index = self._index(ifname)
        if index is None:
            return None
        master = self.ipr.get_links(index)[0].get("master")
        return self.ipr.get_links(master)[0].get("ifname") if master else None

    # -- Docker network plugin and expose/hide (meshnet/docker, docs/docker.md) -------------

    def add_veth_pair(self, host: str, peer: str, *, bridge: str, mtu: int, mac: str | None = None) -> str:
        """A veth pair in this namespace, `host` on the bridge and up, `peer` left for Docker to
        move into the container (CNM Join). Replaces a stale pair of the same name. Returns
        the peer's MAC. All or nothing: raises KernelError with nothing left behind."""
        self._delete(host)
        self._delete(peer)
        try:
            self.ipr.link("add", ifname=host, kind="veth", peer={"ifname": peer})
            peer_index = self._index(peer)
            extra = {"address": mac} if mac else {}
            self.ipr.link("set", index=peer_index, mtu=mtu, **extra)
            self.ipr.link("set", index=self._index(host), master=self._index(bridge), mtu=mtu, state="up")
            return self.ipr.get_links(peer_index)[0].get("address")
        except (NetlinkError, OSError, TypeError) as exc:
            self._delete(host)
            code = getattr(exc, "code", None) or getattr(exc, "errno", 0) or 0
            raise KernelError(code, f"cannot create veth {host}/{peer}: {exc}") from None

    def bridge_addresses(self, bridge: str) -> list[str]:
        """IPv4 addresses (CIDR) on the bridge."""
        index = self._index(bridge)
        if index is None:
            return []
        return [f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}" for a in self.ipr.get_addr(index=index, family=2)]

    EXPOSE_TABLE = 6783  # routing table (and rule priority) for the host's overlay routes

    def set_bridge_address(self, bridge: str, cidr: str, present: bool) -> bool:
        """Add (present) or remove the host's overlay address on the bridge; idempotent; True
        if it changed. The address gets no prefix route in the main table: the route to its
        network lives in table EXPOSE_TABLE, chosen by a rule `to <network>`. Docker's
        libnetwork refuses (in fact: retries forever) an IPAM pool that overlaps a main-table
        route, so a main-table /12 would break `docker network create` on an exposed host."""
        (addr,) = parse_cidrs([cidr])
        net = addr.network
        index = self._index(bridge)
        if index is None:
            raise KernelError(errno.ENODEV, f"bridge {bridge} does not exist")
        have = cidr in self.bridge_addresses(bridge)
        try:
            if present:
                try:  # removing the first address must not take the others with it
                    with open(f"/proc/sys/net/ipv4/conf/{bridge}/promote_secondaries", "w") as f:
                        f.write("1\n")
                except OSError:
                    pass
                if not have:  # pin the bridge's MAC: by default it follows the lowest port MAC
                    self.ipr.link("set", index=index, address=self.ipr.get_links(index)[0].get("address"))
                    self.ipr.addr("add", index=index, address=str(addr.ip), prefixlen=net.prefixlen, IFA_FLAGS=IFA_F_NOPREFIXROUTE)
                self._expose_route(index, net, str(addr.ip), True)
            elif have:
                self.ipr.addr("del", index=index, address=str(addr.ip), prefixlen=net.prefixlen)
                left = [c for c in self.bridge_addresses(bridge) if ipaddress.ip_interface(c).network == net]
                self._expose_route(index, net, left[0].split("/")[0] if left else str(addr.ip), bool(left))
        except NetlinkError as exc:
            raise KernelError(exc.code, f"cannot {'add' if present else 'remove'} {cidr} on {bridge}: {exc}") from None
        return have != present

    def _expose_route(self, index: int, net: ipaddress.IPv4Network | ipaddress.IPv6Network, src: str, present: bool) -> None:
        dst = {"dst": str(net.network_address), "dst_len": net.prefixlen}
        table = self.EXPOSE_TABLE
        routes = [
            r
            for r in self.ipr.get_routes(family=2, table=table)
            if r.get_attr("RTA_TABLE") == table and r.get_attr("RTA_DST") == dst["dst"] and r["dst_len"] == net.prefixlen
        ]
        rules = [r for r in self.ipr.get_rules(family=2) if r.get_attr("FRA_TABLE") == table and r.get_attr("FRA_DST") == dst["dst"] and r["dst_len"] == net.prefixlen]
        if present:
            if [r.get_attr("RTA_PREFSRC") for r in routes] != [src]:  # scope link, proto static
                self.ipr.route("replace", oif=index, table=table, scope=253, proto=4, prefsrc=src, **dst)
            if not rules:
                self.ipr.rule("add", family=2, table=table, priority=table, **dst)
        else:
            for _ in routes:
                self.ipr.route("del", oif=index, table=table, **dst)
            for _ in rules:
                self.ipr.rule("del", family=2, table=table, priority=table, **dst)

    def ports(self, bridge: str) -> list[str]:
        index = self._index(bridge)
        if index is None:
            return []
        return [link.get("ifname") for link in self.ipr.get_links() if link.get("master") == index]
