"""The IPAM core does no I/O (issue 11 item 5): meshnet/ipam/ imports no file, database,
socket, clock or event-loop module, nothing from the runtime or the state dir, and calls
no `open`. Persistence is the `Store` protocol; `meshnet/state/` implements it. And the
journal stays importable by the CNI plugin without the core."""

import ast
import pathlib
import subprocess
import sys

import pytest

PKG = pathlib.Path(__file__).parents[3] / "meshnet"
IO_MODULES = ("os", "io", "pathlib", "sqlite3", "fcntl", "socket", "select", "time", "asyncio", "threading", "subprocess", "shutil", "tempfile", "logging")
NOT_BELOW = ("meshnet.state", "meshnet.runtime", "meshnet.kernel", "meshnet.api", "meshnet.testing")


def imports(path: pathlib.Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return out


def within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


@pytest.mark.parametrize("path", sorted((PKG / "ipam").glob("*.py")), ids=lambda p: p.name)
def test_the_ipam_core_does_no_io(path: pathlib.Path) -> None:
    bad = {m for m in imports(path) if within(m, IO_MODULES) or within(m, NOT_BELOW)}
    assert not bad, f"{path.name} imports {sorted(bad)}"
    calls = [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "open"]
    assert not calls, f"{path.name} opens files"


def test_the_journal_needs_neither_the_core_nor_msgpack() -> None:
    code = "import sys; import meshnet.state.journal; print(sorted(m for m in sys.modules if m.startswith(('meshnet.ipam', 'msgpack'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
