"""Kubernetes object JSON -> the policy model, every field checked against a bound.

Input comes from the API server and is treated as hostile: wrong types, absurd sizes and
unknown enum values raise `InvalidObject` (a `UsageError`) instead of escaping as
`KeyError`/`TypeError`. One exception, on purpose: inside a policy, a rule that does not
parse is dropped and reported in `Parsed.errors` while the rest of the policy stands.
Rules only ever allow, so dropping one allows less: a bad rule fails closed, where
rejecting the whole policy would open the pods it isolates.

Defaults are the API server's (networking/v1 defaulting): protocol TCP; policyTypes
absent -> Ingress, plus Egress if the egress list is non-empty.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from meshnet.errors import UsageError
from meshnet.k8s.policy.model import (
    ContainerPort,
    Direction,
    IPBlock,
    Namespace,
    Operator,
    Peer,
    Pod,
    Policy,
    PortSpec,
    Protocol,
    Requirement,
    Rule,
    Selector,
    labels_of,
)

MAX_NAME = 253  # DNS subdomain
MAX_LABEL_KEY = 317  # prefix (253) + "/" + name (63)
MAX_LABEL_VALUE = 63
MAX_LABELS = 256
MAX_LIST = 1024  # rules, peers, ports, expressions, values, container ports
MAX_EXCEPTS = 256
PORT_NAME = re.compile(r"^(?=.*[a-z])[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$")  # IANA_SVC_NAME, 1-15 chars
TERMINAL_PHASES = ("Succeeded", "Failed")  # their addresses may already belong to a new pod


class InvalidObject(UsageError):
    """An API object we cannot use as it is."""


@dataclass(frozen=True)
class Parsed:
    policy: Policy
    errors: tuple[str, ...] = ()


def _dict(value: Any, what: str, *, optional: bool = True) -> dict:
    if value is None and optional:
        return {}
    if not isinstance(value, dict):
        raise InvalidObject(f"{what}: expected an object")
    return value


def _list(value: Any, what: str, bound: int = MAX_LIST) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidObject(f"{what}: expected a list")
    if len(value) > bound:
        raise InvalidObject(f"{what}: more than {bound} entries")
    return value


def _str(value: Any, what: str, bound: int = MAX_NAME, *, empty: bool = False) -> str:
    if not isinstance(value, str) or len(value) > bound or (not value and not empty):
        raise InvalidObject(f"{what}: expected a string of 1 to {bound} characters")
    return value


def _meta(obj: Any) -> tuple[dict, str, str]:
    meta = _dict(_dict(obj, "object", optional=False).get("metadata"), "metadata", optional=False)
    name = _str(meta.get("name"), "metadata.name")
    namespace = meta.get("namespace")
    return meta, name, ("" if namespace is None else _str(namespace, "metadata.namespace"))


def parse_labels(value: Any, what: str = "labels") -> dict[str, str]:
    labels = _dict(value, what)
    if len(labels) > MAX_LABELS:
        raise InvalidObject(f"{what}: more than {MAX_LABELS} labels")
    for key, val in labels.items():
        _str(key, f"{what} key", MAX_LABEL_KEY)
        _str(val, f"{what}[{key}]", MAX_LABEL_VALUE, empty=True)
    return labels


def parse_selector(value: Any, what: str) -> Selector:
    sel = _dict(value, what)
    exprs = []
    for i, raw in enumerate(_list(sel.get("matchExpressions"), f"{what}.matchExpressions")):
        raw = _dict(raw, f"{what}.matchExpressions[{i}]", optional=False)
        try:
            op = Operator(raw.get("operator"))
        except ValueError:
            raise InvalidObject(f"{what}.matchExpressions[{i}]: unknown operator {str(raw.get('operator'))[:40]!r}") from None
        values = frozenset(_str(v, f"{what} value", MAX_LABEL_VALUE, empty=True) for v in _list(raw.get("values"), f"{what} values"))
        if op in (Operator.IN, Operator.NOT_IN) and not values:
            raise InvalidObject(f"{what}.matchExpressions[{i}]: {op.value} needs values")
        if op in (Operator.EXISTS, Operator.DOES_NOT_EXIST) and values:
            raise InvalidObject(f"{what}.matchExpressions[{i}]: {op.value} takes no values")
        exprs.append(Requirement(_str(raw.get("key"), f"{what} key", MAX_LABEL_KEY), op, values))
    return Selector(labels_of(parse_labels(sel.get("matchLabels"), f"{what}.matchLabels")), tuple(exprs))


def _network(value: Any, what: str):
    try:
        return ipaddress.ip_network(_str(value, what, 64), strict=False)
    except ValueError:
        raise InvalidObject(f"{what}: not a CIDR") from None


def parse_peer(raw: Any, what: str) -> Peer:
    raw = _dict(raw, what, optional=False)
    block = raw.get("ipBlock")
    if block is not None:
        if raw.get("podSelector") is not None or raw.get("namespaceSelector") is not None:
            raise InvalidObject(f"{what}: ipBlock cannot be combined with a selector")
        block = _dict(block, f"{what}.ipBlock", optional=False)
        cidr = _network(block.get("cidr"), f"{what}.ipBlock.cidr")
        excepts = tuple(_network(e, f"{what}.ipBlock.except") for e in _list(block.get("except"), f"{what}.ipBlock.except", MAX_EXCEPTS))
        for e in excepts:
            if e.version != cidr.version or not e.subnet_of(cidr):  # type: ignore[arg-type]
                raise InvalidObject(f"{what}.ipBlock.except: {e} is not inside {cidr}")
        return Peer(ip_block=IPBlock(cidr, excepts))
    pods = raw.get("podSelector")
    namespaces = raw.get("namespaceSelector")
    if pods is None and namespaces is None:
        raise InvalidObject(f"{what}: needs podSelector, namespaceSelector or ipBlock")
    return Peer(
        pods=None if pods is None else parse_selector(pods, f"{what}.podSelector"),
        namespaces=None if namespaces is None else parse_selector(namespaces, f"{what}.namespaceSelector"),
    )


def parse_port(raw: Any, what: str) -> PortSpec:
    raw = _dict(raw, what, optional=False)
    try:
        protocol = Protocol(raw.get("protocol") or "TCP")
    except ValueError:
        raise InvalidObject(f"{what}: unknown protocol {str(raw.get('protocol'))[:20]!r}") from None
    port, end = raw.get("port"), raw.get("endPort")
    if isinstance(port, bool) or isinstance(end, bool):
        raise InvalidObject(f"{what}: port must be a number or a name")
    if port is None:
        if end is not None:
            raise InvalidObject(f"{what}: endPort needs port")
        return PortSpec(protocol)
    if isinstance(port, str):
        if not PORT_NAME.match(port):
            raise InvalidObject(f"{what}: {port[:20]!r} is not a port name")
        if end is not None:
            raise InvalidObject(f"{what}: endPort needs a numeric port")
        return PortSpec(protocol, port)
    if not isinstance(port, int) or not 1 <= port <= 65535:
        raise InvalidObject(f"{what}: port out of 1-65535")
    if end is not None and (not isinstance(end, int) or not port <= end <= 65535):
        raise InvalidObject(f"{what}: endPort must be between port and 65535")
    return PortSpec(protocol, port, end)


def parse_rule(raw: Any, what: str, peers_key: str) -> Rule:
    raw = _dict(raw, what, optional=False)
    peers = tuple(parse_peer(p, f"{what}.{peers_key}[{i}]") for i, p in enumerate(_list(raw.get(peers_key), f"{what}.{peers_key}")))
    ports = tuple(parse_port(p, f"{what}.ports[{i}]") for i, p in enumerate(_list(raw.get("ports"), f"{what}.ports")))
    return Rule(peers, ports)


def parse_policy(obj: Any) -> Parsed:
    """A NetworkPolicy object. Raises InvalidObject if it cannot select pods at all."""
    _, name, namespace = _meta(obj)
    if not namespace:
        raise InvalidObject(f"networkpolicy {name}: no namespace")
    spec = _dict(obj.get("spec"), "spec", optional=False)
    selector = parse_selector(spec.get("podSelector"), "spec.podSelector")
    errors: list[str] = []
    rules: dict[Direction, list[Rule]] = {Direction.INGRESS: [], Direction.EGRESS: []}
    for direction, key, peers_key in ((Direction.INGRESS, "ingress", "from"), (Direction.EGRESS, "egress", "to")):
        for i, raw in enumerate(_list(spec.get(key), f"spec.{key}")):
            try:
                rules[direction].append(parse_rule(raw, f"spec.{key}[{i}]", peers_key))
            except InvalidObject as exc:
                errors.append(f"{exc.message} (rule dropped)")
    raw_types = _list(spec.get("policyTypes"), "spec.policyTypes", 2)
    if raw_types:
        try:
            types = frozenset(Direction(t) for t in raw_types)
        except ValueError:
            raise InvalidObject(f"networkpolicy {namespace}/{name}: unknown policyTypes") from None
    else:
        types = frozenset({Direction.INGRESS} | ({Direction.EGRESS} if spec.get("egress") else set()))
    policy = Policy(namespace, name, selector, types, tuple(rules[Direction.INGRESS]), tuple(rules[Direction.EGRESS]))
    return Parsed(policy, tuple(errors))


def parse_namespace(obj: Any) -> Namespace:
    meta, name, _ = _meta(obj)
    return Namespace(name, labels_of(parse_labels(meta.get("labels"), "metadata.labels")))


def parse_pod(obj: Any) -> Pod | None:
    """A Pod object, or None if policy has nothing to say about it: no address yet, host
    network (its address is the node's), or finished (its address may be reused)."""
    meta, name, namespace = _meta(obj)
    if not namespace:
        raise InvalidObject(f"pod {name}: no namespace")
    spec = _dict(obj.get("spec"), "spec")
    status = _dict(obj.get("status"), "status")
    if spec.get("hostNetwork") is True or status.get("phase") in TERMINAL_PHASES:
        return None
    ips: list[str] = []
    raw_ips = [e.get("ip") if isinstance(e, dict) else None for e in _list(status.get("podIPs"), "status.podIPs", 8)] + [status.get("podIP")]
    for raw in raw_ips:
        if raw is None or raw == "":
            continue
        try:
            ip = str(ipaddress.ip_address(_str(raw, "status.podIP", 64)))
        except ValueError:
            raise InvalidObject(f"pod {namespace}/{name}: bad address") from None
        if ip not in ips:
            ips.append(ip)
    if not ips:
        return None
    ports = []
    for c, container in enumerate(_list(spec.get("containers"), "spec.containers", 256)):
        for i, raw in enumerate(_list(_dict(container, f"spec.containers[{c}]").get("ports"), f"spec.containers[{c}].ports")):
            raw = _dict(raw, f"spec.containers[{c}].ports[{i}]", optional=False)
            number = raw.get("containerPort")
            if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= 65535:
                raise InvalidObject(f"pod {namespace}/{name}: containerPort out of 1-65535")
            pname = raw.get("name")
            if pname is None:
                continue  # an unnamed port cannot be referred to by name
            try:
                protocol = Protocol(raw.get("protocol") or "TCP")
            except ValueError:
                raise InvalidObject(f"pod {namespace}/{name}: unknown port protocol") from None
            ports.append(ContainerPort(_str(pname, "port name", 15), number, protocol))
    if len(ports) > MAX_LIST:
        raise InvalidObject(f"pod {namespace}/{name}: more than {MAX_LIST} named ports")
    node = spec.get("nodeName")
    created = meta.get("creationTimestamp")
    return Pod(
        namespace, name, tuple(ips), labels_of(parse_labels(meta.get("labels"), "metadata.labels")),
        "" if node is None else _str(node, "spec.nodeName"), tuple(ports),
        "" if created is None else _str(created, "metadata.creationTimestamp", 64),
    )
