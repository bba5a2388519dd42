"""The router's settings: one table from which everything else is made.

Each `Option` is one setting: the `RouterConfig` field, the `launch` flag, its `MESHNET_*`
environment twin, the default, the check and the help text. From `OPTIONS` come the
`launch` flags (`add_launch_flags`), `RouterConfig` itself (`make_dataclass`), the command
line of a background router (`child_argv`) and docs/cli.md (generated from the parser).

Precedence: a flag, else a non-empty environment variable (an empty one means unset, as
Kubernetes writes `value: ""`), else the default. Every value is checked before anything
starts; a bad one is a `UsageError` naming the flag and where the value came from.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
from dataclasses import dataclass, field, make_dataclass
from typing import Any, Callable

from meshnet import __version__
from meshnet.dataplane import layout
from meshnet.dataplane.netfilter import parse_cidrs
from meshnet.dns.answer import normalize_domain, parse_upstreams
from meshnet.errors import UsageError
from meshnet.ipam.addr import parse_universe
from meshnet.ipam.bootstrap import parse_init
from meshnet.mesh import bounds
from meshnet.mesh.quota import Limits
from meshnet.mesh.targets import normalize

DEFAULT_RUN_DIR = "/run/meshnet"
DEFAULT_STATE_DIR = "/var/lib/meshnet"
MIN_MTU = 576  # bytes: the smallest IPv4 MTU every host must accept (RFC 791)
MAX_MTU = 65000  # bytes: leaves room for any encapsulation within a 64 KiB datagram
IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")  # Linux IFNAMSIZ is 16 with the NUL
LOG_LEVELS = ("debug", "info", "warning", "error")
ROUTER_MODES = ("auto", "container", "process")


def default_socket(run_dir: str) -> str:
    return os.path.join(run_dir, "meshnet.sock")


# -- value parsers: text -> value, ValueError with what was expected --------------------------


def _text(value: str) -> str:
    return value


def _int_in(low: int, high: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            number = int(value, 10)
        except ValueError:
            raise ValueError(f"{value!r} is not a whole number") from None
        if not low <= number <= high:
            raise ValueError(f"{number} is outside {low}..{high}")
        return number

    return parse


def _bool(value: str) -> bool:
    text = value.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{value!r} is not a boolean (1/0, true/false, yes/no)")


def _ifname(value: str) -> str:
    if not IFNAME_RE.match(value):
        raise ValueError(f"{value!r} is not an interface name (1-15 letters, digits, '_', '.', '-')")
    return value


def _ipv4(value: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv4 address") from None


def _range(value: str) -> str:
    parse_universe(value)
    return value


def _init(value: str) -> str:
    if value:
        parse_init(value)
    return value


def _nickname(value: str) -> str:
    if len(value) > 64 or not value.isprintable():
        raise ValueError("a nickname is at most 64 printable characters")
    return value


def parse_addr(addr: str) -> tuple[str, int] | None:
    """'HOST:PORT' / ':PORT' / '[v6]:PORT' -> (host, port); '' -> None (disabled).

    Raises:
        ValueError: not HOST:PORT.
    """
    addr = addr.strip()
    if not addr:
        return None
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"{addr!r} is not HOST:PORT (e.g. 127.0.0.1:6782); empty disables it")
    return host.strip("[]") or "0.0.0.0", int(port)


def _metrics_addr(value: str) -> str:
    parse_addr(value)
    return value


def _domain(value: str) -> str:
    return normalize_domain(value)


def _upstreams(value: str) -> str:
    parse_upstreams(value)
    return value


def _log_level(value: str) -> str:
    if value.lower() not in LOG_LEVELS:
        raise ValueError(f"{value!r} is not one of {', '.join(LOG_LEVELS)}")
    return value.lower()


def _router_mode(value: str) -> str:
    if value.lower() not in ROUTER_MODES:
        raise ValueError(f"{value!r} is not one of {', '.join(ROUTER_MODES)}")
    return value.lower()


def _image(value: str) -> str:
    if not value or len(value) > 255 or any(c.isspace() for c in value) or value.startswith("-"):
        raise ValueError(f"{value!r} is not an image reference (REPOSITORY[:TAG])")
    return value


def _cidr_list(value: str) -> str:
    parse_cidrs(value)
    return value


def _kube_api(value: str) -> str:
    if value and value.lower() != "none" and not value.startswith(("http://", "https://")):
        raise ValueError(f"{value!r} is not an http(s) URL of an API server, or 'none'")
    return value


def _peers(value: str) -> list[str]:
    peers = value.split()
    for peer in peers:
        normalize(peer)  # ValueError: not HOST[:PORT]
    return peers


# -- the table -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    name: str  # the RouterConfig field
    default: Any
    help: str
    parse: Callable[[str], Any] = _text
    env: str = ""  # MESHNET_<NAME> unless given
    flag: str = ""  # --<name-with-dashes> unless given
    group: str = "router"
    switch: bool = False  # a flag without a value (store_true)
    metavar: str | None = None
    secret: bool = False  # never on a command line: a background router gets it by environment

    @property
    def env_name(self) -> str:
        return self.env or f"MESHNET_{self.name.upper()}"

    @property
    def flag_name(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")


OPTIONS: tuple[Option, ...] = (
    Option("peers", [], "HOST[:PORT] of routers to connect to; space separated in the environment", _peers, flag="peers", metavar="PEER"),
    Option("state_dir", DEFAULT_STATE_DIR, "persistent state: peer name, address ring, endpoints"),
    Option("run_dir", DEFAULT_RUN_DIR, "API socket, pid file and log of the router"),
    Option("socket_path", None, "API socket (default RUN_DIR/meshnet.sock)", env="MESHNET_SOCKET", flag="--socket"),
    Option("host", "0.0.0.0", "address the control (TCP) and sleeve (UDP) sockets bind to", _ipv4),
    Option("port", 6783, "TCP control port", _int_in(1, 65535)),
    Option("udp_port", 6783, "UDP sleeve port", _int_in(1, 65535)),
    Option("bridge", "meshnet", "the bridge containers attach to", _ifname),
    Option("tap", "mntap", "the sleeve's TAP device on the bridge", _ifname),
    Option("mtu", None, "container MTU (default: the underlay's minus the largest encapsulation)", _int_in(MIN_MTU, MAX_MTU)),
    Option("nickname", "", "name shown to other peers (default: the hostname)", _nickname),
    Option("password", None, "shared secret: encrypts and authenticates the mesh", secret=True),
    Option("password_file", None, "read the shared secret from this file"),
    Option("conn_limit", 100, "most control connections", _int_in(1, bounds.MAX_LINKS)),
    Option("max_peers", Limits.max_peers, "most peers this router keeps in its topology", _int_in(2, bounds.MAX_PEERS), group="limits"),
    Option("max_endpoints", Limits.max_endpoints, "most gossiped container endpoints this router keeps, mesh-wide", _int_in(1, 1 << 24), group="limits"),
    Option(
        "max_peer_endpoints",
        Limits.max_peer_endpoints,
        "most endpoints one peer may announce (its share; more are not stored or forwarded), and attach on this host",
        _int_in(1, bounds.MAX_ENDPOINTS),
        group="limits",
    ),
    Option("mac_table_max", layout.MAC_TABLE_DEFAULT, "entries of the sleeve's MAC table, gossiped and learned together (gossiped ones first)",
           _int_in(layout.MAC_TABLE_MIN, layout.MAC_TABLE_LIMIT), group="limits"),
    Option("mac_learn_quota", layout.LEARN_QUOTA_DEFAULT, "MACs the sleeve learns behind one peer (0: learn none)",
           _int_in(0, layout.MAC_TABLE_LIMIT), group="limits"),
    Option("mac_age", layout.MAC_AGE_DEFAULT, "seconds a learned MAC lives without traffic from it",
           _int_in(1, layout.MAC_AGE_LIMIT), group="limits"),
    Option(
        "full_mesh_limit",
        64,
        "up to this many peers every router connects to every other; beyond, each keeps MESH_DEGREE chosen connections (the data path stays direct)",
        _int_in(2, 100000),
    ),
    Option("mesh_degree", 4, "control connections each router chooses in a mesh bigger than FULL_MESH_LIMIT", _int_in(2, 64)),
    Option("ipalloc_range", "10.32.0.0/12", "the address range IPAM hands out, cluster-wide", _range, group="ipam"),
    Option("ipalloc_init", "", "how the range is first split: consensus=N, seed=PEER,... or observer (default consensus=1+number of PEERs)", _init, group="ipam"),
    Option("no_fastdp", False, "never use kernel VXLAN; every peer rides the sleeve", _bool, switch=True, group="dataplane"),
    Option("pump_threads", 1, "sleeve pump threads: a TAP queue and a UDP socket each, every flow kept on one (compiled pump)",
           _int_in(1, 8), group="dataplane"),
    Option(
        "restart_grace",
        60,
        "seconds peers keep forwarding to a router that stopped or crashed, while its kernel data path answers probes (0: not at all)",
        _int_in(0, 3600),
        group="dataplane",
    ),
    Option("pure_python_pump", False, "use the slow pure-Python pump (debugging)", _bool, env="MESHNET_PUREPYTHON", switch=True, group="dataplane"),
    Option("metrics_addr", "127.0.0.1:6782", "Prometheus /metrics HOST:PORT; empty disables", _metrics_addr),
    Option("log_level", "info", f"one of {', '.join(LOG_LEVELS)}", _log_level),
    Option(
        "docker_socket",
        None,
        "Docker Engine API socket or URL (else DOCKER_HOST, else /var/run/docker.sock if present; 'none' turns Docker off)",
        group="docker",
    ),
    Option("plugin_dir", None, "where Docker looks for network plugins (default /run/docker/plugins)", group="docker"),
    Option("docker_network", "meshnet", "Docker network to create on each dockerd ('' for none)", group="docker"),
    Option("dns_domain", "meshnet.local", "containers resolve as NAME.DOMAIN", _domain, group="docker"),
    Option("dns_port", 53, "resolver port on the host's exposed addresses", _int_in(1, 65535), group="docker"),
    Option("dns_upstream", "", "servers for names outside the domain, 'IP[:PORT] ...' (default none: REFUSED)", _upstreams, group="docker"),
    Option(
        "router_mode",
        "auto",
        "how `launch` runs the router: container (a Docker container with a restart policy), process (a background "
        "process), auto (container when the Docker daemon has the router image, else process)",
        _router_mode,
        group="docker",
    ),
    Option("router_image", f"meshnet/meshnet:{__version__}", "the router container's image (image/build.sh makes it)", _image, group="docker"),
    Option(
        "pod_network",
        False,
        "be a node's pod network: an IPAM address on the bridge as the pods' gateway, the range routed through it, forwarding on, egress masqueraded",
        _bool,
        switch=True,
        group="kubernetes",
    ),
    Option(
        "non_masquerade_cidrs",
        "",
        "destinations pods reach with their own address, beside the range itself (as ip-masq-agent's nonMasqueradeCIDRs); 0.0.0.0/0 turns masquerading off",
        _cidr_list,
        group="kubernetes",
        metavar="CIDRS",
    ),
    Option(
        "network_policy",
        False,
        "enforce Kubernetes NetworkPolicy for this node's pods (watches Pods, Namespaces and NetworkPolicies; needs the API)",
        _bool,
        switch=True,
        group="kubernetes",
    ),
    Option("kube_api", "", "Kubernetes API server URL for the node agent (default: in-cluster; 'none' turns it off)", _kube_api, group="kubernetes"),
    Option("kube_sa_dir", "/var/run/secrets/kubernetes.io/serviceaccount", "service account token and CA for the API", group="kubernetes"),
)
BY_NAME = {o.name: o for o in OPTIONS}


class _Paths:
    """Paths derived from the run dir (a base of RouterConfig)."""

    run_dir: str
    socket_path: str | None

    @property
    def socket(self) -> str:
        return self.socket_path or default_socket(self.run_dir)

    @property
    def pid_file(self) -> str:
        return os.path.join(self.run_dir, "meshnet.pid")

    @property
    def log_file(self) -> str:
        return os.path.join(self.run_dir, "meshnet.log")

    @property
    def secret(self) -> bytes | None:
        """The shared secret as bytes, or None: an unencrypted mesh."""
        password = getattr(self, "password", None)
        return password.encode() if isinstance(password, str) else password


def _field(option: Option) -> tuple[str, Any, Any]:
    default = option.default
    if isinstance(default, list):
        return option.name, Any, field(default_factory=list)
    return option.name, Any, field(default=default)


RouterConfig = make_dataclass("RouterConfig", [_field(o) for o in OPTIONS], bases=(_Paths,))
RouterConfig.__doc__ = "Every router setting; the fields are OPTIONS (meshnet/config.py)."


# -- the command line ----------------------------------------------------------------------------


def env_value(option: Option, environ: dict[str, str] | None = None) -> str | None:
    """The environment twin's value; an empty one is unset."""
    value = (os.environ if environ is None else environ).get(option.env_name)
    return value if value not in (None, "") else None


