"""A fake Kubernetes API server for meshnet's agents, faithful where they depend on it.

What it does as the real one does (kube-apiserver, "API concepts"):
- objects as the API serves them: `kind`/`apiVersion` on single objects and watch events,
  not on list items; `metadata.uid`, `creationTimestamp`, `resourceVersion` (one counter
  for every write, as etcd's revision), `generation`;
- list: `{"kind": "NodeList", "metadata": {"resourceVersion", "continue"?,
  "remainingItemCount"?}, "items"}`, paged with `limit`/`continue` from one snapshot; an
  expired continue token (after `compact()`) answers 410 Expired;
- watch (`?watch=1&resourceVersion=RV`): a chunked stream of `{"type", "object"}` lines,
  the history after RV replayed first; `allowWatchBookmarks` gets BOOKMARK events (only
  `kind`, `apiVersion`, `metadata.resourceVersion`) every `bookmark_interval` and on
  `bookmark()`; `timeoutSeconds` ends the stream cleanly; a resourceVersion older than the
  compacted history gets an ERROR event with a Status of code 410 (reason Expired);
- `labelSelector` (=, ==, !=, in, notin, exists, !exists) and `fieldSelector`
  (metadata.name, metadata.namespace; = == !=); under a selector an object that stops
  matching is a DELETED event and one that starts matching an ADDED one;
- PATCH with strategic-merge (lists merged by their merge key: `conditions` and
  `addresses` by `type`, `containers` by `name`) or merge patch; the `status` subresource
  changes only `.status`, the main resource never does;
- bearer-token authentication (401) and RBAC from a ClusterRole's rules (403), with every
  request recorded as `(verb, group, resource)` in `audit`, so a test can check a
  manifest's ClusterRole grants exactly what an agent uses;
- HTTPS with a self-signed certificate (`tls=True`; `ca_file` to trust).

Test controls: `create/update/delete/get`, `compact()` (history gone: 410 for older
resourceVersions), `drop_watches()` (connections cut mid-stream, no final chunk),
`bookmark()`. Start with `start()` (returns the URL), stop with `stop()`.
"""

from __future__ import annotations

import base64
import copy
import datetime
import json
import os
import shutil
import socket
import ssl
import tempfile
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

KINDS = {  # plural -> (group, version, kind, namespaced)
    "nodes": ("", "v1", "Node", False),
    "pods": ("", "v1", "Pod", True),
    "namespaces": ("", "v1", "Namespace", False),
    "services": ("", "v1", "Service", True),
    "endpoints": ("", "v1", "Endpoints", True),
    "networkpolicies": ("networking.k8s.io", "v1", "NetworkPolicy", True),
}
MERGE_KEYS = {"conditions": "type", "addresses": "type", "containers": "name", "initContainers": "name", "taints": "key"}


def node_object(name: str, internal_ip: str, *, ready: bool = True, pod_cidr: str | None = None) -> dict[str, Any]:
    """A Node as a kubelet registers it (the fields agents read, real shapes)."""
    now = _now()
    return {
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}},
        "spec": {"podCIDR": pod_cidr} if pod_cidr else {},
        "status": {
            "addresses": [{"type": "InternalIP", "address": internal_ip}, {"type": "Hostname", "address": name}],
            "conditions": [{"type": "Ready", "status": "True" if ready else "False", "reason": "KubeletReady",
                            "message": "kubelet is posting ready status", "lastHeartbeatTime": now, "lastTransitionTime": now}],
            "nodeInfo": {"kubeletVersion": "v1.32.4", "containerRuntimeVersion": "containerd://1.6.20", "operatingSystem": "linux"},
        },
    }


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code}


def _key(obj: dict[str, Any]) -> str:
    m = obj["metadata"]
    return f"{m['namespace']}/{m['name']}" if m.get("namespace") else m["name"]


