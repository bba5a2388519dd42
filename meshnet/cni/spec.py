"""The CNI protocol, sans I/O: versions, requests, results and errors.

Everything here is pure: `parse_request(env, stdin)` turns what a runtime hands a plugin
into a `Request` (or raises `CniError`), and `format_result` / `version_result` /
`CniError.to_json` produce what the plugin prints, in the version the configuration asked
for. The plugin (`meshnet.cni.plugin`) does the I/O around it.

Facts this module rests on (CNI spec 0.3.0 ... 1.1.0, and what runtimes really send; see
`docs/kubernetes.md`):
- an empty or missing `cniVersion` means 0.1.0; we speak 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0
  and answer anything else with error 1;
- CHECK exists from 0.4.0 and STATUS/GC from 1.1.0: asked in an older version, error 1;
- results: 0.3.x/0.4.0 put `"version": "4"` in every `ips` entry, 1.0.0 dropped it, 1.1.0
  adds `mtu` to interfaces;
- `CNI_ARGS` is `K=V;K=V`; `IgnoreUnknown=1` lets unknown keys through (podman and the CRI
  always send it); a static address arrives as `IP=` (podman `--ip`), or as
  `runtimeConfig.ips` from runtimes that honour the `ips` capability;
- `runtimeConfig.portMappings` comes camelCase from podman (`hostPort`) and Go-cased from
  containerd's CRI (`HostPort`): both are accepted.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import Any

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST = "1.1.0"
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")

# Well-known error codes (CNI spec, "Error" section).
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENV = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
PLUGIN_NOT_AVAILABLE = 50  # STATUS only
PLUGIN_NOT_AVAILABLE_LIMITED = 51  # STATUS only
# Plugin-specific codes (100+).
INTERNAL = 100
IPAM_FAILURE = 101
INTERFACE_FAILURE = 102
CHECK_FAILED = 103

CONTAINER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
NETWORK_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")
MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
KNOWN_ARGS = {"IgnoreUnknown", "IP", "MAC", "K8S_POD_NAME", "K8S_POD_NAMESPACE", "K8S_POD_INFRA_CONTAINER_ID", "K8S_POD_UID"}
PROTOCOLS = ("tcp", "udp", "sctp")
AUTO = "auto"  # gateway: the pod gateway the router holds on its bridge (GET /podnet), if it has one


class CniError(Exception):
    """A failure the plugin reports as a CNI error result (stdout, non-zero exit)."""

    def __init__(self, code: int, msg: str, details: str = ""):
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self, version: str) -> dict[str, Any]:
        out: dict[str, Any] = {"cniVersion": version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out


def error_version(requested: str | None) -> str:
    """The cniVersion to put on an error: the caller's if we speak it, else 1.0.0 (which
    every current runtime decodes)."""
    return requested if requested in SUPPORTED_VERSIONS else "1.0.0"


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


# -- request ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PortMapping:
    host_port: int
    container_port: int
    protocol: str = "tcp"
    host_ip: str = ""


@dataclass(frozen=True)
class NetConf:
    """Our plugin entry of the conflist, with the runtime's additions."""

    name: str
    version: str
    type: str = "meshnet-cni"
    socket: str = "/run/meshnet/meshnet.sock"
    state_dir: str = "/var/lib/meshnet"
    bridge: str = "meshnet"
    mtu: int | None = None  # None: the router's
    subnet: str | None = None  # allocate from this part of the range
    gateway: str | None = None  # default route via this host address, if set; "auto": the router's pod gateway
    routes: tuple[tuple[str, str | None], ...] = ()  # extra (dst, gw) routes
    wait: float = 10.0  # seconds the router may take to find space
    timeout: float = 30.0  # seconds for one API call
    log_file: str = ""
    runtime_ips: tuple[str, ...] = ()
    port_mappings: tuple[PortMapping, ...] = ()
    prev_result: dict[str, Any] | None = None
    valid_attachments: tuple[tuple[str, str], ...] | None = None  # GC: (container id, ifname)
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class Request:
    command: str
    conf: NetConf
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: dict[str, str] = field(default_factory=dict)
    path: tuple[str, ...] = ()

    @property
    def owner(self) -> str:
        """The IPAM owner of this attachment (unique per network, container and interface)."""
        return ipam_owner(self.conf.name, self.container_id, self.ifname)

    @property
    def endpoint_id(self) -> str:
        return f"cni:{self.container_id}:{self.ifname}"

    @property
    def static_ip(self) -> str | None:
        """The address asked for: runtimeConfig.ips first (capability), else CNI_ARGS IP=."""
        if self.conf.runtime_ips:
            return self.conf.runtime_ips[0].split("/")[0]
        ip = self.args.get("IP")
        return ip.split("/")[0] if ip else None

    @property
    def mac(self) -> str | None:
        mac = self.args.get("MAC")
        return mac.lower() if mac else None

    @property
    def pod_name(self) -> str:
        return self.args.get("K8S_POD_NAME", "")


