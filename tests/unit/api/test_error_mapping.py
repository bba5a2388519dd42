"""Errors cross the API in one place: the transport maps each to a status and a kind, and
the client raises the same class again. Tested over a real unix socket."""

from __future__ import annotations

import asyncio
import errno
import threading

import pytest

from meshnet.api.client import ApiClient
from meshnet.api.server import ApiServer, status_for
from meshnet.errors import Conflict, MeshnetError, NotFound, RouterUnavailable, Unavailable, UsageError
from meshnet.ipam.errors import AddressInUse, NoHeir, NotOwner, PeerReachable, RangeExhausted
from meshnet.kernel.errors import KernelError


@pytest.mark.parametrize(
    "exc, status, kind",
    [
        (UsageError("x"), 400, "usage"),
        (NotFound("x"), 404, "not_found"),
        (Conflict("x"), 409, "conflict"),
        (Unavailable("x"), 503, "unavailable"),
        (MeshnetError("x"), 500, "error"),
        (AddressInUse("x"), 409, "conflict"),
        (NotOwner("x"), 409, "conflict"),
        (PeerReachable("x"), 409, "conflict"),
        (RangeExhausted("x"), 503, "unavailable"),
        (NoHeir("x"), 503, "unavailable"),
        (KernelError(errno.ENOENT, "no such netns"), 404, "not_found"),
        (KernelError(errno.EEXIST, "exists"), 409, "conflict"),
        (KernelError(errno.EPERM, "not permitted"), 500, "error"),
        (RuntimeError("bug"), 500, "error"),
    ],
)
def test_status_for(exc, status, kind):
    assert status_for(exc) == (status, kind)


def _serve(path: str, routes) -> tuple[asyncio.AbstractEventLoop, threading.Thread]:
    loop = asyncio.new_event_loop()
    server = ApiServer(path)
    server.add_routes(routes)
    ready = threading.Event()

    def run():
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        ready.set()
        loop.run_forever()
        loop.run_until_complete(server.close())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(5)
    return loop, thread


def test_the_client_raises_what_the_handler_raised(tmp_path):
    async def conflict(body):
        raise Conflict("10.32.0.5 is held by docker:abc")

    async def bug(body):
        raise ZeroDivisionError("oops")

    async def echo(body):
        return {"got": body}

    path = str(tmp_path / "api.sock")
    loop, thread = _serve(path, {("POST", "/c"): conflict, ("GET", "/bug"): bug, ("POST", "/echo"): echo})
    try:
        client = ApiClient(path, timeout=5)
        with pytest.raises(Conflict, match="held by docker:abc"):
            client.post("/c")
        with pytest.raises(MeshnetError, match="oops") as info:
            client.get("/bug")
        assert type(info.value) is MeshnetError
        with pytest.raises(NotFound, match="no such endpoint"):
            client.get("/nope")
        assert client.post("/echo", {"a": 1}) == {"got": {"a": 1}}
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


def test_nothing_listening_is_router_unavailable(tmp_path):
    with pytest.raises(RouterUnavailable):
        ApiClient(str(tmp_path / "none.sock"), timeout=1).get("/status")