def parse_label_selector(text: str) -> list[tuple[str, str, set[str]]]:
    reqs: list[tuple[str, str, set[str]]] = []
    depth, part, parts = 0, "", []
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(part)
            part = ""
        else:
            part += ch
    parts.append(part)
    for p in (p.strip() for p in parts if p.strip()):
        for op in (" notin ", " in "):
            if op in p:
                k, vals = p.split(op, 1)
                reqs.append((k.strip(), op.strip(), {v.strip() for v in vals.strip().strip("()").split(",")}))
                break
        else:
            if "!=" in p:
                k, v = p.split("!=", 1)
                reqs.append((k.strip(), "!=", {v.strip()}))
            elif "=" in p:
                k, v = p.replace("==", "=").split("=", 1)
                reqs.append((k.strip(), "=", {v.strip()}))
            elif p.startswith("!"):
                reqs.append((p[1:].strip(), "!exists", set()))
            else:
                reqs.append((p, "exists", set()))
    return reqs


def _matches(obj: dict[str, Any], labels: list, fields: list) -> bool:
    have = obj["metadata"].get("labels") or {}
    for k, op, vals in labels:
        v = have.get(k)
        if (op == "=" and v not in vals) or (op == "!=" and v in vals) or (op == "in" and v not in vals) \
                or (op == "notin" and v in vals) or (op == "exists" and k not in have) or (op == "!exists" and k in have):
            return False
    for path, op, value in fields:
        got = obj["metadata"].get(path.split(".", 1)[1], "") if path.startswith("metadata.") else None
        if (op == "=" and got != value) or (op == "!=" and got == value):
            return False
    return True


def _fields(text: str) -> list[tuple[str, str, str]]:
    out = []
    for p in (p for p in text.split(",") if p):
        if "!=" in p:
            k, v = p.split("!=", 1)
            out.append((k, "!=", v))
        else:
            k, v = p.replace("==", "=").split("=", 1)
            out.append((k, "=", v))
    return out


def strategic_merge(target: Any, patch: Any, key: str = "") -> Any:
    if isinstance(patch, dict) and isinstance(target, dict):
        out = dict(target)
        for k, v in patch.items():
            if v is None:
                out.pop(k, None)
            else:
                out[k] = strategic_merge(out.get(k), v, k)
        return out
    if isinstance(patch, list) and isinstance(target, list) and key in MERGE_KEYS:
        mk = MERGE_KEYS[key]
        out = [copy.deepcopy(t) for t in target]
        for item in patch:
            idx = next((i for i, t in enumerate(out) if isinstance(item, dict) and isinstance(t, dict) and t.get(mk) == item.get(mk)), None)
            if idx is None:
                out.append(item)
            else:
                out[idx] = strategic_merge(out[idx], item)
        return out
    return copy.deepcopy(patch)


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


