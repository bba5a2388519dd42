"""Write the CLI reference (docs/cli.md) from the argument parser, so the two never disagree.

    python -m meshnet.clidoc > docs/cli.md

tests/unit/test_clidoc.py fails when docs/cli.md is out of date.
"""

from __future__ import annotations

import argparse
import os

from meshnet.cli import build_parser

HEADER = """# CLI reference

Generated from the argument parser by `python -m meshnet.clidoc`; do not edit by hand.
Every `launch` flag has a `MESHNET_*` environment twin, shown in brackets.
"""


def _subcommands(parser: argparse.ArgumentParser, prefix: str) -> list[tuple[str, argparse.ArgumentParser]]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                full = f"{prefix} {name}"
                out.append((full, sub))
                out += _subcommands(sub, full)
    return out


def render() -> str:
    """The reference as the defaults stand without any MESHNET_* variable set."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("MESHNET_") or k in ("COLUMNS", "DOCKER_HOST")}
    for key in saved:
        del os.environ[key]
    os.environ["COLUMNS"] = "100"  # stable wrapping whatever the terminal
    try:
        parser = build_parser()
        return _render(parser)
    finally:
        del os.environ["COLUMNS"]
        os.environ.update(saved)


def _render(parser: argparse.ArgumentParser) -> str:
    parts = [HEADER, "```", parser.format_help().rstrip(), "```"]
    for name, sub in _subcommands(parser, "meshnet"):
        parts += ["", f"## {name}", "", "```", sub.format_help().rstrip(), "```"]
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    print(render(), end="")
