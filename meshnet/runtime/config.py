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
    pure_python_pump: bool = False
    socket_path: str | None = None  # local API socket; RUN_DIR/meshnet.sock when None

    @property
    def socket(self) -> str:
        return self.socket_path or default_socket(self.run_dir)

    @property
    def pid_file(self) -> str:
        return os.path.join(self.run_dir, "meshnet.pid")

    @property
    def log_file(self) -> str:
        return os.path.join(self.run_dir, "meshnet.log")
