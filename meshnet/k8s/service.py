"""Kubernetes inside the router: the pod network and the node agent, built by the daemon.

`KubeService(settings, endpoints=, plumbing=, ipam=, mesh=, store=, api=)` is handed the
ports of `ports.py`, never the router. It runs
- `PodNetwork` (`podnet.py`) when `--pod-network` is set;
- `NodeAgent` (`nodes.py`) when an API server is known (in-cluster service account, or
  `--kube-api`); the node is this router's nickname;
- `PolicyAgent` (`policy/agent.py`) when `--network-policy` is set too: NetworkPolicy
  for this node's pods, its counters as the metrics section `policy`;
and adds the API routes `GET /podnet` (what the CNI plugin asks for the pods' gateway),
`GET /k8s/status` and `GET /k8s/policy` (`meshnet status policy`).
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from typing import Any

from meshnet.dataplane.netfilter import parse_cidrs
from meshnet.errors import NotFound
from meshnet.k8s.client import KubeClient, KubeConfig
from meshnet.k8s.nodes import NodeAgent
from meshnet.k8s.podnet import PodNetwork
from meshnet.k8s.policy.agent import PolicyAgent
from meshnet.k8s.policy.compile import Options
from meshnet.k8s.ports import Endpoints, Ipam, Mesh, Metrics, Plumbing, PolicyKernel, Routes, Store
from meshnet.runtime.supervise import Supervisor

log = logging.getLogger("meshnet.k8s")


@dataclass(frozen=True)
class KubeSettings:
    """The Kubernetes part of the router's configuration (RouterConfig fields of these names)."""

    pod_network: bool = False
    non_masquerade_cidrs: str = ""
    kube_api: str = ""
    kube_sa_dir: str = "/var/run/secrets/kubernetes.io/serviceaccount"
    nickname: str = ""
    ipalloc_range: str = "10.32.0.0/12"
    network_policy: bool = False


def local_addresses(endpoints: Endpoints) -> set[str]:
    """The addresses of the endpoints on this router's bridge (CIDRs without the prefix)."""
    return {cidr.split("/")[0] for ep in endpoints.local_endpoints() for cidr in ep.ips}


class KubeService:
    def __init__(self, settings: KubeSettings, *, endpoints: Endpoints, plumbing: Plumbing, ipam: Ipam, mesh: Mesh,
                 store: Store, api: Routes, environ: dict[str, str] | None = None, supervisor: Supervisor | None = None,
                 metrics: Metrics | None = None):
        """`supervisor`: the router's; the node and policy agents run under it (restarted if they
        fail). `metrics`: adds a section to the router's metrics snapshot."""
        self.settings = settings
        self.supervisor = supervisor or Supervisor()
        self.ipam = ipam
        self.api = api
        self.podnet: PodNetwork | None = None
        if settings.pod_network:
            self.podnet = PodNetwork(endpoints=endpoints, plumbing=plumbing, store=store, universe=settings.ipalloc_range,
                                     non_masquerade=parse_cidrs(settings.non_masquerade_cidrs))
        self.nodes: NodeAgent | None = None
        config = KubeConfig.from_env(dict(os.environ) if environ is None else environ, api=settings.kube_api or None,
                                     sa_dir=settings.kube_sa_dir)
        if config is not None:
            node = settings.nickname
            self.nodes = NodeAgent(KubeClient(config), node_name=node, mesh=mesh, ipam=ipam, store=store, ready=self.ready)
        self.policy: PolicyAgent | None = None
        self._kernel: PolicyKernel = plumbing  # type: ignore[assignment]  # the router's Plumbing is both ports
        if settings.network_policy:
            if config is None:
                log.error("--network-policy needs the Kubernetes API (in-cluster service account or --kube-api): no policy is enforced")
            else:
                self.policy = PolicyAgent(KubeClient(config), node_name=settings.nickname, kernel=self._kernel,
                                          local_ips=lambda: local_addresses(endpoints))
                if metrics is not None:
                    metrics("policy", self.policy.metrics)
        self._task: asyncio.Task[None] | None = None
        self._policy_task: asyncio.Task[None] | None = None

    def ready(self) -> bool:
        """This node serves pods: IPAM has its ring and (with the pod network) the gateway is up."""
        return self.ipam.status().get("state") == "ready" and (self.podnet is None or self.podnet.ready)

    async def start(self) -> None:
        self.api.add_routes({("GET", "/podnet"): self._podnet, ("GET", "/k8s/status"): self._status, ("GET", "/k8s/policy"): self._policy})
        if self.podnet is not None:
            if self.nodes is not None:
                self.podnet.on_ready = self.nodes.wake  # NetworkUnavailable=False without waiting for a round
            await self.podnet.start(self.supervisor.spawn)
        if self.nodes is not None:
            if not self.settings.nickname:
                log.warning("the node agent needs this router's nickname to be its node's name (MESHNET_NICKNAME=$(NODE_NAME))")
            log.info("following the cluster's nodes at %s as node %r", self.nodes.client.config.server, self.nodes.node_name)
            self._task = self.supervisor.keep("k8s-nodes", self.nodes.run)
        if self.policy is not None:
            log.info("enforcing NetworkPolicy for the pods of node %r (nftables table inet %s)", self.policy.node_name, self.policy.options.table)
            self._policy_task = self.supervisor.keep("k8s-policy", self.policy.run)
        else:  # a router started without --network-policy leaves no old policy table in force
            table = Options().table
            try:
                await self._kernel.nft(f"add table inet {table}\ndelete table inet {table}\n")
            except OSError as exc:
                log.debug("no policy table to remove: %s", exc)

    async def stop(self) -> None:
        """The policy table stays in force: pods stay protected while the router restarts."""
        for task in (self._task, self._policy_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self.podnet is not None:
            await self.podnet.stop()

    async def _podnet(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.podnet is None:
            raise NotFound("this router runs without --pod-network (MESHNET_POD_NETWORK)")
        return self.podnet.info()

    async def _policy(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.policy is None:
            raise NotFound("this router does not enforce NetworkPolicy (--network-policy, MESHNET_NETWORK_POLICY, with the Kubernetes API)")
        return self.policy.status()

    async def _status(self, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "ready": self.ready(),
            "pod_network": None if self.podnet is None else {"ready": self.podnet.ready, "gateway": self.podnet.gateway,
                                                             "error": self.podnet.last_error or None},
            "nodes": None if self.nodes is None else self.nodes.status(),
            "policy": None if self.policy is None else {k: v for k, v in self.policy.status().items() if k in ("synced", "enforcing", "counts")},
        }