def add_launch_flags(parser: argparse.ArgumentParser) -> None:
    """Every option as a flag; no conversion here (from_args checks, naming the source)."""
    for option in OPTIONS:
        text = f"{option.help} [{option.env_name}]"
        if option.name == "peers":
            parser.add_argument("peers", nargs="*", metavar=option.metavar, help=text)
        elif option.switch:
            parser.add_argument(option.flag_name, action="store_true", default=None, help=text)
        else:
            shown = f" (default {option.default})" if option.default not in (None, "", []) else ""
            parser.add_argument(option.flag_name, default=None, metavar=option.metavar, help=text + shown)


def add_socket_flags(parser: argparse.ArgumentParser) -> None:
    """--run-dir and --socket: how every other command finds the router."""
    for name in ("run_dir", "socket_path"):
        option = BY_NAME[name]
        parser.add_argument(option.flag_name, default=None, help=f"{option.help} [{option.env_name}]")


def socket_of(args: argparse.Namespace, environ: dict[str, str] | None = None) -> str:
    """The API socket the flags (or their twins) name."""
    run_dir = args.run_dir or env_value(BY_NAME["run_dir"], environ) or DEFAULT_RUN_DIR
    return args.socket or env_value(BY_NAME["socket_path"], environ) or default_socket(run_dir)


