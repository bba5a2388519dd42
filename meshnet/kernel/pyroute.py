"""pyroute2, loaded lean: the IPRoute the kernel boundary uses, not the whole library.

`import pyroute2` runs its package `__init__`, which imports every part of the library
(NDB, IPDB, conntrack, nl80211, plan9...): 9 MiB of resident memory and about 300 ms at
every router start, for the one class we use. Here the package is entered without its
`__init__`: a stand-in module whose `__path__` is the real package's, so
`pyroute2.iproute` loads just what it needs (6 MiB, 55 ms). Anything else asked of the
stand-in (`pyroute2.NDB`, `from pyroute2 import X`) runs the real `__init__` into it
first, so code elsewhere that wants the whole library still gets it.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from typing import Any


def _stand_in() -> None:
    if "pyroute2" in sys.modules:
        return
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or spec.submodule_search_locations is None:
        raise ImportError("pyroute2 is not installed")
    module = types.ModuleType("pyroute2")
    module.__path__ = list(spec.submodule_search_locations)
    module.__file__ = spec.origin
    module.__spec__ = spec
    module.__package__ = "pyroute2"

    def __getattr__(name: str) -> Any:
        if not name.startswith("__"):
            try:  # a submodule (`from pyroute2 import config`): load just it
                return importlib.import_module(f"pyroute2.{name}")
            except ModuleNotFoundError as exc:
                if exc.name != f"pyroute2.{name}":
                    raise
        # anything else: the whole library, once
        del module.__getattr__
        exec(spec.loader.get_code("pyroute2"), module.__dict__)  # type: ignore[union-attr]
        return getattr(module, name)

    module.__getattr__ = __getattr__  # type: ignore[attr-defined]
    sys.modules["pyroute2"] = module


_stand_in()

import pyroute2.config as config  # noqa: E402
from pyroute2.iproute import IPRoute  # noqa: E402
from pyroute2.netlink.exceptions import NetlinkError  # noqa: E402

__all__ = ["IPRoute", "NetlinkError", "config"]
