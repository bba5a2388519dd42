"""`meshnet run`: `docker run` arguments -> Engine API create parameters (`RunSpec`).

The flags `docker run` users reach for are understood, `-p`/`--publish` included (Docker
itself publishes the port: the container keeps its Docker network beside meshnet's
`ethwe`); a flag not in the table is refused by name, never guessed. `--pull` says
whether `meshnet run` pulls the image through the daemon (`missing` by default).
"""

from __future__ import annotations

import ipaddress
import shlex
from dataclasses import dataclass, field
from typing import Any

PULL_POLICIES = ("missing", "always", "never")


@dataclass
class RunSpec:
    image: str = ""
    create: dict[str, Any] = field(default_factory=dict)  # create_container kwargs
    host_config: dict[str, Any] = field(default_factory=dict)  # create_host_config kwargs
    meshnet: dict[str, Any] = field(default_factory=dict)  # what meshnet run itself does (pull)
    raw_host_config: dict[str, Any] = field(default_factory=dict)  # HostConfig fields docker-py has no kwarg for

    @property
    def pull(self) -> str:
        return self.meshnet.get("pull", "missing")

    @property
    def name(self) -> str | None:
        return self.create.get("name")


# flag -> (kwarg, where, kind); kind: "bool", "str", "list", "int", "kv" (K=V dict), "float"
_FLAGS: dict[str, tuple[str, str, str]] = {
    "--name": ("name", "create", "str"),
    "--hostname": ("hostname", "create", "str"),
    "-h": ("hostname", "create", "str"),
    "--domainname": ("domainname", "create", "str"),
    "--user": ("user", "create", "str"),
    "-u": ("user", "create", "str"),
    "--workdir": ("working_dir", "create", "str"),
    "-w": ("working_dir", "create", "str"),
    "--env": ("environment", "create", "list"),
    "-e": ("environment", "create", "list"),
    "--label": ("labels", "create", "kv"),
    "-l": ("labels", "create", "kv"),
    "--entrypoint": ("entrypoint", "create", "str"),
    "--interactive": ("stdin_open", "create", "bool"),
    "-i": ("stdin_open", "create", "bool"),
    "--tty": ("tty", "create", "bool"),
    "-t": ("tty", "create", "bool"),
    "--detach": ("", "ignore", "bool"),
    "-d": ("", "ignore", "bool"),
    "--stop-signal": ("stop_signal", "create", "str"),
    "--stop-timeout": ("stop_timeout", "create", "int"),
    "--mac-address": ("mac_address", "create", "str"),
    "--volume": ("binds", "host", "list"),
    "-v": ("binds", "host", "list"),
    "--restart": ("restart_policy", "host", "str"),
    "--rm": ("auto_remove", "host", "bool"),
    "--cap-add": ("cap_add", "host", "list"),
    "--cap-drop": ("cap_drop", "host", "list"),
    "--privileged": ("privileged", "host", "bool"),
    "--read-only": ("read_only", "host", "bool"),
    "--init": ("init", "host", "bool"),
    "--dns": ("dns", "host", "list"),
    "--dns-search": ("dns_search", "host", "list"),
    "--dns-option": ("dns_opt", "host", "list"),
    "--add-host": ("extra_hosts", "host", "list"),
    "--network": ("network_mode", "host", "str"),
    "--net": ("network_mode", "host", "str"),
    "--memory": ("mem_limit", "host", "str"),
    "-m": ("mem_limit", "host", "str"),
    "--cpus": ("nano_cpus", "host", "float"),
    "--tmpfs": ("tmpfs", "host", "list"),
    "--sysctl": ("sysctls", "host", "kv"),
    "--pids-limit": ("pids_limit", "host", "int"),
    "--shm-size": ("shm_size", "host", "str"),
    "--security-opt": ("security_opt", "host", "list"),
    "--ulimit": ("ulimits", "host", "list"),
    "--publish": ("port_bindings", "host", "list"),
    "-p": ("port_bindings", "host", "list"),
    "--publish-all": ("publish_all_ports", "host", "bool"),
    "-P": ("publish_all_ports", "host", "bool"),
    "--expose": ("ports", "create", "list"),
    "--device": ("devices", "host", "list"),
    "--group-add": ("group_add", "host", "list"),
    "--log-driver": ("log_driver", "host", "str"),
    "--log-opt": ("log_opt", "host", "kv"),
    "--env-file": ("env_file", "create", "list"),
    "--pid": ("pid_mode", "host", "str"),
    "--ipc": ("ipc_mode", "host", "str"),
    "--pull": ("pull", "meshnet", "str"),
}
_SHORT_BOOLS = {"d", "i", "t", "P"}