def run_dir_of(args: argparse.Namespace, environ: dict[str, str] | None = None) -> str:
    return args.run_dir or env_value(BY_NAME["run_dir"], environ) or DEFAULT_RUN_DIR


def from_args(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Any:
    """A checked RouterConfig from parsed `launch` flags and the environment.

    Raises:
        UsageError: a bad value, naming the flag and where the value came from.
    """
    values: dict[str, Any] = {}
    for option in OPTIONS:
        given = getattr(args, option.name, None)
        if given in (None, []) or (option.switch and not given):
            raw, source = env_value(option, environ), option.env_name
        else:
            raw, source = (" ".join(given) if isinstance(given, list) else "1" if given is True else given), option.flag_name
        if raw is None:
            values[option.name] = list(option.default) if isinstance(option.default, list) else option.default
            continue
        try:
            values[option.name] = option.parse(raw)
        except ValueError as exc:
            raise UsageError(f"{option.flag_name}: {exc} (from {source})") from None
    if values["password_file"]:
        try:
            with open(values["password_file"], "rb") as f:
                values["password"] = f.read().strip().decode()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--password-file: cannot read {values['password_file']}: {getattr(exc, 'strerror', None) or exc}") from None
    if values["password"] == "":
        raise UsageError("--password: the shared secret is empty")
    return RouterConfig(**values)


def child_argv(config: Any) -> tuple[list[str], dict[str, str]]:
    """Flags and extra environment that give a background router this same config."""
    argv: list[str] = []
    env: dict[str, str] = {}
    for option in OPTIONS:
        value = getattr(config, option.name)
        if option.name == "password_file":
            continue  # already read into `password`
        if option.secret:
            if value:
                env[option.env_name] = value
            continue
        if option.name == "peers":
            argv += list(value)
        elif option.switch:
            argv += [option.flag_name] if value else []
        elif value is not None:
            argv.append(f"{option.flag_name}={value}")
    return argv, env
