"""The NetworkPolicy compiler is sans-IO: everything in meshnet/k8s/policy/ but the agent
(which watches the API and drives the kernel) imports no I/O, clock or event-loop module,
nothing of the runtime or the kernel, and opens no file. And the evaluator, the reference
the compiler is tested against, imports nothing of meshnet at all."""

import ast
import pathlib

import pytest

POLICY = pathlib.Path(__file__).parents[3] / "meshnet" / "k8s" / "policy"
IO_MODULES = ("os", "io", "pathlib", "fcntl", "socket", "select", "time", "asyncio", "threading", "subprocess", "shutil", "tempfile", "random")
NOT_BELOW = ("meshnet.state", "meshnet.runtime", "meshnet.kernel", "meshnet.api", "meshnet.testing", "meshnet.daemon")
SHELL = ("agent.py",)  # the I/O side of the package: watches the API, drives the kernel


def imports(path: pathlib.Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out |= {node.module}
    return out


def within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


@pytest.mark.parametrize("path", [p for p in sorted(POLICY.glob("*.py")) if p.name not in SHELL], ids=lambda p: p.name)
def test_the_policy_core_does_no_io(path: pathlib.Path) -> None:
    bad = {m for m in imports(path) if within(m, IO_MODULES) or within(m, NOT_BELOW)}
    assert not bad, f"{path.name} imports {sorted(bad)}"
    calls = [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "open"]
    assert not calls, f"{path.name} opens files"


def test_the_evaluator_stands_apart() -> None:
    assert not {m for m in imports(POLICY / "evaluate.py") if m.startswith("meshnet")}
