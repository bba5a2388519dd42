"""load_pump(): the compiled pump by default, the twin on request, never silently."""

from __future__ import annotations

import logging
import sys

from meshnet.dataplane import _pump_py
from meshnet.dataplane.pump import load_pump


def test_compiled_by_default(monkeypatch):
    monkeypatch.delenv("MESHNET_PUREPYTHON", raising=False)
    cls, compiled = load_pump()
    assert compiled and cls.__module__ == "meshnet._fastpath"


def test_the_environment_asks_for_the_twin(monkeypatch):
    monkeypatch.setenv("MESHNET_PUREPYTHON", "1")
    assert load_pump() == (_pump_py.Pump, False)


def test_the_caller_asks_for_the_twin(monkeypatch):
    monkeypatch.delenv("MESHNET_PUREPYTHON", raising=False)
    assert load_pump(prefer_compiled=False) == (_pump_py.Pump, False)


def test_a_missing_extension_falls_back_loudly(monkeypatch, caplog):
    monkeypatch.delenv("MESHNET_PUREPYTHON", raising=False)
    monkeypatch.setitem(sys.modules, "meshnet._fastpath", None)  # import now fails
    with caplog.at_level(logging.WARNING, logger="meshnet.dataplane.pump"):
        assert load_pump() == (_pump_py.Pump, False)
    assert "pure-Python twin" in caplog.text
