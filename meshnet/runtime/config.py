"""Router settings. Every one is a `launch` flag with a MESHNET_* environment twin."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

DEFAULT_RUN_DIR = "/run/meshnet"
DEFAULT_STATE_DIR = "/var/lib/meshnet"


def default_socket(run_dir: str) -> str:
    return os.path.join(run_dir, "meshnet.sock")


@dataclass
class RouterConfig:
    state_dir: str = DEFAULT_STATE_DIR
    run_dir: str = DEFAULT_RUN_DIR
    host: str = "0.0.0.0"  # address the control and sleeve sockets bind to
    port: int = 6783  # TCP control
    udp_port: int = 6783  # UDP sleeve
    bridge: str = "meshnet"
    tap: str = "mntap"
    mtu: int | None = None  # container MTU; derived from the underlay when None
    nickname: str = ""
    password: bytes | None = None
    peers: list[str] = field(default_factory=list)
    conn_limit: int = 100
    ipalloc_range: str = "10.32.0.0/12"  # the cluster-wide address range IPAM hands out
    ipalloc_init: str = ""  # consensus=N | seed=NAME,... | observer; default consensus=1+len(peers)
    no_fastdp: bool = False  # carry every peer's traffic on the sleeve
    pure_python_pump: bool = False
    socket_path: str | None = None  # local API socket; RUN_DIR/meshnet.sock when None
    metrics_addr: str = "127.0.0.1:6782"  # Prometheus /metrics; "" disables
    # Docker (meshnet/docker, docs/docker.md)
    docker_socket: str | None = None  # Engine API: path or URL; None: DOCKER_HOST, /var/run/docker.sock; "none": off
    plugin_dir: str | None = None  # network plugin socket dir; None: /run/docker/plugins
    docker_network: str = "meshnet"  # network made in each dockerd (driver+IPAM meshnet); "" for none
    dns_domain: str = "meshnet.local"  # containers are NAME.DNS_DOMAIN
    dns_port: int = 53  # the resolver listens on the host's exposed overlay addresses
    dns_upstream: str = ""  # servers for other names ("IP[:PORT] ..."); "" answers REFUSED

    @property
    def socket(self) -> str:
        return self.socket_path or default_socket(self.run_dir)

    @property
    def pid_file(self) -> str:
        return os.path.join(self.run_dir, "meshnet.pid")

    @property
    def log_file(self) -> str:
        return os.path.join(self.run_dir, "meshnet.log")
