"""API input: every bad parameter is a 400 naming it, before any service is called; an
unknown peer in rmpeer is a 404 (a non-zero exit), a removed one says so."""

import asyncio
import json
import os
import socket
import tempfile
from types import SimpleNamespace

import pytest

from meshnet.api.server import ApiServer
from meshnet.cli import main as cli
from meshnet.errors import NotFound, UsageError
from meshnet.mesh.topology import PeerEntry
from meshnet.runtime.endpoints import Endpoint
from meshnet.runtime.handlers import RouterHandlers

ALICE, GONE, NOBODY = b"a" * 16, b"g" * 16, b"z" * 16


class FakeIpam:
    def knows(self, peer):
        return {GONE: "removed"}.get(peer)

    def rmpeer(self, peer):
        return 0


def handlers():
    calls = []

    async def attach(*args, **kwargs):
        calls.append(("attach", args, kwargs))
        return {}

    async def allocate(*args, **kwargs):
        calls.append(("allocate", args, kwargs))
        return SimpleNamespace(address="10.32.0.1", cidr="10.32.0.1/12")

    entries = {n: PeerEntry(n, nick, 1, 1, 6783, 6783) for n, nick in ((ALICE, "alice"), (b"b" * 16, "twin"), (b"c" * 16, "twin"))}
    router = SimpleNamespace(
        endpoints=SimpleNamespace(attach=attach, allocate=allocate),
        ipam=FakeIpam(),
        core=SimpleNamespace(topology=SimpleNamespace(entries=entries)),
    )
    return RouterHandlers(router), calls


def run(coro):
    return asyncio.run(coro)


@pytest.mark.parametrize(
    "body, field",
    [
        ({"netns": "x", "name": "Not A Label!"}, "'name'"),
        ({"netns": "x", "name": "a" * 64}, "'name'"),
        ({"netns": "x", "ifname": "much-too-long-ifname"}, "'ifname'"),
        ({"netns": "x", "ifname": "a/b"}, "'ifname'"),
        ({"netns": "x", "cidrs": "10.32.0.1/12"}, "'cidrs'"),
        ({"netns": "x", "cidrs": [5]}, "'cidrs'"),
        ({"netns": "x", "cidrs": ["10.32.0.1/12"] * 9}, "'cidrs'"),
        ({"netns": 5}, "'netns'"),
        ({}, "'netns'"),
        ({"netns": "x", "id": "i" * 600}, "'id'"),
    ],
)
def test_attach_names_the_bad_field(body, field):
    h, calls = handlers()
    with pytest.raises(UsageError, match=field):
        run(h.attach(body))
    assert calls == []


@pytest.mark.parametrize("wait", ["abc", "nan", "inf", -1, 601, True, None, [], {}])
def test_allocate_wait_must_be_seconds(wait):
    h, calls = handlers()
    with pytest.raises(UsageError, match="'wait'"):
        run(h.ipam_allocate({"owner": "o", "wait": wait}))
    assert calls == []


def test_allocate_accepts_seconds_as_text():
    h, calls = handlers()
    assert run(h.ipam_allocate({"owner": "o", "wait": "2.5"}))["address"] == "10.32.0.1"
    assert calls[0][2]["wait"] == 2.5


def test_rmpeer_knows_what_it_removes():
    h, _ = handlers()
    with pytest.raises(NotFound, match="not in the topology"):
        run(h.ipam_rmpeer({"peer": NOBODY.hex()}))
    with pytest.raises(NotFound, match="no peer 'bogus'"):
        run(h.ipam_rmpeer({"peer": "bogus"}))
    with pytest.raises(UsageError, match="names 2 peers"):
        run(h.ipam_rmpeer({"peer": "twin"}))
    assert run(h.ipam_rmpeer({"peer": GONE.hex()})) == {"peer": GONE.hex(), "reclaimed": 0, "already_removed": True}
    assert run(h.ipam_rmpeer({"peer": "alice"}))["already_removed"] is False


@pytest.mark.parametrize(
    "body, field",
    [
        ({"id": "e", "mac": 5}, "'mac'"),
        ({"id": "e", "mac": "02:00:00:00:00:01", "ips": [5]}, "'ips'"),  # was stored, then refused by every peer
        ({"id": "e", "mac": "02:00:00:00:00:01", "ips": ["10.0.0.1/8"] * 9}, "'ips'"),
        ({"id": "e", "mac": "02:00:00:00:00:01", "name": 5}, "'name'"),
        ({"id": "", "mac": "02:00:00:00:00:01"}, "'id'"),
        ({"id": "e", "mac": "02:00:00:00:00:01", "host_if": "x" * 16}, "'host_if'"),
    ],
)
def test_endpoint_add_names_the_bad_field(body, field):
    with pytest.raises(UsageError, match=field):
        Endpoint.parse(body)


def _request(path: str, raw: bytes) -> tuple[int, dict]:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(path)
        s.sendall(b"POST /x HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(raw) + raw)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_the_transport_answers_400_to_bodies_no_handler_could_want():
    async def main(path):
        server = ApiServer(path)

        async def handler(body):
            return {"ok": True}

        server.add_routes({("POST", "/x"): handler})
        await server.start()
        loop = asyncio.get_running_loop()
        try:
            deep = await loop.run_in_executor(None, _request, path, b"[" * 100_000 + b"]" * 100_000)
            not_json = await loop.run_in_executor(None, _request, path, b"\xff\xfe")
            fine = await loop.run_in_executor(None, _request, path, b"{}")
        finally:
            await server.close()
        return deep, not_json, fine

    with tempfile.TemporaryDirectory() as d:
        deep, not_json, fine = asyncio.run(main(os.path.join(d, "api.sock")))
    assert deep[0] == 400 and "nested" in deep[1]["error"]
    assert not_json[0] == 400 and fine == (200, {"ok": True})


def test_status_exits_non_zero_when_the_router_is_unhealthy(monkeypatch, capsys):
    from meshnet.cli import commands

    snapshot = {
        "router": {"nick": "h1", "name": "ab" * 16, "id": 1, "uptime": 1.0, "version": "x", "port": 6783, "udp_port": 6783,
                   "bridge": "meshnet", "mtu": 1422, "encrypted": False},
        "health": {"healthy": False, "reasons": ["timer_stalled", "pump_stopped"], "timer_age_s": 12.5,
                   "supervision": {"failures": {"dial": 2}}, "timer_failures": {"mesh": 1}},
        "dataplane": {"pump": {"compiled": True}, "fastdp": {"enabled": True}},
        "peers": [], "connections": [],
        "limits": {"peers": 1, "max_peers": 4096, "endpoints": 0, "max_endpoints": 131072, "local_endpoints": 0,
                   "max_peer_endpoints": 1024, "endpoints_over_quota": 3},
        "conflicts": {"current": 1, "detected": 1, "list": [{"kind": "mac", "address": "02:00:00:00:00:01", "owner": "ab" * 16, "others": ["cd" * 16]}]},
    }
    monkeypatch.setattr(commands, "_client", lambda args: SimpleNamespace(get=lambda path: snapshot))
    assert cli(["status"]) == 1
    out = capsys.readouterr().out
    assert "UNHEALTHY: the timer is 12.5s late" in out and "pump's thread has stopped" in out
    assert "failures caught: dial 2, mesh 1" in out
    assert "ADDRESS CONFLICTS (1" in out and "MAC  02:00:00:00:00:01" in out and f"kept by {'ab' * 6}" in out
    assert "NOT STORED: 3 over a peer's share" in out
    snapshot["health"] = {"healthy": True, "reasons": [], "timer_age_s": 0.0}
    assert cli(["status"]) == 0
