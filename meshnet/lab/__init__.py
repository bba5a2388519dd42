"""The lab: simulated hosts as network namespaces on one machine, each with its own router.

    hosts    `Lab`: namespaces, the underlay, a router per host, containers as namespaces
    dockerd  `DockerLab`: a `Lab` plus one real dockerd per host; `running_lab` for tests
    neigh    room in the kernel's neighbour table, one for all namespaces, for large labs
    procs    the PIDs, mounts and cgroups a Docker lab may stop or remove
    checks   ping, TCP transfers, waits and firewalls between namespaces (e2e tests)
    cli      `meshnet lab up / down / demo`

The lab is a front-end, like the CLI: it drives routers through the meshnet CLI and the
local API (`meshnet.api.client`). Nothing in the router (runtime/, docker/, cni/, kernel/
...) imports it; tests/unit/test_lab_layers.py holds both directions.
"""

from meshnet.lab.checks import Pinger, arp_macs, arp_table, block, in_ns, ping, transfer, unblock, wait_for
from meshnet.lab.dockerd import IMAGE, DockerLab, busybox_rootfs, running_lab
from meshnet.lab.hosts import LAB_RUN, LAB_STATE, UNDERLAY, Lab, netns_exists

__all__ = [
    "IMAGE",
    "LAB_RUN",
    "LAB_STATE",
    "Pinger",
    "UNDERLAY",
    "DockerLab",
    "arp_macs",
    "arp_table",
    "Lab",
    "block",
    "busybox_rootfs",
    "in_ns",
    "netns_exists",
    "ping",
    "running_lab",
    "transfer",
    "unblock",
    "wait_for",
]
