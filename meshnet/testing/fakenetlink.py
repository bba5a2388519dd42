"""An in-memory kernel for `VxlanKernel`: links, bridge FDB and VXLAN FDB, no root needed.

It implements `meshnet.kernel.fdb.Rtnl` with the kernel semantics fastdp depends on, so
plan → diff → apply → dump can be checked without root:

- the bridge FDB is keyed by MAC: an add (replace) moves the MAC to the new port; each port
  also has its own address as a permanent entry, which dumps show and nobody may delete;
- a VXLAN FDB entry is a MAC with a list of remotes: adding the all-zero MAC appends a
  remote (no-op if present), adding a unicast MAC replaces its remote; deleting with a
  `dst` removes that remote only, and ENOENT if it is not there;
- deleting a link drops its FDB entries; errors are KernelError with the kernel's errno.

Tests can also plant entries the router did not make (`learned`, `foreign`) and count
calls (`calls`).
"""

from __future__ import annotations

import errno
import itertools
from dataclasses import dataclass, field, replace

from meshnet.kernel.errors import KernelError
from meshnet.kernel.nlfdb import FdbReq
from meshnet.kernel.fdb import NTF_SELF, NTF_STICKY, NUD_NOARP, NUD_PERMANENT, FdbRow, Link, VxlanAttrs

NUD_REACHABLE = 0x02
ZERO_MAC = "00:00:00:00:00:00"


@dataclass
class _BridgeEntry:
    port: int
    state: int  # NUD_NOARP static, NUD_PERMANENT the port's own address, NUD_REACHABLE learned
    sticky: bool = False


