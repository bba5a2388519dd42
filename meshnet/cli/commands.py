"""The commands that ask the running router something: status (and its sections), report,
version, connect/forget, attach/detach of namespaces, IPAM's rmpeer and reset."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from typing import Any, Callable

from meshnet import __version__
from meshnet.api.client import ApiClient
from meshnet.cli import container, launch
from meshnet.cli import docker as docker_cli
from meshnet.cli.policy_status import format_policy_status
from meshnet.cli.status import connection_lines, format_dns, format_ipam_status, format_status, peer_lines
from meshnet.config import DEFAULT_STATE_DIR, add_socket_flags, run_dir_of, socket_of
from meshnet.errors import MeshnetError, NotFound, RouterLost, RouterUnavailable

RECHECK_WAIT = 30.0  # seconds an interrupted attach waits for the router to answer again
RECHECK_POLL = 0.2


def _client(args: argparse.Namespace, timeout: float = 30.0) -> ApiClient:
    return ApiClient(socket_of(args), timeout=timeout)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="this router, IPAM, DNS, peers, connections and data-plane modes (exit 1 when it is unhealthy); or one section")
    p.add_argument(
        "what",
        nargs="?",
        choices=SECTIONS,
        help="connections: control connections with mode and reason; peers: every peer; ipam: ranges per peer, free and used "
        "counts, unreachable owners; dns: the resolver and every name it answers; policy: the NetworkPolicies in force per pod of this node",
    )
    add_socket_flags(p)
    p.add_argument("--json", action="store_true", help="print the raw JSON")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("report", help="everything `status` knows, and the endpoints, as one JSON document (like weave report)")
    add_socket_flags(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("version", help="the version of this command and of the running router")
    add_socket_flags(p)
    p.set_defaults(func=cmd_version)

    p = sub.add_parser("rmpeer", help="reclaim the address space of a peer that is gone for good (refused while it is reachable; safe to repeat)")
    p.add_argument("peer", metavar="PEER", help="nickname or 32-hex-digit peer name")
    add_socket_flags(p)
    p.set_defaults(func=cmd_rmpeer)

    p = sub.add_parser("reset", help="hand this peer's address space to another peer, stop the router and remove its state (refused while its addresses are in use)")
    add_socket_flags(p)
    p.add_argument("--release", action="store_true", help="detach this host's endpoints and release their addresses first (their containers lose the overlay)")
    p.add_argument("--state-dir", default=None, help=f"state dir to remove [MESHNET_STATE_DIR] (default {DEFAULT_STATE_DIR})")
    p.set_defaults(func=cmd_reset)

    for name, help_text in (("connect", "add a peer to connect to (kept across restarts)"), ("forget", "stop reconnecting to a peer address")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("address", metavar="HOST[:PORT]")
        add_socket_flags(p)
        p.set_defaults(func=cmd_connect if name == "connect" else cmd_forget)

    p = sub.add_parser("attach", help="put a Docker container or a network namespace on the overlay (veth into the bridge)")
    p.add_argument("netns", metavar="CONTAINER|NETNS", help="container name or id, or namespace name (ip netns) or path, e.g. /proc/PID/ns/net")
    p.add_argument("cidrs", nargs="*", metavar="IP/CIDR", help="addresses to give it, e.g. 10.32.1.5/12")
    p.add_argument("--ifname", default="mesh0", help="interface name inside the namespace (default %(default)s)")
    add_socket_flags(p)
    p.set_defaults(func=lambda a: docker_cli.cmd_attach(a, cmd_attach))

    p = sub.add_parser("detach", help="take a Docker container (its addresses are released) or a network namespace off the overlay")
    p.add_argument("netns", metavar="CONTAINER|NETNS")
    add_socket_flags(p)
    p.set_defaults(func=lambda a: docker_cli.cmd_detach(a, cmd_detach))


SECTIONS = ["connections", "peers", "ipam", "dns", "policy"]


def _optional(client: ApiClient, path: str) -> dict[str, Any] | None:
    """A route an integration adds (absent on a router without it): None then."""
    try:
        return client.get(path)
    except NotFound:
        return None


def _router_status(args: argparse.Namespace) -> dict[str, Any]:
    """GET /status; if nothing answers but a router container is on record, say what it is doing."""
    try:
        return _client(args).get("/status")
    except RouterUnavailable as exc:
        runs_as = container.describe(run_dir_of(args))
        if runs_as is None:
            raise
        raise RouterUnavailable(f"{exc.message}; the router's {runs_as} (docker logs {container.NAME})") from None


def cmd_status(args: argparse.Namespace) -> int:
    """Print the status (or one section); exit 1 when the router reports itself unhealthy."""
    client = _client(args)
    if args.what == "ipam":
        data: Any = client.get("/ipam/status")
        text = lambda: format_ipam_status(data)  # noqa: E731
    elif args.what == "policy":
        data = client.get("/k8s/policy")
        text = lambda: format_policy_status(data)  # noqa: E731
    elif args.what == "dns":
        docker, records = client.get("/docker/info"), client.get("/dns/records")
        data = {"docker": docker, "records": records}
        text = lambda: format_dns(docker, records)  # noqa: E731
    else:
        data = _router_status(args)
        if args.what == "connections":
            text = lambda: "\n".join([f"Connections ({len(data['connections'])}):", *connection_lines(data)])  # noqa: E731
        elif args.what == "peers":
            text = lambda: "\n".join([f"Peers ({len(data['peers'])}):", *peer_lines(data)])  # noqa: E731
        else:
            docker = _optional(client, "/docker/info")
            runs_as = container.describe(run_dir_of(args))
            text = lambda: format_status(data, docker=docker, runs_as=runs_as)  # noqa: E731
    print(json.dumps(data, indent=2) if args.json else text())
    if args.what not in ("ipam", "dns", "policy") and not (data.get("health") or {}).get("healthy", True):
        return 1  # unhealthy (a stalled timer, a dead pump or thread): scripts and probes see it
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    client = _client(args)
    report: dict[str, Any] = {"version": __version__, "router": _router_status(args), "ipam": client.get("/ipam/status")}
    for key, path in (("docker", "/docker/info"), ("ps", "/docker/ps"), ("dns", "/dns/records"), ("policy", "/k8s/policy")):
        report[key] = _optional(client, path)
    report["endpoints"] = client.get("/endpoints")
    report["runs_as"] = container.describe(run_dir_of(args))
    print(json.dumps(report, indent=2, sort_keys=True))
    return 0


def cmd_version(args: argparse.Namespace) -> int:
    print(f"meshnet {__version__}")
    try:
        router = _client(args, timeout=5).get("/status")["router"]
    except (MeshnetError, OSError):
        print("router: not running")
        return 0
    print(f"router {router.get('version', '?')} ({router['nick']}, pid {router.get('pid', '?')})")
    return 0


def cmd_rmpeer(args: argparse.Namespace) -> int:
    result = _client(args).post("/ipam/rmpeer", {"peer": args.peer})
    if result.get("already_removed"):
        print(f"peer {result['peer']} was removed already; nothing left to reclaim")
    else:
        # The count is what this router saw; the confirmation may find more (docs/ipam.md).
        print(f"reclaimed {result['reclaimed']} addresses of {result['peer']}; "
              "confirming with the other peers, which may add ranges of it not seen here yet (meshnet status ipam)")
    return 0


def cmd_reset(args: argparse.Namespace) -> int:
    """Leave the mesh for good: hand off address space, stop, forget identity and state."""
    import os

    state_dir = args.state_dir or os.environ.get("MESHNET_STATE_DIR") or DEFAULT_STATE_DIR
    try:
        result = _client(args).post("/ipam/reset", {"release": bool(args.release)})
    except MeshnetError as exc:
        print(f"meshnet: cannot hand off the address space: {exc.message}", file=sys.stderr)
        return 1
    if result.get("detached"):
        print(f"detached {len(result['detached'])} endpoint(s): {', '.join(result['detached'])}")
    if launch.cmd_stop(args) != 0:
        return 1
    shutil.rmtree(state_dir, ignore_errors=True)
    print(f"meshnet reset: address space handed off, state dir {state_dir} removed")
    return 0


def _print_json(result: dict[str, Any]) -> int:
    print(json.dumps(result, indent=2))
    return 0


def _post(path: str, body_of: Callable[[argparse.Namespace], dict[str, Any]]) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        return _print_json(_client(args).post(path, body_of(args)))

    return command


cmd_connect = _post("/connect", lambda a: {"address": a.address})
cmd_forget = _post("/forget", lambda a: {"address": a.address})
def cmd_attach(args: argparse.Namespace) -> int:
    """Attach a namespace. If the router goes away mid-request (killed, restarted), wait for
    it to answer again and ask once more: attach is idempotent and says what it found, so
    an attach that completed is told from one that did not."""
    body = {"netns": args.netns, "cidrs": args.cidrs, "ifname": args.ifname}
    try:
        return _print_json(_client(args).post("/attach", body))
    except RouterLost:
        print(f"meshnet: the router went away during attach; waiting up to {RECHECK_WAIT:.0f}s for it to check", file=sys.stderr)
    deadline = time.monotonic() + RECHECK_WAIT
    while True:
        try:
            result = _client(args).post("/attach", body)
            break
        except RouterUnavailable:
            if time.monotonic() >= deadline:
                raise RouterUnavailable(
                    f"the router went away during attach and did not come back within {RECHECK_WAIT:.0f}s: whether "
                    f"{args.netns} was attached is unknown; run the same attach again once the router runs"
                ) from None
            time.sleep(RECHECK_POLL)
    if result.get("state") == "attached":
        print("meshnet: the interrupted attach had not completed; it is done now", file=sys.stderr)
    else:
        print(f"meshnet: the interrupted attach had completed ({result.get('state')})", file=sys.stderr)
    return _print_json(result)

cmd_detach = _post("/detach", lambda a: {"netns": a.netns})
