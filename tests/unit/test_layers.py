"""The layers of docs/design.md, checked on the imports: no module imports a layer above its
own. Also: no file under meshnet/ is longer than the size rule allows.

A module's layer is that of the longest prefix in LAYERS that names it. Imports inside
functions and under TYPE_CHECKING count too: a layer rule that holds only at module level
holds nothing.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PKG = pathlib.Path(__file__).parents[2] / "meshnet"
MAX_LINES = 450  # docs/design.md: a file over this wants splitting
LONG_FILES_ALLOWED = ("_fastpath",)  # the pump's parts (house-style 3.5)

LAYERS = {
    # 0 foundation
    "meshnet": 0,
    "meshnet.errors": 0,
    # 1 sans-IO cores
    "meshnet.mesh": 1,
    "meshnet.ipam": 1,
    "meshnet.dataplane": 1,
    "meshnet._fastpath": 1,
    "meshnet.dns.answer": 1,
    "meshnet.cni.spec": 1,
    # 2 boundaries: kernel, persistence, configuration, the API client
    "meshnet.kernel": 2,
    "meshnet.state": 2,
    "meshnet.config": 2,
    "meshnet.api": 2,
    "meshnet.api.client": 2,
    # 3 the runtime: the router and its API server
    "meshnet.runtime": 3,
    "meshnet.api.server": 3,
    # 4 integrations
    "meshnet.docker": 4,
    "meshnet.cni": 4,
    "meshnet.dns": 4,
    "meshnet.k8s": 4,
    # 5 the composition root
    "meshnet.daemon": 5,
    # 6 front-ends and test doubles
    "meshnet.cli": 6,
    "meshnet.lab": 6,
    "meshnet.clidoc": 6,
    "meshnet.__main__": 6,
    "meshnet.testing": 6,
}


def module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def imports(path: pathlib.Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "meshnet"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "meshnet":
            for alias in node.names:  # `from meshnet.x import y`: y may be a module or a name
                candidate = f"{node.module}.{alias.name}"
                out.add(candidate if (PKG.parent / candidate.replace(".", "/")).with_suffix(".py").exists()
                        or (PKG.parent / candidate.replace(".", "/")).is_dir() else node.module)
    return out


SOURCES = sorted(PKG.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PKG)))
def test_no_import_points_up(path):
    me = module_name(path)
    up = {m: layer(m) for m in imports(path) if layer(m) > layer(me) and not m.startswith(me + ".")}
    assert not up, f"{me} (layer {layer(me)}) imports from a higher layer: {up}"


def test_every_module_is_placed_on_purpose():
    """A new package must be given its layer here (and in docs/design.md), not inherit 0."""
    unplaced = [m for m in map(module_name, SOURCES) if m != "meshnet" and not any(m == p or m.startswith(p + ".") for p in LAYERS if p != "meshnet")]
    assert not unplaced, f"add these to LAYERS and docs/design.md: {unplaced}"


def test_the_runtime_knows_no_integration():
    for path in (PKG / "runtime").rglob("*.py"):
        bad = {m for m in imports(path) if m.startswith(("meshnet.docker", "meshnet.cni", "meshnet.k8s"))}
        assert not bad, f"{path.name} imports {bad}"


def test_files_stay_small():
    long = {
        str(p.relative_to(PKG)): n
        for p in [*SOURCES, *PKG.rglob("*.pyx"), *PKG.rglob("*.pxi")]
        if (n := len(p.read_text().splitlines())) > MAX_LINES and not str(p.relative_to(PKG)).startswith(LONG_FILES_ALLOWED)
    }
    assert not long, f"over {MAX_LINES} lines: {long}"