def ipam_owner(network: str, container_id: str, ifname: str) -> str:
    return f"cni:{network}:{container_id}:{ifname}"


def parse_owner(owner: str, network: str) -> tuple[str, str] | None:
    """(container id, ifname) of a CNI owner on `network`; None for anybody else's."""
    prefix = f"cni:{network}:"
    if not owner.startswith(prefix):
        return None
    cid, sep, ifname = owner[len(prefix) :].rpartition(":")
    return (cid, ifname) if sep and cid and ifname else None


def host_ifname(container_id: str, ifname: str) -> str:
    """Our end of a pod's veth: stable per (container, interface), at most 15 characters."""
    import hashlib

    return "mnp" + hashlib.sha1(f"{container_id}/{ifname}".encode()).hexdigest()[:11]


def mac_for(address: str) -> str:
    """The pod's MAC when the runtime names none: 0a:58 + the IPv4 address (locally
    administered, unicast). A pod that comes back with its address (podman restart, a
    static IP) keeps its MAC, so no neighbour anywhere holds a stale ARP entry for it."""
    ip = ipaddress.ip_address(address.split("/")[0])
    tail = ip.packed[-4:]
    return "0a:58:" + ":".join(f"{b:02x}" for b in tail)


def parse_cni_args(raw: str) -> dict[str, str]:
    """`K=V;K=V` -> dict. Unknown keys are an error unless IgnoreUnknown is true."""
    args: dict[str, str] = {}
    for part in raw.split(";"):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise CniError(INVALID_ENV, f"CNI_ARGS: {part!r} is not KEY=VALUE")
        args[key] = value
    ignore = args.get("IgnoreUnknown", "").lower() in ("1", "true")
    unknown = sorted(set(args) - KNOWN_ARGS)
    if unknown and not ignore:
        raise CniError(INVALID_ENV, f"CNI_ARGS: unknown key(s) {', '.join(unknown)} (set IgnoreUnknown=1 to pass them)")
    if "IP" in args:
        try:
            ipaddress.ip_interface(args["IP"])
        except ValueError:
            raise CniError(INVALID_ENV, f"CNI_ARGS: IP={args['IP']!r} is not an IP address") from None
    if "MAC" in args and not MAC_RE.match(args["MAC"]):
        raise CniError(INVALID_ENV, f"CNI_ARGS: MAC={args['MAC']!r} is not a MAC address")
    return args


def parse_port_mappings(items: Any) -> tuple[PortMapping, ...]:
    """runtimeConfig.portMappings in either spelling (podman camelCase, CRI Go-cased)."""
    if items is None:
        return ()
    if not isinstance(items, list):
        raise CniError(INVALID_CONFIG, "runtimeConfig.portMappings must be a list")
    out = []
    for item in items:
        if not isinstance(item, dict):
            raise CniError(INVALID_CONFIG, f"port mapping {item!r} is not an object")
        low = {k.lower(): v for k, v in item.items()}
        try:
            host, cont = int(low.get("hostport")), int(low.get("containerport"))
        except (TypeError, ValueError):
            raise CniError(INVALID_CONFIG, f"port mapping {item!r} needs numeric hostPort and containerPort") from None
        proto = str(low.get("protocol") or "tcp").lower()
        if not (0 < host < 65536 and 0 < cont < 65536):
            raise CniError(INVALID_CONFIG, f"port mapping {item!r}: ports must be 1-65535")
        if proto not in PROTOCOLS:
            raise CniError(INVALID_CONFIG, f"port mapping {item!r}: protocol must be one of {', '.join(PROTOCOLS)}")
        out.append(PortMapping(host, cont, proto, str(low.get("hostip") or "")))
    return tuple(out)


