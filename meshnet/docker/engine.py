"""Docker through its Engine API (docker-py), never through the docker CLI.

`find_docker_host()` picks the socket: `--docker-socket`, else MESHNET_DOCKER_SOCKET, else
DOCKER_HOST, else /var/run/docker.sock when it exists. `Engine` wraps the few calls meshnet
makes (inspect, list, events, create/start/remove, networks) and turns docker-py's
exceptions into `DockerUnavailable` (nothing answers) and `DockerError` (Docker said no).
API versions are negotiated, so any dockerd from 20.10 on works.

`meshnet run` builds its create parameters with `run_args.parse_run_args()`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    from meshnet.docker.run_args import RunSpec

DEFAULT_SOCKET = "/var/run/docker.sock"
API_TIMEOUT = 30

LABEL_RE = re.compile(r"[^a-z0-9-]+")


class DockerUnavailable(ConnectionError):
    """Nothing answers on the Docker socket."""


class DockerError(Exception):
    """Docker refused a request; the message is Docker's, `status` its HTTP status (0: none)."""

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.status = status


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
    restart_count: int = 0
    exit_code: int = 0
    restarting: bool = False
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
            restart_count=int(data.get("RestartCount") or 0),
            exit_code=int(state.get("ExitCode") or 0),
            restarting=bool(state.get("Restarting")),
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
            raise DockerError(str(exc.explanation or exc), exc.status_code or 0) from None
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
        host_config.update(spec.raw_host_config)
        try:
            result = self._call("create_container", spec.image, host_config=host_config, **spec.create)
        except docker.errors.NotFound as exc:
            raise DockerError(str(exc.explanation or exc), 404) from None
        return result["Id"]

    def start(self, cid: str) -> None:
        self._call("start", cid)

    def stop(self, cid: str, timeout: float) -> None:
        """SIGTERM (the container's stop signal), SIGKILL after `timeout` seconds."""
        import docker.errors

        try:
            self._call("stop", cid, timeout=int(timeout))
        except docker.errors.NotFound:
            pass

    def logs(self, cid: str, tail: int = 50) -> str:
        import docker.errors

        try:
            return self._call("logs", cid, stdout=True, stderr=True, tail=tail).decode(errors="replace")
        except docker.errors.NotFound:
            return ""

    def has_image(self, ref: str) -> bool:
        import docker.errors

        try:
            self._call("inspect_image", ref)
        except docker.errors.NotFound:
            return False
        return True

    def pull(self, ref: str) -> None:
        """Pull through the daemon (its registries and credentials). Raises DockerError."""
        import docker.errors

        repo, tag = split_image(ref)
        try:
            for line in self._call("pull", repo, tag=tag, stream=True, decode=True):
                if isinstance(line, dict) and line.get("error"):
                    raise DockerError(str(line["error"]))
        except docker.errors.NotFound as exc:
            raise DockerError(str(exc.explanation or exc), 404) from None

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


def split_image(ref: str) -> tuple[str, str | None]:
    """`repo[:tag][@digest]` -> (repo, tag or digest); a port in the registry is not a tag."""
    if "@" in ref:
        repo, _, digest = ref.partition("@")
        return repo, digest
    repo, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag:
        return ref, "latest"
    return repo, tag


def _why(exc: BaseException) -> str:
    text = str(exc)
    if "No such file" in text or "FileNotFound" in text:
        return "no such socket"
    if "Connection refused" in text:
        return "connection refused"
    return text[:200]