class FakeApi:
    def __init__(self, *, token: str | None = None, rules: list[dict] | None = None, tls: bool = False,
                 host: str = "127.0.0.1", port: int = 0, bookmark_interval: float | None = 5.0, page_snapshots: int = 64):
        self.token, self.rules, self.tls = token, rules, tls
        self.host, self.port = host, port
        self.bookmark_interval = bookmark_interval
        self.objects: dict[str, dict[str, dict[str, Any]]] = {p: {} for p in KINDS}
        self.rv = 100
        self.compacted = 0  # events at or below this revision are forgotten
        self.history: list[tuple[int, str, str, dict[str, Any], dict[str, Any] | None]] = []  # rv, plural, type, obj, old
        self.audit: list[tuple[str, str, str]] = []
        self.denied: list[tuple[str, str, str]] = []  # refused by RBAC (403)
        self.requests: list[str] = []
        self.cond = threading.Condition()
        self._snapshots: dict[str, tuple[int, list[dict[str, Any]]]] = {}
        self._page_snapshots = page_snapshots
        self._watchers: set[socket.socket] = set()
        self._generation = 0  # bumped by drop_watches and bookmark
        self._bookmark_now = 0
        self.server: ThreadingHTTPServer | None = None
        self.ca_file: str | None = None
        self._tmp = tempfile.mkdtemp(prefix="mnk-fakeapi-")

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> str:
        api = self

        class Handler(_Handler):
            fake = api

        self.server = ThreadingHTTPServer((self.host, self.port), Handler)
        self.server.daemon_threads = True
        if self.tls:
            self.ca_file = self._make_cert()
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(self.ca_file, f"{self._tmp}/key.pem")
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, name="fakeapi", daemon=True).start()
        return self.url

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def stop(self) -> None:
        self.drop_watches()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def service_account_dir(self) -> str:
        """A directory like /var/run/secrets/kubernetes.io/serviceaccount for the client."""
        d = f"{self._tmp}/sa"
        os.makedirs(d, exist_ok=True)
        with open(f"{d}/token", "w") as f:
            f.write((self.token or "") + "\n")
        if self.ca_file:
            with open(self.ca_file) as src, open(f"{d}/ca.crt", "w") as dst:
                dst.write(src.read())
        with open(f"{d}/namespace", "w") as f:
            f.write("kube-system")
        return d

    def _make_cert(self) -> str:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
        import ipaddress

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(self.host)), x509.DNSName("localhost")]), False)
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
                .sign(key, hashes.SHA256()))
        with open(f"{self._tmp}/cert.pem", "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        with open(f"{self._tmp}/key.pem", "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        return f"{self._tmp}/cert.pem"

    # -- the store (tests call these directly; the HTTP verbs too) ---------------------------

    def _typed(self, plural: str, obj: dict[str, Any]) -> dict[str, Any]:
        group, version, kind, _ = KINDS[plural]
        return {"kind": kind, "apiVersion": f"{group}/{version}" if group else version, **obj}

    def _record(self, plural: str, kind: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        self.history.append((self.rv, plural, kind, copy.deepcopy(obj), copy.deepcopy(old)))
        self.cond.notify_all()

    def create(self, plural: str, obj: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
        with self.cond:
            obj = copy.deepcopy(obj)
            obj.pop("kind", None)
            obj.pop("apiVersion", None)
            meta = obj.setdefault("metadata", {})
            if KINDS[plural][3]:
                meta["namespace"] = namespace or meta.get("namespace") or "default"
            if _key(obj) in self.objects[plural]:
                raise KeyError(f"{plural} {_key(obj)} already exists")
            self.rv += 1
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), resourceVersion=str(self.rv), generation=1)
            self.objects[plural][_key(obj)] = obj
            self._record(plural, "ADDED", obj, None)
            return self._typed(plural, copy.deepcopy(obj))

    def update(self, plural: str, obj: dict[str, Any]) -> dict[str, Any]:
        with self.cond:
            old = self.objects[plural][_key(obj)]
            new = copy.deepcopy(obj)
            new.pop("kind", None)
            new.pop("apiVersion", None)
            self.rv += 1
            new["metadata"] = {**old["metadata"], **new.get("metadata", {}), "resourceVersion": str(self.rv), "uid": old["metadata"]["uid"]}
            if new.get("spec") != old.get("spec"):
                new["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
            self.objects[plural][_key(obj)] = new
            self._record(plural, "MODIFIED", new, old)
            return self._typed(plural, copy.deepcopy(new))

    def delete(self, plural: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        with self.cond:
            key = f"{namespace}/{name}" if namespace else name
            obj = self.objects[plural].pop(key)
            self.rv += 1
            obj = copy.deepcopy(obj)
            obj["metadata"]["resourceVersion"] = str(self.rv)
            self._record(plural, "DELETED", obj, obj)
            return self._typed(plural, obj)

    def get(self, plural: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        with self.cond:
            obj = self.objects[plural].get(f"{namespace}/{name}" if namespace else name)
            return self._typed(plural, copy.deepcopy(obj)) if obj else None

    def compact(self) -> None:
        """Forget the history so far (etcd compaction): older resourceVersions get 410."""
        with self.cond:
            self.compacted = self.rv
            self.history.clear()
            self._snapshots.clear()

    def drop_watches(self) -> None:
        """Cut every open watch connection mid-stream (no final chunk)."""
        with self.cond:
            self._generation += 1
            for sock in list(self._watchers):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self.cond.notify_all()

    def bookmark(self) -> None:
        with self.cond:
            self._bookmark_now += 1
            self.cond.notify_all()

    def allowed(self, verb: str, group: str, resource: str) -> bool:
        if self.rules is None:
            return True
        return any((group in r.get("apiGroups", []) or "*" in r.get("apiGroups", []))
                   and (resource in r.get("resources", []) or "*" in r.get("resources", []))
                   and (verb in r.get("verbs", []) or "*" in r.get("verbs", [])) for r in self.rules)


class _Handler(BaseHTTPRequestHandler):
    fake: FakeApi
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: Any) -> None:
        pass

    def _send(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self) -> tuple[str, str | None, str | None, str | None, dict[str, str]] | None:
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        parts = [urllib.parse.unquote(p) for p in url.path.strip("/").split("/")]
        if parts[:2] == ["api", "v1"]:
            rest = parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            rest = parts[3:]
        else:
            return None
        namespace = None
        if rest[:1] == ["namespaces"] and len(rest) >= 3:
            namespace, rest = rest[1], rest[2:]
        if not rest or rest[0] not in KINDS:
            return None
        return rest[0], namespace, rest[1] if len(rest) > 1 else None, rest[2] if len(rest) > 2 else None, query

    def _gate(self, verb: str, plural: str, sub: str | None) -> bool:
        fake = self.fake
        group = KINDS[plural][0]
        resource = f"{plural}/{sub}" if sub else plural
        with fake.cond:
            fake.audit.append((verb, group, resource))
            fake.requests.append(f"{self.command} {self.path}")
        if fake.token is not None and self.headers.get("Authorization") != f"Bearer {fake.token}":
            self._send(401, _status(401, "Unauthorized", "Unauthorized"))
            return False
        if not fake.allowed(verb, group, resource):
            with fake.cond:
                fake.denied.append((verb, group, resource))
            self._send(403, _status(403, "Forbidden", f'{resource} is forbidden: cannot {verb} resource "{resource}"'))
            return False
        return True

    def do_GET(self) -> None:
        route = self._route()
        if route is None:
            return self._send(404, _status(404, "NotFound", "the server could not find the requested resource"))
        plural, namespace, name, sub, query = route
        if name:
            if not self._gate("get", plural, sub):
                return
            obj = self.fake.get(plural, name, namespace)
            return self._send(200, obj) if obj else self._send(404, _status(404, "NotFound", f'{plural} "{name}" not found'))
        watch = query.get("watch") in ("1", "true")
        if not self._gate("watch" if watch else "list", plural, None):
            return
        labels = parse_label_selector(query.get("labelSelector", ""))
        fields = _fields(query.get("fieldSelector", ""))
        if watch:
            return self._watch(plural, namespace, labels, fields, query)
        self._list(plural, namespace, labels, fields, query)

    def _list(self, plural: str, namespace: str | None, labels: list, fields: list, query: dict[str, str]) -> None:
        fake = self.fake
        group, version, kind, _ = KINDS[plural]
        limit = int(query.get("limit") or 0)
        with fake.cond:
            if query.get("continue"):
                token = query["continue"]
                snap = fake._snapshots.get(token)
                if snap is None:
                    return self._send(410, _status(410, "Expired", "The provided continue parameter is too old to display a consistent list result."))
                rv, items = snap
            else:
                rv = fake.rv
                items = [copy.deepcopy(o) for k, o in sorted(fake.objects[plural].items())
                         if (namespace is None or o["metadata"].get("namespace") == namespace) and _matches(o, labels, fields)]
            meta: dict[str, Any] = {"resourceVersion": str(rv)}
            if limit and len(items) > limit:
                page, rest = items[:limit], items[limit:]
                token = base64.urlsafe_b64encode(json.dumps({"rv": rv, "n": uuid.uuid4().hex}).encode()).decode()
                if len(fake._snapshots) >= fake._page_snapshots:
                    fake._snapshots.pop(next(iter(fake._snapshots)))
                fake._snapshots[token] = (rv, rest)
                meta.update({"continue": token, "remainingItemCount": len(rest)})
            else:
                page = items
        self._send(200, {"kind": f"{kind}List", "apiVersion": f"{group}/{version}" if group else version, "metadata": meta, "items": page})

    def _chunk(self, obj: dict[str, Any]) -> None:
        data = json.dumps(obj).encode() + b"\n"
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _watch(self, plural: str, namespace: str | None, labels: list, fields: list, query: dict[str, str]) -> None:
        fake = self.fake
        start = int(query.get("resourceVersion") or 0)
        timeout = float(query.get("timeoutSeconds") or 1800)
        bookmarks = query.get("allowWatchBookmarks") == "true"
        group, version, kind, _ = KINDS[plural]
        api_version = f"{group}/{version}" if group else version
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        sock = self.connection
        end = time.monotonic() + timeout
        with fake.cond:
            if not start:
                start = fake.rv  # "0"/"": from now (we send no synthetic ADDED for existing objects)
            if start < fake.compacted:
                self._chunk({"type": "ERROR", "object": _status(410, "Expired", f"too old resource version: {start} ({fake.compacted})")})
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
                self.close_connection = True
                return
            fake._watchers.add(sock)
            generation, seen_bookmark = fake._generation, fake._bookmark_now
            sent = start
            next_bookmark = time.monotonic() + (fake.bookmark_interval or 1e9)
        try:
            while True:
                with fake.cond:
                    out = [h for h in fake.history if h[0] > sent and h[1] == plural]
                    if not out:
                        now = time.monotonic()
                        if fake._generation != generation:
                            raise ConnectionAbortedError
                        if now >= end:
                            break
                        if bookmarks and (now >= next_bookmark or fake._bookmark_now != seen_bookmark):
                            seen_bookmark = fake._bookmark_now
                            next_bookmark = now + (fake.bookmark_interval or 1e9)
                            sent = max(sent, fake.rv)
                            self._chunk({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": api_version,
                                                                        "metadata": {"resourceVersion": str(sent)}}})
                            continue
                        fake.cond.wait(min(end, next_bookmark) - now)
                        continue
                for rv, _, typ, obj, old in out:
                    sent = rv
                    if namespace is not None and obj["metadata"].get("namespace") != namespace:
                        continue
                    now_match = typ != "DELETED" and _matches(obj, labels, fields)
                    was_match = old is not None and _matches(old, labels, fields)
                    if typ == "DELETED":
                        typ = "DELETED" if was_match else ""
                    elif now_match and not was_match:
                        typ = "ADDED"
                    elif was_match and not now_match:
                        typ = "DELETED"
                    elif not now_match:
                        typ = ""
                    if typ:
                        self._chunk({"type": typ, "object": {"kind": kind, "apiVersion": api_version, **obj}})
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (ConnectionAbortedError, OSError):
            pass
        finally:
            with fake.cond:
                fake._watchers.discard(sock)
            self.close_connection = True

    def do_PATCH(self) -> None:
        route = self._route()
        if route is None or route[2] is None:
            return self._send(404, _status(404, "NotFound", "no such object"))
        plural, namespace, name, sub, _ = route
        if not self._gate("patch", plural, sub):
            return
        ctype = self.headers.get("Content-Type", "")
        try:
            patch = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        except ValueError:
            return self._send(400, _status(400, "BadRequest", "the patch is not JSON"))
        if ctype not in ("application/strategic-merge-patch+json", "application/merge-patch+json"):
            return self._send(415, _status(415, "UnsupportedMediaType", f"the body of the request was in an unknown format: {ctype}"))
        fake = self.fake
        with fake.cond:
            old = fake.objects[plural].get(f"{namespace}/{name}" if namespace else name)
            if old is None:
                return self._send(404, _status(404, "NotFound", f'{plural} "{name}" not found'))
            merge = strategic_merge if ctype.startswith("application/strategic") else merge_patch
            new = merge(copy.deepcopy(old), patch)
            if sub == "status":
                new = {**old, "status": new.get("status", old.get("status"))}
            elif "status" in old:
                new["status"] = old["status"]
            else:
                new.pop("status", None)
            new["metadata"] = {**new["metadata"], "name": old["metadata"]["name"]}
            result = fake.update(plural, new)
        self._send(200, result)

    def do_POST(self) -> None:
        route = self._route()
        if route is None or route[2] is not None:
            return self._send(405, _status(405, "MethodNotAllowed", "the server does not allow this method"))
        plural, namespace, _, _, _ = route
        if not self._gate("create", plural, None):
            return
        obj = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        try:
            self._send(201, self.fake.create(plural, obj, namespace))
        except KeyError as exc:
            self._send(409, _status(409, "AlreadyExists", str(exc)))

    def do_DELETE(self) -> None:
        route = self._route()
        if route is None or route[2] is None:
            return self._send(405, _status(405, "MethodNotAllowed", "the server does not allow this method"))
        plural, namespace, name, _, _ = route
        if not self._gate("delete", plural, None):
            return
        try:
            self._send(200, self.fake.delete(plural, name, namespace))
        except KeyError:
            self._send(404, _status(404, "NotFound", f'{plural} "{name}" not found'))
