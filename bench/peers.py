"""Other overlays, measured beside meshnet between the bare bed's two hosts: tinc, nebula,
fastd and wireguard-go (the distribution's, and a binary given by path).

Each runs from the distribution's programs with a configuration written here into the
bed's private work dir (keys never reach the results); a program that is not installed
makes a `Skip` with the package to install. Userspace peers all use MTU 1420, which fits
every one of them in the 1500-byte underlay.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time

from bench.bed import Bed
from bench.catalog import Path, Skip
from bench.tools import Pair, wait_ping

PEER_MTU = 1420


def _need(*programs: str, package: str) -> None:
    missing = [p for p in programs if not shutil.which(p)]
    if missing:
        raise Skip(f"{', '.join(missing)} not installed (apt-get install {package})")


def _version(argv: list[str], pattern: str = r"v?(\d[\w.+~-]*)") -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except OSError:
        return "?"
    m = re.search(pattern, out.stdout + out.stderr)
    return m.group(1) if m else "?"


def _check(argv: list[str], what: str, **kw) -> subprocess.CompletedProcess:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, **kw)
    if out.returncode != 0:
        raise Skip(f"{what} failed: {(out.stderr or out.stdout).strip()[-200:]}")
    return out


def _wait_udp(ns: str, port: int, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(["ip", "netns", "exec", ns, "ss", "-Hlun", f"sport = :{port}"], capture_output=True, text=True, timeout=10)
        if out.stdout.strip():
            return
        time.sleep(0.05)
    raise Skip(f"nothing listens on UDP {port} in {ns}")


def _pair(bed: Bed, net: str, name: str) -> list[Pair]:
    pairs = [Pair(bed.ns(1), bed.ns(2), f"{net}.2")]
    if not wait_ping(pairs[0], 20):
        raise Skip(f"no ping over {name} (see logs/{name}-h1.log)")
    return pairs


# -- tinc -------------------------------------------------------------------------------------

TINC = {"tinc-null": (6552, "tincN", "10.99.5", "Cipher = none\nDigest = none\n"), "tinc-aes": (6551, "tincE", "10.99.4", "")}


def tinc(bed: Bed, name: str) -> Path:
    _need("tincd", package="tinc")
    port, ifc, net, extra = TINC[name]
    base = bed.work / name
    for i in (1, 2):
        d = base / f"h{i}"
        (d / "hosts").mkdir(parents=True)
        (d / "tinc.conf").write_text(
            f"Name = h{i}\nMode = switch\nDeviceType = tap\nInterface = {ifc}\nAddressFamily = ipv4\nPort = {port}\nConnectTo = h{3 - i}\n"
        )
        (d / "hosts" / f"h{i}").write_text(f"Address = {bed.ip(i)} {port}\nPort = {port}\n{extra}")
        up = d / "tinc-up"
        up.write_text(f'#!/bin/sh\nip link set "$INTERFACE" mtu {PEER_MTU} up\nip addr add {net}.{i}/24 dev "$INTERFACE"\n')
        up.chmod(0o700)
        _check(["tincd", "-c", str(d), "-K2048"], "tincd -K", stdin=subprocess.DEVNULL)
    for i in (1, 2):
        shutil.copy(base / f"h{i}" / "hosts" / f"h{i}", base / f"h{3 - i}" / "hosts" / f"h{i}")
    pids = {}
    for i in (1, 2):
        d = base / f"h{i}"
        log = bed.logs / f"{name}-h{i}.log"
        pids[f"h{i}"] = bed.spawn(bed.ns(i), ["tincd", "-c", str(d), "-D", "-d1", f"--pidfile={d}/tinc.pid", f"--logfile={log}"], f"{name}-h{i}.out")
    pairs = _pair(bed, net, name)
    pmtu = _tinc_pmtu(pids["h1"], bed.logs / f"{name}-h1.log")
    cipher = "Cipher/Digest none" if extra else "default cipher and digest"
    return Path(name, pairs, pids, PEER_MTU, f"tinc {_version(['tincd', '--version'])}, switch mode (TAP), {cipher}; {pmtu}")


def _tinc_pmtu(pid: int, log: os.PathLike, timeout: float = 45) -> str:
    """tinc 1.0 sends frames over its TCP connection until path MTU discovery ends: wait for
    it (SIGUSR2 makes tincd log its nodes, with `pmtu N (min N max N)` once it has settled)."""
    seen = re.compile(r"h2 at .* pmtu (\d+) \(min (\d+) max (\d+)\)")
    deadline = time.monotonic() + timeout
    last = "PMTU not reported"
    while time.monotonic() < deadline:
        try:
            os.kill(pid, signal.SIGUSR2)
        except ProcessLookupError:
            raise Skip("tincd exited") from None
        time.sleep(1)
        try:
            found = seen.findall(open(log).read())
        except OSError:
            found = []
        if found:
            pmtu, lo, hi = found[-1]
            last = f"PMTU {pmtu} (min {lo} max {hi})"
            if lo == hi:
                return f"PMTU {pmtu} settled"
    return last + f" after {timeout:.0f}s"


# -- nebula -----------------------------------------------------------------------------------


def nebula(bed: Bed) -> Path:
    _need("nebula", "nebula-cert", package="nebula")
    net, port = "10.99.6", 4242
    d = bed.work / "nebula"
    d.mkdir()
    _check(["nebula-cert", "ca", "-name", "meshnet-bench", "-out-crt", "ca.crt", "-out-key", "ca.key"], "nebula-cert ca", cwd=d)
    pids = {}
    for i in (1, 2):
        _check(["nebula-cert", "sign", "-ca-crt", "ca.crt", "-ca-key", "ca.key", "-name", f"h{i}", "-ip", f"{net}.{i}/24",
                "-out-crt", f"h{i}.crt", "-out-key", f"h{i}.key"], "nebula-cert sign", cwd=d)  # fmt: skip
    for i in (1, 2):
        other = 3 - i
        config = {  # JSON is YAML: nebula reads it as its config
            "pki": {"ca": str(d / "ca.crt"), "cert": str(d / f"h{i}.crt"), "key": str(d / f"h{i}.key")},
            "static_host_map": {f"{net}.{other}": [f"{bed.ip(other)}:{port}"]},
            "lighthouse": {"am_lighthouse": False, "hosts": []},
            "listen": {"host": "0.0.0.0", "port": port},
            "punchy": {"punch": False},
            "tun": {"disabled": False, "dev": "neb0", "mtu": PEER_MTU},
            "logging": {"level": "info", "format": "text"},
            "firewall": {"outbound": [{"port": "any", "proto": "any", "host": "any"}], "inbound": [{"port": "any", "proto": "any", "host": "any"}]},
        }
        (d / f"h{i}.yml").write_text(json.dumps(config, indent=1))
        pids[f"h{i}"] = bed.spawn(bed.ns(i), ["nebula", "-config", str(d / f"h{i}.yml")], f"nebula-h{i}.log")
    pairs = _pair(bed, net, "nebula")
    note = f"nebula {_version(['nebula', '-version'])}, TUN, default cipher (AES-256-GCM), static host map, no lighthouse"
    return Path("nebula", pairs, pids, PEER_MTU, note)


# -- fastd ------------------------------------------------------------------------------------

FASTD = {"fastd-null": (10015, "fdN", "10.99.8", "null"), "fastd-salsa": (10005, "fdE", "10.99.7", "salsa2012+umac")}


def fastd(bed: Bed, name: str) -> Path:
    _need("fastd", package="fastd")
    port, ifc, net, method = FASTD[name]
    d = bed.work / name
    d.mkdir()
    keys = []
    for _ in (1, 2):
        out = _check(["fastd", "--generate-key"], "fastd --generate-key")
        text = out.stdout + out.stderr
        secret, public = re.search(r"Secret: (\w+)", text), re.search(r"Public: (\w+)", text)
        if not secret or not public:
            raise Skip("fastd --generate-key printed no key pair")
        keys.append((secret.group(1), public.group(1)))
    pids = {}
    # Only h1 knows where h2 is, and h2 listens before h1 starts: handshakes that cross, or
    # one sent before the other side listens, leave the link dead until fastd's next
    # attempt, about 20 s later.
    for i in (2, 1):
        other = 3 - i
        remote = f"  remote {bed.ip(other)}:{port};\n" if i == 1 else ""
        conf = d / f"h{i}.conf"
        conf.write_text(
            f'log level info;\nmode tap;\ninterface "{ifc}";\nmethod "{method}";\nbind {bed.ip(i)}:{port};\n'
            f'secret "{keys[i - 1][0]}";\nmtu {PEER_MTU};\n'
            f'on up "ip link set dev $INTERFACE up; ip addr add {net}.{i}/24 dev $INTERFACE";\n'
            f'peer "h{other}" {{\n  key "{keys[other - 1][1]}";\n{remote}}}\n'
        )
        _check(["fastd", "--verify-config", "-c", str(conf)], "fastd --verify-config")
        pids[f"h{i}"] = bed.spawn(bed.ns(i), ["fastd", "-c", str(conf)], f"{name}-h{i}.log")
        if i == 2:
            _wait_udp(bed.ns(2), port)
    pairs = _pair(bed, net, name)
    return Path(name, pairs, pids, PEER_MTU, f"fastd {_version(['fastd', '--version'])}, TAP mode, method {method}")


# -- wireguard-go -----------------------------------------------------------------------------

WGGO = {"wggo": ("d", 51820, "10.99.9"), "wggo-bin": ("b", 51821, "10.99.10")}
WG_SOCKETS = "/var/run/wireguard"
wireguard_go_binary: str | None = None  # set by the command line (--wireguard-go) for wggo-bin


def wireguard_go(bed: Bed, name: str) -> Path:
    tag, port, net = WGGO[name]
    if name == "wggo-bin":
        binary = wireguard_go_binary
        if not binary:
            raise Skip("no wireguard-go binary given (--wireguard-go PATH or MESHNET_BENCH_WIREGUARD_GO=PATH)")
        if not os.access(binary, os.X_OK):
            raise Skip(f"{binary} is not an executable file")
    else:
        _need("wireguard-go", package="wireguard-go")
        binary = shutil.which("wireguard-go")
    _need("wg", package="wireguard-tools")
    d = bed.work / name
    d.mkdir()
    # the control socket lives in /var/run/wireguard/IFNAME.sock, shared by all namespaces:
    # the interface name carries the run's prefix so two runs never share one
    stem = re.sub(r"[^a-z0-9]", "", bed.ledger.prefix.lower())[:9]
    ifs = {i: f"{stem}wg{tag}{i}" for i in (1, 2)}
    pub = {}
    for i in (1, 2):
        key = _check(["wg", "genkey"], "wg genkey").stdout.strip()
        (d / f"h{i}.key").write_text(key + "\n")
        (d / f"h{i}.key").chmod(0o600)
        pub[i] = _check(["wg", "pubkey"], "wg pubkey", input=key + "\n").stdout.strip()
    pids = {}
    env = {"WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1", "LOG_LEVEL": "error"}
    for i in (1, 2):
        bed.add_file(f"{WG_SOCKETS}/{ifs[i]}.sock")
        pids[f"h{i}"] = bed.spawn(bed.ns(i), [binary, "-f", ifs[i]], f"{name}-h{i}.log", env=env)
    for i in (1, 2):
        sock = f"{WG_SOCKETS}/{ifs[i]}.sock"
        deadline = time.monotonic() + 5
        while not os.path.exists(sock):
            if time.monotonic() > deadline:
                raise Skip(f"{binary} made no control socket {sock} (see logs/{name}-h{i}.log)")
            time.sleep(0.1)
        other = 3 - i
        _check(["ip", "netns", "exec", bed.ns(i), "wg", "set", ifs[i], "private-key", str(d / f"h{i}.key"), "listen-port", str(port),
                "peer", pub[other], "endpoint", f"{bed.ip(other)}:{port}", "allowed-ips", f"{net}.{other}/32"], "wg set")  # fmt: skip
        _check(["ip", "-n", bed.ns(i), "addr", "add", f"{net}.{i}/24", "dev", ifs[i]], "ip addr add")
        _check(["ip", "-n", bed.ns(i), "link", "set", ifs[i], "mtu", str(PEER_MTU), "up"], "ip link set")
    pairs = _pair(bed, net, name)
    return Path(name, pairs, pids, PEER_MTU, f"wireguard-go {_version([binary, '--version'])} ({binary}), configured with wg {_version(['wg', '--version'])}")
