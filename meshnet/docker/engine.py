"""Docker through its Engine API (docker-py), never through the docker CLI.

`find_docker_host()` picks the socket: `--docker-socket`, else MESHNET_DOCKER_SOCKET, else
DOCKER_HOST, else /var/run/docker.sock when it exists. `Engine` wraps the few calls meshnet
makes (inspect, list, events, create/start/remove, networks) and turns docker-py's
exceptions into `DockerUnavailable` (nothing answers) and `DockerError` (Docker said no).
API versions are negotiated, so any dockerd from 20.10 on works.

`parse_run_args()` turns `docker run` arguments into Engine API create parameters for
`meshnet run`; flags it does not know are refused with a clear message, never guessed.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field
from typing import Any, Iterator

DEFAULT_SOCKET = "/var/run/docker.sock"
API_TIMEOUT = 30

LABEL_RE = re.compile(r"[^a-z0-9-]+")


class DockerUnavailable(ConnectionError):
    """Nothing answers on the Docker socket."""


class DockerError(Exception):
    """Docker refused a request; the message is Docker's."""


def find_docker_host(given: str | None = None, env: dict[str, str] | None = None) -> str | None:
    """The Docker endpoint as a URL (`unix:///path` or `tcp://...`), or None (none found / "none")."""
    env = os.environ if env is None else env
    for value in (given, env.get("MESHNET_DOCKER_SOCKET"), env.get("DOCKER_HOST")):
        if value:
            value = value.strip()
            if value.lower() == "none":
                return None
            if "://" not in value:
                return "unix://" + os.path.abspath(value)
            return value
    return f"unix://{DEFAULT_SOCKET}" if os.path.exists(DEFAULT_SOCKET) else None


def dns_label(name: str) -> str:
    """A container name as a DNS label: `/My_App.1` -> `my-app-1`; "" if nothing is left."""
    label = LABEL_RE.sub("-", name.lstrip("/").lower()).strip("-")
    return label[:63].rstrip("-")


@dataclass(frozen=True)
class Container:
    id: str
    name: str  # without the leading "/"
    running: bool
    pid: int  # 0 when not running
    status: str
    restart_policy: str = ""
    networks: dict[str, dict[str, Any]] = field(default_factory=dict, compare=False)  # NetworkSettings.Networks

    @property
    def netns(self) -> str | None:
        return f"/proc/{self.pid}/ns/net" if self.running and self.pid else None

    @classmethod
    def from_inspect(cls, data: dict[str, Any]) -> Container:
        state = data.get("State") or {}
        return cls(
            id=data["Id"],
            name=str(data.get("Name") or "").lstrip("/"),
            running=bool(state.get("Running")),
            pid=int(state.get("Pid") or 0),
            status=str(state.get("Status") or ""),
            restart_policy=str(((data.get("HostConfig") or {}).get("RestartPolicy") or {}).get("Name") or ""),
            networks=dict(((data.get("NetworkSettings") or {}).get("Networks")) or {}),
        )


class Engine:
    """A thin, blocking wrapper over docker-py's low-level client. Call it from a thread."""

    def __init__(self, base_url: str, timeout: float = API_TIMEOUT):
        self.base_url = base_url
        self.timeout = timeout
        self._client: Any = None

    @property
    def api(self) -> Any:
        if self._client is None:
            import docker
            import docker.errors
            import requests

            try:
                self._client = docker.APIClient(base_url=self.base_url, version="auto", timeout=self.timeout)
            except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
                raise DockerUnavailable(f"cannot reach Docker at {self.base_url}: {_why(exc)}") from None
        return self._client

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            finally:
                self._client = None

    def _call(self, fn: str, *args: Any, **kwargs: Any) -> Any:
        import docker.errors
        import requests

        try:
            return getattr(self.api, fn)(*args, **kwargs)
        except docker.errors.NotFound:
            raise
        except docker.errors.APIError as exc:
            raise DockerError(str(exc.explanation or exc)) from None
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout, OSError) as exc:
            self.close()
            raise DockerUnavailable(f"cannot reach Docker at {self.base_url}: {_why(exc)}") from None
        except docker.errors.DockerException as exc:
            raise DockerError(str(exc)) from None

    def ping(self) -> bool:
        return bool(self._call("ping"))

    def inspect(self, ref: str) -> Container | None:
        """None if there is no such container."""
        import docker.errors

        if not ref or "/" in ref.strip("/"):
            return None
        try:
            return Container.from_inspect(self._call("inspect_container", ref))
        except docker.errors.NotFound:
            return None

    def container_ids(self) -> list[str]:
        return [c["Id"] for c in self._call("containers", all=True)]

    def events(self) -> Iterator[dict[str, Any]]:
        """Container events from now on; the iterator has `.close()` (docker-py CancellableStream)."""
        return self._call("events", decode=True, filters={"type": ["container"]})

    def create(self, spec: RunSpec) -> str:
        import docker.errors

        host_config = self._call("create_host_config", **spec.host_config)
        try:
            result = self._call("create_container", spec.image, host_config=host_config, **spec.create)
        except docker.errors.NotFound as exc:
            raise DockerError(str(exc.explanation or exc)) from None
        return result["Id"]

    def start(self, cid: str) -> None:
        self._call("start", cid)

    def remove(self, cid: str, *, force: bool = True) -> None:
        import docker.errors

        try:
            self._call("remove_container", cid, force=force)
        except docker.errors.NotFound:
            pass

    def networks(self, driver: str) -> list[dict[str, Any]]:
        return self._call("networks", filters={"driver": driver})

    def create_network(self, name: str, driver: str, ipam_driver: str, subnet: str | None = None) -> None:
        """An explicit subnet also spares libnetwork's overlap check against host routes."""
        ipam = {"Driver": ipam_driver, "Config": [{"Subnet": subnet}] if subnet else [], "Options": {}}
        self._call("create_network", name, driver=driver, ipam=ipam)


def _why(exc: BaseException) -> str:
    text = str(exc)
    if "No such file" in text or "FileNotFound" in text:
        return "no such socket"
    if "Connection refused" in text:
        return "connection refused"
    return text[:200]


# -- `meshnet run`: docker run arguments -> Engine API ------------------------------------


@dataclass
class RunSpec:
    image: str = ""
    create: dict[str, Any] = field(default_factory=dict)  # create_container kwargs
    host_config: dict[str, Any] = field(default_factory=dict)  # create_host_config kwargs

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
}
_SHORT_BOOLS = {"d", "i", "t"}


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
    if "entrypoint" in cr:
        cr["entrypoint"] = shlex.split(cr["entrypoint"]) if cr["entrypoint"] else [""]
    cr.setdefault("detach", True)
