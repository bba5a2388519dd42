"""The policy agent: follows Pods, Namespaces and NetworkPolicies and keeps this node's
nftables ruleset equal to what they say (docs/kubernetes.md, "NetworkPolicy").

Three `Informer`s (list, then watch from the list's resourceVersion with bookmarks;
resume after a dropped stream, list again on 410 Gone, back off while the server is
away) feed one model of the cluster. Every change marks it dirty; the sync loop, after a
short pause that gathers a burst of events into one update, compiles the ruleset for the
pods of this node (in a worker thread: a big cluster takes tens of milliseconds) and
applies the difference from the ruleset in force as one nft transaction. If a difference
fails (the kernel table was changed behind our back), the whole table is replaced; if
that fails too, the agent says so in status and tries again with a backoff.

Nothing is applied before all three lists have come back: a restarted agent leaves the
table it finds in force until it knows the whole cluster, then replaces it.

Pods are "on this node" when their spec.nodeName is this node's name, or when one of
their addresses is an endpoint on this router's bridge; endpoints are looked at again at
every wakeup (`tick`), so a pod whose sandbox is wired after its watch event still gets
its chains. Denied packets arrive over NFLOG and are logged (rate-limited) with the
pods' names.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable, Iterable

from meshnet.k8s.client import NAMESPACES, NETWORK_POLICIES, PODS, KubeClient
from meshnet.k8s.informer import Backoff, Informer
from meshnet.k8s.policy.compile import Options, compile_node
from meshnet.k8s.policy.denials import LogBudget, describe, parse_denied
from meshnet.k8s.policy.model import Cluster, Namespace, Pod, Policy
from meshnet.k8s.policy.parse import InvalidObject, parse_namespace, parse_pod, parse_policy
from meshnet.k8s.policy.render import replace, update
from meshnet.k8s.policy.ruleset import Ruleset
from meshnet.k8s.ports import PolicyKernel

log = logging.getLogger("meshnet.k8s.policy")

DEBOUNCE = 0.02  # seconds: events closer than this go into one update
TICK = 1.0  # seconds between looks at the bridge's endpoints
RESYNC = 60.0  # seconds: compile and compare even when nothing was heard
MAX_PROBLEMS = 1000  # objects we could not use, kept for status
BRIDGE_NF = "net.bridge.bridge-nf-call-iptables"


class PolicyAgent:
    def __init__(self, client: KubeClient, *, node_name: str, kernel: PolicyKernel, local_ips: Callable[[], Iterable[str]],
                 options: Options = Options(), clock: Callable[[], float] = time.monotonic, debounce: float = DEBOUNCE,
                 tick: float = TICK, resync: float = RESYNC):
        self.node_name = node_name
        self.kernel = kernel
        self.local_ips = local_ips
        self.options = options
        self.clock = clock
        self.debounce, self.tick, self.resync = debounce, tick, resync
        self.namespaces: dict[str, Namespace] = {}
        self.pods: dict[str, Pod] = {}
        self.policies: dict[str, Policy] = {}
        self.problems: dict[str, str] = {}  # "Kind ns/name" -> why it is not (fully) enforced
        self.informers = {
            "namespaces": Informer(client, NAMESPACES, on_change=self._namespace),
            "pods": Informer(client, PODS, on_change=self._pod),
            "networkpolicies": Informer(client, NETWORK_POLICIES, on_change=self._policy),
        }
        self.applied: Ruleset | None = None  # in force in the kernel; None: unknown, replace next
        self.compiled: Ruleset | None = None
        self.bridge_nf: bool | None = None
        self.stats: dict[str, Any] = {"syncs": 0, "updates": 0, "replaces": 0, "unchanged": 0, "apply_errors": 0, "last_error": None,
                                      "last_apply_ms": None, "last_latency_ms": None, "max_latency_ms": None, "denied_logged": 0}
        self._dirty_since: float | None = None
        self._wake = asyncio.Event()
        self._local: frozenset[str] = frozenset()
        self._log_budget = LogBudget(clock)
        self._backoff = Backoff()
        self._nflog: Any = None

    # -- the model, from the informers (on the loop; never raises) -------------------------
    def _changed(self) -> None:
        if self._dirty_since is None:
            self._dirty_since = self.clock()
        self._wake.set()

    def _problem(self, what: str, message: str | None) -> None:
        if message is None:
            self.problems.pop(what, None)
        elif what in self.problems or len(self.problems) < MAX_PROBLEMS:
            if self.problems.get(what) != message:
                log.warning("%s: %s", what, message)
            self.problems[what] = message

    def _namespace(self, kind: str, obj: dict, before: dict | None) -> None:
        name = str((obj.get("metadata") or {}).get("name"))
        try:
            ns = None if kind == "DELETED" else parse_namespace(obj)
            self._problem(f"Namespace {name}", None)
        except InvalidObject as exc:
            ns = None
            self._problem(f"Namespace {name}", exc.message)
        if ns is None:
            self.namespaces.pop(name, None)
        else:
            self.namespaces[name] = ns
        self._changed()

    def _pod(self, kind: str, obj: dict, before: dict | None) -> None:
        meta = obj.get("metadata") or {}
        key = f"{meta.get('namespace')}/{meta.get('name')}"
        try:
            pod = None if kind == "DELETED" else parse_pod(obj)
            self._problem(f"Pod {key}", None)
        except InvalidObject as exc:
            pod = None
            self._problem(f"Pod {key}", exc.message)
        if pod is None:
            if self.pods.pop(key, None) is None:
                return  # a pod without an address changed: nothing to recompile
        else:
            if self.pods.get(key) == pod:
                return  # a status change policy does not look at
            self.pods[key] = pod
        self._changed()

    def _policy(self, kind: str, obj: dict, before: dict | None) -> None:
        meta = obj.get("metadata") or {}
        key = f"{meta.get('namespace')}/{meta.get('name')}"
        what = f"NetworkPolicy {key}"
        if kind == "DELETED":
            self.policies.pop(key, None)
            self._problem(what, None)
        else:
            try:
                parsed = parse_policy(obj)
                self.policies[key] = parsed.policy
                self._problem(what, "; ".join(parsed.errors) if parsed.errors else None)
            except InvalidObject as exc:
                self.policies.pop(key, None)
                self._problem(what, f"NOT ENFORCED: {exc.message}")
        self._changed()

    # -- running -----------------------------------------------------------------------------
    @property
    def synced(self) -> bool:
        return all(i.synced for i in self.informers.values())

    def _local_now(self) -> frozenset[str]:
        ips = {ip for ip in self.local_ips()}
        ips |= {ip for p in self.pods.values() if p.node == self.node_name for ip in p.ips}
        return frozenset(ips)

    async def run(self) -> None:
        tasks = [asyncio.ensure_future(i.run()) for i in self.informers.values()]
        try:
            self.bridge_nf = await self.kernel.sysctl(BRIDGE_NF, "1") is not None
            if not self.bridge_nf:
                log.error("no %s (br_netfilter not loaded): traffic between pods of this node is NOT policed; modprobe br_netfilter", BRIDGE_NF)
            self._open_log()
            last = self.clock()
            while True:
                try:  # asyncio.timeout, not wait_for: 3.11's wait_for loses a cancel that lands as the event is set
                    async with asyncio.timeout(self.tick):
                        await self._wake.wait()
                except TimeoutError:
                    pass
                self._wake.clear()
                local = self._local_now()
                if local != self._local:
                    self._local = local
                    self._changed()
                if self.synced and (self._dirty_since is not None or self.clock() - last >= self.resync):
                    await asyncio.sleep(self.debounce)
                    self._wake.clear()
                    last = self.clock()
                    await self.sync()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._close_log()

    async def sync(self) -> None:
        """Compile and apply; on failure, the next round replaces the whole table."""
        since, self._dirty_since = self._dirty_since, None
        self._local = self._local_now()
        self._wake.clear()  # what woke us is in this round
        cluster = Cluster(dict(self.namespaces), dict(self.pods), dict(self.policies))
        rs = await asyncio.to_thread(compile_node, cluster, self._local, self.options)
        self.compiled = rs
        self.stats["syncs"] += 1
        if self.applied is not None and rs == self.applied:
            self.applied = rs  # same kernel state; the pod views may have changed
            self.stats["unchanged"] += 1
            return
        started = self.clock()
        first = self.applied is None  # the first table (or after a failure): no event to time it from
        try:
            if self.applied is None:
                await self.kernel.nft(replace(rs))
                self.stats["replaces"] += 1
            else:
                try:
                    script = update(self.applied, rs)
                    if script:
                        await self.kernel.nft(script)
                    self.stats["updates"] += 1
                except OSError as exc:
                    log.warning("policy update failed, replacing the table: %s", exc)
                    await self.kernel.nft(replace(rs))
                    self.stats["replaces"] += 1
        except OSError as exc:
            self.applied = None
            self.stats["apply_errors"] += 1
            self.stats["last_error"] = str(exc)[:500]
            log.error("policy table not applied: %s", exc)
            self._dirty_since = since if since is not None else self.clock()
            await asyncio.sleep(self._backoff.next())
            self._wake.set()
            return
        self._backoff.reset()
        self.applied = rs
        self.stats["last_error"] = None
        now = self.clock()
        self.stats["last_apply_ms"] = round((now - started) * 1000, 1)
        if since is not None and not first:
            latency = round((now - since) * 1000, 1)
            self.stats["last_latency_ms"] = latency
            self.stats["max_latency_ms"] = max(latency, self.stats["max_latency_ms"] or 0.0)

    # -- denied flows ------------------------------------------------------------------------
    def _open_log(self) -> None:
        try:
            self._nflog = self.kernel.nflog(self.options.log_group)
            asyncio.get_running_loop().add_reader(self._nflog.fileno(), self._read_log)
        except OSError as exc:
            self._nflog = None
            log.warning("denied flows will not be logged: %s", exc)

    def _close_log(self) -> None:
        if self._nflog is not None:
            asyncio.get_running_loop().remove_reader(self._nflog.fileno())
            self._nflog.close()
            self._nflog = None

    def _read_log(self) -> None:
        try:
            messages = self._nflog.read()
        except OSError as exc:
            log.warning("reading denied flows: %s", exc)
            self._close_log()
            return
        owners = {ip: p.key for p in self.pods.values() for ip in p.ips} if messages else {}
        for prefix, packet in messages:
            denied = parse_denied(prefix, packet)
            if denied is None:
                continue
            self.stats["denied_logged"] += 1
            ok, held = self._log_budget.take()
            if ok:
                log.info("%s%s", describe(denied, owners.get), f" ({held} more not shown)" if held else "")

    # -- status and metrics ------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        rs = self.applied or self.compiled
        views = [] if rs is None else [{"pod": v.pod, "ips": list(v.ips), "ingress": list(v.ingress), "egress": list(v.egress)} for v in rs.pods]
        return {
            "node": self.node_name,
            "table": f"inet {self.options.table}",
            "synced": self.synced,
            "enforcing": self.applied is not None,
            "current": self.applied is not None and self.applied is self.compiled and self._dirty_since is None,  # nothing waiting
            "bridge_netfilter": self.bridge_nf,
            "denied_log": self._nflog is not None,
            "counts": {"namespaces": len(self.namespaces), "pods": len(self.pods), "policies": len(self.policies),
                       "local_pods": len(views), "isolated_ingress": sum(1 for v in views if v["ingress"]),
                       "isolated_egress": sum(1 for v in views if v["egress"])},
            "stats": dict(self.stats),
            "pods": views,
            "problems": [{"object": k, "error": v} for k, v in sorted(self.problems.items())],
            "informers": [i.status() for i in self.informers.values()],
        }

    async def metrics(self) -> dict[str, Any]:
        """Packets each policy allowed and denied here, per direction, from the nft counters."""
        rs = self.applied
        counts = await self.kernel.nft_counters("inet", self.options.table) if rs is not None else {}
        rows = []
        for name, (packets, octets) in sorted(counts.items()):
            verdict, direction, pid = (name.split("_", 2) + ["", ""])[:3]
            policy = rs.policy_ids.get(pid) if rs is not None else None
            if policy and verdict in ("a", "d") and direction in ("in", "eg"):
                rows.append({"policy": policy, "direction": "ingress" if direction == "in" else "egress",
                             "verdict": "allowed" if verdict == "a" else "denied", "packets": packets, "bytes": octets})
        st = self.status()
        return {"synced": st["synced"], "enforcing": st["enforcing"], "counts": st["counts"], "stats": st["stats"],
                "problems": len(self.problems), "packets": rows}
