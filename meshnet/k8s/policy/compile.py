"""NetworkPolicy compiler: the cluster (model.py) and this node's pod addresses in, the
node's ruleset (ruleset.py) out. Pure: no I/O, no clock; the same input gives the same
ruleset, names included, so the difference between two compilations is small and exact.

Only what this node enforces is compiled: ingress for its own pods (traffic to them is
checked on the node they live on) and egress for its own pods (checked on the node the
traffic leaves from). A pod is isolated in a direction when a policy of its namespace
selects it and names that direction in policyTypes; its chain then lists, policy by
policy, rule by rule, what is allowed, and drops the rest.

Names are stable: a peer set is named after its definition (the policy's namespace and
the rule's peers), not its members, so a pod coming or going changes set elements, not
chains; a pod chain is named after its rules, so pods with the same rules share one.

Addresses: an address belongs to the newest pod that claims it (a deleted pod's object
can outlive its sandbox for a moment). Only IPv4 is enforced; IPv6 ipBlocks match nothing
because meshnet pods have no IPv6 address.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable

from meshnet.k8s.policy.model import Cluster, Direction, IPBlock, Peer, Pod, Policy, Rule, Selector
from meshnet.k8s.policy.ruleset import (
    AddrIn,
    AddrSet,
    Chain,
    CtState,
    DestIn,
    DestSet,
    Field,
    Log,
    PodView,
    PortIn,
    Ruleset,
    Verdict,
    VerdictMap,
    VmapJump,
)
from meshnet.k8s.policy.ruleset import Rule as NftRule

BASE_CHAIN = "filter_forward"  # not "forward": that is an nft keyword
INGRESS_MAP = "ingress_pods"
EGRESS_MAP = "egress_pods"
LOG_PREFIX = "meshnet-deny-"  # + "in" / "eg": what the log reader keys on


@dataclass(frozen=True)
class Options:
    table: str = "meshnet_policy"
    log_group: int = 7  # NFLOG group the agent reads denied flows from
    log_rate: int = 10  # denied packets logged per second per chain, at most


def short_hash(value: object) -> str:
    return hashlib.blake2b(repr(value).encode(), digest_size=6).hexdigest()


def policy_id(policy: Policy) -> str:
    return short_hash(policy.key)


def ipv4_parts(block: IPBlock) -> list[ipaddress.IPv4Network]:
    """The block's IPv4 addresses minus its exceptions, as disjoint networks."""
    if block.cidr.version != 4:
        return []
    parts = [block.cidr]
    for ex in block.excepts:
        nxt = []
        for p in parts:
            if not p.overlaps(ex):
                nxt.append(p)
            elif not ex.supernet_of(p):  # type: ignore[arg-type]
                nxt.extend(p.address_exclude(ex))  # type: ignore[arg-type]
        parts = nxt
    return parts  # type: ignore[return-value]


def merge_ports(ports: Iterable[tuple[str, int, int]]) -> tuple[tuple[str, int, int], ...]:
    """Overlapping or touching ranges of one protocol merged, sorted: nft refuses overlaps."""
    out: list[tuple[str, int, int]] = []
    for proto, lo, hi in sorted(set(ports)):
        if out and out[-1][0] == proto and lo <= out[-1][2] + 1:
            out[-1] = (proto, out[-1][1], max(hi, out[-1][2]))
        else:
            out.append((proto, lo, hi))
    return tuple(out)


