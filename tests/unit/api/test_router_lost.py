"""A router that goes away mid-request is told from one that never answered, and an
interrupted `meshnet attach` waits for the router and reports what it found."""

from __future__ import annotations

import json
import os
import socket
import threading

import pytest

from meshnet.api.client import ApiClient
from meshnet.cli import commands
from meshnet.cli.main import main
from meshnet.errors import RouterLost, RouterUnavailable


class Router:
    """A unix-socket HTTP server: the first `die` requests are read and then dropped without
    an answer (the router was killed), later ones get `reply`."""

    def __init__(self, path: str, *, die: int, reply: dict):
        self.path, self.die, self.reply = path, die, reply
        self.bodies: list[dict] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(4)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(4096)
                head, body = data.split(b"\r\n\r\n", 1)
                length = int(next(l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")))
                while len(body) < length:
                    body += conn.recv(4096)
                self.bodies.append(json.loads(body))
                if len(self.bodies) <= self.die:
                    continue  # killed before it answered
                out = json.dumps(self.reply).encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(out), out))

    def close(self) -> None:
        self.sock.close()


def test_the_client_tells_a_lost_router_from_an_absent_one(tmp_path):
    path = str(tmp_path / "meshnet.sock")
    with pytest.raises(RouterUnavailable) as absent:
        ApiClient(path).post("/attach", {})
    assert not isinstance(absent.value, RouterLost)
    router = Router(path, die=1, reply={})
    try:
        with pytest.raises(RouterLost):
            ApiClient(path).post("/attach", {"netns": "x"})
    finally:
        router.close()


def test_an_interrupted_attach_that_had_completed_says_so(tmp_path, capsys, monkeypatch):
    path = str(tmp_path / "meshnet.sock")
    done = {"id": "netns:/run/netns/x", "cidrs": ["10.32.0.5/12"], "state": "completed earlier"}
    router = Router(path, die=1, reply=done)
    monkeypatch.setattr(commands, "RECHECK_POLL", 0.01)
    try:
        assert main(["attach", "--socket", path, "/run/netns/x"]) == 0
    finally:
        router.close()
    out, err = capsys.readouterr()
    assert json.loads(out)["state"] == "completed earlier" and "had completed" in err
    assert router.bodies == [{"netns": "/run/netns/x", "cidrs": [], "ifname": "mesh0"}] * 2  # asked again, the same


def test_an_interrupted_attach_whose_router_stays_away_fails_saying_it_is_unknown(tmp_path, capsys, monkeypatch):
    path = str(tmp_path / "meshnet.sock")
    router = Router(path, die=1, reply={})
    monkeypatch.setattr(commands, "RECHECK_WAIT", 0.3)
    monkeypatch.setattr(commands, "RECHECK_POLL", 0.01)
    real_post = ApiClient.post

    def post(self, route, body=None):
        try:
            return real_post(self, route, body)
        finally:
            router.close()  # gone for good after the first request
            if os.path.exists(path):
                os.unlink(path)

    monkeypatch.setattr(ApiClient, "post", post)
    assert main(["attach", "--socket", path, "/run/netns/x"]) == 1
    err = capsys.readouterr().err
    assert "unknown" in err and "run the same attach again" in err