def supported_run_flags() -> str:
    return " ".join(sorted({f for f in _FLAGS if f.startswith("--")}))


def parse_run_args(argv: list[str]) -> RunSpec:
    """`docker run` arguments (without `docker run`) -> RunSpec. Raises ValueError."""
    spec = RunSpec()
    values: dict[tuple[str, str], Any] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        flag, eq, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if not arg.startswith("--") and len(arg) > 2:
            letters = arg[1:]
            if all(c in _SHORT_BOOLS for c in letters):  # -dit
                for c in letters:
                    _store(values, f"-{c}", True)
                i += 1
                continue
            flag, inline, eq = arg[:2], arg[2:], "="  # -eFOO=bar
        if flag not in _FLAGS:
            raise ValueError(f"meshnet run does not support the docker run flag {flag}; supported: {supported_run_flags()}")
        kind = _FLAGS[flag][2]
        if kind == "bool":
            if eq:
                value: Any = inline.lower() not in ("false", "0", "no")
            else:
                value = True
        else:
            if eq:
                value = inline
            else:
                i += 1
                if i >= len(argv):
                    raise ValueError(f"docker run flag {flag} needs a value")
                value = argv[i]
        _store(values, flag, value)
        i += 1
    if i >= len(argv):
        raise ValueError("meshnet run needs an image (meshnet run [IP/CIDR...] [docker run flags] IMAGE [COMMAND...])")
    spec.image = argv[i]
    command = argv[i + 1 :]
    if command:
        spec.create["command"] = command
    for (kwarg, where), value in values.items():
        if where == "ignore":
            continue
        if where == "meshnet":
            spec.meshnet[kwarg] = value
            continue
        target = spec.create if where == "create" else spec.host_config
        target[kwarg] = value
    _finish(spec)
    return spec


def _store(values: dict[tuple[str, str], Any], flag: str, value: Any) -> None:
    kwarg, where, kind = _FLAGS[flag]
    key = (kwarg, where)
    if kind == "list":
        values.setdefault(key, []).append(value)
    elif kind == "kv":
        k, _, v = str(value).partition("=")
        values.setdefault(key, {})[k] = v
    elif kind == "int":
        try:
            values[key] = int(value)
        except ValueError:
            raise ValueError(f"docker run flag {flag} needs a whole number, not {value!r}") from None
    elif kind == "float":
        try:
            values[key] = float(value)
        except ValueError:
            raise ValueError(f"docker run flag {flag} needs a number, not {value!r}") from None
    else:
        values[key] = value


def _finish(spec: RunSpec) -> None:
    hc, cr = spec.host_config, spec.create
    if "restart_policy" in hc:
        name, _, count = hc["restart_policy"].partition(":")
        if name not in ("no", "always", "unless-stopped", "on-failure"):
            raise ValueError(f"--restart {hc['restart_policy']!r}: use no, always, unless-stopped or on-failure[:N]")
        policy: dict[str, Any] = {"Name": "" if name == "no" else name}
        if count:
            policy["MaximumRetryCount"] = int(count)
        hc["restart_policy"] = policy
    if "binds" in hc:
        volumes, binds = [], []
        for v in hc["binds"]:
            parts = v.split(":")
            if len(parts) == 1:
                volumes.append(parts[0])
            else:
                volumes.append(parts[1])
                binds.append(v)
        cr["volumes"] = volumes
        hc["binds"] = binds
    if "extra_hosts" in hc:
        hosts = {}
        for item in hc["extra_hosts"]:
            host, sep, ip = item.partition(":")
            if not sep:
                raise ValueError(f"--add-host {item!r}: use HOST:IP")
            hosts[host] = ip
        hc["extra_hosts"] = hosts
    if "tmpfs" in hc:
        hc["tmpfs"] = {p.partition(":")[0]: p.partition(":")[2] for p in hc["tmpfs"]}
    if "nano_cpus" in hc:
        hc["nano_cpus"] = int(hc["nano_cpus"] * 1e9)
    if "ulimits" in hc:
        import docker.types

        ulimits = []
        for item in hc["ulimits"]:
            name, _, limits = item.partition("=")
            soft, _, hard = limits.partition(":")
            try:
                ulimits.append(docker.types.Ulimit(name=name, soft=int(soft), hard=int(hard or soft)))
            except ValueError:
                raise ValueError(f"--ulimit {item!r}: use NAME=SOFT[:HARD]") from None
        hc["ulimits"] = ulimits
    if "port_bindings" in hc or "ports" in cr:
        _publish(spec)
    if "log_driver" in hc or "log_opt" in hc:
        hc["log_config"] = {"Type": hc.pop("log_driver", "json-file"), "Config": hc.pop("log_opt", {})}
    if "env_file" in cr:
        cr["environment"] = _read_env_files(cr.pop("env_file")) + cr.get("environment", [])
    if spec.pull not in PULL_POLICIES:
        raise ValueError(f"--pull {spec.pull!r}: use {', '.join(PULL_POLICIES)}")
    if "entrypoint" in cr:
        cr["entrypoint"] = shlex.split(cr["entrypoint"]) if cr["entrypoint"] else [""]
    cr.setdefault("detach", True)


