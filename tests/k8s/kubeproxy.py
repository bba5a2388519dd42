"""The rules kube-proxy writes for a Service, in its iptables mode and its nftables mode.

kube-proxy cannot be installed here, so the conformance test writes what it would write on
every node, with the shapes of kube-proxy 1.29+ (chain names from a hash of the service
port, the 0x4000 masquerade mark, `--cluster-cidr` set so traffic from outside the pod
range to a ClusterIP is masqueraded, NodePort through KUBE-EXT / external- chains with
masquerade for externalTrafficPolicy Cluster). Only ClusterIP and NodePort for TCP, which
is what the conformance checks use.

iptables mode: `iptables_restore(svc)` is `iptables-restore --noflush` input (iptables here
is the nf_tables backend, as on current distributions), `iptables_cleanup(svc)` the
commands that remove it again. nftables mode: `nft_script(svc)` replaces `table ip
kube-proxy` whole, `nft_cleanup()` deletes it (nft 1.0.6 names `dstnat` only on prerouting, so
the output chains carry its value, -100, and dstnat + 10 as -90).
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Service:
    namespace: str
    name: str
    port_name: str
    cluster_ip: str
    port: int
    node_port: int
    endpoints: tuple[tuple[str, int], ...]  # (pod IP, target port)
    cluster_cidr: str  # kube-proxy --cluster-cidr
    service_cidr: str = "10.96.0.0/12"

    @property
    def svc_port(self) -> str:
        return f"{self.namespace}/{self.name}:{self.port_name}"


def _hash(text: str, n: int) -> str:
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:n]


def svc_chain(svc: Service) -> str:
    return "KUBE-SVC-" + _hash(svc.svc_port + "tcp", 16)


def ext_chain(svc: Service) -> str:
    return "KUBE-EXT-" + _hash(svc.svc_port + "tcp", 16)


def sep_chain(svc: Service, ip: str, port: int) -> str:
    return "KUBE-SEP-" + _hash(svc.svc_port + "tcp" + f"{ip}:{port}", 16)


def iptables_restore(svc: Service) -> str:
    svc_c, ext_c = svc_chain(svc), ext_chain(svc)
    seps = [(sep_chain(svc, ip, port), ip, port) for ip, port in svc.endpoints]
    c = f'"{svc.svc_port} cluster IP"'
    nat = [
        "*nat",
        ":KUBE-SERVICES - [0:0]", ":KUBE-POSTROUTING - [0:0]", ":KUBE-MARK-MASQ - [0:0]", ":KUBE-NODEPORTS - [0:0]",
        f":{svc_c} - [0:0]", f":{ext_c} - [0:0]", *[f":{s} - [0:0]" for s, _, _ in seps],
        '-I PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-I OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-I POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
        "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000",
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
        "-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully',
        f"-A KUBE-SERVICES -d {svc.cluster_ip}/32 -p tcp -m comment --comment {c} -m tcp --dport {svc.port} -j {svc_c}",
        '-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" '
        "-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS",
        f'-A KUBE-NODEPORTS -p tcp -m comment --comment "{svc.svc_port}" -m tcp --dport {svc.node_port} -j {ext_c}',
        f'-A {ext_c} -m comment --comment "masquerade traffic for {svc.svc_port} external destinations" -j KUBE-MARK-MASQ',
        f"-A {ext_c} -j {svc_c}",
        f"-A {svc_c} ! -s {svc.cluster_cidr} -d {svc.cluster_ip}/32 -p tcp -m comment --comment {c} -m tcp --dport {svc.port} -j KUBE-MARK-MASQ",
    ]
    for n, (sep, ip, port) in enumerate(seps):
        left = len(seps) - n
        stat = f"-m statistic --mode random --probability {1 / left:.11f} " if left > 1 else ""
        nat.append(f'-A {svc_c} -m comment --comment "{svc.svc_port} -> {ip}:{port}" {stat}-j {sep}')
    for sep, ip, port in seps:
        nat += [f'-A {sep} -s {ip}/32 -m comment --comment "{svc.svc_port}" -j KUBE-MARK-MASQ',
                f'-A {sep} -p tcp -m comment --comment "{svc.svc_port}" -m tcp -j DNAT --to-destination {ip}:{port}']
    nat.append("COMMIT")
    filt = [
        "*filter",
        ":KUBE-FORWARD - [0:0]", ":KUBE-SERVICES - [0:0]", ":KUBE-EXTERNAL-SERVICES - [0:0]", ":KUBE-NODEPORTS - [0:0]",
        ":KUBE-PROXY-FIREWALL - [0:0]",
        '-I INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL',
        '-I INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS',
        '-I INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES',
        '-I FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL',
        '-I FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD',
        '-I FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-I FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES',
        '-I OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL',
        '-I OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A KUBE-FORWARD -m conntrack --ctstate INVALID -m comment --comment "kubernetes forwarding rules" -j DROP',
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT',
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT',
        "COMMIT",
    ]
    return "\n".join(nat + filt) + "\n"


def iptables_cleanup(svc: Service) -> list[list[str]]:
    """iptables commands that take the rules out again (each may fail harmlessly)."""
    cmds = [
        ["iptables", "-t", "nat", "-D", "PREROUTING", "-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES"],
        ["iptables", "-t", "nat", "-D", "OUTPUT", "-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES"],
        ["iptables", "-t", "nat", "-D", "POSTROUTING", "-m", "comment", "--comment", "kubernetes postrouting rules", "-j", "KUBE-POSTROUTING"],
        ["iptables", "-t", "filter", "-D", "INPUT", "-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment", "kubernetes load balancer firewall", "-j", "KUBE-PROXY-FIREWALL"],
        ["iptables", "-t", "filter", "-D", "INPUT", "-m", "comment", "--comment", "kubernetes health check service ports", "-j", "KUBE-NODEPORTS"],
        ["iptables", "-t", "filter", "-D", "INPUT", "-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment", "kubernetes externally-visible service portals", "-j", "KUBE-EXTERNAL-SERVICES"],
        ["iptables", "-t", "filter", "-D", "FORWARD", "-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment", "kubernetes load balancer firewall", "-j", "KUBE-PROXY-FIREWALL"],
        ["iptables", "-t", "filter", "-D", "FORWARD", "-m", "comment", "--comment", "kubernetes forwarding rules", "-j", "KUBE-FORWARD"],
        ["iptables", "-t", "filter", "-D", "FORWARD", "-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES"],
        ["iptables", "-t", "filter", "-D", "FORWARD", "-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment", "kubernetes externally-visible service portals", "-j", "KUBE-EXTERNAL-SERVICES"],
        ["iptables", "-t", "filter", "-D", "OUTPUT", "-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment", "kubernetes load balancer firewall", "-j", "KUBE-PROXY-FIREWALL"],
        ["iptables", "-t", "filter", "-D", "OUTPUT", "-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES"],
    ]
    nat_chains = ["KUBE-SERVICES", "KUBE-POSTROUTING", "KUBE-MARK-MASQ", "KUBE-NODEPORTS", svc_chain(svc), ext_chain(svc),
                  *[sep_chain(svc, ip, port) for ip, port in svc.endpoints]]
    filter_chains = ["KUBE-FORWARD", "KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-NODEPORTS", "KUBE-PROXY-FIREWALL"]
    for table, chains in (("nat", nat_chains), ("filter", filter_chains)):
        cmds += [["iptables", "-t", table, "-F", ch] for ch in chains]
        cmds += [["iptables", "-t", table, "-X", ch] for ch in chains]
    return cmds


def nft_script(svc: Service, node_ips: list[str]) -> str:
    h = _hash(svc.svc_port + "tcp", 8)
    svc_c = f"service-{h}-{svc.namespace}/{svc.name}/tcp/{svc.port_name}"
    ext_c = f"external-{h}-{svc.namespace}/{svc.name}/tcp/{svc.port_name}"
    eps = [(f"endpoint-{_hash(svc.svc_port + f'{ip}:{port}', 8)}-{svc.namespace}/{svc.name}/tcp/{svc.port_name}__{ip}/{port}", ip, port)
           for ip, port in svc.endpoints]
    vmap = ", ".join(f'{n} : goto {c}' for n, (c, _, _) in enumerate(eps))
    lines = [
        "table ip kube-proxy", "delete table ip kube-proxy",
        "table ip kube-proxy {",
        '  comment "rules for kube-proxy"',
        '  set cluster-ips { type ipv4_addr; comment "Active ClusterIPs"; }',
        '  set nodeport-ips { type ipv4_addr; comment "IPs that accept NodePort traffic"; }',
        '  map service-ips { type ipv4_addr . inet_proto . inet_service : verdict; comment "ClusterIP, ExternalIP and LoadBalancer IP traffic"; }',
        '  map service-nodeports { type inet_proto . inet_service : verdict; comment "NodePort traffic"; }',
        "  chain mark-for-masquerade { meta mark set meta mark | 0x4000 }",
        "  chain masquerading { meta mark & 0x4000 == 0 return; meta mark set meta mark ^ 0x4000; masquerade fully-random }",
        f'  chain cluster-ips-check {{ ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"; '
        f'ip daddr {{ {svc.service_cidr} }} drop comment "Drop traffic to unallocated ClusterIPs" }}',
    ]
    for chain, ip, port in eps:
        lines.append(f'  chain {chain} {{ ip saddr {ip} jump mark-for-masquerade; meta l4proto tcp dnat to {ip}:{port} }}')
    lines += [
        f'  chain {svc_c} {{ ip daddr {svc.cluster_ip} tcp dport {svc.port} ip saddr != {svc.cluster_cidr} jump mark-for-masquerade; '
        f"numgen random mod {len(eps)} vmap {{ {vmap} }} }}",
        f'  chain {ext_c} {{ jump mark-for-masquerade; goto {svc_c} }}',
        "  chain services { ip daddr . meta l4proto . th dport vmap @service-ips; ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports }",
        "  chain filter-prerouting { type filter hook prerouting priority dstnat - 10; policy accept; }",
        "  chain filter-input { type filter hook input priority -110; policy accept; }",
        "  chain filter-forward { type filter hook forward priority -110; policy accept; }",
        "  chain filter-output { type filter hook output priority -110; policy accept; }",
        "  chain filter-output-post-dnat { type filter hook output priority -90; policy accept; ct state new jump cluster-ips-check }",
        "  chain nat-prerouting { type nat hook prerouting priority dstnat; policy accept; jump services }",
        "  chain nat-output { type nat hook output priority -100; policy accept; jump services }",
        "  chain nat-postrouting { type nat hook postrouting priority srcnat; policy accept; jump masquerading }",
        "}",
        f"add element ip kube-proxy cluster-ips {{ {svc.cluster_ip} }}",
        f"add element ip kube-proxy nodeport-ips {{ {', '.join(node_ips)} }}",
        f'add element ip kube-proxy service-ips {{ {svc.cluster_ip} . tcp . {svc.port} : goto {svc_c} }}',
        f'add element ip kube-proxy service-nodeports {{ tcp . {svc.node_port} : goto {ext_c} }}',
    ]
    # one-line chains: nft wants a ";" after the last statement before the closing brace
    lines = [l[:-2] + "; }" if l.startswith("  chain") and l.endswith(" }") and not l.endswith("; }") else l for l in lines]
    return "\n".join(lines) + "\n"


def nft_cleanup() -> str:
    return "table ip kube-proxy\ndelete table ip kube-proxy\n"