@dataclass
class FakeNetlink:
    links: dict[int, Link] = field(default_factory=dict)
    bridge_fdb: dict[int, dict[str, _BridgeEntry]] = field(default_factory=dict)  # bridge -> mac -> entry
    vxlan_fdb: dict[int, dict[str, list[str]]] = field(default_factory=dict)  # device -> mac -> remotes
    self_fdb: dict[int, set[str]] = field(default_factory=dict)  # other devices' own address lists
    calls: list[tuple] = field(default_factory=list)
    closed: bool = False
    _next_index: itertools.count = field(default_factory=lambda: itertools.count(2))
    _macs: itertools.count = field(default_factory=lambda: itertools.count(1))

    # -- test setup -------------------------------------------------------------------

    def add_link(self, name: str, kind: str | None = None, *, master: str | None = None, mtu: int = 1500) -> Link:
        if self.link(name) is not None:
            raise KernelError(errno.EEXIST, f"{name} exists")
        index = next(self._next_index)
        link = Link(index, name, kind, None, mtu, True)
        self.links[index] = link
        if kind == "bridge":
            self.bridge_fdb[index] = {}
        else:
            self.self_fdb[index] = {"33:33:00:00:00:01", "01:00:5e:00:00:01"}
        if master is not None:
            self.set_link(index, master=self._by_name(master).index)
        return self.links[index]

    def learned(self, port: str, mac: str) -> None:
        """Plant a dynamically learned bridge entry, as traffic would."""
        link = self._by_name(port)
        self.bridge_fdb[link.master][mac] = _BridgeEntry(link.index, NUD_REACHABLE)

    def foreign(self, port: str, mac: str) -> None:
        """Plant a static bridge entry someone else added on `port`."""
        link = self._by_name(port)
        self.bridge_fdb[link.master][mac] = _BridgeEntry(link.index, NUD_NOARP)

    def _by_name(self, name: str) -> Link:
        link = self.link(name)
        if link is None:
            raise KernelError(errno.ENODEV, f"no such device {name}")
        return link

    def _by_index(self, index: int) -> Link:
        if index not in self.links:
            raise KernelError(errno.ENODEV, f"no such device {index}")
        return self.links[index]

    def _own_mac(self, index: int) -> str:
        return "02:fa:4e:%02x:%02x:%02x" % tuple(index.to_bytes(3, "big"))

    # -- Rtnl -------------------------------------------------------------------------

    def link(self, name: str) -> Link | None:
        for link in self.links.values():
            if link.name == name:
                return link
        return None

    def add_vxlan(self, name: str, *, vni: int, port: int, local: str, mtu: int) -> None:
        self.calls.append(("add_vxlan", name))
        if self.link(name) is not None:
            raise KernelError(errno.EEXIST, f"{name} exists")
        index = next(self._next_index)
        self.links[index] = Link(index, name, "vxlan", None, mtu, False, VxlanAttrs(vni, port, local, False, 1))
        self.vxlan_fdb[index] = {}

    def set_link(self, index: int, *, master: int | None = None, mtu: int | None = None, up: bool | None = None) -> None:
        self.calls.append(("set_link", index))
        link = self._by_index(index)
        if master is not None and master != link.master:
            if self._by_index(master).kind != "bridge":
                raise KernelError(errno.EINVAL, "master is not a bridge")
            self._unbridge(link)
            self.bridge_fdb[master][self._own_mac(index)] = _BridgeEntry(index, NUD_PERMANENT)
            link = replace(link, master=master)
        if mtu is not None:
            link = replace(link, mtu=mtu)
        if up is not None:
            link = replace(link, up=up)
        self.links[index] = link

    def _unbridge(self, link: Link) -> None:
        if link.master is not None:
            table = self.bridge_fdb[link.master]
            for mac in [m for m, e in table.items() if e.port == link.index]:
                del table[mac]

    def del_link(self, index: int) -> None:
        self.calls.append(("del_link", index))
        link = self._by_index(index)
        self._unbridge(link)
        self.vxlan_fdb.pop(index, None)
        self.self_fdb.pop(index, None)
        del self.links[index]

    def set_brport(self, index: int, *, isolated: bool, learning: bool | None = None) -> None:
        self.calls.append(("set_brport", index, isolated, learning))
        if self._by_index(index).master is None:
            raise KernelError(errno.EOPNOTSUPP, "not a bridge port")

    def fdb_dump(self) -> list[FdbRow]:
        rows = []
        for bridge, table in self.bridge_fdb.items():
            for mac, e in table.items():
                rows.append(FdbRow(e.port, mac, None, bridge, e.state, NTF_STICKY if e.sticky else 0))
        for dev, table in self.vxlan_fdb.items():
            for mac, remotes in table.items():
                for dst in remotes:
                    rows.append(FdbRow(dev, mac, dst, None, NUD_PERMANENT | NUD_NOARP, NTF_SELF))
        for dev, macs in self.self_fdb.items():
            for mac in macs:
                rows.append(FdbRow(dev, mac, None, None, NUD_PERMANENT, NTF_SELF))
        return rows

    def fdb_add(self, ifindex: int, mac: str, *, dst: str | None = None, master: bool = False) -> None:
        self.calls.append(("fdb_add", ifindex, mac, dst, master))
        link = self._by_index(ifindex)
        if master:
            if link.master is None:
                raise KernelError(errno.EINVAL, "not a bridge port")
            # replace semantics: whatever the MAC was (learned, static elsewhere), it moves
            self.bridge_fdb[link.master][mac] = _BridgeEntry(ifindex, NUD_NOARP, sticky=True)
            return
        if ifindex not in self.vxlan_fdb:
            raise KernelError(errno.EOPNOTSUPP, "not a vxlan device")
        if dst is None:
            raise KernelError(errno.EINVAL, "vxlan fdb needs a dst")
        remotes = self.vxlan_fdb[ifindex].setdefault(mac, [])
        if mac == ZERO_MAC:
            if dst not in remotes:
                remotes.append(dst)
        elif remotes:
            remotes[0] = dst
        else:
            remotes.append(dst)

    def fdb_del(self, ifindex: int, mac: str, *, dst: str | None = None, master: bool = False) -> None:
        self.calls.append(("fdb_del", ifindex, mac, dst, master))
        link = self._by_index(ifindex)
        if master:
            table = self.bridge_fdb.get(link.master, {})
            e = table.get(mac)
            if e is None or e.port != ifindex:
                raise KernelError(errno.ENOENT, "no such fdb entry")
            del table[mac]
            return
        table = self.vxlan_fdb.get(ifindex)
        if table is None or mac not in table or (dst is not None and dst not in table[mac]):
            raise KernelError(errno.ENOENT, "no such fdb entry")
        if dst is None:
            del table[mac]
        else:
            table[mac].remove(dst)
            if not table[mac]:
                del table[mac]

    def fdb_apply(self, reqs: list[FdbReq]) -> list[KernelError | None]:
        """Each request as its own fdb_add / fdb_del (so `calls` counts them one by one)."""
        results: list[KernelError | None] = []
        for req in reqs:
            call = self.fdb_add if req.action == "add" else self.fdb_del
            try:
                call(req.ifindex, req.mac, dst=req.dst, master=req.master)
                results.append(None)
            except KernelError as exc:
                results.append(exc)
        return results

    def fdb_ops(self) -> int:
        """How many FDB changes were asked for so far."""
        return sum(1 for c in self.calls if c[0] in ("fdb_add", "fdb_del"))

    def close(self) -> None:
        self.closed = True
