"""A synthetic cluster for the NetworkPolicy benchmarks: namespaces, pods and policies as
the API serves them (JSON), shaped like a real one rather than a worst case.

- `namespaces` namespaces (team=<n % 5>), `pods` pods spread round-robin over `nodes`
  nodes; a pod is a replica of one of `apps` apps (app=app-<k>, tier=web|api|db by app),
  with named container ports http (8080) and metrics (9090).
- `policies` policies, cycling through the shapes people write: a default deny per
  namespace, allow app-a -> app-b on a port, allow from a namespace selector, allow
  from a tier across namespaces (both selectors in one peer), egress to a CIDR with an
  except, egress DNS. Pod addresses are 10.32.<node>.<n>, node by node.
"""

from __future__ import annotations

import random


def synthetic_cluster(*, pods: int = 2000, policies: int = 500, nodes: int = 40, namespaces: int = 20, apps: int = 200, seed: int = 1,
                      prefix: str = "10.32"):
    rng = random.Random(seed)
    nss = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"ns-{i}", "labels": {"kubernetes.io/metadata.name": f"ns-{i}", "team": str(i % 5)}}}
           for i in range(namespaces)]
    tiers = ("web", "api", "db")
    pod_objs = []
    per_node = [0] * nodes
    for i in range(pods):
        node = i % nodes
        per_node[node] += 1
        app = rng.randrange(apps)
        ip = f"{prefix}.{node}.{per_node[node]}"
        pod_objs.append({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"app-{app}-{i}", "namespace": f"ns-{app % namespaces}", "labels": {"app": f"app-{app}", "tier": tiers[app % 3]},
                         "creationTimestamp": "2024-01-01T00:00:00Z"},
            "spec": {"nodeName": f"node-{node}", "containers": [{"name": "main", "ports": [{"name": "http", "containerPort": 8080}, {"name": "metrics", "containerPort": 9090}]}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
        })
    pol_objs = []
    for i in range(policies):
        ns = f"ns-{i % namespaces}"
        app = (i % (apps // namespaces)) * namespaces + i % namespaces  # an app of this namespace
        src = rng.randrange(apps)
        shape = i % 6 if i >= namespaces else -1
        sel = {"matchLabels": {"app": f"app-{app}"}}
        if shape == -1:
            spec = {"podSelector": {}, "policyTypes": ["Ingress"]}
        elif shape == 0:
            spec = {"podSelector": sel, "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": f"app-{src}"}}}], "ports": [{"port": 8080}]}]}
        elif shape == 1:
            spec = {"podSelector": sel, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": str(i % 5)}}}], "ports": [{"port": "http"}]}]}
        elif shape == 2:
            spec = {"podSelector": sel, "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"tier": "web"}}}],
                                                     "ports": [{"protocol": "TCP", "port": 8000, "endPort": 8100}]}]}
        elif shape == 3:
            spec = {"podSelector": sel, "policyTypes": ["Egress"],
                    "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.32.0.0/12"]}}], "ports": [{"port": 443}]}]}
        elif shape == 4:
            spec = {"podSelector": sel, "policyTypes": ["Egress"], "egress": [{"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]},
                                                                               {"to": [{"podSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["api", "db"]}]}}]}]}
        else:
            spec = {"podSelector": {"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["db"]}]},
                    "ingress": [{"from": [{"podSelector": {}}], "ports": [{"port": "metrics"}]}]}
        pol_objs.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": f"np-{i}", "namespace": ns}, "spec": spec})
    return nss, pod_objs, pol_objs


def local_ips(pod_objs, node: int) -> list[str]:
    return [p["status"]["podIP"] for p in pod_objs if p["spec"]["nodeName"] == f"node-{node}"]
