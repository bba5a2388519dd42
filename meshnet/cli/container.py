"""The router as a Docker container (`meshnet launch` on a Docker host, as Weave does it).

`launch` runs `meshnet launch --foreground` in the image image/build.sh makes, as the
container `meshnet-router` with restart policy `unless-stopped`: a crashed or killed
router, a `docker restart` and a dockerd restart all bring it back by itself. It runs with
the host's network and pid namespaces and the capabilities it needs (NET_ADMIN, SYS_ADMIN
for namespaces, SYS_PTRACE to open other containers' namespaces), /dev/net/tun, and a
writable /proc/sys (`systempaths=unconfined`): not `--privileged`, which fails where the
bounding set lacks a capability. The run and state dirs, the plugin dir, the Docker socket
and /run/netns are bind-mounted at their own paths, so the CLI on the host finds the API
socket and pid file where a background router would leave them.

Which dockerd and container run this host's router is written to RUN_DIR/container.json;
`stop` stops and removes that container, `status` reports on it (also while it restarts).
`--router-mode` chooses: container, process, or auto (container when the daemon answers
and has the image).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Any

from meshnet.api.client import ApiClient
from meshnet.cli.docker import docker_errors
from meshnet.config import child_argv
from meshnet.docker.engine import DockerUnavailable, Engine, find_docker_host
from meshnet.docker.run_args import RunSpec
from meshnet.errors import Conflict, MeshnetError, NotFound, Unavailable, UsageError

NAME = "meshnet-router"
RECORD = "container.json"
RESTART_POLICY = "unless-stopped"
CAPS = ["NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"]
PLUGIN_DIR = "/run/docker/plugins"
NETNS_DIR = "/run/netns"
LAUNCH_TIMEOUT = 20.0  # seconds the container's router may take to answer
POLL = 0.1


def record_path(run_dir: str) -> str:
    return os.path.join(run_dir, RECORD)


def read_record(run_dir: str) -> dict[str, Any] | None:
    try:
        with open(record_path(run_dir)) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("docker"), str) else None


def forget_record(run_dir: str) -> None:
    try:
        os.unlink(record_path(run_dir))
    except FileNotFoundError:
        pass


def choose(config: Any) -> tuple[Engine | None, str]:
    """(the engine to run the router container with, or None for a process; a note if auto fell back)."""
    mode = config.router_mode
    if mode == "process":
        return None, ""
    url = find_docker_host(config.docker_socket)
    if url is None:
        if mode == "container":
            raise UsageError("--router-mode=container needs Docker: --docker-socket, DOCKER_HOST or /var/run/docker.sock")
        return None, ""
    engine = Engine(url, timeout=10)
    try:
        engine.ping()
        has_image = engine.has_image(config.router_image)
    except (DockerUnavailable, MeshnetError, Exception) as exc:  # noqa: BLE001 - any Docker failure means "no container"
        engine.close()
        if mode == "container":
            raise Unavailable(f"--router-mode=container: Docker at {url} does not answer: {exc}") from None
        return None, f"Docker at {url} does not answer"
    if not has_image:
        engine.close()
        hint = f"build and load it with image/build.sh --load docker --docker-host {url}"
        if mode == "container":
            raise NotFound(f"Docker at {url} has no image {config.router_image}: {hint}")
        return None, f"Docker at {url} has no image {config.router_image} ({hint}; --router-mode=process silences this)"
    return engine, ""


def container_spec(config: Any, docker_url: str) -> RunSpec:
    """The router container: what `docker run` would be given."""
    inner = dataclasses.replace(config, docker_socket=docker_url, router_mode="process")
    flags, secrets = child_argv(inner)
    binds = {config.run_dir: "rw", config.state_dir: "rw", config.plugin_dir or PLUGIN_DIR: "rw"}
    if config.socket_path:
        binds[os.path.dirname(os.path.abspath(config.socket_path))] = "rw"
    if docker_url.startswith("unix://"):
        binds[docker_url[len("unix://") :]] = "rw"
    binds[NETNS_DIR] = "rslave"  # namespaces made after the router started appear inside too
    spec = RunSpec(image=config.router_image)
    spec.create.update(
        name=NAME,
        command=["meshnet", "launch", "--foreground", *flags],
        environment=secrets,  # the secret by environment, never on the command line
        labels={"org.meshnet.role": "router", "org.meshnet.run-dir": config.run_dir},
        detach=True,
    )
    spec.host_config.update(
        network_mode="host",
        pid_mode="host",
        cap_add=CAPS,
        devices=["/dev/net/tun:/dev/net/tun:rwm"],
        security_opt=["apparmor=unconfined"],
        restart_policy={"Name": RESTART_POLICY},
        binds=[f"{path}:{path}:{mode}" for path, mode in binds.items()],
        log_config={"Type": "json-file", "Config": {"max-size": "10m", "max-file": "3"}},
    )
    # `--security-opt systempaths=unconfined` is the docker CLI's word for these: a writable /proc/sys
    spec.raw_host_config.update(MaskedPaths=[], ReadonlyPaths=[])
    return spec


def _own_error(engine: Engine, cid: str) -> str:
    """The failed router's own last words from `docker logs`: its `meshnet:` line, else the last."""
    lines = [line.strip() for line in engine.logs(cid, tail=60).splitlines() if line.strip()]
    ours = [line for line in lines if line.startswith("meshnet: ")]
    if ours:
        return ours[-1][len("meshnet: ") :]
    return lines[-1] if lines else "no output"


