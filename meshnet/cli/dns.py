"""`meshnet dns-args`, `dns-add`, `dns-remove`, `dns-lookup`: the resolver, as Weave has it.

    docker run $(meshnet dns-args) --network meshnet IMAGE   # plain docker run, meshnet names
    meshnet dns-add 10.32.0.9 -h db.meshnet.local            # a name for any address
    meshnet dns-add web                                      # a container's addresses, again
    meshnet dns-remove 10.32.0.9 -h db                       # take it away (all addresses without IPs)
    meshnet dns-lookup db                                    # what the resolver answers

Records added by hand are kept by this host's router and gossiped beside the endpoints'
names (meshnet/docker/names.py).
"""

from __future__ import annotations

import argparse
import ipaddress
from typing import Any, Callable

from meshnet.api.client import ApiClient
from meshnet.config import socket_of
from meshnet.docker.engine import dns_label
from meshnet.errors import NotFound, Unavailable, UsageError


def add_parsers(sub: argparse._SubParsersAction, socket_flags: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("dns-args", help="the --dns and --dns-search flags that give a plain `docker run` meshnet's names")
    socket_flags(p)
    p.set_defaults(func=cmd_dns_args)
    for name, text in (
        ("dns-add", "add DNS records: IP... under -h NAME, or a container's name (its addresses unless IPs are given)"),
        ("dns-remove", "remove DNS records added with dns-add (all of the name's addresses unless IPs are given)"),
    ):
        p = sub.add_parser(name, help=text, add_help=False)
        p.add_argument("--help", action="help", help="show this help message and exit")
        p.add_argument("items", nargs="*", metavar="IP|CONTAINER", help="addresses, and at most one container")
        p.add_argument("-h", "--hostname", dest="fqdn", metavar="NAME", help="the name (NAME or NAME.DOMAIN)")
        socket_flags(p)
        p.set_defaults(func=cmd_dns_add if name == "dns-add" else cmd_dns_remove)
    p = sub.add_parser("dns-lookup", help="the addresses the resolver answers for a name")
    p.add_argument("name", metavar="NAME", help="NAME or NAME.DOMAIN")
    socket_flags(p)
    p.set_defaults(func=cmd_dns_lookup)


def _client(args: argparse.Namespace) -> ApiClient:
    return ApiClient(socket_of(args), timeout=30)


def dns_flags(info: dict[str, Any]) -> list[str]:
    """`--dns=IP ... --dns-search=DOMAIN` from the router's /docker/info, or Unavailable."""
    dns = info.get("dns") or {}
    addresses = [a for a in dns.get("addresses") or [] if isinstance(a, str)]
    if not addresses:
        raise Unavailable("this host has no overlay address, so no resolver serves containers yet: run `meshnet expose` first")
    if dns.get("port", 53) != 53:
        raise Unavailable(f"the resolver listens on port {dns.get('port')}; docker run --dns can only name port 53")
    return [f"--dns={a}" for a in addresses] + [f"--dns-search={dns.get('domain', 'meshnet.local')}"]


def cmd_dns_args(args: argparse.Namespace) -> int:
    print(" ".join(dns_flags(_client(args).get("/docker/info"))))
    return 0


def _split(items: list[str]) -> tuple[list[str], str | None]:
    ips, containers = [], []
    for item in items:
        try:
            ipaddress.ip_address(item)
            ips.append(item)
        except ValueError:
            containers.append(item)
    if len(containers) > 1:
        raise UsageError(f"at most one container, got {', '.join(containers)} (or is one of them a mistyped address?)")
    return ips, (containers[0] if containers else None)


def _container(client: ApiClient, ref: str) -> tuple[str, list[str]]:
    """A container's DNS label and meshnet addresses, from `meshnet ps`'s rows."""
    for row in client.get("/docker/ps")["endpoints"]:
        if row["kind"] not in ("container", "network"):
            continue
        if ref == row.get("name") or (len(ref) >= 4 and row["id"].startswith(ref)):
            return dns_label(row.get("name") or ""), [c.split("/")[0] for c in row.get("cidrs", [])]
    raise NotFound(f"no container {ref!r} on the overlay (meshnet ps)")


def _record(args: argparse.Namespace, client: ApiClient, *, need_ips: bool) -> dict[str, Any]:
    ips, container = _split(args.items)
    name = args.fqdn
    if container is not None:
        label, addresses = _container(client, container)
        name = name or label
        ips = ips or addresses
    if not name:
        raise UsageError("name the record: -h NAME, or a container")
    if need_ips and not ips:
        raise UsageError("give the addresses (IP...) or a container that has some")
    return {"name": name, "ips": ips}


def cmd_dns_add(args: argparse.Namespace) -> int:
    client = _client(args)
    result = client.post("/dns/add", _record(args, client, need_ips=True))
    print(f"{result['name']} {' '.join(result['ips'])}")
    return 0


def cmd_dns_remove(args: argparse.Namespace) -> int:
    client = _client(args)
    result = client.post("/dns/remove", _record(args, client, need_ips=False))
    print(f"{result['name']}: removed {' '.join(result['removed'])}")
    return 0


def cmd_dns_lookup(args: argparse.Namespace) -> int:
    result = _client(args).post("/dns/lookup", {"name": args.name})
    if not result["ips"]:
        raise NotFound(f"{result['name']} has no address")
    print("\n".join(result["ips"]))
    return 0
