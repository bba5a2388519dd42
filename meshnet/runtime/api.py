"""The local API: JSON over HTTP/1.1 on a unix socket (default /run/meshnet/meshnet.sock).

The CLI, the CNI plugin and the Docker plugin all use it. One request per connection
(`Connection: close`), bodies are JSON. Handlers are coroutines `handler(body) -> dict`
that raise `ApiError(status, message)` for a clear failure; anything else is a 500 with
the exception's text, logged, and the router carries on.

`ApiClient` is the blocking client, usable without asyncio (the CLI, the CNI plugin).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import os
import socket
from typing import Any, Awaitable, Callable

log = logging.getLogger("meshnet.api")

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
MAX_BODY = 1 << 20


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class ApiServer:
    def __init__(self, path: str, routes: dict[tuple[str, str], Handler]):
        self.path = path
        self.routes = routes
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        if os.path.exists(self.path):
            os.unlink(self.path)  # stale: the state-dir lock already proved no router owns it
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self._server = await asyncio.start_unix_server(self._serve, path=self.path)
        os.chmod(self.path, 0o660)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if os.path.exists(self.path):
            os.unlink(self.path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, reply = await self._handle(reader)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            status, reply = 400, {"error": "malformed request"}
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

    async def _handle(self, reader: asyncio.StreamReader) -> tuple[int, dict[str, Any]]:
        request_line = (await reader.readline()).decode("latin-1").split()
        if len(request_line) != 3:
            return 400, {"error": "malformed request line"}
        method, target, _ = request_line
        length = 0
        while True:
            line = (await reader.readline()).decode("latin-1").strip()
            if not line:
                break
            key, _, value = line.partition(":")
            if key.strip().lower() == "content-length":
                length = int(value.strip())
        if length > MAX_BODY:
            return 413, {"error": "request body too large"}
        raw = await reader.readexactly(length) if length else b""
        try:
            body = json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            return 400, {"error": "request body is not JSON"}
        if not isinstance(body, dict):
            return 400, {"error": "request body must be a JSON object"}
        path = target.split("?", 1)[0]
        handler = self.routes.get((method, path))
        if handler is None:
            return 404, {"error": f"no such endpoint: {method} {path}"}
        try:
            return 200, await handler(body)
        except ApiError as exc:
            return exc.status, {"error": exc.message}
        except Exception as exc:
            log.exception("API %s %s failed", method, path)
            return 500, {"error": f"{exc.__class__.__name__}: {exc}"}


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


class RouterUnavailable(ConnectionError):
    """No router answers on the socket."""


class ApiClient:
    def __init__(self, path: str, timeout: float = 30.0):
        self.path = path
        self.timeout = timeout

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """Raises RouterUnavailable if nothing listens, ApiError for an error reply."""
        conn = _UnixHTTPConnection(self.path, self.timeout)
        try:
            payload = json.dumps(body or {}).encode()
            conn.request(method, path, body=payload, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            data = json.loads(response.read() or b"{}")
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise RouterUnavailable(f"no meshnet router is running (nothing answers on {self.path})") from exc
        finally:
            conn.close()
        if response.status != 200:
            raise ApiError(response.status, data.get("error", f"HTTP {response.status}"))
        return data

    def get(self, path: str) -> dict[str, Any]:
        return self.call("GET", path)

    def post(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.call("POST", path, body)
