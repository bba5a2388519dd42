"""meshnet bounds its waits with `async with asyncio.timeout(t)`, never `asyncio.wait_for`.

Python 3.11's `asyncio.wait_for(aw, t)` returns the result instead of raising
CancelledError when the awaited thing completes in the same loop turn as the outer task is
cancelled: the cancel is lost, and a task in a loop outlives its stop() (the router's
timer, the node and NetworkPolicy agents did; a policy-agent test hung CI for 20 minutes).
`asyncio.timeout` awaits in the caller's own task, so a cancel is always delivered.
(Fixed in Python 3.12, where wait_for is built on asyncio.timeout; we support 3.11.)
"""

from __future__ import annotations

import ast
import asyncio
import pathlib

import pytest

import meshnet
from meshnet.runtime.ipam_service import IpamService

PACKAGE = pathlib.Path(meshnet.__file__).parent
A = bytes([1]) * 16


def _wait_for_uses(path: pathlib.Path) -> list[int]:
    """Lines that use asyncio's wait_for: `asyncio.wait_for`, `<alias of asyncio>.wait_for`,
    or `from asyncio import wait_for`. A function of our own named wait_for (meshnet.lab's
    polling helper) is not asyncio's and is not flagged."""
    tree = ast.parse(path.read_text(), filename=str(path))
    aliases = {"asyncio"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases |= {a.asname or a.name for a in node.names if a.name == "asyncio"}
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "asyncio":
            lines += [node.lineno for a in node.names if a.name == "wait_for"]
        elif isinstance(node, ast.Attribute) and node.attr == "wait_for" and isinstance(node.value, ast.Name) and node.value.id in aliases:
            lines.append(node.lineno)
    return lines


def test_meshnet_does_not_use_asyncio_wait_for() -> None:
    found = [f"{path.relative_to(PACKAGE.parent)}:{line}" for path in sorted(PACKAGE.rglob("*.py")) for line in _wait_for_uses(path)]
    assert not found, "use `async with asyncio.timeout(t):` instead of asyncio.wait_for (see this module's docstring): " + ", ".join(found)


def test_the_scan_finds_what_it_looks_for(tmp_path) -> None:  # type: ignore[no-untyped-def]
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import asyncio\nimport asyncio as aio\nfrom asyncio import wait_for\n"
        "async def f(x):\n    await asyncio.wait_for(x, 1)\n    await aio.wait_for(x, 1)\n"
        "def g(lab):\n    lab.wait_for(lambda: True, 1)\n"
    )
    assert _wait_for_uses(sample) == [3, 5, 6]


def test_a_cancel_that_lands_as_an_allocation_completes_is_not_swallowed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """An API caller waiting for an address (IpamService.allocate, a shielded wait) is
    cancelled in the same turn as its request completes: it must see the cancel, and the
    request's own future must stay uncancelled (the shield)."""

    async def main() -> None:
        service = IpamService(name=A, universe="10.32.0.0/24", init="consensus=2", state_dir=str(tmp_path), send=lambda out: None)
        try:
            task = asyncio.ensure_future(service.allocate("c1", wait=5.0))
            for _ in range(10):  # no consensus with a peer that is not there: it waits
                await asyncio.sleep(0)
            assert not task.done() and len(service._waiting) == 1
            (future,) = service._waiting.values()
            future.set_result("an address")  # the reply and the cancel in the same turn
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert not future.cancelled()
        finally:
            service.close()

    asyncio.run(main())


def test_an_allocation_that_waits_too_long_is_unavailable_and_dropped(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from meshnet.errors import Unavailable

    async def main() -> None:
        service = IpamService(name=A, universe="10.32.0.0/24", init="consensus=2", state_dir=str(tmp_path), send=lambda out: None)
        try:
            with pytest.raises(Unavailable):
                await service.allocate("c1", wait=0.05)
            assert service._waiting == {}
        finally:
            service.close()

    asyncio.run(main())
