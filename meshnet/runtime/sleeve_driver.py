"""Runs the sleeve for the router: the UDP socket, the pump and its thread, and its tables.

The mirror of `fastdp_driver.py`: the router hands `apply()` the tables
`dataplane.sleeve_plan.plan` computed; the driver diffs them against what the pump holds
(`have`, kept here and updated per operation) and applies only the difference. A table the
pump refuses (full) is logged and counted, never raised into the router: one busy container
must not take control connections down. The pump's MAC table has its own policy (learned
entries age, have a quota per peer and give way to gossiped ones: docs/sleeve.md), so
gossiped MACs are refused only when the table is full of gossiped MACs.

Threads: the pump runs in its own thread without the GIL; every call here comes from the
asyncio loop, and the pump's setters take its own lock.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from meshnet.dataplane import sleeve_plan as sp
from meshnet.dataplane.pump import load_pump
from meshnet.errors import UsageError
from meshnet.kernel import offload, steering
from meshnet.kernel.threads import name_current_thread

log = logging.getLogger("meshnet.sleeve")

# Each sleeve socket may hold this much: ~50 ms of several flows at 5 Gbit/s while the
# pump thread waits for a CPU. UDP_GRO queues whole batches of up to 64 datagrams: one
# full buffer drops a batch, which TCP pays for with up to 64 retransmissions.
SOCKET_BUFFER_BYTES = 32 << 20


class SleeveDriver:
    def __init__(
        self,
        *,
        local_id: int,
        host: str,
        udp_port: int,
        tap_fds: list[int],
        underlay_mtu: int,
        encrypted: bool,
        pure_python: bool,
        mac_limits: dict[str, int] | None = None,
    ):
        """Bind the sleeve's UDP socket(s) and build the pump (not started yet).

        tap_fds: the TAP's queues, one pump thread each (the compiled pump only; the
        twin takes the first). mac_limits: the pump's MAC table limits (mac_table_max,
        learn_quota, mac_age); the pump's defaults when None.

        Raises:
            UsageError: the UDP port cannot be bound.
        """
        self.encrypted = encrypted
        pump_cls, self.compiled = load_pump(prefer_compiled=not pure_python)
        if not self.compiled:
            log.warning("the compiled pump is NOT in use: the sleeve runs the slow pure-Python twin")
            tap_fds = tap_fds[:1]
        try:  # one socket per thread, each flow steered to one (kernel/steering.py)
            self.udp = steering.udp_sockets(host, udp_port, len(tap_fds), buffer_bytes=SOCKET_BUFFER_BYTES)
        except OSError as exc:
            raise UsageError(f"cannot bind UDP {host}:{udp_port} for the sleeve: {exc.strerror}") from None
        # TAP and UDP offloads; the twin uses none. MESHNET_PUMP_OFFLOAD=0: for comparisons
        enable = self.compiled and os.environ.get("MESHNET_PUMP_OFFLOAD", "1") != "0"
        offloads = [offload.configure(tap, sock.fileno(), enable=enable) for tap, sock in zip(tap_fds, self.udp)]
        self.pump: Any = pump_cls(
            tap_fds,
            [sock.fileno() for sock in self.udp],
            local_id,
            batch=int(os.environ.get("MESHNET_PUMP_BATCH", "64")),  # frames per read batch
            crypto=encrypted,  # an encrypted mesh never sends nor accepts plaintext
            underlay_mtu=underlay_mtu,  # frames that do not fit get ICMP "fragmentation needed"
            # after traffic the pump polls without sleeping this long: lower latency for CPU
            spin_us=int(os.environ.get("MESHNET_PUMP_SPIN_US", "0")),
            offloads=offloads[0],  # the same on every queue and socket
            **(mac_limits or {}),  # bounded MAC table: capacity, learned per peer, ageing
        )
        self._threads: list[threading.Thread] = []
        self._peers: dict[int, sp.PeerRow] = {}
        self._keys: dict[int, sp.KeyRow] = {}
        self._macs: dict[bytes, int] = {}
        self.refused: dict[str, int] = {"peers": 0, "macs": 0}  # table entries the pump had no room for

    def start(self) -> None:
        for k in range(len(self.udp)):
            name = "meshnet-pump" + (f"-{k}" if k else "")
            self._threads.append(threading.Thread(target=self._run, args=(k, name), name=name, daemon=True))
            self._threads[-1].start()

    def _run(self, worker: int, name: str) -> None:
        name_current_thread(name)  # its own line in top -H
        self.pump.run(worker)

    def alive(self) -> bool:
        """Every pump thread started and still runs."""
        return bool(self._threads) and all(thread.is_alive() for thread in self._threads)

    def stop(self, timeout: float = 5.0) -> None:
        """Blocking: stop the pump threads and close the sockets (run it off the loop)."""
        self.pump.stop()
        for thread in self._threads:
            thread.join(timeout)
        for sock in self.udp:
            sock.close()

    @property
    def have(self) -> sp.PumpTables:
        return sp.PumpTables(dict(self._peers), dict(self._keys), dict(self._macs))

    def apply(self, want: sp.PumpTables) -> int:
        """Bring the pump's tables to `want`; return the number of operations applied."""
        ops = self.ops_for(want)
        self.apply_ops(ops)
        return len(ops)

    def ops_for(self, want: sp.PumpTables) -> list[sp.Op]:
        """What `apply(want)` would do. Reads the tables without copying them, so it may run
        off the loop (100,000 MACs: tens of ms) as long as no `apply_ops` runs meanwhile."""
        for peer in want.collisions:
            log.error("peer id collision for %s; its traffic is not forwarded", peer.hex())
        return sp.diff(want, sp.PumpTables(self._peers, self._keys, self._macs))

    def apply_ops(self, ops: list[sp.Op]) -> None:
        for op in ops:
            self._apply(op)

    def _apply(self, op: sp.Op) -> None:
        pump = self.pump
        if isinstance(op, sp.SetPeer):
            try:
                pump.set_peer(op.pid, op.row.addr, op.row.via, flood=op.row.flood)
            except OverflowError as exc:
                self._refuse("peers", exc)
                return
            self._peers[op.pid] = op.row
        elif isinstance(op, sp.RemovePeer):
            pump.remove_peer(op.pid)  # drops the peer's keys and MACs with it
            del self._peers[op.pid]
            self._keys.pop(op.pid, None)
            self._macs = {mac: pid for mac, pid in self._macs.items() if pid != op.pid}
        elif isinstance(op, sp.SetKeys):
            if op.pid in self._peers:
                pump.set_peer_keys(op.pid, op.row.tx, op.row.rx, epoch=op.row.epoch)
                self._keys[op.pid] = op.row
        elif isinstance(op, sp.SetMac):
            if op.pid not in self._peers:
                return
            try:
                pump.set_mac(op.mac, op.pid)
            except OverflowError as exc:
                self._refuse("macs", exc)
                return
            self._macs[op.mac] = op.pid
        elif isinstance(op, sp.ForgetMac):
            pump.forget_mac(op.mac)
            self._macs.pop(op.mac, None)

    def _refuse(self, table: str, exc: OverflowError) -> None:
        self.refused[table] += 1
        if self.refused[table] == 1 or self.refused[table] % 1000 == 0:
            log.warning("sleeve %s table: %s (%d entries refused so far)", table, exc, self.refused[table])

    def rekey_due(self) -> set[int]:
        """Peers whose sleeve key nears its datagram limit."""
        return set(self.pump.rekey_due())

    def features(self) -> dict[str, Any]:
        return dict(self.pump.features())

    def stats(self) -> dict[str, int]:
        return dict(self.pump.stats())

    def table_sizes(self) -> dict[str, int]:
        return dict(self.pump.table_sizes())

    def peer_stats(self) -> dict[int, dict[str, int]]:
        return self.pump.peer_stats()

