"""Peer discovery for the Kubernetes DaemonSet, and its launcher.

Where peers come from (all are merged, duplicates and this node dropped):
1. `MESHNET_PEERS`: addresses separated by spaces or commas (HOST or HOST:PORT);
2. `MESHNET_PEERS_FILE`: a file with the same, one or more per line, `#` comments;
3. in a cluster (`KUBERNETES_SERVICE_HOST` set, or `MESHNET_KUBE_API`), the API's node
   list: each node's InternalIP (ExternalIP if it has none). This node is recognised by
   `NODE_NAME` (downward API `spec.nodeName`) or `HOST_IP` (`status.hostIP`).

`python -m meshnet.cni.kube launch [meshnet launch flags]` finds the peers and execs
`meshnet launch --foreground PEER...`; every other setting comes from the `MESHNET_*`
environment as usual. Without `MESHNET_IPALLOC_INIT` it sets `consensus=<number of nodes>`,
as Weave's launcher did, so the first routers agree on the range before handing out
addresses. Routers that start later dial the nodes that exist, and gossip does the rest:
discovery needs no watch, and a router that restarts reads the node list again. (The
router's node agent, meshnet/k8s/nodes.py, watches the nodes for another reason: the
address space of deleted nodes.)

`python -m meshnet.cni.kube peers` prints the peers (for scripts and debugging).

The API needs RBAC `list` on `nodes` (cni/kubernetes/meshnet.yaml).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import ssl
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
SPLIT_RE = re.compile(r"[\s,]+")


class DiscoveryError(Exception):
    pass


@dataclass(frozen=True)
class Node:
    name: str
    address: str


def split_peers(text: str) -> list[str]:
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0]
        out += [p for p in SPLIT_RE.split(line) if p]
    return out


def peers_from_file(path: str) -> list[str]:
    try:
        with open(path) as f:
            return split_peers(f.read())
    except OSError as exc:
        raise DiscoveryError(f"cannot read peers file {path}: {exc.strerror}") from None


def node_address(node: dict[str, Any]) -> str | None:
    addresses = node.get("status", {}).get("addresses", []) or []
    for kind in ("InternalIP", "ExternalIP"):
        for a in addresses:
            if a.get("type") == kind and a.get("address"):
                return str(a["address"])
    return None


def parse_nodes(body: dict[str, Any]) -> list[Node]:
    if body.get("kind") not in (None, "NodeList") or not isinstance(body.get("items", []), list):
        raise DiscoveryError(f"the API answered {body.get('kind')!r}, not a NodeList")
    nodes = []
    for item in body.get("items", []):
        address = node_address(item)
        if address:
            nodes.append(Node(str(item.get("metadata", {}).get("name", "")), address))
    return nodes


def api_nodes(env: dict[str, str], timeout: float = 10.0) -> list[Node]:
    """This cluster's nodes from the API server (in-cluster service account credentials)."""
    base = env.get("MESHNET_KUBE_API")
    sa_dir = env.get("MESHNET_KUBE_SA_DIR", SA_DIR)
    if not base:
        host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise DiscoveryError("not in a cluster (no KUBERNETES_SERVICE_HOST)")
        base = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
    headers = {"Accept": "application/json"}
    token_file = os.path.join(sa_dir, "token")
    if os.path.exists(token_file):
        with open(token_file) as f:
            headers["Authorization"] = f"Bearer {f.read().strip()}"
    context = None
    if base.startswith("https:"):
        ca = os.path.join(sa_dir, "ca.crt")
        context = ssl.create_default_context(cafile=ca if os.path.exists(ca) else None)
    request = urllib.request.Request(f"{base.rstrip('/')}/api/v1/nodes", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            body = json.load(response)
    except urllib.error.HTTPError as exc:
        hint = " (does the ServiceAccount have RBAC list on nodes?)" if exc.code in (401, 403) else ""
        raise DiscoveryError(f"listing nodes failed: HTTP {exc.code}{hint}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise DiscoveryError(f"listing nodes failed: {exc}") from None
    return parse_nodes(body)


def discover(env: dict[str, str]) -> tuple[list[str], int]:
    """(peers other than this node, number of nodes in the cluster or 0 if unknown)."""
    peers = split_peers(env.get("MESHNET_PEERS", ""))
    if env.get("MESHNET_PEERS_FILE"):
        peers += peers_from_file(env["MESHNET_PEERS_FILE"])
    nodes: list[Node] = []
    if env.get("KUBERNETES_SERVICE_HOST") or env.get("MESHNET_KUBE_API"):
        nodes = api_nodes(env)
    me_name, me_ip = env.get("NODE_NAME", ""), env.get("HOST_IP", "")
    peers += [n.address for n in nodes if n.name != me_name and n.address != me_ip]
    seen: set[str] = set()
    unique = []
    for p in peers:
        if p not in seen and p.split(":")[0] != me_ip:
            seen.add(p)
            unique.append(p)
    return unique, len(nodes)


def main(argv: list[str] | None = None, env: dict[str, str] | None = None) -> int:
    env = dict(os.environ) if env is None else env
    parser = argparse.ArgumentParser(prog="python -m meshnet.cni.kube", description="meshnet peer discovery for Kubernetes")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("peers", help="print the peers, space separated")
    launch = sub.add_parser("launch", help="exec `meshnet launch --foreground PEERS...` (extra flags are passed on)")
    launch.add_argument("extra", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    try:
        peers, n_nodes = discover(env)
    except DiscoveryError as exc:
        print(f"meshnet-kube: {exc}", file=sys.stderr)
        return 1
    if args.command == "peers":
        print(" ".join(peers))
        return 0
    if n_nodes and not env.get("MESHNET_IPALLOC_INIT"):
        env["MESHNET_IPALLOC_INIT"] = f"consensus={n_nodes}"
    extra = [a for a in args.extra if a != "--"]
    meshnet = shutil.which("meshnet") or ""
    argv_out = [meshnet, "launch", "--foreground", *extra, *peers] if meshnet else [sys.executable, "-m", "meshnet", "launch", "--foreground", *extra, *peers]
    print(f"meshnet-kube: {len(peers)} peer(s): {' '.join(peers) or '(none)'}", file=sys.stderr, flush=True)
    os.execvpe(argv_out[0], argv_out, env)
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())
