"""The control plane's shell: TCP control connections around the sans-IO mesh core.

Owns the sockets of every control connection, runs their handshakes (`ControlConnection`),
admits them into `MeshCore`, feeds their messages in and carries the core's events out:
`Send` and `Close` are done here, `Deliver` goes to the channel's handler (IPAM) and
`Changed` to the router (which re-plans the data paths). Dialling follows `Targets`; the
router's timer calls `tick` at `next_deadline`.

Liveness is judged by the core on the kernel's view: before each liveness round the
connections that look silent are refreshed from TCP_INFO (bytes that reached the socket,
acknowledgements of ours), and every connection has TCP_USER_TIMEOUT set, so the kernel
itself aborts one whose data goes unacknowledged (see mesh/liveness.py). Which peers to
connect to follows the connection policy (`follow`, from mesh/policy.py).

Decisions about refusals use the `Refusal` enum the core and the handshake return, never
the prose shown to people. A `RemoteProtocolError` closes the one connection that carried
it and is counted (`protocol_errors` once established, `handshake_failures` before);
nothing a peer sends reaches the shared tasks as an exception. Warnings that a peer or a
scanner can repeat at will (garbage connections, refusals, protocol errors) are rate
limited (`ratelimit.py`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

from meshnet.dataplane.sleeve_plan import Direct
from meshnet.errors import HandshakeRefused, Refusal, RemoteProtocolError
from meshnet.kernel import tcpinfo
from meshnet.mesh.connection import ControlConnection, State
from meshnet.mesh.core import Changed, Close, Deliver, MeshCore, Send
from meshnet.mesh.policy import Plan
from meshnet.mesh.targets import Targets
from meshnet.runtime.ratelimit import RateLimitedLog

log = logging.getLogger("meshnet.router")

HANDSHAKE_TIMEOUT = 10.0  # seconds for a dialled or accepted connection to finish its handshake
READ_BYTES = 65536  # one socket read
RECENT_REFUSALS = 20  # refusals kept for `meshnet status`


class Link:
    """Runtime side of one TCP control connection."""

    def __init__(self, conn_id: int, proto: ControlConnection, writer: asyncio.StreamWriter, address: str | None):
        self.id = conn_id
        self.proto = proto
        self.writer = writer
        self.address = address  # the target we dialled, None for inbound
        self.sock = writer.get_extra_info("socket")

    def flush(self) -> None:
        data = self.proto.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)


class ControlPlane:
    def __init__(
        self,
        *,
        core: MeshCore,
        targets: Targets,
        password: bytes | None,
        features: dict[str, Any],
        on_deliver: Callable[[Deliver], None],
        on_changed: Callable[[], None],
        wake: Callable[[], None],
        spawn: Callable[[Any, str], None],
    ):
        self.core = core
        self.targets = targets
        self._password = password
        self._features = features
        self._on_deliver = on_deliver
        self._on_changed = on_changed
        self._wake = wake
        self._spawn = spawn
        self.links: dict[int, Link] = {}
        self._next_conn = 1
        self.refusals: list[dict[str, Any]] = []  # recent handshake refusals, newest last
        self.counters = {"handshake_failures": 0, "wrong_password": 0, "protocol_errors": 0, "pruned": 0}
        self.warn = RateLimitedLog(log)
        self.satisfied: frozenset[bytes] = frozenset()  # reachable peers the policy needs no connection to
        self.plan: Plan | None = None  # the connection policy's latest

    # -- views -------------------------------------------------------------------------

    def direct(self) -> dict[bytes, Direct]:
        """Directly connected peers: their sleeve address, and sleeve keys when encrypted."""
        out: dict[bytes, Direct] = {}
        for conn_id, c in self.core.conns.items():
            link = self.links.get(conn_id)
            session = link.proto.session if link is not None else None
            keys = session.sleeve_keys(self.core.name, c.peer) if session is not None else None
            out[c.peer] = Direct((c.ip, c.udp_port), keys)
        return out

    # -- dialling ----------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        return self.targets.next_deadline(set(self.core.by_peer()), self.satisfied)

    def tick(self, *, now: float) -> None:
        """The core's timers: heartbeats, liveness, anti-entropy, forgetting gone peers."""
        if now >= self.core.liveness.next_round:
            self._refresh_liveness(now)
        self.handle(self.core.tick(now=now))

    def _refresh_liveness(self, now: float) -> None:
        """Tell the core what the kernel saw on the connections that look silent."""
        for conn in self.core.liveness.quiet(self.core.conns, now):
            link = self.links.get(conn)
            seen = tcpinfo.progress(link.sock) if link is not None and link.sock is not None else None
            if seen is not None:
                self.core.heard(conn, now - seen.data_recv_age)
                self.core.acked(conn, now if seen.unacked == 0 else now - seen.ack_recv_age)

    def dial_due(self, *, now: float) -> None:
        for address in self.targets.due(now, set(self.core.by_peer()), self.satisfied):
            self._spawn(self.dial(address), "dial")

    def follow(self, plan: Plan) -> None:
        """Dial what the connection policy wants; close what nobody needs (we dialled it)."""
        self.plan = plan
        self.targets.set_discovered(plan.dial, now=time.monotonic(), later=plan.later)
        self.satisfied = frozenset() if plan.full_mesh else frozenset(self.core.topology.reachable() - plan.wanted)
        if plan.prune:
            self.counters["pruned"] += len(plan.prune)
            log.info("closing %d connection(s) the bounded control graph does not need", len(plan.prune))
            self.close_peers(set(plan.prune), "not needed: the control graph is bounded")
        if plan.dial:
            self._wake()

    async def dial(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        self.targets.dialling(address)
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                reader, writer = await asyncio.open_connection(host, int(port))
        except (OSError, TimeoutError) as exc:
            self.targets.failed(address, f"connect: {exc.__class__.__name__} {exc}", now=time.monotonic())
            self._wake()
            return
        await self._run(reader, writer, address=address)

    async def accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._run(reader, writer, address=None)

    def close_all(self) -> None:
        for link in list(self.links.values()):
            link.writer.close()

    # -- one connection ----------------------------------------------------------------

    async def _run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, address: str | None) -> None:
        peer_ip = (writer.get_extra_info("peername") or ("?",))[0]
        proto = ControlConnection(initiator=address is not None, password=self._password, features=self._features)
        link = Link(self._next_conn, proto, writer, address)
        self._next_conn += 1
        admitted = False
        benign = False  # ended on purpose, nothing to retry or report
        error = ""
        retry = True
        try:
            link.flush()
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                early = await self._handshake(link, reader)
            refused, events = self.core.add_connection(
                link.id, remote=proto.remote, ip=peer_ip, outbound=address is not None, now=time.monotonic()
            )
            if refused is not None:
                proto.refuse(refused.refusal, refused.reason)
                link.flush()
                if refused.refusal.benign:  # both sides dialled at once; the other connection stays
                    benign = address is not None
                    if benign:
                        self.targets.succeeded(address, proto.remote["name"])
                    return
                self._note_refusal(peer_ip, proto.remote, refused.reason)
                # A name clash may clear (a stale incarnation times out): only our own address is hopeless.
                error, retry = f"refused by us: {refused.reason}", refused.refusal is not Refusal.SELF
                return
            admitted = True
            self.links[link.id] = link
            if link.sock is not None:
                tcpinfo.tune(link.sock, user_timeout=self.core.liveness.timeout)
            if address is not None:
                self.targets.succeeded(address, proto.remote["name"], now=time.monotonic())
            self.targets.peer_connected(proto.remote["name"], f"{peer_ip}:{proto.remote['port']}")
            log.info(
                "connected to %s (%s) at %s, %s%s",
                proto.remote["nick"],
                proto.remote["name"].hex(),
                peer_ip,
                "outbound" if address else "inbound",
                ", encrypted" if proto.encrypted else "",
            )
            self.handle(events)
            for message in early:
                self.handle(self.core.receive(link.id, message, now=time.monotonic()))
            while True:
                data = await reader.read(READ_BYTES)
                if not data:
                    error = "connection closed by peer"
                    break
                self.core.heard(link.id, time.monotonic())  # bytes, even half a message, are a sign of life
                for message in proto.receive_data(data):
                    self.handle(self.core.receive(link.id, message, now=time.monotonic()))
                link.flush()
        except HandshakeRefused as exc:
            error, retry = exc.reason, exc.retry
            if exc.refusal.benign:
                benign = address is not None
                if benign:
                    self.targets.succeeded(address, proto.remote["name"])
                return
            self.counters["handshake_failures"] += 1
            if exc.refusal is Refusal.WRONG_PASSWORD:
                self.counters["wrong_password"] += 1
            self._note_refusal(peer_ip, proto.remote, exc.reason)
            self.warn.warning(f"refused:{exc.refusal.value}", "connection with %s refused: %s", peer_ip, exc.reason)
        except RemoteProtocolError as exc:
            error = f"protocol error: {exc}"
            if admitted:
                self.counters["protocol_errors"] += 1
                self.warn.warning("protocol-error", "closing connection with %s (%s): %s", peer_ip, proto.remote.get("nick"), error)
            else:
                self.counters["handshake_failures"] += 1
                self.warn.warning("handshake-error", "closing connection with %s during the handshake: %s", peer_ip, error)
        except TimeoutError:
            error = "handshake timed out"
            self.counters["handshake_failures"] += 1
        except (ConnectionError, OSError) as exc:
            error = f"{exc.__class__.__name__}: {exc}"
        finally:
            writer.close()
            now = time.monotonic()
            if admitted:
                self.links.pop(link.id, None)
                log.info("disconnected from %s at %s: %s", proto.remote.get("nick"), peer_ip, error)
                self.handle(self.core.remove_connection(link.id, now=now))
            if address is not None and not benign:
                if admitted:
                    self.targets.disconnected(address, now=now)
                else:
                    self.targets.failed(address, error, now=now, retry=retry)
            self._wake()

    async def _handshake(self, link: Link, reader: asyncio.StreamReader) -> list[Any]:
        """Run the handshake; return messages that arrived in the same read as its end."""
        early: list[Any] = []
        while link.proto.state is not State.ESTABLISHED:
            data = await reader.read(READ_BYTES)
            if not data:
                raise ConnectionResetError("closed during handshake")
            early = link.proto.receive_data(data)
            link.flush()
        return early

    def _note_refusal(self, ip: str, remote: dict[str, Any], reason: str) -> None:
        name = remote.get("name")
        self.refusals.append(
            {
                "time": time.time(),
                "address": ip,
                "peer": name.hex() if isinstance(name, bytes) else "",
                "nick": str(remote.get("nick", "")),
                "reason": reason,
            }
        )
        del self.refusals[:-RECENT_REFUSALS]

    # -- events ------------------------------------------------------------------------

    def handle(self, events: list[Any]) -> None:
        """Carry out core events. The timer is woken only when deadlines or targets may
        have moved (a close, a topology change): heartbeats alone must not spin it."""
        changed = closed = False
        for event in events:
            if isinstance(event, Send):
                link = self.links.get(event.conn)
                if link is not None and link.proto.state is State.ESTABLISHED:
                    self._send(link, event)
            elif isinstance(event, Close):
                link = self.links.get(event.conn)
                if event.refusal is Refusal.PROTOCOL_ERROR:
                    self.counters["protocol_errors"] += 1
                    self.warn.warning("protocol-error", "closing connection %d: %s", event.conn, event.reason)
                elif link is not None:
                    log.info("closing connection %d: %s", event.conn, event.reason)
                if link is not None:
                    link.proto.refuse(event.refusal, event.reason)
                    link.flush()
                    link.writer.close()
                closed = True
            elif isinstance(event, Deliver):
                self._on_deliver(event)
            elif isinstance(event, Changed):
                changed = True
        if changed:
            self._on_changed()
        if changed or closed:
            self._wake()

    def _send(self, link: Link, event: Send) -> None:
        """Send one message; one that cannot be framed (a bug: the core keeps messages under
        the frame limit) closes that connection only."""
        try:
            link.proto.send(event.kind, *event.fields)
        except ValueError as exc:
            self.warn.error("send-failed", "cannot send %s on connection %d: %s; closing it", event.kind.name, link.id, exc)
            link.writer.close()
            return
        link.flush()

    def graph_status(self) -> dict[str, Any]:
        """The control graph as the policy sees it: full mesh or bounded, chosen peers up."""
        plan = self.plan
        connected = set(self.core.by_peer())
        wanted = plan.wanted if plan is not None else frozenset()
        return {
            "full_mesh": plan.full_mesh if plan is not None else True,
            "wanted": len(wanted),
            "wanted_connected": len(wanted & connected),
            "pruned": self.counters["pruned"],
        }

    def close_peers(self, peers: set[bytes], reason: str) -> None:
        """Close the connections to these peers on purpose (e.g. to rekey the sleeve)."""
        self.handle([Close(conn, reason) for conn, c in self.core.conns.items() if c.peer in peers and conn in self.links])