def launch(config: Any, engine: Engine) -> int:
    for path in (config.run_dir, config.state_dir, config.plugin_dir or PLUGIN_DIR, NETNS_DIR):
        os.makedirs(path, exist_ok=True)
    with docker_errors("cannot run the router container"):
        existing = engine.inspect(NAME)
        if existing is not None and (existing.running or existing.restarting):
            raise Conflict(f"the router container {NAME} is already running in Docker at {engine.base_url}; meshnet stop first")
        if existing is not None:
            engine.remove(existing.id)
        cid = engine.create(container_spec(config, engine.base_url))
        with open(record_path(config.run_dir), "w") as f:
            json.dump({"docker": engine.base_url, "container": cid, "name": NAME}, f)
        engine.start(cid)
        client = ApiClient(config.socket, timeout=2)
        deadline = time.monotonic() + LAUNCH_TIMEOUT
        while time.monotonic() < deadline:
            info = engine.inspect(cid)
            if info is None or info.restarting or info.restart_count > 0 or not info.running:
                why = _own_error(engine, cid) if info is not None else "the container vanished"
                engine.remove(cid)
                forget_record(config.run_dir)
                print(f"meshnet: the router container exited at start: {why}", file=sys.stderr)
                return 1
            try:
                r = client.get("/status")["router"]
            except (MeshnetError, OSError):
                time.sleep(POLL)
                continue
            print(f"meshnet router {r['nick']} ({r['name']}) started in container {NAME} ({cid[:12]}), restart policy {RESTART_POLICY}; logs: docker logs {NAME}")
            return 0
    print(f"meshnet: the router container did not answer within {LAUNCH_TIMEOUT:.0f}s; see docker logs {NAME} (it keeps restarting until meshnet stop)", file=sys.stderr)
    return 1


def stop(run_dir: str, timeout: float) -> str | None:
    """Stop and remove this run dir's router container; what was done, or None if there is none."""
    record = read_record(run_dir)
    if record is None:
        return None
    engine = Engine(record["docker"], timeout=timeout + 10)
    try:
        with docker_errors("cannot stop the router container"):
            try:
                info = engine.inspect(str(record.get("container") or NAME))
            except DockerUnavailable:
                info = None  # its dockerd is gone, and the container with it
            if info is None:
                forget_record(run_dir)
                return None
            engine.stop(info.id, timeout)
            engine.remove(info.id)
    finally:
        engine.close()
    forget_record(run_dir)
    return f"meshnet router container {info.name} stopped and removed"


def describe(run_dir: str) -> str | None:
    """One line on this run dir's router container for `status`, or None if it has none."""
    record = read_record(run_dir)
    if record is None:
        return None
    engine = Engine(record["docker"], timeout=5)
    try:
        info = engine.inspect(str(record.get("container") or NAME))
    except Exception as exc:  # noqa: BLE001 - status must still print what it has
        return f"container {record.get('name', NAME)} in Docker at {record['docker']} (Docker does not answer: {exc})"
    finally:
        engine.close()
    if info is None:
        return f"container {record.get('name', NAME)} is gone from Docker at {record['docker']}"
    state = "running" if info.running else "restarting" if info.restarting else f"exited (code {info.exit_code})"
    return f"container {info.name} ({info.id[:12]}), {state}, restart policy {info.restart_policy or 'none'}, restarted {info.restart_count} times"
