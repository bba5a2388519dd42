"""docs/cli.md must match the CLI the code builds."""

import pathlib

from meshnet.clidoc import render


def test_cli_reference_is_current():
    doc = pathlib.Path(__file__).parents[2] / "docs" / "cli.md"
    assert doc.read_text() == render(), "docs/cli.md is stale: run `python -m meshnet.clidoc > docs/cli.md`"
