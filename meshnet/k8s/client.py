"""A small Kubernetes API client for meshnet's agents: asyncio, no dependencies, any kind.

- `KubeConfig`: where the API server is and how to prove who we are. In a pod it comes
  from the service account (`KUBERNETES_SERVICE_HOST`/`_PORT`, the token and CA under
  /var/run/secrets/kubernetes.io/serviceaccount); `MESHNET_KUBE_API` names another server
  (a test's fake one, `kubectl proxy`). The token file is read again every minute: bound
  service-account tokens rotate under a running pod.
- `Resource`: one kind's URL parts (group, version, plural, namespaced); `NODES`, `PODS`,
  `NAMESPACES`, `NETWORK_POLICIES` are declared here, others are one line away.
- `KubeClient`: `get`, `list` (follows `continue` pages; returns the items and the list's
  resourceVersion), `watch` (an async iterator of `WatchEvent`, bookmarks asked for), and
  `patch` (strategic-merge, merge or JSON patch, subresources such as `status`).

Every reply is hostile until checked: header and body sizes, one watch line, and the JSON
shape are bounded, and a violation is a `KubeProtocolError`, never a crash of the caller.
An error reply is a `KubeApiError` with the Status `code` and `reason` (`gone` for 410:
the caller must list again); an unreachable server is a `KubeUnreachable`.
`meshnet/k8s/informer.py` builds list+watch with a cache on top of this.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, AsyncIterator

from meshnet import __version__
from meshnet.errors import MeshnetError, RemoteProtocolError, Unavailable

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
MAX_HEADER_BYTES = 64 << 10  # status line and headers of one reply
MAX_BODY_BYTES = 64 << 20  # one non-watch reply (a list page)
MAX_EVENT_BYTES = 16 << 20  # one watch event line
MAX_CHUNK_LINE = 1 << 10  # a chunk-size line
TOKEN_REREAD = 60.0  # seconds between reads of the token file
WATCH_IDLE_SLACK = 30.0  # a watch silent this long past its server-side timeout is dead
LIST_PAGE = 500
EVENT_TYPES = ("ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR")
PATCH_TYPES = {
    "strategic": "application/strategic-merge-patch+json",
    "merge": "application/merge-patch+json",
    "json": "application/json-patch+json",
}


class KubeApiError(MeshnetError):
    """The API server answered with an error Status."""

    def __init__(self, code: int, reason: str = "", message: str = ""):
        super().__init__(f"HTTP {code} {reason}: {message}".strip(": "))
        self.code = code
        self.reason = reason

    @property
    def gone(self) -> bool:
        """410: the resourceVersion (or continue token) is too old; list again."""
        return self.code == 410


class KubeUnreachable(Unavailable):
    """No answer from the API server (refused, reset, timed out, TLS failed)."""


class KubeProtocolError(RemoteProtocolError):
    """The server's reply broke HTTP, JSON or a size bound."""


@dataclass(frozen=True)
class Resource:
    plural: str
    kind: str
    group: str = ""  # "" is the core group (/api/v1)
    version: str = "v1"
    namespaced: bool = False

    def path(self, *, namespace: str | None = None, name: str | None = None, subresource: str | None = None) -> str:
        base = f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"
        parts = [base]
        if self.namespaced and namespace:
            parts.append(f"namespaces/{_segment(namespace)}")
        parts.append(self.plural)
        if name:
            parts.append(_segment(name))
            if subresource:
                parts.append(_segment(subresource))
        return "/".join(parts)


def _segment(text: str) -> str:
    if not text or "/" in text or text in (".", ".."):
        raise ValueError(f"{text!r} is not a name the API accepts in a path")
    return urllib.parse.quote(text, safe="")


NODES = Resource("nodes", "Node")
PODS = Resource("pods", "Pod", namespaced=True)
NAMESPACES = Resource("namespaces", "Namespace")
NETWORK_POLICIES = Resource("networkpolicies", "NetworkPolicy", group="networking.k8s.io", namespaced=True)


