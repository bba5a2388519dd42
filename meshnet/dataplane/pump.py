"""Pick the sleeve pump: the compiled `meshnet._fastpath.Pump` or its pure-Python twin.

The twin is the specification; it is slower (the interpreter runs per frame and it has
no batched syscalls), so using it must never be silent: `load_pump` returns a flag the
router puts into `meshnet status`, and falling back because the extension is missing is
logged as a warning.
`MESHNET_PUREPYTHON=1` asks for the twin (for builds without a compiler, and for tests).
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def load_pump(prefer_compiled: bool = True) -> tuple[type, bool]:
    """Return (Pump class, True if it is the compiled one)."""
    if prefer_compiled and os.environ.get("MESHNET_PUREPYTHON") != "1":
        try:
            from meshnet._fastpath import Pump
        except ImportError as e:
            log.warning("compiled sleeve pump unavailable (%s): using the pure-Python twin", e)
        else:
            return Pump, True
    from meshnet.dataplane._pump_py import Pump

    return Pump, False
