"""Every pump test runs against both implementations: the compiled pump and its twin."""

from __future__ import annotations

import os

import pytest

from meshnet.dataplane.pump import load_pump
from pump_harness import Rig

PURE = os.environ.get("MESHNET_PUREPYTHON") == "1"


def _load(name: str) -> type:
    if name == "python":
        cls, compiled = load_pump(prefer_compiled=False)
        assert not compiled
        return cls
    cls, compiled = load_pump()
    if PURE:
        assert not compiled, "MESHNET_PUREPYTHON=1 must select the twin"
        pytest.skip("MESHNET_PUREPYTHON=1: compiled pump not under test")
    assert compiled, "meshnet._fastpath is not built: run setup.py build_ext --inplace"
    return cls


@pytest.fixture(scope="session", params=["compiled", "python"])
def impl(request) -> type:
    """The Pump class under test."""
    return _load(request.param)


@pytest.fixture(scope="session")
def both() -> tuple[type, type]:
    """(compiled, python) Pump classes, for differential tests."""
    if PURE:
        pytest.skip("MESHNET_PUREPYTHON=1: compiled pump not under test")
    return _load("compiled"), _load("python")


@pytest.fixture
def make_rig(impl):
    rigs = []

    def make(local_id: int = 100, **kw) -> Rig:
        rig = Rig(impl, local_id, **kw)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        rig.close()
