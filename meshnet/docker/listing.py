"""`meshnet ps`: every endpoint on this host's bridge once, with its current state.

One row per endpoint, whoever made it:

    kind        id                          made by
    container   Docker container id         meshnet attach / meshnet run (ethwe)
    network     Docker container id         the network plugin (docker run --network meshnet)
    netns       namespace path              meshnet attach NETNS
    pod         CNI container id            the CNI plugin
    host        "host"                      meshnet expose (the host's own overlay address)

The network plugin's rows come from Docker's own view: an endpoint Docker no longer names
in any container (left behind by a dockerd that was killed or restarted) is not listed, so a
container shows once after a dockerd restart, by its container id, under its current name.
"""

from __future__ import annotations

from typing import Any

from meshnet.runtime.endpoints import Endpoint


def docker_endpoints(engine: Any) -> dict[str, tuple[str, str, bool]]:
    """Thread: {endpoint id: (container id, name, running)} for every container Docker knows."""
    out: dict[str, tuple[str, str, bool]] = {}
    for cid in engine.container_ids():
        info = engine.inspect(cid)
        if info is None:
            continue
        for net in info.networks.values():
            eid = (net or {}).get("EndpointID") or ""
            if eid:
                out[eid] = (info.id, info.name, info.running)
    return out


def _row(kind: str, ident: str, name: str, mac: str, cidrs: list[str], state: str) -> dict[str, Any]:
    return {"kind": kind, "id": ident, "name": name, "mac": mac, "cidrs": cidrs, "state": state}


def rows(
    *,
    containers: list[dict[str, Any]],
    cnm: list[dict[str, Any]],
    local: list[Endpoint],
    current: dict[str, tuple[str, str, bool]] | None,
) -> list[dict[str, Any]]:
    """`containers`: ContainerManager.ps(); `cnm`: CnmDriver.rows(); `local`: the router's
    endpoints; `current`: docker_endpoints(), or None when Docker does not answer (then the
    plugin's own records are shown as they are)."""
    out = [_row("container", c["id"], c["name"], c["mac"], c["cidrs"], c["state"]) for c in containers]
    live = {e.id: e for e in local}
    for r in cnm:
        ep = live.get(f"cnm:{r['endpoint']}")
        mac, cidrs = (ep.mac, list(ep.ips)) if ep is not None else (r["mac"], r["cidrs"])
        if current is None:
            out.append(_row("network", r["endpoint"], r["name"], mac, cidrs, "joined" if r["joined"] else "not joined"))
            continue
        owner = current.get(r["endpoint"])
        if owner is None:
            continue  # Docker no longer uses it: stale
        cid, name, running = owner
        state = "attached" if r["joined"] and running else "stopped" if not running else "not joined"
        out.append(_row("network", cid, name, mac, cidrs, f"{state}, network {r['network'][:12]}"))
    for e in local:
        if e.id.startswith("netns:"):
            out.append(_row("netns", e.id[len("netns:") :], e.name, e.mac, list(e.ips), "attached"))
        elif e.id.startswith("cni:"):
            out.append(_row("pod", e.id[len("cni:") :], e.name, e.mac, list(e.ips), "attached"))
        elif e.id == "host:bridge":
            out.append(_row("host", "host", "", e.mac, list(e.ips), "exposed"))
    return out
