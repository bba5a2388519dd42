"""Kubernetes integration (layer 4): the API client and informer, the node watch, the pod network.

    client    `KubeClient`: get/list/watch/patch of any kind, in-cluster config
    informer  `Informer`: list+watch with a cache, resume, 410 relist, backoff
    nodes     `NodeAgent`: reclaim deleted nodes' address space, NetworkUnavailable
    podnet    `PodNetwork`: the pods' gateway on the bridge, routes, masquerade, sysctls
    policy/   NetworkPolicy: the sans-IO compiler to nftables and the agent that enforces it
    service   `KubeService`: what the daemon builds; `ports.py` names what it is handed
"""
