"""Prometheus metrics: `GET /metrics` on `--metrics-addr` (default 127.0.0.1:6782).

Threading: prometheus_client serves scrapes from its own thread, and router state belongs to
the asyncio loop. So `RouterCollector.collect()` never reads router state itself: it asks
the loop for one snapshot (`asyncio.run_coroutine_threadsafe(snapshot(), loop)`, bounded by
a timeout) and builds every family from that plain dict. The snapshot has the shape of the
API's `GET /status` (see `Router._status`), optionally with

- `"ipam"`: the allocator's status report (`meshnet/ipam/status.py`);
- `"peer_stats"`: `{peer id (int): {"rx_frames", "rx_bytes", "tx_frames", "tx_bytes"}}`
  from the data plane, where it counts per peer.

`families(snapshot)` is a pure function, so the metric set is unit-tested without a router
and without HTTP. The names are listed in docs/metrics.md.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)

from meshnet.config import parse_addr
from meshnet.dataplane.modes import PathMode
from meshnet.runtime.policy_metrics import policy_families

log = logging.getLogger("meshnet.metrics")

Snapshot = Callable[[], Awaitable[dict[str, Any]]]
DEFAULT_ADDR = "127.0.0.1:6782"
SNAPSHOT_TIMEOUT = 5.0  # seconds a scrape waits for the loop
MODES = ("fastdp", "sleeve", "encrypted")


def mode_label(mode: str | None) -> str:
    """fastdp / sleeve / encrypted from a PathMode value; '' when not connected."""
    try:
        return PathMode(mode).label
    except ValueError:
        return ""


def families(snap: dict[str, Any]) -> list[Metric]:
    """Every metric family, from one router snapshot."""
    out: list[Metric] = []
    router = snap.get("router", {})
    info = InfoMetricFamily("meshnet_router", "This router", labels=[])
    info.add_metric(
        [],
        {
            "name": str(router.get("name", "")),
            "nick": str(router.get("nick", "")),
            "bridge": str(router.get("bridge", "")),
            "pump": "compiled" if (snap.get("dataplane", {}).get("pump") or {}).get("compiled") else "python",
            "encryption": "enabled" if router.get("encrypted") else "disabled",
        },
    )
    out.append(info)
    out.append(GaugeMetricFamily("meshnet_router_uptime_seconds", "Seconds since the router started", value=float(router.get("uptime", 0))))
    out.append(GaugeMetricFamily("meshnet_router_mtu_bytes", "Container MTU on the bridge", value=float(router.get("mtu") or 0)))

    # peers by state and mode
    conns = snap.get("connections", [])
    direct_mode = {c.get("peer"): mode_label(c.get("mode")) for c in conns if c.get("state") == "established"}
    peers = GaugeMetricFamily("meshnet_peers", "Peers in the topology (not this router) by state and mode", labels=["state", "mode"])
    counts: dict[tuple[str, str], int] = {}
    for state in ("reachable", "unreachable"):
        for mode in (*MODES, "relayed", ""):
            if state == "reachable" and mode or state == "unreachable" and not mode:
                counts[(state, mode)] = 0
    for p in snap.get("peers", []):
        if p.get("name") == router.get("name"):
            continue
        if not p.get("reachable"):
            key = ("unreachable", "")
        else:
            key = ("reachable", direct_mode.get(p.get("name")) or "relayed")
        counts[key] = counts.get(key, 0) + 1
    for (state, mode), n in sorted(counts.items()):
        peers.add_metric([state, mode], n)
    out.append(peers)

    # connections by state and mode
    cm = GaugeMetricFamily("meshnet_connections", "Control connections by state and data-plane mode", labels=["state", "mode"])
    ccounts: dict[tuple[str, str], int] = {("established", m): 0 for m in MODES}
    ccounts.update({("connecting", ""): 0, ("retrying", ""): 0})
    for c in conns:
        key = (str(c.get("state", "")), mode_label(c.get("mode")) if c.get("state") == "established" else "")
        ccounts[key] = ccounts.get(key, 0) + 1
    for (state, mode), n in sorted(ccounts.items()):
        cm.add_metric([state, mode], n)
    out.append(cm)

    out += _peer_families(snap, direct_mode)

    # data plane totals and drops
    stats = snap.get("dataplane", {}).get("stats", {}) or {}
    fb = CounterMetricFamily("meshnet_dataplane_bytes", "Bytes through the sleeve pump", labels=["side", "direction"])
    ff = CounterMetricFamily("meshnet_dataplane_frames", "Frames/datagrams through the sleeve pump", labels=["side", "direction"])
    for side in ("tap", "udp"):
        for direction in ("rx", "tx"):
            ff.add_metric([side, direction], float(stats.get(f"{side}_{direction}", 0)))
            fb.add_metric([side, direction], float(stats.get(f"{side}_{direction}_bytes", 0)))
    drops = CounterMetricFamily("meshnet_dataplane_drops", "Frames the data plane dropped, by reason", labels=["reason"])
    for key in sorted(stats):
        if key.startswith("drop_"):
            drops.add_metric([key[5:]], float(stats[key]))
    for key in ("learn_table_full", "learn_over_quota"):  # source MACs not learned (the frame goes on)
        if key in stats:
            drops.add_metric([key], float(stats[key]))
    removed = CounterMetricFamily("meshnet_dataplane_learned_removed", "Learned MACs the sleeve removed, by reason", labels=["reason"])
    for key, reason in (("learned_aged", "aged"), ("learned_evicted", "evicted"), ("unlearned", "moved_here")):
        if key in stats:
            removed.add_metric([reason], float(stats[key]))
    tables = snap.get("dataplane", {}).get("tables") or {}
    macs = GaugeMetricFamily("meshnet_dataplane_macs", "Entries of the sleeve's MAC table, by kind", labels=["kind"])
    if tables:
        macs.add_metric(["gossiped"], float(tables.get("macs", 0) - tables.get("learned", 0)))
        macs.add_metric(["learned"], float(tables.get("learned", 0)))
    out += [fb, ff, drops, removed, macs]
    for key, help_text in (
        ("flood_tx", "Frames flooded to every peer (unknown destination or broadcast)"),
        ("unknown_unicast", "Unicast frames to a MAC no peer announced"),
        ("relayed", "Datagrams relayed for other peers"),
    ):
        out.append(CounterMetricFamily(f"meshnet_dataplane_{key}", help_text, value=float(stats.get(key, 0))))

    # control plane
    counters = snap.get("counters", {})
    out.append(
        CounterMetricFamily(
            "meshnet_handshake_failures", "Control handshakes that failed (any reason)", value=float(counters.get("handshake_failures", 0))
        )
    )
    out.append(
        CounterMetricFamily(
            "meshnet_handshake_wrong_password", "Handshakes refused for a wrong password", value=float(counters.get("wrong_password", 0))
        )
    )
    msgs = CounterMetricFamily("meshnet_mesh_messages", "Control messages", labels=["direction"])
    msgs.add_metric(["in"], float(counters.get("messages_in", 0)))
    msgs.add_metric(["out"], float(counters.get("messages_out", 0)))
    out.append(msgs)
    out.append(GaugeMetricFamily("meshnet_refusals_recent", "Handshake refusals kept for `meshnet status`", value=float(len(snap.get("refusals", [])))))
    out.append(
        CounterMetricFamily(
            "meshnet_protocol_errors", "Established connections closed for a protocol error", value=float(counters.get("protocol_errors", 0))
        )
    )

    out += _health_families(snap.get("health") or {}, snap.get("log_suppressed") or {})
    out += _table_families(snap.get("limits"), snap.get("conflicts"))
    out += _ipam_families(snap.get("ipam"))
    out += policy_families(snap.get("policy"))
    return out


def _peer_families(snap: dict[str, Any], direct_mode: dict[Any, str]) -> list[Metric]:
    """Per peer: its mode (a labelled gauge), heartbeat age, and traffic on each path: the
    sleeve from the pump's per-peer counters, fastdp from the kernel's (nftables counters on
    the VXLAN packets; meshnet/kernel/vxlan_stats.py)."""
    router = snap.get("router", {})
    names = {p.get("id"): (p.get("name", ""), p.get("nick", "")) for p in snap.get("peers", [])}
    mode = GaugeMetricFamily("meshnet_peer_mode", "1 for the data path each peer is reached by now (relayed: through another peer)", labels=["peer", "nick", "mode"])
    for p in snap.get("peers", []):
        if p.get("name") == router.get("name") or not p.get("reachable"):
            continue
        now = direct_mode.get(p.get("name")) or "relayed"
        for m in (*MODES, "relayed"):
            mode.add_metric([p.get("name", ""), p.get("nick", ""), m], float(m == now))
    beat = GaugeMetricFamily("meshnet_peer_heartbeat_age_seconds", "Seconds since anything arrived on the control connection to each peer", labels=["peer", "nick"])
    for c in snap.get("connections", []):
        if c.get("state") == "established" and "heartbeat_age_s" in c:
            beat.add_metric([str(c.get("peer", "")), str(c.get("nick", ""))], float(c["heartbeat_age_s"]))
    pb = CounterMetricFamily("meshnet_peer_bytes", "Bytes of Ethernet frames carried to/from each peer, by data path", labels=["peer", "nick", "direction", "path"])
    pf = CounterMetricFamily("meshnet_peer_frames", "Frames carried to/from each peer, by data path", labels=["peer", "nick", "direction", "path"])
    for pid, st in sorted((snap.get("peer_stats") or {}).items(), key=lambda kv: str(kv[0])):
        name, nick = names.get(pid, names.get(_int(pid), (str(pid), "")))
        for direction in ("rx", "tx"):
            pb.add_metric([name, nick, direction, "sleeve"], float(st.get(f"{direction}_bytes", 0)))
            pf.add_metric([name, nick, direction, "sleeve"], float(st.get(f"{direction}_frames", 0)))
    vxlan = snap.get("vxlan_stats") or {}
    for pid, st in sorted((vxlan.get("peers") or {}).items(), key=lambda kv: str(kv[0])):
        name, nick = names.get(pid, names.get(_int(pid), (str(pid), "")))
        for direction in ("rx", "tx"):
            pb.add_metric([name, nick, direction, "fastdp"], float(st.get(f"{direction}_bytes", 0)))
            pf.add_metric([name, nick, direction, "fastdp"], float(st.get(f"{direction}_packets", 0)))
    vd = CounterMetricFamily("meshnet_vxlan_device_drops", "Drops and errors of the VXLAN device (all fastdp peers together), by kind", labels=["reason"])
    for key, value in sorted((vxlan.get("device") or {}).items()):
        vd.add_metric([key], float(value))
    return [mode, beat, pb, pf, vd]


def _health_families(health: dict[str, Any], suppressed: dict[str, int]) -> list[Metric]:
    """Health, the timer watchdog, and what supervision caught (docs/concepts.md)."""
    out: list[Metric] = [
        GaugeMetricFamily("meshnet_healthy", "1 when the router is healthy (the readiness probe passes)", value=float(bool(health.get("healthy", True)))),
        GaugeMetricFamily(
            "meshnet_timer_watchdog_age_seconds", "How late the router's timer is (0 when on time)", value=float(health.get("timer_age_s", 0))
        ),
        GaugeMetricFamily("meshnet_pump_running", "1 while the sleeve pump's thread runs", value=float(bool(health.get("pump_alive", True)))),
    ]
    jobs = CounterMetricFamily("meshnet_timer_job_failures", "Timer jobs that raised (caught, logged, backed off)", labels=["job"])
    for job, n in sorted((health.get("timer_failures") or {}).items()):
        jobs.add_metric([job], float(n))
    sup = health.get("supervision") or {}
    failures = CounterMetricFamily("meshnet_supervised_failures", "Unexpected exceptions caught by supervision, by task", labels=["task"])
    for task, n in sorted((sup.get("failures") or {}).items()):
        failures.add_metric([task], float(n))
    restarts = CounterMetricFamily("meshnet_supervised_restarts", "Long-lived tasks started again after a failure", labels=["task"])
    for task, n in sorted((sup.get("restarts") or {}).items()):
        restarts.add_metric([task], float(n))
    quiet = CounterMetricFamily("meshnet_log_suppressed", "Log lines not written by the rate limiter, by kind of event", labels=["event"])
    for event, n in sorted(suppressed.items()):
        quiet.add_metric([event], float(n))
    return out + [jobs, failures, restarts, quiet]


def _table_families(limits: dict[str, Any] | None, conflicts: dict[str, Any] | None) -> list[Metric]:
    """Table fill against the limits, what was not stored, and address conflicts."""
    if not isinstance(limits, dict):
        return []
    fill = GaugeMetricFamily("meshnet_table_entries", "Entries in the router's bounded tables", labels=["table"])
    cap = GaugeMetricFamily("meshnet_table_limit", "The limit of each bounded table", labels=["table"])
    for table, have, most in (
        ("peers", "peers", "max_peers"),
        ("endpoints", "endpoints", "max_endpoints"),
        ("local_endpoints", "local_endpoints", "max_peer_endpoints"),
    ):
        fill.add_metric([table], float(limits.get(have, 0)))
        cap.add_metric([table], float(limits.get(most, 0)))
    refused = CounterMetricFamily("meshnet_gossip_not_stored", "Gossiped items not stored (nor forwarded), by reason", labels=["reason"])
    for reason, key in (("endpoint_over_quota", "endpoints_over_quota"), ("endpoint_table_full", "endpoints_table_full"), ("peer_table_full", "peers_table_full")):
        refused.add_metric([reason], float(limits.get(key, 0)))
    conflicts = conflicts or {}
    return [
        fill,
        cap,
        refused,
        GaugeMetricFamily("meshnet_address_conflicts", "MAC and IP addresses two peers claim now", value=float(conflicts.get("current", 0))),
        CounterMetricFamily("meshnet_address_conflicts_detected", "Address conflicts detected since start", value=float(conflicts.get("detected", 0))),
    ]


def _int(value: Any) -> Any:
    try:
        return int(value)
    except (TypeError, ValueError):
        return value


def _ipam_families(ipam: dict[str, Any] | None) -> list[Metric]:
    if not isinstance(ipam, dict):
        return []
    out: list[Metric] = []
    info = InfoMetricFamily("meshnet_ipam", "IP allocation range and state", labels=[])
    info.add_metric([], {"range": str(ipam.get("range", "")), "init": str(ipam.get("init", "")), "state": str(ipam.get("state", ""))})
    out.append(info)
    out.append(GaugeMetricFamily("meshnet_ipam_ready", "1 when this router can hand out addresses", value=float(ipam.get("state") == "ready")))
    local = ipam.get("local") or {}
    out.append(GaugeMetricFamily("meshnet_ipam_ranges", "Ranges of the allocation space this router owns", value=float(local.get("ranges", 0))))
    addrs = GaugeMetricFamily("meshnet_ipam_addresses", "Addresses in the ranges this router owns, by state", labels=["state"])
    addrs.add_metric(["used"], float(local.get("used", 0)))
    addrs.add_metric(["free"], float(local.get("free", 0)))
    out.append(addrs)
    out.append(GaugeMetricFamily("meshnet_ipam_pending_requests", "Allocations waiting for space", value=float(ipam.get("pending", 0))))
    out.append(GaugeMetricFamily("meshnet_ipam_conflicts", "IPAM conflicts (must be 0)", value=float(len(ipam.get("conflicts") or []))))
    returned = (ipam.get("reclaiming") or {}).get("returned") or []
    out.append(GaugeMetricFamily("meshnet_ipam_removed_peers_back", "Peers removed with rmpeer that are reachable again (must be 0: each must reset)", value=float(len(returned))))
    out.append(GaugeMetricFamily("meshnet_ipam_tombstoned", "1 when this peer was removed with rmpeer and must reset", value=float(bool(ipam.get("tombstoned")))))
    peer_size = GaugeMetricFamily("meshnet_ipam_peer_addresses", "Allocation space per owning peer, by state", labels=["peer", "state"])
    peer_ranges = GaugeMetricFamily("meshnet_ipam_peer_ranges", "Ranges per owning peer", labels=["peer", "reachable"])
    for name, p in sorted((ipam.get("peers") or {}).items()):
        peer_size.add_metric([name, "size"], float(p.get("size", 0)))
        peer_size.add_metric([name, "free"], float(p.get("free", 0)))
        peer_ranges.add_metric([name, "true" if p.get("reachable") else "false"], float(len(p.get("ranges") or [])))
    out += [peer_size, peer_ranges]
    return out


class RouterCollector:
    """A custom collector: one loop-thread snapshot per scrape."""

    def __init__(self, take: Callable[[], dict[str, Any]]):
        self._take = take

    def describe(self) -> list[Metric]:
        return []  # no collect() at registration (that would wait on the loop from the loop)

    def collect(self) -> Iterator[Metric]:
        try:
            snap = self._take()
        except Exception as exc:  # noqa: BLE001 - a scrape must not kill the server thread
            log.warning("metrics snapshot failed: %s", exc)
            yield GaugeMetricFamily("meshnet_up", "1 when the router answered the scrape", value=0.0)
            return
        yield GaugeMetricFamily("meshnet_up", "1 when the router answered the scrape", value=1.0)
        yield from families(snap)


class MetricsServer:
    """Serves the collector over HTTP in a daemon thread; start/stop from the loop thread."""

    def __init__(self, addr: str, snapshot: Snapshot, loop: asyncio.AbstractEventLoop | None = None):
        self.addr = parse_addr(addr)
        self._snapshot = snapshot
        self._loop = loop
        self._httpd: Any = None
        self._thread: threading.Thread | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(RouterCollector(self._take))

    @property
    def port(self) -> int | None:
        return self._httpd.server_address[1] if self._httpd is not None else None

    def _take(self) -> dict[str, Any]:
        loop = self._loop
        if loop is None or loop.is_closed():
            raise RuntimeError("the router's loop is not running")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            raise RuntimeError("collect() called on the loop's own thread")
        return asyncio.run_coroutine_threadsafe(self._snapshot(), loop).result(SNAPSHOT_TIMEOUT)

    def start(self) -> bool:
        """Bind and serve; False (logged) if the address cannot be bound: metrics are not
        worth stopping the network for."""
        if self.addr is None:
            return False
        from prometheus_client import start_http_server

        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        host, port = self.addr
        try:
            self._httpd, self._thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            log.error("metrics disabled: cannot listen on %s:%d: %s", host, port, exc.strerror or exc)
            return False
        log.info("metrics on http://%s:%d/metrics", host, self.port)
        return True

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(2)
            self._thread = None
