"""meshnet's CNI plugin (`meshnet-cni`) and its Kubernetes helpers.

- `spec`: the CNI protocol without I/O (versions, requests, results, errors);
- `plugin`: ADD / DEL / CHECK / VERSION / STATUS / GC against the router's local API;
- `kube`: peer discovery for the DaemonSet (environment, file, the API's node list).
"""
