"""The blocking API client (no asyncio): the CLI, the CNI plugin, the lab and tests use it.

An error reply is raised again as the meshnet error the router raised (`kind` in the
reply names its class), so callers catch `Conflict` or `Unavailable`, never a status code.
"""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any

from meshnet.errors import MeshnetError, RouterLost, RouterUnavailable, error_class


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


class ApiClient:
    def __init__(self, path: str, timeout: float = 30.0):
        self.path = path
        self.timeout = timeout

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """One request.

        Raises:
            RouterUnavailable: nothing listens on the socket (nothing was done).
            RouterLost: the router went away before it answered (it may have done it).
            MeshnetError: the router's error (the same subclass), with its message.
        """
        conn = _UnixHTTPConnection(self.path, self.timeout)
        try:
            payload = json.dumps(body or {}).encode()
            try:
                conn.connect()
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                raise RouterUnavailable(f"no meshnet router is running (nothing answers on {self.path})") from exc
            try:
                conn.request(method, path, body=payload, headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                raw = response.read()
            except (ConnectionError, http.client.HTTPException) as exc:
                raise RouterLost(f"the router went away before it answered {method} {path} (it may have carried it out)") from exc
        finally:
            conn.close()
        try:
            data = json.loads(raw or b"{}")
        except ValueError:
            raise MeshnetError(f"the router sent a reply that is not JSON (HTTP {response.status})") from None
        if response.status != 200:
            message = data.get("error") if isinstance(data, dict) else None
            kind = data.get("kind") if isinstance(data, dict) else None
            raise error_class(kind)(message or f"HTTP {response.status}")
        return data

    def get(self, path: str) -> dict[str, Any]:
        return self.call("GET", path)

    def post(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.call("POST", path, body)