def _parse_conf(conf: dict[str, Any], version: str) -> NetConf:
    def opt(key: str, kind: type, default: Any) -> Any:
        value = conf.get(key, default)
        if value is None or value == default:
            return default
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
            raise CniError(INVALID_CONFIG, f"network config field {key!r} must be a {kind.__name__}")
        return value

    name = conf.get("name")
    if not isinstance(name, str) or not NETWORK_NAME_RE.match(name):
        raise CniError(INVALID_CONFIG, "network config needs a \"name\" (letters, digits, _ . -)")
    mtu = opt("mtu", int, None)
    if mtu is not None and not 576 <= mtu <= 65535:
        raise CniError(INVALID_CONFIG, f"mtu {mtu} is out of range (576-65535)")
    subnet = opt("subnet", str, None)
    gateway = opt("gateway", str, None)
    try:
        if subnet:
            ipaddress.ip_network(subnet)
        if gateway and gateway != AUTO:
            ipaddress.ip_address(gateway)
    except ValueError as exc:
        raise CniError(INVALID_CONFIG, f"network config: {exc}") from None
    routes = []
    for r in opt("routes", list, []):
        if not isinstance(r, dict) or not isinstance(r.get("dst"), str):
            raise CniError(INVALID_CONFIG, f"route {r!r} needs a \"dst\" CIDR")
        try:
            ipaddress.ip_network(r["dst"], strict=False)
            if r.get("gw"):
                ipaddress.ip_address(r["gw"])
        except ValueError as exc:
            raise CniError(INVALID_CONFIG, f"route {r!r}: {exc}") from None
        routes.append((r["dst"], r.get("gw") or None))
    if gateway and gateway != AUTO:
        routes.append(("0.0.0.0/0", gateway))
    rc = conf.get("runtimeConfig") or {}
    if not isinstance(rc, dict):
        raise CniError(INVALID_CONFIG, "runtimeConfig must be an object")
    ips = rc.get("ips") or []
    if not isinstance(ips, list) or not all(isinstance(i, str) for i in ips):
        raise CniError(INVALID_CONFIG, "runtimeConfig.ips must be a list of addresses")
    for ip in ips:
        try:
            ipaddress.ip_interface(ip)
        except ValueError:
            raise CniError(INVALID_CONFIG, f"runtimeConfig.ips: {ip!r} is not an IP address") from None
    valid = None
    attachments = conf.get("cni.dev/valid-attachments", conf.get("cni.dev/attachments"))
    if attachments is not None:
        if not isinstance(attachments, list):
            raise CniError(INVALID_CONFIG, "cni.dev/valid-attachments must be a list")
        valid = tuple(
            (str(a.get("containerID", "")), str(a.get("ifname", ""))) for a in attachments if isinstance(a, dict)
        )
    prev = conf.get("prevResult")
    if prev is not None and not isinstance(prev, dict):
        raise CniError(INVALID_CONFIG, "prevResult must be an object")
    return NetConf(
        name=name,
        version=version,
        type=str(conf.get("type", "meshnet-cni")),
        socket=opt("socket", str, NetConf.socket),
        state_dir=opt("state_dir", str, NetConf.state_dir),
        bridge=opt("bridge", str, NetConf.bridge),
        mtu=mtu,
        subnet=subnet,
        gateway=gateway,
        routes=tuple(routes),
        wait=opt("wait", float, NetConf.wait),
        timeout=opt("timeout", float, NetConf.timeout),
        log_file=opt("log_file", str, ""),
        runtime_ips=tuple(ips),
        port_mappings=parse_port_mappings(rc.get("portMappings")),
        prev_result=prev,
        valid_attachments=valid,
        raw=conf,
    )


def peek_version(stdin: bytes) -> str | None:
    """The cniVersion of a config, best effort (for error results); None if unreadable."""
    try:
        conf = json.loads(stdin)
    except ValueError:
        return None
    if not isinstance(conf, dict):
        return None
    version = conf.get("cniVersion")
    return version if isinstance(version, str) else None


