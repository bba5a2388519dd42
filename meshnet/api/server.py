"""The API transport: JSON over HTTP/1.1 on a unix socket (default /run/meshnet/meshnet.sock).

One request per connection (`Connection: close`), bodies are JSON objects. Handlers are
coroutines `handler(body) -> dict` registered by path; they raise meshnet's own errors
(`meshnet/errors.py`) and never speak HTTP. This module is the one place that turns an
error into a status code (`status_for`), and it answers `{"error": message, "kind": kind}`
so the client can raise the same class again. Anything unexpected is a 500 with the
exception's text, logged with its traceback, and the router carries on.
"""

from __future__ import annotations

import asyncio
import errno
import http.client
import json
import logging
import os
from typing import Any, Awaitable, Callable

from meshnet.errors import Conflict, MeshnetError, NotFound, Unavailable, UsageError

log = logging.getLogger("meshnet.api")

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
MAX_BODY = 1 << 20  # bytes of one request body
MAX_HEADER_LINES = 64  # a request with more header lines is refused
READ_TIMEOUT = 10.0  # seconds a client may take to send its request

_STATUS: tuple[tuple[type[MeshnetError], int], ...] = ((UsageError, 400), (NotFound, 404), (Conflict, 409), (Unavailable, 503))
# Kernel errnos that mean the caller named something wrong, not that we failed.
_USAGE_ERRNOS = {errno.ENOENT: (404, "not_found"), errno.EEXIST: (409, "conflict"), errno.EINVAL: (400, "usage")}


def status_for(exc: BaseException) -> tuple[int, str]:
    """(HTTP status, error kind) for an exception a handler raised."""
    if isinstance(exc, MeshnetError):
        for cls, status in _STATUS:
            if isinstance(exc, cls):
                return status, cls.kind
        return 500, exc.kind
    if isinstance(exc, OSError) and exc.errno in _USAGE_ERRNOS:
        return _USAGE_ERRNOS[exc.errno]
    return 500, "error"


def _message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and not isinstance(exc, MeshnetError) and exc.strerror:
        return exc.strerror if not exc.filename else f"{exc.strerror}: {exc.filename}"
    return str(exc) or exc.__class__.__name__


class ApiServer:
    def __init__(self, path: str):
        self.path = path
        self.routes: dict[tuple[str, str], Handler] = {}
        self._server: asyncio.AbstractServer | None = None

    def add_routes(self, routes: dict[tuple[str, str], Handler]) -> None:
        """Register handlers; a (method, path) may be registered once."""
        taken = routes.keys() & self.routes.keys()
        assert not taken, f"API routes registered twice: {sorted(taken)}"
        self.routes.update(routes)

    async def start(self) -> None:
        if os.path.exists(self.path):
            os.unlink(self.path)  # stale: the run-dir lock already proved no router owns it
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self._server = await asyncio.start_unix_server(self._serve, path=self.path)
        os.chmod(self.path, 0o660)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
            if os.path.exists(self.path):
                os.unlink(self.path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                status, reply = await self._read(reader)
            if status == 200:
                status, reply = await self._dispatch(*reply)
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError, ValueError, UnicodeError):
            status, reply = 400, {"error": "malformed request", "kind": "usage"}
        body = json.dumps(reply).encode()
        head = f"HTTP/1.1 {status} {http.client.responses.get(status, '')}\r\n"
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        try:
            writer.write(head.encode() + body)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _read(self, reader: asyncio.StreamReader) -> tuple[int, Any]:
        """Parse one request: (200, (method, path, body)) or (status, error reply)."""
        request_line = (await reader.readline()).decode("latin-1").split()
        if len(request_line) != 3:
            return 400, {"error": "malformed request line", "kind": "usage"}
        method, target, _ = request_line
        length = 0
        for _ in range(MAX_HEADER_LINES):
            line = (await reader.readline()).decode("latin-1").strip()
            if not line:
                break
            key, _, value = line.partition(":")
            if key.strip().lower() == "content-length":
                length = int(value.strip())
        else:
            return 400, {"error": "too many header lines", "kind": "usage"}
        if not 0 <= length <= MAX_BODY:
            return 413, {"error": f"request body over {MAX_BODY} bytes", "kind": "usage"}
        raw = await reader.readexactly(length) if length else b""
        try:
            body = json.loads(raw) if raw else {}
        except (json.JSONDecodeError, UnicodeDecodeError):
            return 400, {"error": "request body is not JSON", "kind": "usage"}
        except RecursionError:  # nested deeper than the parser's stack: no handler wants that
            return 400, {"error": "request body is nested too deeply", "kind": "usage"}
        if not isinstance(body, dict):
            return 400, {"error": "request body must be a JSON object", "kind": "usage"}
        return 200, (method, target.split("?", 1)[0], body)

    async def _dispatch(self, method: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        handler = self.routes.get((method, path))
        if handler is None:
            return 404, {"error": f"no such endpoint: {method} {path}", "kind": "not_found"}
        try:
            return 200, await handler(body)
        except Exception as exc:
            status, kind = status_for(exc)
            if status == 500:
                log.exception("API %s %s failed", method, path)
            return status, {"error": _message(exc), "kind": kind}
