"""The lab is a front-end: only the CLI imports it, and it imports only the API client,
the errors and the runtime's config constants (meshnet/lab/__init__.py)."""

import ast
import pathlib

import pytest

PKG = pathlib.Path(__file__).parents[2] / "meshnet"
LAB_MAY_IMPORT = ("meshnet.lab", "meshnet.api.client", "meshnet.errors", "meshnet.runtime.config")
MAY_IMPORT_LAB = {"cli.py"}  # `meshnet lab` is a CLI subcommand


def meshnet_imports(path: pathlib.Path) -> set[str]:
    """Every meshnet module a file imports (`from meshnet import x` counts as meshnet.x)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("meshnet")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("meshnet"):
            out |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return out


def within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def lab_files() -> list[pathlib.Path]:
    return sorted((PKG / "lab").glob("*.py"))


@pytest.mark.parametrize("path", lab_files(), ids=lambda p: p.name)
def test_lab_imports_only_front_end_api(path):
    bad = {m for m in meshnet_imports(path) if not within(m, LAB_MAY_IMPORT)}
    assert not bad, f"{path.name} imports {sorted(bad)}"


def test_nothing_below_imports_the_lab():
    offenders = {}
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG)
        if rel.parts[0] == "lab" or str(rel) in MAY_IMPORT_LAB:
            continue
        hits = {m for m in meshnet_imports(path) if within(m, ("meshnet.lab",))}
        if hits:
            offenders[str(rel)] = sorted(hits)
    assert not offenders, f"the lab is a front-end; these import it: {offenders}"


def test_lab_is_one_package():
    assert lab_files(), "meshnet/lab/ is missing"
    for gone in ("lab.py", "docker/lab.py", "testing/labtools.py"):
        assert not (PKG / gone).exists(), f"meshnet/{gone} came back; the lab lives in meshnet/lab/"
