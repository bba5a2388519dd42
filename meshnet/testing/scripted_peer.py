"""A scripted peer: the real handshake with a router, then whatever its driver sends.

It lives in the driving process (a test, a benchmark); its TCP socket is opened inside a
lab namespace, so a router sees it as one more host on the underlay. It speaks through
meshnet's own `ControlConnection`, so the handshake (plain, or sealed with the mesh's
password) is the real one, and so is every frame after it: `send` packs any fields
(out-of-range integers, wrong types, huge lists) without checking them, `send_body` sends
raw msgpack (deeper than a packer would write), `send_length` a bare frame header. A
reader thread answers nothing but notices when the router closes the connection; a
heartbeat keeps it open otherwise.

    peer = ScriptedPeer("mnh-h4", "192.168.90.11").handshake()
    peer.announce(eps=endpoints(100))                 # its own entry, linked to the router
    ghosts = [fake_peer(peer.name, peer.ip, eps=endpoints(1024, start=k << 20)) for k in range(3)]
    peer.announce(eps=[], ghosts=ghosts)              # peers that do not exist, behind it
    peer.send(Msg.TOPOLOGY, [peer.entry(v=1 << 63)])  # a crafted entry
    assert peer.wait_closed(5)

The tests of hostile input (tests/netns/hostile.py) and the endpoint benchmark
(bench/endpoint_scale.py) drive it; `probe_answer` makes its peers answer fastdp probes.
"""

from __future__ import annotations

import ipaddress
import os
import random
import socket
import threading
import time
from collections import deque
from typing import Any, Iterable

import msgpack

from meshnet.kernel.netns import in_netns
from meshnet.mesh import bounds, wire
from meshnet.mesh.connection import ControlConnection
from meshnet.mesh.wire import Msg

HEARTBEAT = 2.0  # seconds between our heartbeats (the router closes after 9 s of silence)
GHOST_IP = "192.168.90.250"  # where fake peers claim to be by default: nobody answers there
KEEP_RECEIVED = 10_000  # messages from the router kept for the driver to read (the newest)
FRAME_ROOM = 8 * 1024  # bytes left free in a frame of several entries (a sealed frame grows)