def _port(text: str, what: str) -> list[int]:
    """`80` -> [80]; `8080-8081` -> [8080, 8081]."""
    low, sep, high = text.partition("-")
    try:
        first, last = int(low), int(high if sep else low)
    except ValueError:
        raise ValueError(f"{what} {text!r} is not a port or a range of ports") from None
    if not 0 < first <= last < 65536 or last - first >= 1024:
        raise ValueError(f"{what} {text!r} is outside 1..65535 (or a range of more than 1024)")
    return list(range(first, last + 1))


def parse_publish(item: str) -> list[tuple[str, tuple[str, int | None] | int | None]]:
    """One `-p [IP:][HOST_PORT:]CONTAINER_PORT[/PROTO]` -> [(container "port/proto", binding)].

    The binding is what docker-py's `port_bindings` takes: None (any host port), a port,
    or (host IP, port or None).
    """
    spec, _, proto = item.partition("/")
    proto = proto or "tcp"
    if proto not in ("tcp", "udp", "sctp"):
        raise ValueError(f"-p {item!r}: the protocol is tcp, udp or sctp")
    host_ip = ""
    if spec.startswith("["):  # [v6]:host:container
        end = spec.find("]")
        host_ip, spec = spec[1:end], spec[end + 2 :]
    parts = spec.split(":")
    if len(parts) == 3:
        host_ip, host, container = parts
    elif len(parts) == 2:
        host, container = parts
    elif len(parts) == 1:
        host, container = "", parts[0]
    else:
        raise ValueError(f"-p {item!r}: use [IP:][HOST_PORT:]CONTAINER_PORT[/PROTO]")
    if host_ip:
        try:
            ipaddress.ip_address(host_ip)
        except ValueError:
            raise ValueError(f"-p {item!r}: {host_ip!r} is not an IP address") from None
    inside = _port(container, f"-p {item!r}: container port")
    outside: list[int | None] = _port(host, f"-p {item!r}: host port") if host else [None] * len(inside)
    if len(outside) != len(inside):
        raise ValueError(f"-p {item!r}: the host and container port ranges differ in length")
    out = []
    for c_port, h_port in zip(inside, outside):
        binding = (host_ip, h_port) if host_ip else h_port
        out.append((f"{c_port}/{proto}", binding))
    return out


def _publish(spec: RunSpec) -> None:
    """`-p` and `--expose` -> create's `ports` and host config's `port_bindings`."""
    hc, cr = spec.host_config, spec.create
    ports: list[Any] = []
    for item in cr.pop("ports", []):
        port, _, proto = item.partition("/")
        for number in _port(port, f"--expose {item!r}"):
            ports.append((number, proto or "tcp"))
    bindings: dict[str, list[Any]] = {}
    for item in hc.pop("port_bindings", []):
        for port, binding in parse_publish(item):
            bindings.setdefault(port, []).append(binding)
            number, proto = port.split("/")
            ports.append((int(number), proto))
    cr["ports"] = sorted(set(ports))
    if bindings:
        hc["port_bindings"] = {port: (b[0] if len(b) == 1 else b) for port, b in bindings.items()}


MAX_ENV_FILE = 1 << 20  # bytes


def _read_env_files(paths: list[str]) -> list[str]:
    """`--env-file`: KEY=VALUE lines, `#` comments; a bare KEY takes this shell's value."""
    import os

    env = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read(MAX_ENV_FILE + 1)
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"--env-file {path}: {getattr(exc, 'strerror', None) or exc}") from None
        if len(text) > MAX_ENV_FILE:
            raise ValueError(f"--env-file {path}: larger than {MAX_ENV_FILE} bytes")
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if "=" not in line:
                if line in os.environ:
                    env.append(f"{line}={os.environ[line]}")
                continue
            env.append(line)
    return env
