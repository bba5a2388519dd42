"""The `meshnet` command. `main(argv) -> exit code`; every subcommand talks to the router's
local API except `launch` (which starts it) and `lab` (which builds simulated hosts)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Any, Callable

from meshnet.api.client import ApiClient
from meshnet.docker import cli as docker_cli
from meshnet.errors import MeshnetError, RouterUnavailable
from meshnet.runtime.config import DEFAULT_RUN_DIR, DEFAULT_STATE_DIR, RouterConfig, default_socket

LAUNCH_TIMEOUT = 15.0  # seconds to wait for a background router to answer on its socket


def _env(name: str, default: Any = None) -> Any:
    return os.environ.get(f"MESHNET_{name}", default)


def _add_socket_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-dir", default=_env("RUN_DIR", DEFAULT_RUN_DIR), help="router run dir [MESHNET_RUN_DIR] (default %(default)s)")
    p.add_argument("--socket", default=_env("SOCKET"), help="API socket [MESHNET_SOCKET] (default RUN_DIR/meshnet.sock)")


def _client(args: argparse.Namespace) -> ApiClient:
    return ApiClient(args.socket or default_socket(args.run_dir))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshnet",
        description="meshnet: a self-configuring container overlay network. One router per host; "
        "routers find each other from one seed and carry container traffic over the kernel's VXLAN "
        "or the userspace sleeve.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("launch", help="start the router on this host (in the background unless --foreground)")
    p.add_argument("peers", nargs="*", metavar="PEER", help="HOST[:PORT] of routers to connect to [MESHNET_PEERS, space separated]")
    _add_socket_flags(p)
    p.add_argument("--foreground", action="store_true", help="run in the foreground (systemd, containers)")
    p.add_argument("--state-dir", default=_env("STATE_DIR", DEFAULT_STATE_DIR), help="persistent state [MESHNET_STATE_DIR] (default %(default)s)")
    p.add_argument("--host", default=_env("HOST", "0.0.0.0"), help="address to bind the control and sleeve sockets [MESHNET_HOST]")
    p.add_argument("--port", type=int, default=int(_env("PORT", 6783)), help="TCP control port [MESHNET_PORT] (default %(default)s)")
    p.add_argument("--udp-port", type=int, default=int(_env("UDP_PORT", 6783)), help="UDP sleeve port [MESHNET_UDP_PORT] (default %(default)s)")
    p.add_argument("--bridge", default=_env("BRIDGE", "meshnet"), help="bridge name [MESHNET_BRIDGE] (default %(default)s)")
    p.add_argument("--tap", default=_env("TAP", "mntap"), help="sleeve TAP device name [MESHNET_TAP] (default %(default)s)")
    p.add_argument("--mtu", type=int, default=_env("MTU"), help="container MTU [MESHNET_MTU] (default: underlay MTU minus the largest encapsulation overhead)")
    p.add_argument("--nickname", default=_env("NICKNAME", ""), help="name shown to other peers [MESHNET_NICKNAME] (default: hostname)")
    p.add_argument("--password", default=_env("PASSWORD"), help="shared secret: encrypts and authenticates the mesh [MESHNET_PASSWORD]")
    p.add_argument("--password-file", default=_env("PASSWORD_FILE"), help="read the shared secret from a file [MESHNET_PASSWORD_FILE]")
    p.add_argument("--conn-limit", type=int, default=int(_env("CONN_LIMIT", 100)), help="most control connections [MESHNET_CONN_LIMIT] (default %(default)s)")
    p.add_argument("--ipalloc-range", default=_env("IPALLOC_RANGE", "10.32.0.0/12"), help="address range IPAM hands out [MESHNET_IPALLOC_RANGE] (default %(default)s)")
    p.add_argument("--ipalloc-init", default=_env("IPALLOC_INIT", ""), help="how the range is first split: consensus=N, seed=PEER,..., or observer [MESHNET_IPALLOC_INIT] (default consensus=1+number of PEERs)")
    p.add_argument("--no-fastdp", action="store_true", default=_env("NO_FASTDP", "") not in ("", "0"), help="never use the kernel VXLAN path; everything rides the sleeve [MESHNET_NO_FASTDP=1]")
    p.add_argument("--pure-python-pump", action="store_true", default=_env("PUREPYTHON") == "1", help="use the slow pure-Python pump (debugging) [MESHNET_PUREPYTHON=1]")
    p.add_argument("--metrics-addr", default=_env("METRICS_ADDR", "127.0.0.1:6782"), help="Prometheus /metrics HOST:PORT, empty disables [MESHNET_METRICS_ADDR] (default %(default)s)")
    p.add_argument("--log-level", default=_env("LOG_LEVEL", "info"), choices=["debug", "info", "warning", "error"], help="[MESHNET_LOG_LEVEL]")
    docker_cli.add_launch_flags(p)
    p.set_defaults(func=cmd_launch)

    p = sub.add_parser("stop", help="stop the router (containers and the bridge stay)")
    _add_socket_flags(p)
    p.set_defaults(func=cmd_stop)

    p = sub.add_parser("status", help="this router, its peers, connections and data-plane modes; `status ipam` for addresses")
    p.add_argument("what", nargs="?", choices=["ipam"], help="ipam: ranges per peer, free and used counts, unreachable owners")
    _add_socket_flags(p)
    p.add_argument("--json", action="store_true", help="print the raw JSON")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("rmpeer", help="reclaim the address space of a peer that is gone for good (refused while it is reachable; safe to repeat)")
    p.add_argument("peer", metavar="PEER", help="nickname or 32-hex-digit peer name")
    _add_socket_flags(p)
    p.set_defaults(func=cmd_rmpeer)

    p = sub.add_parser("reset", help="hand this peer's address space to another peer, stop the router and remove its state")
    _add_socket_flags(p)
    p.add_argument("--state-dir", default=_env("STATE_DIR", DEFAULT_STATE_DIR), help="state dir to remove [MESHNET_STATE_DIR] (default %(default)s)")
    p.set_defaults(func=cmd_reset)

    for name, help_text in (("connect", "add a peer to connect to (kept across restarts)"), ("forget", "stop reconnecting to a peer address")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("address", metavar="HOST[:PORT]")
        _add_socket_flags(p)
        p.set_defaults(func=cmd_connect if name == "connect" else cmd_forget)

    p = sub.add_parser("attach", help="put a Docker container or a network namespace on the overlay (veth into the bridge)")
    p.add_argument("netns", metavar="CONTAINER|NETNS", help="container name or id, or namespace name (ip netns) or path, e.g. /proc/PID/ns/net")
    p.add_argument("cidrs", nargs="*", metavar="IP/CIDR", help="addresses to give it, e.g. 10.32.1.5/12")
    p.add_argument("--ifname", default="mesh0", help="interface name inside the namespace (default %(default)s)")
    _add_socket_flags(p)
    p.set_defaults(func=lambda a: docker_cli.cmd_attach(a, cmd_attach))

    p = sub.add_parser("detach", help="take a Docker container (its addresses are released) or a network namespace off the overlay")
    p.add_argument("netns", metavar="CONTAINER|NETNS")
    _add_socket_flags(p)
    p.set_defaults(func=lambda a: docker_cli.cmd_detach(a, cmd_detach))
    docker_cli.add_parsers(sub, _add_socket_flags)

    from meshnet.lab import cli as lab

    lab.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (MeshnetError, OSError, ValueError) as exc:
        print(f"meshnet: {exc}", file=sys.stderr)
        return 1


# -- launch / stop -------------------------------------------------------------------------


def _config(args: argparse.Namespace) -> RouterConfig:
    password = args.password
    if args.password_file:
        with open(args.password_file, "rb") as f:
            password = f.read().strip()
    if isinstance(password, str):
        password = password.encode()
    peers = list(args.peers) or (_env("PEERS", "").split())
    return RouterConfig(
        state_dir=args.state_dir,
        run_dir=args.run_dir,
        host=args.host,
        port=args.port,
        udp_port=args.udp_port,
        bridge=args.bridge,
        tap=args.tap,
        mtu=int(args.mtu) if args.mtu else None,
        nickname=args.nickname,
        password=password or None,
        peers=peers,
        conn_limit=args.conn_limit,
        no_fastdp=args.no_fastdp,
        ipalloc_range=args.ipalloc_range,
        ipalloc_init=args.ipalloc_init,
        pure_python_pump=args.pure_python_pump,
        socket_path=args.socket,
        metrics_addr=args.metrics_addr,
        **docker_cli.launch_config(args),
    )


def cmd_launch(args: argparse.Namespace) -> int:
    config = _config(args)
    if args.foreground:
        from meshnet.daemon import Daemon

        logging.basicConfig(
            level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
        )
        asyncio.run(Daemon(config).run())
        return 0
    return _launch_background(args, config)


def _launch_background(args: argparse.Namespace, config: RouterConfig) -> int:
    os.makedirs(config.run_dir, exist_ok=True)
    argv = [sys.executable, "-m", "meshnet", "launch", "--foreground", *config.peers]
    for flag in ("run_dir", "state_dir", "host", "port", "udp_port", "bridge", "tap", "nickname", "conn_limit", "log_level", "ipalloc_range"):
        argv += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    if args.mtu:
        argv += ["--mtu", str(args.mtu)]
    if args.socket:
        argv += ["--socket", args.socket]
    if args.pure_python_pump:
        argv.append("--pure-python-pump")
    argv.append(f"--metrics-addr={args.metrics_addr}")
    argv += docker_cli.launch_argv(args)
    if args.no_fastdp:
        argv.append("--no-fastdp")
    if args.ipalloc_init:
        argv += ["--ipalloc-init", args.ipalloc_init]
    env = dict(os.environ)
    if config.password:  # through the environment: a command line is readable by every user
        env["MESHNET_PASSWORD"] = config.password.decode()
    with open(config.log_file, "ab") as log_file:
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, env=env, start_new_session=True)
    client = ApiClient(args.socket or config.socket, timeout=2)
    deadline = time.monotonic() + LAUNCH_TIMEOUT
    while time.monotonic() < deadline:
        if child.poll() is not None:
            print(f"meshnet: the router exited at start (code {child.returncode}):", file=sys.stderr)
            print(_tail(config.log_file), file=sys.stderr)
            return 1
        try:
            status = client.get("/status")
        except (MeshnetError, OSError):
            time.sleep(0.1)
            continue
        if status["router"]["name"] and _pid_matches(config, child.pid):
            print(f"meshnet router {status['router']['nick']} ({status['router']['name']}) started, pid {child.pid}; log {config.log_file}")
            return 0
        time.sleep(0.1)
    print(f"meshnet: the router did not answer within {LAUNCH_TIMEOUT:.0f}s; see {config.log_file}", file=sys.stderr)
    return 1


def _pid_matches(config: RouterConfig, pid: int) -> bool:
    try:
        with open(config.pid_file) as f:
            return int(f.read().strip()) == pid
    except (OSError, ValueError):
        return False


def _tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def cmd_stop(args: argparse.Namespace) -> int:
    client = _client(args)
    pid_file = os.path.join(args.run_dir, "meshnet.pid")
    try:
        client.post("/stop")
    except RouterUnavailable:
        pid = _read_pid(pid_file)
        if pid is None:
            print("meshnet: no router is running", file=sys.stderr)
            return 1
        os.kill(pid, signal.SIGTERM)
    for _ in range(100):
        if not os.path.exists(client.path) and not os.path.exists(pid_file):
            print("meshnet router stopped")
            return 0
        time.sleep(0.1)
    print("meshnet: the router did not stop within 10s", file=sys.stderr)
    return 1


def _read_pid(path: str) -> int | None:
    try:
        with open(path) as f:
            pid = int(f.read().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


# -- API commands --------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    status = _client(args).get("/ipam/status" if args.what == "ipam" else "/status")
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print(format_ipam_status(status) if args.what == "ipam" else format_status(status))
    return 0


def format_ipam_status(s: dict[str, Any]) -> str:
    nick = s.get("nicknames", {})
    local = s["local"]
    lines = [
        f"Range    {s['range']}  ({s['init']})  state: {s['state']}",
        f"Local    {local['ranges']} ranges, {local['size']} addresses, {local['used']} used, {local['free']} free",
    ]
    if s.get("waiting"):
        lines.append(f"Waiting  {s['pending']} request(s): {s['waiting']}")
    lines += ["", "Peer                           size      used      free  ranges"]
    for name, p in sorted(s["peers"].items(), key=lambda kv: nick.get(kv[0], kv[0])):
        label = f"{nick.get(name, '?')} ({name[:8]})" + ("" if p["reachable"] else " UNREACHABLE")
        lines.append(f"  {label:<28} {p['size']:>8} {p['used']:>9} {p['free']:>9}  {len(p['ranges'])}")
    if s["unreachable_owners"]:
        lines += ["", "Unreachable owners (meshnet rmpeer PEER once they are gone for good):"]
        lines += [f"  {nick.get(n, '?')} {n}" for n in s["unreachable_owners"]]
    if s["conflicts"]:
        lines += ["", "CONFLICTS:"] + [f"  {c}" for c in s["conflicts"]]
    return "\n".join(lines)


def cmd_rmpeer(args: argparse.Namespace) -> int:
    result = _client(args).post("/ipam/rmpeer", {"peer": args.peer})
    print(f"reclaimed {result['reclaimed']} addresses of {result['peer']}")
    return 0


def cmd_reset(args: argparse.Namespace) -> int:
    """Leave the mesh for good: hand off address space, stop, forget identity and state."""
    client = _client(args)
    try:
        client.post("/ipam/reset")
    except MeshnetError as exc:
        print(f"meshnet: cannot hand off the address space: {exc.message}", file=sys.stderr)
        return 1
    if cmd_stop(args) != 0:
        return 1
    shutil.rmtree(args.state_dir, ignore_errors=True)
    print(f"meshnet reset: address space handed off, state dir {args.state_dir} removed")
    return 0


def describe_pump(pump: dict[str, Any]) -> str:
    """One line: which pump, and which offloads it uses."""
    if not pump.get("compiled"):
        return "PURE-PYTHON TWIN (slow; the compiled pump is not built): no batching, no offloads"
    f = pump.get("features") or {}
    used = [f"batch {f.get('batch')}"] if f else []
    if f.get("tap_offload"):
        used.append("TAP " + "/".join(f["tap_offload"]))
    elif f:
        used.append("no TAP offloads" + ("" if f.get("vnet_hdr") else " (no IFF_VNET_HDR)"))
    used += [name for key, name in (("udp_gso", "UDP GSO"), ("udp_gro", "UDP GRO"), ("gro_merge", "TCP merging"), ("gro_merge_udp", "UDP merging")) if f.get(key)]
    if f.get("udp_gso_error"):
        used.append(f"UDP GSO off after error: {f['udp_gso_error']}")
    used.append(f"sleeve {f['crypto']}" if f.get("crypto") else "sleeve unencrypted")
    return "compiled: " + ", ".join(used)


def describe_fastdp(fastdp: dict[str, Any]) -> str:
    if fastdp.get("enabled"):
        return "enabled (kernel VXLAN, UDP 6784, per-peer health probes)"
    return f"off: {fastdp.get('reason')}"


def describe_encryption(encrypted: bool) -> str:
    if encrypted:
        return "enabled (X25519 + HKDF + AES-256-GCM on control connections)"
    return "DISABLED: the mesh is unencrypted (no --password)"


def format_status(s: dict[str, Any]) -> str:
    r = s["router"]
    health = s.get("health") or {}
    lines = [
        f"Router   {r['nick']} ({r['name']})  id {r['id']:#010x}  up {r['uptime']}s  version {r.get('version', '?')}",
        f"         TCP {r['port']}  UDP {r['udp_port']}  bridge {r['bridge']}  MTU {r['mtu']}",
        f"Health   {'healthy' if health.get('healthy', True) else 'UNHEALTHY'}"
        + (f" (timer last ran {health['timer_age_s']:.1f}s ago)" if not health.get("healthy", True) else ""),
        f"Crypto   {describe_encryption(r['encrypted'])}",
        f"Pump     {describe_pump(s['dataplane']['pump'])}",
        f"fastdp   {describe_fastdp(s['dataplane']['fastdp'])}",
        "",
        f"Peers ({len(s['peers'])}):",
    ]
    for p in s["peers"]:
        state = "self" if p["name"] == r["name"] else ("reachable" if p["reachable"] else "UNREACHABLE")
        via = f" via {p['via'][:8]}" if p.get("via") else ""
        mode = f"  {p['mode']}" if p.get("mode") and state != "self" else ""
        lines.append(f"  {p['nick']:<16} {p['name'][:12]}  {state}{via}{mode}  connections {p['connections']}  endpoints {p['endpoints']}")
    lines += ["", f"Connections ({len(s['connections'])}):"]
    for c in s["connections"]:
        if c.get("state") == "established":
            lines.append(f"  {c['nick']:<16} {c['address']:<16} {c['direction']:<9} established  {c['mode']:<16} ({c['mode_reason']})")
        else:
            lines.append(f"  {'?':<16} {c['address']:<22} {c['state']}: {c['last_error']}")
    if s.get("refusals"):
        lines += ["", "Refused handshakes (newest last):"]
        lines += [f"  {x['address']} {x['nick'] or '?'}: {x['reason']}" for x in s["refusals"][-5:]]
    return "\n".join(lines)


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
