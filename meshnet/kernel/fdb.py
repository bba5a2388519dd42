"""The narrow rtnetlink surface fastdp needs, as plain data, over pyroute2.

`VxlanKernel` (vxlan.py) talks only to an object with the `Rtnl` methods below, so unit
tests can hand it `meshnet.testing.fakenetlink.FakeNetlink` instead of `PyrouteRtnl`.
Rows are small frozen dataclasses rather than pyroute2 messages, and every pyroute2
error leaves as `KernelError` with the kernel's errno.

Kernel facts this relies on (checked on 6.18):
- A dump of AF_BRIDGE neighbours lists bridge entries with an `NDA_MASTER` attribute
  (state NUD_NOARP = static, NUD_PERMANENT = the port's own address) and a VXLAN device's
  own table as NTF_SELF entries with `NDA_DST`.
- Bridge entries added with NLM_F_REPLACE move an existing MAC to the new port.
- VXLAN: NLM_F_APPEND adds one more remote to the all-zero entry and is a no-op when that
  remote is there; NLM_F_REPLACE on a unicast MAC replaces its remote.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Protocol

from meshnet.kernel.errors import KernelError
from meshnet.kernel.nlfdb import FdbReq, NetlinkFdb

NUD_NOARP = 0x40
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
NTF_MASTER = 0x04
NTF_STICKY = 0x40


@dataclass(frozen=True)
class VxlanAttrs:
    vni: int
    port: int
    local: str | None
    learning: bool
    df: int  # 0 unset, 1 set, 2 inherit


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    kind: str | None
    master: int | None
    mtu: int
    up: bool
    vxlan: VxlanAttrs | None = None


@dataclass(frozen=True)
class FdbRow:
    ifindex: int
    mac: str
    dst: str | None
    master: int | None  # bridge ifindex for bridge entries, None for the device's own
    state: int
    flags: int


class Rtnl(Protocol):
    def link(self, name: str) -> Link | None: ...
    def add_vxlan(self, name: str, *, vni: int, port: int, local: str, mtu: int) -> None: ...
    def set_link(self, index: int, *, master: int | None = None, mtu: int | None = None, up: bool | None = None) -> None: ...
    def del_link(self, index: int) -> None: ...
    def set_brport(self, index: int, *, isolated: bool, learning: bool | None = None) -> None: ...
    def fdb_dump(self) -> list[FdbRow]: ...
    def fdb_add(self, ifindex: int, mac: str, *, dst: str | None = None, master: bool = False) -> None: ...
    def fdb_del(self, ifindex: int, mac: str, *, dst: str | None = None, master: bool = False) -> None: ...
    def fdb_apply(self, reqs: list[FdbReq]) -> list[KernelError | None]: ...
    def close(self) -> None: ...


class PyrouteRtnl:
    """`Rtnl` over pyroute2's IPRoute, in the current or a named network namespace."""

    def __init__(self, netns: str | None = None) -> None:
        from meshnet.kernel.pyroute import IPRoute  # imported here so unit tests never need it

        try:
            # flags=0: never create a missing netns (pyroute2's default would);
            # groups=0: request/response only, no stream of link/route events to buffer
            self._ipr = IPRoute(netns=netns, flags=0, groups=0) if netns else IPRoute(groups=0)
        except Exception as exc:  # pyroute2 raises several types when a netns is missing
            raise KernelError(getattr(exc, "code", None) or errno.ENOENT, f"cannot open rtnetlink in {netns}: {exc}") from None
        try:
            self._fdb = NetlinkFdb(netns)  # dumps and batches: pyroute2 is 10x slower for the FDB
        except KernelError:
            self._ipr.close()
            raise

    def _call(self, what: str, fn, *args, **kwargs):
        from meshnet.kernel.pyroute import NetlinkError

        try:
            return fn(*args, **kwargs)
        except NetlinkError as exc:
            raise KernelError(exc.code, f"{what}: {exc}") from None

    def link(self, name: str) -> Link | None:
        try:
            msg = self._call(f"get link {name}", self._ipr.link, "get", ifname=name)[0]
        except KernelError as exc:
            if exc.errno == errno.ENODEV:
                return None
            raise
        info = msg.get("IFLA_LINKINFO")
        kind = info.get("IFLA_INFO_KIND") if info else None
        vx = None
        if kind == "vxlan":
            d = info.get("IFLA_INFO_DATA")
            vx = VxlanAttrs(
                vni=d.get("IFLA_VXLAN_ID"),
                port=d.get("IFLA_VXLAN_PORT"),
                local=d.get("IFLA_VXLAN_LOCAL"),
                learning=bool(d.get("IFLA_VXLAN_LEARNING")),
                df=d.get("IFLA_VXLAN_DF") or 0,
            )
        return Link(
            index=msg["index"],
            name=name,
            kind=kind,
            master=msg.get("IFLA_MASTER"),
            mtu=msg.get("IFLA_MTU"),
            up=bool(msg["flags"] & 1),  # IFF_UP
            vxlan=vx,
        )

    def add_vxlan(self, name: str, *, vni: int, port: int, local: str, mtu: int) -> None:
        self._call(
            f"create vxlan {name}",
            self._ipr.link,
            "add",
            ifname=name,
            kind="vxlan",
            vxlan_id=vni,
            vxlan_port=port,
            vxlan_local=local,
            vxlan_learning=0,
            vxlan_df=1,  # DF on the outer header: a too-small underlay fails the probe
            mtu=mtu,
        )

    def set_link(self, index: int, *, master: int | None = None, mtu: int | None = None, up: bool | None = None) -> None:
        kw: dict = {}
        if master is not None:
            kw["master"] = master
        if mtu is not None:
            kw["mtu"] = mtu
        if up is not None:
            kw["state"] = "up" if up else "down"
        if kw:
            self._call(f"set link {index}", self._ipr.link, "set", index=index, **kw)

    def del_link(self, index: int) -> None:
        self._call(f"delete link {index}", self._ipr.link, "del", index=index)

    def set_brport(self, index: int, *, isolated: bool, learning: bool | None = None) -> None:
        kw = {"isolated": int(isolated)}
        if learning is not None:
            kw["learning"] = int(learning)
        self._call(f"set bridge port {index}", self._ipr.brport, "set", index=index, **kw)

    def fdb_dump(self) -> list[FdbRow]:
        return [FdbRow(*row) for row in self._fdb.dump()]

    def fdb_apply(self, reqs: list[FdbReq]) -> list[KernelError | None]:
        """Many changes in batches (one send, then the acks); per request None or its error."""
        return self._fdb.apply(reqs)

    def fdb_add(self, ifindex: int, mac: str, *, dst: str | None = None, master: bool = False) -> None:
        if master:
            # static (NOARP without PERMANENT: PERMANENT would make it a local address)
            kw = dict(state=NUD_NOARP, flags=NTF_MASTER | NTF_STICKY)
            cmd = "replace"
        else:
            kw = dict(state=NUD_PERMANENT | NUD_NOARP, flags=NTF_SELF, dst=dst)
            cmd = "append" if mac == "00:00:00:00:00:00" else "replace"
        self._call(f"fdb {cmd} {mac} dev {ifindex}", self._ipr.fdb, cmd, ifindex=ifindex, lladdr=mac, **kw)

    def fdb_del(self, ifindex: int, mac: str, *, dst: str | None = None, master: bool = False) -> None:
        if master:
            kw = dict(state=NUD_NOARP, flags=NTF_MASTER)
        else:
            kw = dict(state=NUD_PERMANENT | NUD_NOARP, flags=NTF_SELF, dst=dst)
        self._call(f"fdb del {mac} dev {ifindex}", self._ipr.fdb, "del", ifindex=ifindex, lladdr=mac, **kw)

    def close(self) -> None:
        self._fdb.close()
        self._ipr.close()