class ScriptedPeer:
    def __init__(
        self,
        netns: str,
        address: str,
        *,
        password: bytes | None = None,
        nick: str = "mnh-evil",
        port: int = 6783,
        features: dict[str, Any] | None = None,
        timeout: float = 10.0,
    ):
        """`features`: values that override our FEATURES (e.g. a port that is text)."""
        self.name = os.urandom(16)
        self.uid = random.getrandbits(63)
        self.nick = nick
        self.address = address
        self.version = int(time.time() * 1000)
        self.features = {"name": self.name, "nick": nick, "uid": self.uid, "port": port, "udp_port": port, "features": {"sleeve": 1}}
        features = {**self.features, **(features or {})}
        self.proto = ControlConnection(initiator=True, password=password, features=features)
        with in_netns(netns):
            self.sock = socket.create_connection((address, 6783), timeout=timeout)
        self.sock.settimeout(0.5)
        self.ip = self.sock.getsockname()[0]
        self.received: deque[wire.Message] = deque(maxlen=KEEP_RECEIVED)
        self.refusal: Exception | None = None
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- connection ----------------------------------------------------------------------

    def handshake(self, timeout: float = 10.0) -> ScriptedPeer:
        """Complete the real handshake, and wait until the router has admitted us (the
        SUMMARY it sends a new connection arrives; older routers sent their DIGEST), so
        what we send next reaches an established connection; then read and heartbeat in
        the background."""
        self._flush()
        deadline = time.monotonic() + timeout
        while not any(m.kind in (Msg.SUMMARY, Msg.DIGEST) for m in self.received):
            if time.monotonic() > deadline:
                raise TimeoutError("handshake did not complete")
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not data:
                raise ConnectionError(f"closed during the handshake: {self.refusal}")
            self.received += self.proto.receive_data(data)
            self._flush()
        self.router = self.proto.remote["name"]
        for target in (self._read, self._heartbeat):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _flush(self) -> None:
        data = self.proto.data_to_send()
        if data:
            try:
                self.sock.sendall(data)
            except OSError:
                self._closed.set()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                data = self.sock.recv(262144)
            except socket.timeout:
                continue
            except OSError:
                break
            if not data:
                break
            try:
                with self._lock:
                    self.received += self.proto.receive_data(data)
            except Exception as exc:  # the router's REFUSE ends it too
                self.refusal = exc
                break
        self._closed.set()

    def _heartbeat(self) -> None:
        while not self._closed.wait(HEARTBEAT):
            try:
                self.send(Msg.HEARTBEAT)
            except Exception:
                return

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def wait_closed(self, timeout: float) -> bool:
        """True once the router has closed the connection."""
        return self._closed.wait(timeout)

    def close(self) -> None:
        self._closed.set()
        try:
            self.sock.close()
        except OSError:
            pass
        for thread in self._threads:
            thread.join(2)

    # -- sending -------------------------------------------------------------------------

    def send(self, kind: Msg, *fields: Any) -> None:
        """Any fields, packed as they are (the encoder checks nothing)."""
        self.send_body(wire.encode_message(kind, *fields))

    def send_body(self, body: bytes) -> None:
        """One frame of raw msgpack (sealed on an encrypted mesh), up to the frame limit."""
        with self._lock:  # sealing counts frames: they must leave in the order they were sealed
            if self.proto.session is not None:
                body = self.proto.session.seal(body)
            try:
                self.sock.sendall(wire.LENGTH.pack(len(body)) + body)
            except OSError:
                self._closed.set()

    def send_length(self, length: int) -> None:
        """A bare frame header announcing `length` bytes (e.g. over the limit)."""
        try:
            self.sock.sendall(wire.LENGTH.pack(length))
        except OSError:
            self._closed.set()

    def entry(self, **fields: Any) -> dict[str, Any]:
        """Our own entry, linked to the router (so we are reachable), with overrides; each
        call is a new version."""
        self.version += 1
        e = {
            "n": self.name,
            "k": self.nick,
            "u": self.uid,
            "v": self.version,
            "p": 6783,
            "d": 6783,
            "c": [[self.router, self.address, True]],
            "x": {},
        }
        e.update(fields)
        return e

    def announce(self, *, ghosts: Iterable[dict[str, Any]] = (), ghost_ip: str = GHOST_IP, **data: Any) -> None:
        """Publish our entry with this per-feature data (e.g. eps=[...]), and the entries
        of peers that do not exist (`fake_peer`), linked both ways so they are reachable;
        we say we reach them at `ghost_ip`. Entries go as many to a frame as fit."""
        ghosts = list(ghosts)
        self.send_entries([self.linked_entry([g["n"] for g in ghosts], ghost_ip, **data)] + ghosts)

    def linked_entry(self, ghosts: Iterable[bytes], ghost_ip: str = GHOST_IP, **data: Any) -> dict[str, Any]:
        """Our entry (a new version) with this data, linked to the router and to these fake
        peers: what `announce` sends, and what changes our data later without re-sending
        theirs (a link left out would make them unreachable)."""
        links = [[self.router, self.address, True]] + [[name, ghost_ip, True] for name in ghosts]
        return self.entry(c=links, x=data)

    def send_entries(self, entries: list[dict[str, Any]]) -> None:
        """TOPOLOGY messages carrying these entries, as many to a frame as fit."""
        for batch in batches(entries):
            self.send(Msg.TOPOLOGY, batch)


def batches(entries: list[dict[str, Any]], room: int = bounds.MAX_FRAME - FRAME_ROOM) -> list[list[dict[str, Any]]]:
    """The entries in order, packed greedily into groups of at most `room` msgpack bytes
    (an entry bigger than that goes alone: the router decides what it does with it)."""
    out: list[list[dict[str, Any]]] = []
    size = 0
    for e in entries:
        n = len(msgpack.packb(e, use_bin_type=True))
        if not out or size + n > room:
            out.append([])
            size = 0
        out[-1].append(e)
        size += n
    return out


def fake_peer(linked_to: bytes, address: str, *, nick: str = "mnh-ghost", **data: Any) -> dict[str, Any]:
    """An entry of a peer that does not exist, listing a link to `linked_to` (the scripted
    peer's name, at `address`: its IP)."""
    return {
        "n": os.urandom(16),
        "k": nick,
        "u": random.getrandbits(63),
        "v": int(time.time() * 1000),
        "p": 6783,
        "d": 6783,
        "c": [[linked_to, address, False]],
        "x": data,
    }


def endpoints(count: int, *, start: int = 0, prefix: str = "02:66", network: str | None = None) -> list[list[Any]]:
    """`count` distinct, well-formed endpoints: MACs prefix:xx:xx:xx:xx (the index), and
    with `network` (an IPv4 CIDR) one address each, the index-th of that network."""
    net = ipaddress.ip_network(network) if network else None
    out = []
    for i in range(start, start + count):
        mac = f"{prefix}:{(i >> 24) & 255:02x}:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}"
        cidrs = [f"{net.network_address + i}/{net.prefixlen}"] if net is not None else []
        out.append([mac, cidrs, ""])
    return out