@dataclass(frozen=True)
class WatchEvent:
    type: str  # one of EVENT_TYPES
    object: dict[str, Any]

    @property
    def resource_version(self) -> str:
        return str(self.object.get("metadata", {}).get("resourceVersion") or "")


@dataclass(frozen=True)
class KubeConfig:
    server: str  # https://HOST:PORT or http://HOST:PORT
    token_file: str | None = None
    ca_file: str | None = None

    @classmethod
    def from_env(cls, env: dict[str, str], *, api: str | None = None, sa_dir: str | None = None) -> KubeConfig | None:
        """In-cluster config, or the server `api` (else `MESHNET_KUBE_API`) names; None when
        neither is there (not in a cluster) or `api` is "none"."""
        api = api or env.get("MESHNET_KUBE_API") or ""
        sa_dir = sa_dir or env.get("MESHNET_KUBE_SA_DIR") or SA_DIR
        if api.lower() == "none":
            return None
        if not api:
            host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT", "443")
            if not host:
                return None
            api = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
        token, ca = os.path.join(sa_dir, "token"), os.path.join(sa_dir, "ca.crt")
        return cls(api.rstrip("/"), token if os.path.exists(token) else None, ca if os.path.exists(ca) else None)


class _Reply:
    """One HTTP/1.1 reply on its own connection: status, headers, a bounded body reader."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, status: int, headers: dict[str, str]):
        self.reader, self.writer, self.status, self.headers = reader, writer, status, headers
        self.chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length = headers.get("content-length")
        try:
            self.length = int(length) if length is not None and not self.chunked else None
        except ValueError:
            raise KubeProtocolError(f"bad Content-Length {length!r}") from None
        if self.length is not None and not 0 <= self.length <= MAX_BODY_BYTES:
            raise KubeProtocolError(f"a reply of {self.length} bytes is over the {MAX_BODY_BYTES}-byte bound")

    async def chunks(self) -> AsyncIterator[bytes]:
        if self.chunked:
            while True:
                line = await self.reader.readline()
                if not line.endswith(b"\n") or len(line) > MAX_CHUNK_LINE:
                    raise KubeProtocolError("the chunked stream broke off")
                try:
                    size = int(line.split(b";")[0].strip(), 16)
                except ValueError:
                    raise KubeProtocolError(f"bad chunk size line {line[:40]!r}") from None
                if not 0 <= size <= MAX_EVENT_BYTES:
                    raise KubeProtocolError(f"a chunk of {size} bytes is over the bound")
                if size == 0:
                    await self.reader.readline()  # the final CRLF (no trailers are sent to us)
                    return
                data = await self.reader.readexactly(size)
                await self.reader.readexactly(2)
                yield data
        elif self.length is not None:
            if self.length:
                yield await self.reader.readexactly(self.length)
        else:
            while data := await self.reader.read(1 << 16):
                yield data

    async def body(self) -> bytes:
        out = bytearray()
        async for chunk in self.chunks():
            out += chunk
            if len(out) > MAX_BODY_BYTES:
                raise KubeProtocolError(f"a reply over {MAX_BODY_BYTES} bytes")
        return bytes(out)

    def close(self) -> None:
        self.writer.close()


def _json(data: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise KubeProtocolError(f"the API answered something that is not JSON: {data[:80]!r}") from None
    if not isinstance(obj, dict):
        raise KubeProtocolError("the API answered JSON that is not an object")
    return obj


def _status_error(code: int, data: bytes) -> KubeApiError:
    try:
        status = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        status = None
    if isinstance(status, dict):
        return KubeApiError(code, str(status.get("reason", ""))[:200], str(status.get("message", ""))[:500])
    return KubeApiError(code, "", data[:200].decode(errors="replace"))


class KubeClient:
    def __init__(self, config: KubeConfig, *, timeout: float = 30.0):
        self.config = config
        self.timeout = timeout
        url = urllib.parse.urlsplit(config.server)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"{config.server!r} is not an http(s) URL of an API server")
        self._host = url.hostname
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._tls: ssl.SSLContext | None = None
        if url.scheme == "https":
            self._tls = ssl.create_default_context(cafile=config.ca_file)
        self._token: str | None = None
        self._token_read = -TOKEN_REREAD

    # -- transport -----------------------------------------------------------------------

    def _bearer(self) -> str | None:
        now = time.monotonic()
        if self.config.token_file and now - self._token_read >= TOKEN_REREAD:
            try:
                with open(self.config.token_file) as f:
                    self._token = f.read().strip()
                self._token_read = now
            except OSError:
                pass  # keep the token we had; the server will say 401 if it is stale
        return self._token

    async def _open(self, method: str, target: str, body: bytes | None, content_type: str) -> _Reply:
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await asyncio.open_connection(
                    self._host, self._port, ssl=self._tls, server_hostname=self._host if self._tls else None, limit=MAX_EVENT_BYTES
                )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise KubeUnreachable(f"cannot reach the API server at {self.config.server}: {exc or type(exc).__name__}") from None
        try:
            host = f"[{self._host}]" if ":" in self._host else self._host
            lines = [f"{method} {target} HTTP/1.1", f"Host: {host}:{self._port}", f"User-Agent: meshnet/{__version__}",
                     "Accept: application/json", "Connection: close"]
            token = self._bearer()
            if token:
                lines.append(f"Authorization: Bearer {token}")
            if body is not None:
                lines += [f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b""))
            async with asyncio.timeout(self.timeout):
                await writer.drain()
            async with asyncio.timeout(self.timeout):
                head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            writer.close()
            raise KubeProtocolError("reply headers over the bound") from None
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
            writer.close()
            raise KubeUnreachable(f"the API server at {self.config.server} did not answer: {exc or type(exc).__name__}") from None
        if len(head) > MAX_HEADER_BYTES:
            writer.close()
            raise KubeProtocolError("reply headers over the bound")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            writer.close()
            raise KubeProtocolError(f"not an HTTP reply: {status_line[:80]!r}")
        headers = {}
        for line in header_lines:
            key, sep, value = line.partition(":")
            if sep:
                headers[key.strip().lower()] = value.strip()
        try:
            return _Reply(reader, writer, int(parts[1]), headers)
        except KubeProtocolError:
            writer.close()
            raise

    async def request(self, method: str, path: str, *, query: dict[str, Any] | None = None, body: Any = None,
                      content_type: str = "application/json") -> dict[str, Any]:
        """One call; the reply's JSON object. Raises KubeApiError, KubeUnreachable, KubeProtocolError."""
        target = path + ("?" + urllib.parse.urlencode({k: v for k, v in (query or {}).items() if v is not None}) if query else "")
        payload = json.dumps(body).encode() if body is not None else None
        reply = await self._open(method, target, payload, content_type)
        try:
            async with asyncio.timeout(self.timeout):
                data = await reply.body()
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            raise KubeUnreachable(f"the API server broke off its reply: {exc or type(exc).__name__}") from None
        finally:
            reply.close()
        if reply.status >= 300:
            raise _status_error(reply.status, data)
        return _json(data)

    # -- verbs ---------------------------------------------------------------------------

    async def get(self, resource: Resource, name: str, *, namespace: str | None = None) -> dict[str, Any]:
        return await self.request("GET", resource.path(namespace=namespace, name=name))

    async def list(self, resource: Resource, *, namespace: str | None = None, label_selector: str | None = None,
                   field_selector: str | None = None, limit: int = LIST_PAGE) -> tuple[list[dict[str, Any]], str]:
        """Every object (all pages) and the list's resourceVersion, to watch from."""
        items: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            page = await self.request("GET", resource.path(namespace=namespace), query={
                "limit": limit, "continue": token, "labelSelector": label_selector, "fieldSelector": field_selector})
            meta = page.get("metadata")
            got = page.get("items")
            if not isinstance(meta, dict) or not isinstance(got, list) and got is not None:
                raise KubeProtocolError(f"a {resource.kind} list without metadata or items")
            items += [i for i in got or [] if isinstance(i, dict)]
            token = meta.get("continue") or None
            if not token:
                return items, str(meta.get("resourceVersion") or "")
            if not isinstance(token, str):
                raise KubeProtocolError("a continue token that is not a string")

    async def watch(self, resource: Resource, *, resource_version: str, namespace: str | None = None,
                    label_selector: str | None = None, field_selector: str | None = None,
                    timeout_seconds: int = 300, bookmarks: bool = True) -> AsyncIterator[WatchEvent]:
        """Events after `resource_version` until the server ends the watch (normally after
        `timeout_seconds`). An ERROR event raises KubeApiError (410: list again)."""
        query = {"watch": "1", "resourceVersion": resource_version or None, "allowWatchBookmarks": "true" if bookmarks else None,
                 "timeoutSeconds": timeout_seconds, "labelSelector": label_selector, "fieldSelector": field_selector}
        target = resource.path(namespace=namespace) + "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        reply = await self._open("GET", target, None, "application/json")
        try:
            if reply.status >= 300:
                async with asyncio.timeout(self.timeout):
                    data = await reply.body()
                raise _status_error(reply.status, data)
            buffer = bytearray()
            stream = reply.chunks().__aiter__()
            idle = timeout_seconds + WATCH_IDLE_SLACK
            while True:
                try:
                    async with asyncio.timeout(idle):
                        chunk = await stream.__anext__()
                except StopAsyncIteration:
                    return
                except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                    raise KubeUnreachable(f"the {resource.plural} watch broke off: {exc or type(exc).__name__}") from None
                buffer += chunk
                if len(buffer) > MAX_EVENT_BYTES:
                    raise KubeProtocolError(f"a watch event over {MAX_EVENT_BYTES} bytes")
                while (end := buffer.find(b"\n")) >= 0:
                    line, buffer = bytes(buffer[:end]), buffer[end + 1 :]
                    if line.strip():
                        yield parse_event(line)
        finally:
            reply.close()

    async def patch(self, resource: Resource, name: str, body: Any, *, namespace: str | None = None,
                    subresource: str | None = None, patch_type: str = "strategic") -> dict[str, Any]:
        return await self.request("PATCH", resource.path(namespace=namespace, name=name, subresource=subresource),
                                  body=body, content_type=PATCH_TYPES[patch_type])


def parse_event(line: bytes) -> WatchEvent:
    """One watch line. Raises KubeProtocolError (malformed) or KubeApiError (an ERROR event)."""
    event = _json(line)
    kind, obj = event.get("type"), event.get("object")
    if kind not in EVENT_TYPES or not isinstance(obj, dict):
        raise KubeProtocolError(f"a watch event of type {str(kind)[:20]!r} without an object")
    if kind == "ERROR":
        code = obj.get("code")
        raise KubeApiError(code if isinstance(code, int) and not isinstance(code, bool) else 500,
                           str(obj.get("reason", ""))[:200], str(obj.get("message", ""))[:500])
    meta = obj.get("metadata")
    if not isinstance(meta, dict) or (kind != "BOOKMARK" and not isinstance(meta.get("name"), str)):
        raise KubeProtocolError(f"a {kind} event whose object has no metadata.name")
    return WatchEvent(kind, obj)


def object_key(obj: dict[str, Any]) -> str:
    """`namespace/name`, or `name` for a cluster-scoped object."""
    meta = obj.get("metadata") or {}
    return f"{meta['namespace']}/{meta['name']}" if meta.get("namespace") else str(meta.get("name", ""))
