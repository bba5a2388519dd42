"""The commands that ask the running router something: status, connect/forget, attach/detach
of namespaces, IPAM's rmpeer and reset."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from typing import Any, Callable

from meshnet.api.client import ApiClient
from meshnet.cli import docker as docker_cli
from meshnet.cli import launch
from meshnet.cli.status import format_ipam_status, format_status
from meshnet.config import DEFAULT_STATE_DIR, add_socket_flags, socket_of
from meshnet.errors import MeshnetError


def _client(args: argparse.Namespace, timeout: float = 30.0) -> ApiClient:
    return ApiClient(socket_of(args), timeout=timeout)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="this router, its peers, connections and data-plane modes; `status ipam` for addresses")
    p.add_argument("what", nargs="?", choices=["ipam"], help="ipam: ranges per peer, free and used counts, unreachable owners")
    add_socket_flags(p)
    p.add_argument("--json", action="store_true", help="print the raw JSON")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("rmpeer", help="reclaim the address space of a peer that is gone for good (refused while it is reachable; safe to repeat)")
    p.add_argument("peer", metavar="PEER", help="nickname or 32-hex-digit peer name")
    add_socket_flags(p)
    p.set_defaults(func=cmd_rmpeer)

    p = sub.add_parser("reset", help="hand this peer's address space to another peer, stop the router and remove its state")
    add_socket_flags(p)
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


def cmd_status(args: argparse.Namespace) -> int:
    status = _client(args).get("/ipam/status" if args.what == "ipam" else "/status")
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print(format_ipam_status(status) if args.what == "ipam" else format_status(status))
    return 0


def cmd_rmpeer(args: argparse.Namespace) -> int:
    result = _client(args).post("/ipam/rmpeer", {"peer": args.peer})
    print(f"reclaimed {result['reclaimed']} addresses of {result['peer']}")
    return 0


def cmd_reset(args: argparse.Namespace) -> int:
    """Leave the mesh for good: hand off address space, stop, forget identity and state."""
    import os

    state_dir = args.state_dir or os.environ.get("MESHNET_STATE_DIR") or DEFAULT_STATE_DIR
    try:
        _client(args).post("/ipam/reset")
    except MeshnetError as exc:
        print(f"meshnet: cannot hand off the address space: {exc.message}", file=sys.stderr)
        return 1
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
cmd_attach = _post("/attach", lambda a: {"netns": a.netns, "cidrs": a.cidrs, "ifname": a.ifname})
cmd_detach = _post("/detach", lambda a: {"netns": a.netns})
