"""The resolver's I/O shell: UDP and TCP port 53 on the addresses the router gives it.

It asks `records()` for the current name table on every query (the router caches it), hands
the bytes to the sans-IO `answer()` and sends what comes back. Queries for names outside
our domain go to the upstream servers when there are any (one datagram relayed, a bounded
wait, SERVFAIL on timeout), REFUSED otherwise.

`set_addresses()` rebinds: the router listens where the host has an overlay address (see
docs/docker.md), so containers on the bridge reach it without a gateway.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import Callable

import dns.message
import dns.rcode

from meshnet.dns.answer import FORWARD, Records, answer

log = logging.getLogger("meshnet.dns")

UPSTREAM_TIMEOUT = 2.0
MAX_PENDING = 256  # forwarded queries in flight; more are answered SERVFAIL at once
TCP_IDLE = 10.0


def _servfail(query: bytes) -> bytes | None:
    try:
        msg = dns.message.from_wire(query)
        resp = dns.message.make_response(msg)
        resp.set_rcode(dns.rcode.SERVFAIL)
        return resp.to_wire()
    except Exception:
        return None


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer):
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = self.server.respond(data)
        if reply is FORWARD:
            self.server.forward(data, lambda r: self._send(r, addr))
        elif reply:
            self._send(reply, addr)

    def _send(self, data: bytes | None, addr: tuple[str, int]) -> None:
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(data, addr)

    def error_received(self, exc: Exception) -> None:
        pass


class _Upstream(asyncio.DatagramProtocol):
    def __init__(self, done: asyncio.Future[bytes]):
        self.done = done

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if not self.done.done():
            self.done.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(exc)


class DnsServer:
    def __init__(self, records: Callable[[], Records], *, port: int = 53, upstreams: list[tuple[str, int]] | None = None):
        self.records = records
        self.port = port
        self.upstreams = list(upstreams or [])
        self.addresses: list[str] = []
        self._udp: dict[str, asyncio.DatagramTransport] = {}
        self._tcp: dict[str, asyncio.AbstractServer] = {}
        self._pending: set[asyncio.Task[None]] = set()
        self.counters = {"queries": 0, "forwarded": 0, "errors": 0}

    def respond(self, data: bytes, *, tcp: bool = False) -> bytes | None | object:
        self.counters["queries"] += 1
        try:
            records = self.records()
        except Exception:
            log.exception("DNS: cannot read the name table")
            self.counters["errors"] += 1
            return _servfail(data)
        return answer(data, records, forward=bool(self.upstreams), tcp=tcp)

    def forward(self, data: bytes, reply: Callable[[bytes | None], None]) -> None:
        if len(self._pending) >= MAX_PENDING:
            reply(_servfail(data))
            return
        task = asyncio.ensure_future(self._forward(data, reply))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _forward(self, data: bytes, reply: Callable[[bytes | None], None]) -> None:
        self.counters["forwarded"] += 1
        loop = asyncio.get_running_loop()
        for host, port in self.upstreams:
            done: asyncio.Future[bytes] = loop.create_future()
            transport = None
            try:
                transport, _ = await loop.create_datagram_endpoint(lambda: _Upstream(done), remote_addr=(host, port))
                transport.sendto(data)
                async with asyncio.timeout(UPSTREAM_TIMEOUT):
                    result = await done
                if len(result) >= 2 and result[:2] == data[:2]:
                    reply(result)
                    return
            except (OSError, TimeoutError):
                continue
            finally:
                if transport is not None:
                    transport.close()
        reply(_servfail(data))

    async def set_addresses(self, addresses: list[str]) -> None:
        """Listen on exactly these addresses (UDP and TCP); errors are logged, not raised."""
        wanted = list(dict.fromkeys(addresses))
        for addr in [a for a in self._udp if a not in wanted]:
            self._udp.pop(addr).close()
        for addr in [a for a in self._tcp if a not in wanted]:
            server = self._tcp.pop(addr)
            server.close()
        loop = asyncio.get_running_loop()
        for addr in wanted:
            if addr not in self._udp:
                try:
                    transport, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), local_addr=(addr, self.port))
                    self._udp[addr] = transport  # type: ignore[assignment]
                except OSError as exc:
                    log.warning("DNS: cannot listen on UDP %s:%d: %s", addr, self.port, exc.strerror or exc)
            if addr not in self._tcp:
                try:
                    self._tcp[addr] = await asyncio.start_server(self._serve_tcp, addr, self.port, reuse_address=True)
                except OSError as exc:
                    log.warning("DNS: cannot listen on TCP %s:%d: %s", addr, self.port, exc.strerror or exc)
        self.addresses = [a for a in wanted if a in self._udp]
        if self.addresses:
            log.info("DNS listening on %s port %d", ", ".join(self.addresses), self.port)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                async with asyncio.timeout(TCP_IDLE):
                    head = await reader.readexactly(2)
                (length,) = struct.unpack("!H", head)
                async with asyncio.timeout(TCP_IDLE):
                    data = await reader.readexactly(length)
                reply = self.respond(data, tcp=True)
                if reply is FORWARD:
                    done: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
                    self.forward(data, lambda r: done.done() or done.set_result(r))
                    reply = await done
                if not reply:
                    break
                writer.write(struct.pack("!H", len(reply)) + reply)  # type: ignore[arg-type]
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        await self.set_addresses([])
        for task in list(self._pending):
            task.cancel()
