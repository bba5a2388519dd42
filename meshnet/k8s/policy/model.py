"""The cluster as NetworkPolicy sees it: namespaces, pods and policies as plain values.

These are what `parse.py` makes of the API's objects (networking.k8s.io/v1 NetworkPolicy,
v1 Pod, v1 Namespace) once every field has been checked. Nothing here does I/O; the
compiler (`compile.py`) and the evaluator (`evaluate.py`) both read these values, and
nothing else about the objects.

Labels are kept as sorted tuples of (key, value) so that values are hashable and two
pods with the same labels compare equal (the compiler memoises selector matches on them).
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field
from typing import Mapping

Labels = tuple[tuple[str, str], ...]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def labels_of(mapping: Mapping[str, str] | None) -> Labels:
    return tuple(sorted((mapping or {}).items()))


class Protocol(str, enum.Enum):
    TCP = "TCP"
    UDP = "UDP"
    SCTP = "SCTP"

    @property
    def number(self) -> int:
        return {"TCP": 6, "UDP": 17, "SCTP": 132}[self.value]

    @property
    def nft(self) -> str:
        return self.value.lower()


class Operator(str, enum.Enum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


@dataclass(frozen=True)
class Requirement:
    """One matchExpressions entry."""

    key: str
    operator: Operator
    values: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Selector:
    """A metav1.LabelSelector: matchLabels AND every matchExpressions entry; empty = all."""

    match_labels: Labels = ()
    expressions: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        for key, value in self.match_labels:
            if labels.get(key) != value:
                return False
        for req in self.expressions:
            present = req.key in labels
            if req.operator is Operator.IN:
                ok = present and labels[req.key] in req.values
            elif req.operator is Operator.NOT_IN:
                ok = not present or labels[req.key] not in req.values
            elif req.operator is Operator.EXISTS:
                ok = present
            else:
                ok = not present
            if not ok:
                return False
        return True


EVERYTHING = Selector()


@dataclass(frozen=True)
class IPBlock:
    cidr: Network
    excepts: tuple[Network, ...] = ()


@dataclass(frozen=True)
class Peer:
    """One `from`/`to` entry: selectors (either or both), or an ipBlock alone."""

    pods: Selector | None = None
    namespaces: Selector | None = None
    ip_block: IPBlock | None = None


@dataclass(frozen=True)
class PortSpec:
    """One `ports` entry. `port` None = every port of the protocol; a str is a named port."""

    protocol: Protocol = Protocol.TCP
    port: int | str | None = None
    end_port: int | None = None


@dataclass(frozen=True)
class Rule:
    """One ingress or egress rule. Empty `peers` = every peer; empty `ports` = every port."""

    peers: tuple[Peer, ...] = ()
    ports: tuple[PortSpec, ...] = ()


class Direction(str, enum.Enum):
    INGRESS = "Ingress"
    EGRESS = "Egress"

    @property
    def short(self) -> str:
        return "in" if self is Direction.INGRESS else "eg"


@dataclass(frozen=True)
class Policy:
    namespace: str
    name: str
    pod_selector: Selector = EVERYTHING
    types: frozenset[Direction] = frozenset({Direction.INGRESS})
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def rules(self, direction: Direction) -> tuple[Rule, ...]:
        return self.ingress if direction is Direction.INGRESS else self.egress


@dataclass(frozen=True)
class ContainerPort:
    name: str
    number: int
    protocol: Protocol = Protocol.TCP


@dataclass(frozen=True)
class Pod:
    """A pod that has an address. Host-network and finished pods are never made into one."""

    namespace: str
    name: str
    ips: tuple[str, ...]
    labels: Labels = ()
    node: str = ""
    ports: tuple[ContainerPort, ...] = ()
    created: str = ""  # metadata.creationTimestamp (RFC 3339, so it sorts as text)
    label_map: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "label_map", dict(self.labels))

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def named_port(self, name: str, protocol: Protocol) -> int | None:
        """The number of this pod's container port `name` with `protocol`, if it has one."""
        for p in self.ports:
            if p.name == name and p.protocol is protocol:
                return p.number
        return None


@dataclass(frozen=True)
class Namespace:
    name: str
    labels: Labels = ()
    label_map: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "label_map", dict(self.labels))


@dataclass
class Cluster:
    """What the agent knows: every namespace, pod and policy, keyed by name."""

    namespaces: dict[str, Namespace] = field(default_factory=dict)
    pods: dict[str, Pod] = field(default_factory=dict)  # "ns/name"
    policies: dict[str, Policy] = field(default_factory=dict)  # "ns/name"

    @classmethod
    def of(cls, namespaces=(), pods=(), policies=()) -> Cluster:
        return cls({n.name: n for n in namespaces}, {p.key: p for p in pods}, {p.key: p for p in policies})
