"""Peer discovery for the DaemonSet: environment, file, and a fake API server's node list
(served on loopback)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from meshnet.cni import kube

NODES = {
    "kind": "NodeList",
    "apiVersion": "v1",
    "items": [
        {"metadata": {"name": "n1"}, "status": {"addresses": [{"type": "Hostname", "address": "n1"}, {"type": "InternalIP", "address": "10.0.0.1"}]}},
        {"metadata": {"name": "n2"}, "status": {"addresses": [{"type": "ExternalIP", "address": "203.0.113.2"}, {"type": "InternalIP", "address": "10.0.0.2"}]}},
        {"metadata": {"name": "n3"}, "status": {"addresses": [{"type": "ExternalIP", "address": "203.0.113.3"}]}},
        {"metadata": {"name": "n4"}, "status": {"addresses": [{"type": "Hostname", "address": "n4"}]}},
    ],
}


@pytest.fixture
def api(tmp_path):
    seen = []
    state = {"status": 200, "body": NODES}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append((self.path, self.headers.get("Authorization")))
            body = json.dumps(state["body"]).encode()
            self.send_response(state["status"])
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("sekrit\n")
    try:
        yield {"url": f"http://127.0.0.1:{server.server_address[1]}", "sa": str(sa), "seen": seen, "state": state}
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_peers_from_env_and_file(tmp_path):
    f = tmp_path / "peers"
    f.write_text("# seeds\n192.168.1.5 192.168.1.6:6783\n\n192.168.1.7, 192.168.1.5  # dup\n")
    peers, n = kube.discover({"MESHNET_PEERS": "10.1.1.1,10.1.1.2 10.1.1.1", "MESHNET_PEERS_FILE": str(f)})
    assert peers == ["10.1.1.1", "10.1.1.2", "192.168.1.5", "192.168.1.6:6783", "192.168.1.7"]
    assert n == 0


def test_missing_peers_file(tmp_path):
    with pytest.raises(kube.DiscoveryError):
        kube.discover({"MESHNET_PEERS_FILE": str(tmp_path / "nope")})


def test_node_list_from_the_api(api):
    env = {"MESHNET_KUBE_API": api["url"], "MESHNET_KUBE_SA_DIR": api["sa"], "NODE_NAME": "n1", "HOST_IP": "10.0.0.1"}
    peers, n = kube.discover(env)
    assert peers == ["10.0.0.2", "203.0.113.3"]  # InternalIP first, ExternalIP otherwise; not ourselves
    assert n == 3  # nodes with an address
    assert api["seen"] == [("/api/v1/nodes", "Bearer sekrit")]


def test_self_recognised_by_host_ip_only(api):
    env = {"MESHNET_KUBE_API": api["url"], "MESHNET_KUBE_SA_DIR": api["sa"], "HOST_IP": "10.0.0.2", "MESHNET_PEERS": "10.0.0.2:6783"}
    peers, _ = kube.discover(env)
    assert peers == ["10.0.0.1", "203.0.113.3"]


def test_rbac_refusal_is_explained(api):
    api["state"]["status"] = 403
    api["state"]["body"] = {"kind": "Status", "code": 403}
    with pytest.raises(kube.DiscoveryError, match="RBAC"):
        kube.discover({"MESHNET_KUBE_API": api["url"], "MESHNET_KUBE_SA_DIR": api["sa"]})


def test_not_a_node_list(api):
    api["state"]["body"] = {"kind": "PodList", "items": []}
    with pytest.raises(kube.DiscoveryError, match="NodeList"):
        kube.discover({"MESHNET_KUBE_API": api["url"], "MESHNET_KUBE_SA_DIR": api["sa"]})


def test_not_in_a_cluster():
    with pytest.raises(kube.DiscoveryError, match="not in a cluster"):
        kube.api_nodes({})


def test_peers_command(api, capsys):
    env = {"MESHNET_KUBE_API": api["url"], "MESHNET_KUBE_SA_DIR": api["sa"], "NODE_NAME": "n2"}
    assert kube.main(["peers"], env=env) == 0
    assert capsys.readouterr().out.split() == ["10.0.0.1", "203.0.113.3"]


def test_launch_execs_meshnet_with_peers_and_consensus(api, monkeypatch):
    calls = []

    def fake_exec(path, argv, env):
        calls.append((argv, env))
        raise SystemExit(0)

    monkeypatch.setattr(kube.os, "execvpe", fake_exec)
    env = {"MESHNET_KUBE_API": api["url"], "MESHNET_KUBE_SA_DIR": api["sa"], "NODE_NAME": "n1"}
    with pytest.raises(SystemExit):
        kube.main(["launch", "--", "--log-level", "debug"], env=env)
    argv, out_env = calls[0]
    assert argv[-5:] == ["--foreground", "--log-level", "debug", "10.0.0.2", "203.0.113.3"]
    assert "launch" in argv
    assert out_env["MESHNET_IPALLOC_INIT"] == "consensus=3"


def test_launch_keeps_an_explicit_ipalloc_init(monkeypatch):
    calls = []
    monkeypatch.setattr(kube.os, "execvpe", lambda p, a, e: calls.append(e) or (_ for _ in ()).throw(SystemExit(0)))
    with pytest.raises(SystemExit):
        kube.main(["launch"], env={"MESHNET_PEERS": "10.9.9.9", "MESHNET_IPALLOC_INIT": "seed=aa"})
    assert calls[0]["MESHNET_IPALLOC_INIT"] == "seed=aa"
