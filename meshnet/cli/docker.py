"""CLI for the Docker side: `attach`/`detach` of containers, `run`, `ps`, `expose`, `hide`.
meshnet/cli/main.py wires these in (the Docker flags of `launch` are in meshnet/config.py);
everything but `run`
only talks to the router (which holds the Docker connection); `run` also creates the
container through the Engine API (docker-py) before asking the router to attach it.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import sys
from typing import Any, Callable, Iterator

from meshnet.api.client import ApiClient
from meshnet.cli.progress import ipam_progress
from meshnet.config import socket_of
from meshnet.errors import Conflict, MeshnetError, NotFound, Unavailable, UsageError

DOCKER_ATTACH_TIMEOUT = 60.0


# -- subcommands ----------------------------------------------------------------------------


def add_parsers(sub: argparse._SubParsersAction, socket_flags: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "run",
        help="docker run a container (detached) and attach it: meshnet run [IP/CIDR...] [docker run flags] IMAGE [COMMAND...]",
    )
    p.add_argument("--docker-socket", default=None, help="Docker API socket (default: the router's)")
    socket_flags(p)
    p.add_argument("rest", nargs=argparse.REMAINDER, metavar="[IP/CIDR...] DOCKER-RUN-ARGS", help="addresses, then docker run flags, image, command")
    p.set_defaults(func=cmd_run)
    p.__class__ = _RunParser  # everything after its own flags belongs to docker run

    p = sub.add_parser("ps", help="every endpoint on this host's bridge: containers, namespaces, the host; id, name, MAC, addresses, state")
    p.add_argument("--json", action="store_true", help="print the raw JSON")
    socket_flags(p)
    p.set_defaults(func=cmd_ps)

    p = sub.add_parser("expose", help="give this host an address on the overlay (DNS listens there)")
    p.add_argument("cidrs", nargs="*", metavar="IP/CIDR", help="addresses (default: one from IPAM)")
    p.add_argument("--nat", action="store_true", default=None, help="masquerade overlay traffic leaving this host")
    p.add_argument("--no-nat", dest="nat", action="store_false", help="stop masquerading")
    socket_flags(p)
    p.set_defaults(func=cmd_expose)

    p = sub.add_parser("hide", help="take this host's overlay addresses away (all unless given)")
    p.add_argument("cidrs", nargs="*", metavar="IP/CIDR")
    socket_flags(p)
    p.set_defaults(func=cmd_hide)


class _RunParser(argparse.ArgumentParser):
    """`meshnet run [--run-dir D] [--socket S] [--docker-socket U] REST...`: argparse would
    take `--name` or `-d` in REST for its own (unknown) options, so split by hand."""

    OWN = ("--run-dir", "--socket", "--docker-socket")

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        args = list(sys.argv[1:] if args is None else args)
        head, i = [], 0
        while i < len(args):
            name = args[i].split("=", 1)[0]
            if name in self.OWN:
                take = 1 if "=" in args[i] else 2
                head += args[i : i + take]
                i += take
            elif args[i] in ("-h", "--help"):
                head.append(args[i])
                i += 1
            else:
                break
        ns, extra = super().parse_known_args(head, namespace)
        ns.rest = args[i:]
        return ns, extra


def _client(args: argparse.Namespace, timeout: float = 30.0) -> ApiClient:
    return ApiClient(socket_of(args), timeout=timeout)


def is_netns(target: str) -> bool:
    """`meshnet attach X`: a namespace path or `ip netns` name, else a Docker container."""
    return "/" in target or os.path.exists(f"/run/netns/{target}")


def cmd_attach(args: argparse.Namespace, netns_attach: Callable[[argparse.Namespace], int]) -> int:
    if is_netns(args.netns):
        with ipam_progress(socket_of(args), f"attach {args.netns}"):
            return netns_attach(args)
    try:
        with ipam_progress(socket_of(args), f"attach {args.netns}"):
            result = _client(args, DOCKER_ATTACH_TIMEOUT).post("/docker/attach", {"container": args.netns, "cidrs": args.cidrs})
    except MeshnetError as exc:  # say both things we looked for
        raise type(exc)(f"no network namespace named {args.netns!r}, and as a container: {exc.message}") from None
    print(f"{result['id'][:12]} {result['name']} {result['mac']} {' '.join(result['cidrs'])}")
    return 0


def cmd_detach(args: argparse.Namespace, netns_detach: Callable[[argparse.Namespace], int]) -> int:
    if is_netns(args.netns):
        return netns_detach(args)
    result = _client(args, DOCKER_ATTACH_TIMEOUT).post("/docker/detach", {"container": args.netns})
    print(f"{result['id'][:12]} {result['name']} detached; released {' '.join(result['released']) or 'nothing'}")
    return 0


def split_addresses(rest: list[str]) -> tuple[list[str], list[str]]:
    """Leading IP/CIDR arguments, then the docker run arguments."""
    cidrs = []
    for i, arg in enumerate(rest):
        if arg.startswith("-") or "/" not in arg:
            return cidrs, rest[i:]
        try:
            ipaddress.ip_interface(arg)
        except ValueError:
            return cidrs, rest[i:]
        cidrs.append(arg)
    return cidrs, []


@contextlib.contextmanager
def docker_errors(what: str) -> Iterator[None]:
    """Docker's refusals as meshnet's errors: one line, the right exit code."""
    from meshnet.docker.engine import DockerError, DockerUnavailable

    try:
        yield
    except DockerUnavailable as exc:
        raise Unavailable(str(exc)) from None
    except DockerError as exc:
        kind = {404: NotFound, 409: Conflict}.get(exc.status, MeshnetError)
        raise kind(f"{what}: {exc}") from None


def ensure_image(engine: Any, image: str, policy: str) -> None:
    """Pull `image` through the daemon when the policy says so (`--pull`, default missing)."""
    if policy == "never" or (policy == "missing" and engine.has_image(image)):
        return
    print(f"meshnet: pulling {image} through Docker at {engine.base_url}", file=sys.stderr)
    with docker_errors(f"cannot pull {image}"):
        engine.pull(image)


def cmd_run(args: argparse.Namespace) -> int:
    from meshnet.docker.containers import check_cidrs
    from meshnet.docker.engine import Engine, find_docker_host
    from meshnet.docker.run_args import parse_run_args

    rest = list(args.rest)
    if rest[:1] == ["--"]:
        rest = rest[1:]
    cidrs, docker_args = split_addresses(rest)
    check_cidrs(cidrs)  # UsageError before anything is made
    try:
        spec = parse_run_args(docker_args)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    client = _client(args, DOCKER_ATTACH_TIMEOUT)
    info = client.get("/docker/info")
    url = find_docker_host(args.docker_socket, env={}) if args.docker_socket else info.get("docker") or find_docker_host()
    if not url:
        raise UsageError("no Docker socket: give --docker-socket or DOCKER_HOST")
    dns = info.get("dns") or {}
    if dns.get("addresses") and "dns" not in spec.host_config and spec.host_config.get("network_mode") != "host":
        spec.host_config["dns"] = list(dns["addresses"])
        spec.host_config.setdefault("dns_search", [dns["domain"]])
    elif not dns.get("addresses"):
        print("meshnet: note: this host has no overlay address, so the container gets no meshnet DNS (meshnet expose)", file=sys.stderr)
    engine = Engine(url)
    try:
        ensure_image(engine, spec.image, spec.pull)
        with docker_errors("cannot create the container"):
            try:
                cid = engine.create(spec)
            except Exception as exc:
                if getattr(exc, "status", 0) == 409 and spec.name:
                    raise Conflict(f"the container name {spec.name!r} is already in use (docker rm {spec.name}, or another --name)") from None
                raise
        try:
            with docker_errors("cannot start the container"):
                engine.start(cid)
            with ipam_progress(socket_of(args), f"run {spec.name or spec.image}"):
                result = client.post("/docker/attach", {"container": cid, "cidrs": cidrs})
        except BaseException:
            engine.remove(cid, force=True)  # nothing half-made
            raise
    finally:
        engine.close()
    print(cid)
    print(f"{result['name']} {result['mac']} {' '.join(result['cidrs'])}", file=sys.stderr)
    return 0


def cmd_ps(args: argparse.Namespace) -> int:
    result = _client(args).get("/docker/ps")
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for row in result["endpoints"]:
        ident = row["id"][:12] if row["kind"] in ("container", "network", "pod") else row["id"]
        print(f"{row['kind']:<9} {ident:<12} {row['name'] or '-':<20} {row['mac'] or '-':<17} {' '.join(row['cidrs']):<18} {row['state']}")
    return 0


def cmd_expose(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"cidrs": args.cidrs}
    if args.nat is not None:
        body["nat"] = args.nat
    with ipam_progress(socket_of(args), "expose"):
        result = _client(args).post("/expose", body)
    print(" ".join(result["cidrs"]) + ("  (NAT on)" if result["nat"] else ""))
    return 0


def cmd_hide(args: argparse.Namespace) -> int:
    result = _client(args).post("/hide", {"cidrs": args.cidrs})
    print("hidden: " + (" ".join(result["hidden"]) or "nothing"))
    return 0
