"""Hypothesis strategies for NetworkPolicy tests: clusters as the API serves them (JSON).

Small vocabularies on purpose: few label keys and values, few ports and addresses, so
that selectors match something, named ports resolve, ipBlocks cover pods and excepts
bite. Every object is one the API server would accept (it validates before we see it).

The cluster: namespaces x, y, z; pods on nodes n1 and n2 (a pod's node follows from its
address, so an address shared by two pods is on one node); node addresses 192.168.0.1
and .2; external addresses in 172.16.0.0/24.
"""

from __future__ import annotations

from hypothesis import strategies as st

NAMESPACES = ("x", "y", "z")
LABEL_KEYS = ("app", "tier")
LABEL_VALUES = ("a", "b", "c")
NS_KEYS = ("team", "env")
POD_IPS = tuple(f"10.32.0.{i}" for i in range(1, 9))
NODE_IPS = {"n1": "192.168.0.1", "n2": "192.168.0.2"}
EXTERNAL_IPS = ("172.16.0.5", "172.16.0.130", "172.16.0.200")
PORT_NAMES = ("http", "dns", "metrics")
PORTS = (53, 80, 81, 8080)
PROTOCOLS = ("TCP", "UDP", "SCTP")


def node_of(ip: str) -> str:
    return "n1" if int(ip.rsplit(".", 1)[1]) % 2 else "n2"


labels = st.dictionaries(st.sampled_from(LABEL_KEYS), st.sampled_from(LABEL_VALUES), min_size=1, max_size=2)


@st.composite
def selector(draw, keys=LABEL_KEYS):
    """Empty (everything) a third of the time, so that policies select and peers match."""
    out: dict = {}
    if draw(st.integers(0, 2)) == 0:
        return out
    if draw(st.booleans()):
        out["matchLabels"] = draw(st.dictionaries(st.sampled_from(keys), st.sampled_from(LABEL_VALUES), max_size=2))
    if draw(st.booleans()):
        exprs = []
        for _ in range(draw(st.integers(1, 2))):
            op = draw(st.sampled_from(("In", "NotIn", "Exists", "DoesNotExist")))
            expr = {"key": draw(st.sampled_from(keys)), "operator": op}
            if op in ("In", "NotIn"):
                expr["values"] = sorted(draw(st.sets(st.sampled_from(LABEL_VALUES), min_size=1)))
            exprs.append(expr)
        out["matchExpressions"] = exprs
    return out


CIDRS = ("10.32.0.0/29", "10.32.0.0/24", "10.32.0.4/30", "172.16.0.0/24", "172.16.0.128/25", "0.0.0.0/0", "10.32.0.3/32", "fd00::/64")
EXCEPTS = {
    "10.32.0.0/29": ("10.32.0.2/31", "10.32.0.4/32"),
    "10.32.0.0/24": ("10.32.0.0/29", "10.32.0.6/32"),
    "10.32.0.4/30": ("10.32.0.5/32",),
    "172.16.0.0/24": ("172.16.0.128/25",),
    "172.16.0.128/25": ("172.16.0.192/26",),
    "0.0.0.0/0": ("10.32.0.0/24", "192.168.0.0/16"),
    "10.32.0.3/32": (),
    "fd00::/64": ("fd00::/80",),
}


@st.composite
def peer(draw):
    kind = draw(st.sampled_from(("pod", "ns", "both", "ip")))
    if kind == "ip":
        cidr = draw(st.sampled_from(CIDRS))
        block = {"cidr": cidr}
        excepts = draw(st.lists(st.sampled_from(EXCEPTS[cidr]), unique=True, max_size=2)) if EXCEPTS[cidr] else []
        if excepts:
            block["except"] = excepts
        return {"ipBlock": block}
    out = {}
    if kind in ("pod", "both"):
        out["podSelector"] = draw(selector())
    if kind in ("ns", "both"):
        out["namespaceSelector"] = draw(selector(NS_KEYS + ("kubernetes.io/metadata.name",)))
    return out


@st.composite
def port_entry(draw):
    out: dict = {}
    proto = draw(st.sampled_from((None,) + PROTOCOLS))
    if proto:
        out["protocol"] = proto
    kind = draw(st.sampled_from(("none", "number", "range", "name")))
    if kind == "number":
        out["port"] = draw(st.sampled_from(PORTS))
    elif kind == "range":
        low = draw(st.sampled_from(PORTS))
        out["port"] = low
        out["endPort"] = draw(st.sampled_from([p for p in PORTS + (65535,) if p >= low]))
    elif kind == "name":
        out["port"] = draw(st.sampled_from(PORT_NAMES))
    return out


@st.composite
def rule(draw, peers_key):
    out: dict = {}
    peers = draw(st.one_of(st.none(), st.lists(peer(), max_size=3), st.lists(peer(), min_size=1, max_size=3)))
    if peers is not None:
        out[peers_key] = peers
    ports = draw(st.one_of(st.none(), st.lists(port_entry(), max_size=3)))
    if ports is not None:
        out["ports"] = ports
    return out


@st.composite
def policy(draw, namespace, name):
    spec: dict = {"podSelector": draw(selector())}
    for key, peers_key in (("ingress", "from"), ("egress", "to")):
        rules = draw(st.one_of(st.none(), st.lists(rule(peers_key), max_size=3), st.lists(rule(peers_key), min_size=1, max_size=3)))
        if rules is not None:
            spec[key] = rules
    types = draw(st.sampled_from((None, ["Ingress"], ["Egress"], ["Ingress", "Egress"])))
    if types is not None:
        spec["policyTypes"] = types
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": name, "namespace": namespace}, "spec": spec}


@st.composite
def pod(draw, namespace, name, ip):
    ports = []
    for pname in draw(st.lists(st.sampled_from(PORT_NAMES), unique=True, max_size=2)):
        entry = {"name": pname, "containerPort": draw(st.sampled_from(PORTS))}
        proto = draw(st.sampled_from((None,) + PROTOCOLS))
        if proto:
            entry["protocol"] = proto
        ports.append(entry)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": draw(labels), "creationTimestamp": f"2024-01-01T00:00:{draw(st.integers(0, 9)):02d}Z"},
        "spec": {"nodeName": node_of(ip), "containers": [{"name": "c", "ports": ports}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    }


@st.composite
def cluster(draw):
    namespaces = []
    for n in NAMESPACES:
        lab = draw(st.dictionaries(st.sampled_from(NS_KEYS), st.sampled_from(LABEL_VALUES), max_size=2))
        lab["kubernetes.io/metadata.name"] = n
        namespaces.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n, "labels": lab}})
    ips = draw(st.lists(st.sampled_from(POD_IPS), min_size=4, max_size=8))  # repeats: two pods claim one address
    pods = [draw(pod(draw(st.sampled_from(NAMESPACES)), f"p{i}", ip)) for i, ip in enumerate(ips)]
    policies = []
    for i in range(draw(st.integers(1, 5))):
        policies.append(draw(policy(draw(st.sampled_from(NAMESPACES)), f"np{i}")))
    return namespaces, pods, policies


ADDRESSES = POD_IPS + tuple(NODE_IPS.values()) + EXTERNAL_IPS


@st.composite
def flow(draw):
    src = draw(st.sampled_from(ADDRESSES))
    dst = draw(st.sampled_from([a for a in ADDRESSES if a != src]))
    proto = draw(st.sampled_from(PROTOCOLS + ("ICMP",)))
    port = None if proto == "ICMP" else draw(st.sampled_from(PORTS + (82, 65535)))
    return src, dst, proto, port