def parse_request(env: dict[str, str], stdin: bytes) -> Request:
    """Validate what the runtime gave us. Raises CniError with the spec's code."""
    command = env.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise CniError(INVALID_ENV, f"CNI_COMMAND={command!r} is not one of {', '.join(COMMANDS)}")
    try:
        conf = json.loads(stdin) if stdin.strip() else None
    except (ValueError, UnicodeDecodeError) as exc:
        raise CniError(DECODE_FAILURE, "network config on stdin is not valid JSON", str(exc)) from None
    if not isinstance(conf, dict):
        raise CniError(DECODE_FAILURE, "network config on stdin must be a JSON object")
    version = conf.get("cniVersion") or "0.1.0"  # spec: missing or empty means 0.1.0
    if not isinstance(version, str) or not VERSION_RE.match(version):
        raise CniError(DECODE_FAILURE, f"cniVersion {version!r} is not a version like 1.0.0")
    if command == "VERSION":
        return Request(command, NetConf(name="", version=version))
    if version not in SUPPORTED_VERSIONS:
        raise CniError(
            INCOMPATIBLE_VERSION,
            f"incompatible CNI version {version}",
            f"meshnet-cni supports {', '.join(SUPPORTED_VERSIONS)}",
        )
    if command == "CHECK" and version_key(version) < (0, 4, 0):
        raise CniError(INCOMPATIBLE_VERSION, f"CHECK needs cniVersion 0.4.0 or later (config is {version})")
    if command in ("STATUS", "GC") and version_key(version) < (1, 1, 0):
        raise CniError(INCOMPATIBLE_VERSION, f"{command} needs cniVersion 1.1.0 or later (config is {version})")
    netconf = _parse_conf(conf, version)
    path = tuple(p for p in env.get("CNI_PATH", "").split(":") if p)
    if command in ("STATUS", "GC"):
        return Request(command, netconf, path=path)
    cid, netns, ifname = env.get("CNI_CONTAINERID", ""), env.get("CNI_NETNS", ""), env.get("CNI_IFNAME", "")
    missing = [n for n, v in (("CNI_CONTAINERID", cid), ("CNI_IFNAME", ifname)) if not v]
    if command in ("ADD", "CHECK") and not netns:
        missing.append("CNI_NETNS")
    if missing:
        raise CniError(INVALID_ENV, f"missing environment variable(s): {', '.join(missing)}")
    if not CONTAINER_ID_RE.match(cid):
        raise CniError(INVALID_ENV, f"CNI_CONTAINERID={cid!r} is not a valid container id")
    if len(ifname) > 15 or ifname in (".", "..") or any(c in ifname for c in "/:") or any(c.isspace() for c in ifname):
        raise CniError(INVALID_ENV, f"CNI_IFNAME={ifname!r} is not a valid interface name")
    args = parse_cni_args(env.get("CNI_ARGS", ""))
    return Request(command, netconf, cid, netns, ifname, args, path)


# -- results ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AddOutcome:
    """What ADD made, version-neutral."""

    host_if: str
    host_mac: str
    ifname: str
    mac: str
    netns: str
    cidrs: tuple[str, ...]
    mtu: int
    gateway: str | None = None
    routes: tuple[tuple[str, str | None], ...] = ()


def format_result(version: str, out: AddOutcome) -> dict[str, Any]:
    """The ADD result in the version the config asked for."""
    v = version_key(version)
    host: dict[str, Any] = {"name": out.host_if, "mac": out.host_mac}
    pod: dict[str, Any] = {"name": out.ifname, "mac": out.mac, "sandbox": out.netns}
    if v >= (1, 1, 0):
        host["mtu"] = out.mtu
        pod["mtu"] = out.mtu
    ips = []
    for cidr in out.cidrs:
        iface = ipaddress.ip_interface(cidr)
        entry: dict[str, Any] = {"address": cidr, "interface": 1}
        if v < (1, 0, 0):
            entry["version"] = str(iface.version)
        if out.gateway and ipaddress.ip_address(out.gateway).version == iface.version:
            entry["gateway"] = out.gateway
        ips.append(entry)
    routes = []
    for dst, gw in out.routes:
        route: dict[str, Any] = {"dst": dst}
        if gw:
            route["gw"] = gw
        routes.append(route)
    return {"cniVersion": version, "interfaces": [host, pod], "ips": ips, "routes": routes, "dns": {}}


def version_result(requested: str) -> dict[str, Any]:
    return {"cniVersion": requested, "supportedVersions": list(SUPPORTED_VERSIONS)}


def prev_cidrs(prev: dict[str, Any] | None, ifname: str) -> list[str]:
    """The addresses a prevResult gave our interface `ifname` (for CHECK)."""
    if not prev:
        return []
    interfaces = prev.get("interfaces") or []
    ours = {i for i, x in enumerate(interfaces) if isinstance(x, dict) and x.get("name") == ifname and x.get("sandbox")}
    return [
        ip["address"]
        for ip in prev.get("ips") or []
        if isinstance(ip, dict) and isinstance(ip.get("address"), str) and (ip.get("interface") in ours or not ours)
    ]
