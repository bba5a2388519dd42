"""The composition root: builds the router, then the integrations beside it, and runs them.

This is the one module that knows every part. The router (`runtime/`) knows nothing of
Docker or Kubernetes; an integration is handed narrow ports — the endpoints service, the
plumbing, the state store, the API route table — and never the router itself. Adding an
integration means adding it here (see docs/design.md).

Order: the router starts first (its API answers from then on), then Docker, then
Kubernetes (the pod network and the node agent); stop runs it backwards, so Docker is never left calling a plugin socket nobody serves.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import fields
from typing import Any, Callable

from meshnet.config import RouterConfig
from meshnet.docker.service import DockerService, DockerSettings
from meshnet.k8s.service import KubeService, KubeSettings
from meshnet.runtime.router import Router

log = logging.getLogger("meshnet.daemon")


def docker_settings(config: RouterConfig) -> DockerSettings:
    return DockerSettings(**{f.name: getattr(config, f.name) for f in fields(DockerSettings)})


def kube_settings(config: RouterConfig) -> KubeSettings:
    return KubeSettings(**{f.name: getattr(config, f.name) for f in fields(KubeSettings)})


class MeshPeers:
    """The Kubernetes port onto the mesh: our name and the peers we know (name, nick, reachable)."""

    def __init__(self, router: Router):
        self._router = router

    @property
    def name(self) -> bytes:
        return self._router.core.name

    def peers(self) -> list[tuple[bytes, str, bool]]:
        topo = self._router.core.topology
        reachable = topo.reachable()
        return [(e.name, e.nick, e.name in reachable) for e in topo.entries.values()]


class Daemon:
    def __init__(self, config: RouterConfig):
        self.config = config
        self.router = Router(config)
        self.docker: DockerService | None = None
        self.kube: KubeService | None = None

    async def start(self) -> None:
        router = self.router
        await router.start()
        try:
            assert router.state is not None
            self.docker = DockerService(
                docker_settings(self.config),
                endpoints=router.endpoints,
                plumbing=router.plumbing,
                store=router.state,
                api=router.api,
                host_owner=f"host:{router.core.name.hex()}",
                supervisor=router.supervisor,
            )
            await self.docker.start()
            self.kube = KubeService(
                kube_settings(self.config),
                endpoints=router.endpoints,
                plumbing=router.plumbing,
                ipam=router.ipam,
                mesh=MeshPeers(router),
                store=router.state,
                api=router.api,
                supervisor=router.supervisor,
                metrics=router.add_metrics_section,
            )
            await self.kube.start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if self.kube is not None:
            await self.kube.stop()
            self.kube = None
        if self.docker is not None:
            await self.docker.stop()
            self.docker = None
        await self.router.stop()

    async def run(self, ready: Callable[[dict[str, Any]], None] | None = None) -> None:
        """Start, serve until SIGTERM, SIGINT or `meshnet stop`, then stop.

        `ready` is told who we are ({"name", "nick"}) once the API answers."""
        await self.start()
        if ready is not None:
            local = self.router.core.topology.local
            ready({"name": local.name.hex(), "nick": local.nick})
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.router.request_stop)
        await self.router.wait_stop_requested()
        await self.stop()