class ClusterIndex:
    """Lookups the compiler repeats, built once per compilation."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self._memo: dict[tuple[Selector, tuple], bool] = {}
        owners: dict[str, Pod] = {}
        for pod in sorted(cluster.pods.values(), key=lambda p: (p.created, p.key)):
            for ip in pod.ips:
                owners[ip] = pod  # the newest claim wins
        self.owner = owners
        self.ips: dict[str, list[str]] = defaultdict(list)
        for ip, pod in owners.items():
            self.ips[pod.key].append(ip)
        self.by_namespace: dict[str, list[Pod]] = defaultdict(list)
        for pod in sorted(cluster.pods.values(), key=lambda p: p.key):
            if self.ips.get(pod.key):
                self.by_namespace[pod.namespace].append(pod)
        self.policies: dict[str, list[Policy]] = defaultdict(list)
        for pol in sorted(cluster.policies.values(), key=lambda p: p.key):
            self.policies[pol.namespace].append(pol)
        names = set(cluster.namespaces) | set(self.by_namespace)
        self.namespace_labels = {n: (cluster.namespaces[n].label_map if n in cluster.namespaces else {}) for n in sorted(names)}

    def match(self, selector: Selector, key: tuple, labels: dict[str, str]) -> bool:
        memo_key = (selector, key)
        hit = self._memo.get(memo_key)
        if hit is None:
            hit = self._memo[memo_key] = selector.matches(labels)
        return hit

    def selects(self, policy: Policy, pod: Pod) -> bool:
        return self.match(policy.pod_selector, pod.labels, pod.label_map)

    def peer_pods(self, namespace: str, peer: Peer) -> list[Pod]:
        if peer.namespaces is None:
            spaces = [namespace]
        else:
            spaces = [n for n, labels in self.namespace_labels.items() if self.match(peer.namespaces, ("ns", n), labels)]
        return [p for n in spaces for p in self.by_namespace.get(n, ()) if peer.pods is None or self.match(peer.pods, p.labels, p.label_map)]

    def v4(self, pod: Pod) -> list[str]:
        return [ip for ip in self.ips.get(pod.key, ()) if ":" not in ip]


class Compiler:
    def __init__(self, cluster: Cluster, options: Options):
        self.idx = ClusterIndex(cluster)
        self.options = options
        self.addr_sets: dict[str, AddrSet] = {}
        self.dest_sets: dict[str, DestSet] = {}
        self.counters: set[str] = set()
        self.policy_ids: dict[str, str] = {}
        self._peer_memo: dict[tuple, tuple[set[str], list[ipaddress.IPv4Network]]] = {}

    # -- sets -----------------------------------------------------------------------
    def _peers(self, policy: Policy, rule: Rule) -> tuple[set[str], list[ipaddress.IPv4Network]]:
        """The rule's peers: pod addresses, and the networks of its ipBlocks."""
        key = (policy.namespace, rule.peers)
        if key not in self._peer_memo:
            addrs: set[str] = set()
            nets: list[ipaddress.IPv4Network] = []
            for peer in rule.peers:
                if peer.ip_block is not None:
                    nets.extend(ipv4_parts(peer.ip_block))
                else:
                    addrs.update(ip for p in self.idx.peer_pods(policy.namespace, peer) for ip in self.idx.v4(p))
            self._peer_memo[key] = (addrs, nets)
        return self._peer_memo[key]

    def _admits(self, policy: Policy, rule: Rule, ip: str) -> bool:
        addrs, nets = self._peers(policy, rule)
        return ip in addrs or any(ipaddress.IPv4Address(ip) in n for n in nets)

    def peer_set(self, policy: Policy, rule: Rule) -> str | None:
        """The named set of the rule's peers; None if the peers are nobody."""
        name = "p_" + short_hash((policy.namespace, rule.peers))
        if name not in self.addr_sets:
            addrs, nets = self._peers(policy, rule)
            elements = tuple(str(n) for n in ipaddress.collapse_addresses([*map(ipaddress.IPv4Network, addrs), *nets]))
            self.addr_sets[name] = AddrSet(name, elements)
        return name if self.addr_sets[name].elements else None

    def dest_set(self, policy: Policy, rule: Rule, port_name: str, protocol) -> str | None:
        """(address, protocol, number) of every destination the rule's peers admit that has
        container port `port_name`; None if there is none."""
        name = "d_" + short_hash((policy.namespace, rule.peers, port_name, protocol.value))
        if name not in self.dest_sets:
            owners = [(ip, pod) for ip, pod in self.idx.owner.items() if ":" not in ip and (not rule.peers or self._admits(policy, rule, ip))]
            elements = sorted({(ip, protocol.nft, n) for ip, pod in owners if (n := pod.named_port(port_name, protocol)) is not None})
            self.dest_sets[name] = DestSet(name, tuple(elements))
        return name if self.dest_sets[name].elements else None

    # -- rules ----------------------------------------------------------------------
    def _counter(self, kind: str, direction: Direction, policy: Policy) -> str:
        pid = policy_id(policy)
        self.policy_ids[pid] = policy.key
        name = f"{kind}_{direction.short}_{pid}"
        self.counters.add(name)
        return name

    def allow_rules(self, policy: Policy, rule: Rule, direction: Direction, pod: Pod) -> list[NftRule]:
        field = Field.SADDR if direction is Direction.INGRESS else Field.DADDR
        counted = (self._counter("a", direction, policy),)
        peers: tuple = ()
        if rule.peers:
            name = self.peer_set(policy, rule)
            if name is None:
                return []
            peers = (AddrIn(field, name),)
        if not rule.ports:
            return [NftRule(peers, counted, Verdict.RETURN)]
        numeric = [(p.protocol.nft, p.port, p.end_port or p.port) for p in rule.ports if isinstance(p.port, int)]
        numeric += [(p.protocol.nft, 0, 65535) for p in rule.ports if p.port is None]
        named = [p for p in rule.ports if isinstance(p.port, str)]
        out = []
        if direction is Direction.INGRESS:  # a named port is the target pod's own
            numeric += [(p.protocol.nft, n, n) for p in named if (n := pod.named_port(p.port, p.protocol)) is not None]  # type: ignore[arg-type]
        else:  # a named port is the destination's
            for p in named:
                dest = self.dest_set(policy, rule, p.port, p.protocol)  # type: ignore[arg-type]
                if dest is not None:
                    out.append(NftRule((DestIn(dest),), counted, Verdict.RETURN))
        if numeric:
            out.insert(0, NftRule(peers + (PortIn(merge_ports(numeric)),), counted, Verdict.RETURN))
        return out

    def pod_chain(self, pod: Pod, direction: Direction, policies: list[Policy]) -> Chain:
        rules: list[NftRule] = []
        for policy in policies:
            self._counter("a", direction, policy)
            for rule in policy.rules(direction):
                rules.extend(self.allow_rules(policy, rule, direction, pod))
        opts = self.options
        rules.append(NftRule(log=Log(LOG_PREFIX + direction.short, opts.log_group, opts.log_rate)))
        rules.append(NftRule(counters=tuple(self._counter("d", direction, p) for p in policies), verdict=Verdict.DROP))
        body = tuple(rules)
        return Chain(f"{direction.short}_{short_hash(body)}", body)

    def compile(self, local_ips: Iterable[str]) -> Ruleset:
        local = set(local_ips)
        chains: dict[str, Chain] = {}
        maps: dict[Direction, list[tuple[str, str]]] = {Direction.INGRESS: [], Direction.EGRESS: []}
        views = []
        for pods in self.idx.by_namespace.values():
            for pod in pods:
                ips = self.idx.v4(pod)
                if not any(ip in local for ip in ips):
                    continue
                isolating: dict[Direction, list[Policy]] = {}
                for direction in (Direction.INGRESS, Direction.EGRESS):
                    pols = [p for p in self.idx.policies.get(pod.namespace, ()) if direction in p.types and self.idx.selects(p, pod)]
                    isolating[direction] = pols
                    if pols:
                        chain = self.pod_chain(pod, direction, pols)
                        chains.setdefault(chain.name, chain)
                        maps[direction].extend((ip, chain.name) for ip in ips)
                views.append(PodView(pod.key, tuple(ips), *(tuple(p.key for p in isolating[d]) for d in (Direction.INGRESS, Direction.EGRESS))))
        forward = Chain(
            BASE_CHAIN,
            (
                NftRule((CtState(("established", "related")),), verdict=Verdict.ACCEPT),
                NftRule(vmap=VmapJump(Field.DADDR, INGRESS_MAP)),
                NftRule(vmap=VmapJump(Field.SADDR, EGRESS_MAP)),
            ),
            hook="forward",
        )
        used = {m.set for c in chains.values() for r in c.rules for m in r.matches if isinstance(m, (AddrIn, DestIn))}
        return Ruleset(
            table=self.options.table,
            chains=(forward, *sorted(chains.values(), key=lambda c: c.name)),
            addr_sets=tuple(s for name, s in sorted(self.addr_sets.items()) if name in used),
            dest_sets=tuple(s for name, s in sorted(self.dest_sets.items()) if name in used),
            maps=(VerdictMap(INGRESS_MAP, tuple(sorted(maps[Direction.INGRESS]))), VerdictMap(EGRESS_MAP, tuple(sorted(maps[Direction.EGRESS])))),
            counters=tuple(sorted(self.counters)),
            policy_ids=dict(self.policy_ids),
            pods=tuple(sorted(views, key=lambda v: v.pod)),
        )


def compile_node(cluster: Cluster, local_ips: Iterable[str], options: Options = Options()) -> Ruleset:
    """The ruleset for the node whose pods have the addresses `local_ips`."""
    return Compiler(cluster, options).compile(local_ips)
